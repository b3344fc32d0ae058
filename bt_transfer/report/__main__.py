"""``python -m bt_transfer.report``: rebuild the report, the paper's Tables 1, 2 and 4 with our runs beside them.

Reads every ``result.json`` under the results folders, aggregates seeds and writes, for each table, ``<name>.md``,
``.csv``, ``.tex`` and ``.png``, then ``README.md`` with all of them and ``pretrain_loss.png`` when a pretraining
log is found (a folder with ``metrics.jsonl`` beside ``args.json``). Files that cannot be used are reported by
name and left out; the rest is written. The same inputs give byte-identical files.
"""
import argparse

from bt_transfer.report.build import build_report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bt_transfer.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", nargs="*", default=["runs"], metavar="DIR",
                        help="folders searched recursively for result.json (default: runs); "
                             "give --results alone for the paper's tables only")
    parser.add_argument("--out", default="tables", help="output folder (default: tables)")
    parser.add_argument("--pretrain-log", nargs="*", default=[], metavar="DIR",
                        help="pretraining output folders (metrics.jsonl) for the loss curve, besides those found "
                             "under --results")
    args = parser.parse_args(argv)
    build_report(args.results, args.out, args.pretrain_log)


if __name__ == "__main__":
    main()
