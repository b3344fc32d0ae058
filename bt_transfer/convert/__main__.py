"""``python -m bt_transfer.convert INPUT OUTPUT.pkl [--format auto|...]``: a ResNet-50 checkpoint as a strict
Detectron2 C4 backbone.

Every trunk tensor of the input must map to a Detectron2 name, and every tensor of the C4 backbone (stem,
res2-res4, and the res5 the ROI head holds) must be present with its ResNet-50 shape and finite, or the
conversion fails listing what is missing, unexpected or mis-shaped.
"""
import argparse
from pathlib import Path

from bt_transfer.convert import layouts
from bt_transfer.convert.detectron2 import convert_file
from bt_transfer.core.errors import command


@command
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bt_transfer.convert", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=layouts.describe())
    parser.add_argument("input", type=Path, help="ResNet-50 checkpoint (.pth / .pth.tar / .torch)")
    parser.add_argument("output", type=Path, help="Detectron2 weights to write (.pkl)")
    parser.add_argument("--format", default="auto", choices=("auto", *layouts.LAYOUTS), metavar="NAME",
                        help="input layout: auto (default) or one of the formats below")
    args = parser.parse_args(argv)
    summary = convert_file(args.input, args.output, args.format)
    dropped = ", ".join(f"{part} {n}" for part, n in sorted(summary["dropped"].items())) or "nothing"
    print(f"format      {summary['format']}\n"
          f"converted   {summary['tensors_converted']} tensors, {summary['parameters']:,} parameters "
          f"(dropped: {dropped})\n"
          f"input       {summary['input']}  sha256 {summary['sha256_input']}\n"
          f"output      {summary['output']}  sha256 {summary['sha256_output']}")


if __name__ == "__main__":
    main()
