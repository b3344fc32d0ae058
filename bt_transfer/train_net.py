"""``python -m bt_transfer.train_net``: Detectron2 training and evaluation of the C4 protocol
(``bt_transfer.detection.trainer``)."""
from bt_transfer.detection.trainer import cli

if __name__ == "__main__":
    cli()
