"""``python -m bt_transfer.transfer {voc,coco}``: detection transfer over seeds (``bt_transfer.detection.runner``)."""
from bt_transfer.detection.runner import main

if __name__ == "__main__":
    main()
