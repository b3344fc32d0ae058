"""``python -m bt_transfer.synthetic``: generated data in the real layouts (``bt_transfer.datasets.synthetic``)."""
import sys

from bt_transfer.datasets.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
