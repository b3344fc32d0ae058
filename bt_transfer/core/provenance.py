"""The pretraining behind the paper's rows, and how the pretraining behind a backbone departs from it.

A backbone from ``pretrain.train`` has the run's ``args.json`` beside its ``resnet50.pth``; the
evaluation runners read it with ``read_pretraining_args`` and add ``pretraining_deviations`` to their
records, so a backbone pretrained briefly or on generated data never yields full-protocol rows however
faithfully it is evaluated. Weights from elsewhere (the official release, torchvision) carry no such
record and add nothing.
"""
import json
from pathlib import Path

# The run behind the paper's rows: the official code's defaults (Zbontar et al. 2021, Sec. 4;
# facebookresearch/barlowtwins main.py). pretrain.train takes its defaults from here.
# The paper's text rounds lambda to 5e-3 and gives weight decay 1.5e-6; the released model used these.
PAPER_PRETRAINING = {"epochs": 1000, "batch_size": 2048, "projector": "8192-8192-8192", "lambd": 0.0051,
                     "learning_rate_weights": 0.2, "learning_rate_biases": 0.0048, "weight_decay": 1e-6,
                     "warmup_epochs": 10, "image_size": 224, "max_steps": None}
ARGS_FILE = "args.json"
# What identifies an args.json as pretrain.train's (evaluation runs write one too).
_PRETRAINING_KEYS = {"epochs", "batch_size", "projector"}


def read_pretraining_args(weights_path):
    """The ``args.json`` of the pretraining run that exported ``weights_path``, or None for other weights."""
    try:
        args = json.loads((Path(weights_path).parent / ARGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return args if isinstance(args, dict) and _PRETRAINING_KEYS <= args.keys() else None


def pretraining_deviations(args):
    """How the pretraining run with arguments ``args`` (None: not ours) departs from the paper's, in words."""
    if args is None:
        return []
    deviations = [f"backbone pretrained with {key} {args[key]} (paper: {paper})"
                  for key, paper in PAPER_PRETRAINING.items() if key in args and args[key] != paper]
    if args.get("generated_data"):
        deviations.append(f"backbone pretrained on generated data ({args['data']})")
    return deviations
