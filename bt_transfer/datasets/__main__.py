"""``python -m bt_transfer.datasets [--root DIR] [NAME ...]``: check a datasets root the way the runners do."""
import argparse
import sys

from bt_transfer.datasets.checks import check_contents
from bt_transfer.datasets.layout import DATASETS, EVALUATED, DatasetError, use_datasets_root


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bt_transfer.datasets",
        description="Check that Detectron2's builtin VOC/COCO names find their files under a datasets root, and "
                    "that every annotation and image in them is usable (as bt_transfer.transfer does before "
                    "training). Splits that passed and have not changed since are not read again.")
    parser.add_argument("names", nargs="*", default=list(DATASETS), metavar="NAME",
                        help=f"dataset names to check (default: all of {', '.join(DATASETS)})")
    parser.add_argument("--root", help="datasets root (default: $DETECTRON2_DATASETS, else ./datasets)")
    args = parser.parse_args(argv)
    try:
        root = use_datasets_root(args.root)
        check_contents(args.names, evaluated=[name for name in args.names if name in EVALUATED])
    except (ValueError, DatasetError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"{root}: {', '.join(dict.fromkeys(args.names))} in place and checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
