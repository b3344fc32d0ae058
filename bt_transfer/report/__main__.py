"""``python -m bt_transfer.report``: rebuild the report, the paper's Tables 1, 2 and 4 with our runs beside them.

Reads every ``result.json`` under the results folders, aggregates seeds and writes, for each table, ``<name>.md``,
``.csv``, ``.tex`` and ``.png``; the training curves of every run found (finished or not), one figure per stage
(``curves_<stage>.png``) with its data (``.csv``); then ``README.md`` with all of them. Files that cannot be used
are reported by name and left out; the rest is written. The output folder is replaced as a whole, so a failure
leaves the previous one intact. The same inputs give byte-identical files.
"""
import argparse

from bt_transfer.core.errors import command
from bt_transfer.report.aggregate import EPOCHS
from bt_transfer.report.build import build_report


@command
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bt_transfer.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", nargs="*", default=["runs"], metavar="DIR",
                        help="folders searched recursively for result.json and run logs (default: runs); each must "
                             "exist; give --results alone for the paper's tables only")
    parser.add_argument("--out", default="tables",
                        help="output folder, replaced as a whole: new, empty or an earlier report (default: tables)")
    parser.add_argument("--pretrain-log", nargs="*", default=[], metavar="DIR",
                        help="pretraining output folders (metrics.jsonl) for the pretraining curves, besides those "
                             "found under --results")
    parser.add_argument("--metric", choices=EPOCHS, default="last",
                        help="linear and semi-supervised accuracy shown: the last epoch's (default) or the best "
                             "epoch's, as the official evaluate.py prints")
    args = parser.parse_args(argv)
    build_report(args.results, args.out, args.pretrain_log, epoch=args.metric)


if __name__ == "__main__":
    main()
