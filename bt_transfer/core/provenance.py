"""The pretraining behind the paper's rows, and how the weights behind a record depart from it.

A backbone from ``pretrain.train`` has the run's ``args.json`` beside its ``resnet50.pth``; the
evaluation runners read it with ``read_pretraining_args`` and add ``pretraining_deviations`` to their
records (and ``pretraining_provenance`` to their ``extra``), so a backbone pretrained briefly, on generated
data or with other settings never yields full-protocol rows however faithfully it is evaluated. Weights
from elsewhere carry no such record and add nothing, except supervised ones: the paper's "Sup." row used
torchvision's IMAGENET1K_V1 ResNet-50, and ``supervised_weights_deviations`` names any other.
"""
import json
from pathlib import Path

# The run behind the paper's rows: the official code's defaults (Zbontar et al. 2021, Sec. 4;
# facebookresearch/barlowtwins main.py) on 32 GPUs. pretrain.train takes its defaults from here.
# The paper's text rounds lambda to 5e-3 and gives weight decay 1.5e-6; the released model used these.
# grad_scaling "paper": the official code's gradient on 32 processes (see gradient_divisor); jpeg_draft False:
# every JPEG decoded at full size, as the official torchvision pipeline does.
PAPER_PRETRAINING = {"epochs": 1000, "batch_size": 2048, "projector": "8192-8192-8192", "lambd": 0.0051,
                     "learning_rate_weights": 0.2, "learning_rate_biases": 0.0048, "weight_decay": 1e-6,
                     "warmup_epochs": 10, "image_size": 224, "grad_scaling": "paper", "jpeg_draft": False,
                     "max_steps": None}
PAPER_WORLD_SIZE = 32
GRAD_SCALINGS = ("paper", "exact", "official")
ARGS_FILE = "args.json"
# What identifies an args.json as pretrain.train's (evaluation runs write one too).
_PRETRAINING_KEYS = {"epochs", "batch_size", "projector"}
# What an args.json written before --grad-scaling and --jpeg-draft existed implies: exact gradients unless
# --official-grad-scaling, and draft-mode decoding always on.
_BEFORE_THE_OPTIONS = {"grad_scaling": lambda args: "official" if args.get("official_grad_scaling") else "exact",
                       "jpeg_draft": lambda args: True}

# torchvision's IMAGENET1K_V1 ResNet-50 (torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url), the supervised
# weights of the MoCo detection protocol and so of the paper's "Sup." row. torchvision publishes the first 8 hex
# digits of the file's sha256 in its name and torch.hub checks exactly those on download: the file is recognised
# the same way (the full digest could not be computed here, without access to download.pytorch.org).
TORCHVISION_V1_FILE = "resnet50-0676ba61.pth"
TORCHVISION_V1_SHA256_PREFIX = "0676ba61"
# Other supervised files a user is likely to pass, by the sha256 prefix torchvision publishes in their names.
_KNOWN_SUPERVISED = {"11ad3fa6": "torchvision's IMAGENET1K_V2 weights (resnet50-11ad3fa6.pth)"}
# The converter's name for a torchvision state dict with its fc classifier: what supervised ImageNet weights are.
SUPERVISED_FORMAT = "torchvision"


def check_grad_scaling(grad_scaling):
    """Raise ValueError unless ``grad_scaling`` is one of ``GRAD_SCALINGS``."""
    if grad_scaling not in GRAD_SCALINGS:
        raise ValueError(f"gradient scaling {grad_scaling!r}: expected one of {GRAD_SCALINGS}")


def gradient_divisor(grad_scaling, world_size):
    """What ``--grad-scaling`` divides the exact gradient of the loss by on ``world_size`` processes: paper 32
    (the official code's 1/world_size on the paper's 32 GPUs), exact 1, official ``world_size``."""
    check_grad_scaling(grad_scaling)
    return {"paper": PAPER_WORLD_SIZE, "exact": 1, "official": world_size}[grad_scaling]


def read_pretraining_args(weights_path):
    """The ``args.json`` of the pretraining run that exported ``weights_path``, or None for other weights."""
    try:
        args = json.loads((Path(weights_path).parent / ARGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(args, dict) or not _PRETRAINING_KEYS <= args.keys():
        return None
    return {**{key: fill(args) for key, fill in _BEFORE_THE_OPTIONS.items()}, **args}


def pretraining_deviations(args):
    """How the pretraining run with arguments ``args`` (None: not ours) departs from the paper's, in words."""
    if args is None:
        return []
    deviations = [f"backbone pretrained with {key} {args[key]} (paper: {paper})"
                  for key, paper in PAPER_PRETRAINING.items()
                  if key not in ("grad_scaling", "jpeg_draft") and key in args and args[key] != paper]
    world_size = args.get("world_size", 1)
    divisor = gradient_divisor(args["grad_scaling"], world_size)
    if divisor != PAPER_WORLD_SIZE:
        deviations.append(f"backbone pretrained with gradients divided by {divisor} (--grad-scaling "
                          f"{args['grad_scaling']} on {world_size} process{'es' * (world_size != 1)}; paper: "
                          f"{PAPER_WORLD_SIZE}, the official code on {PAPER_WORLD_SIZE} GPUs)")
    if args["jpeg_draft"]:
        deviations.append("backbone pretrained with JPEG draft-mode decoding (--jpeg-draft): views not "
                          "pixel-identical to the official augmentation")
    if args.get("generated_data"):
        deviations.append(f"backbone pretrained on generated data ({args['data']})")
    return deviations


def pretraining_provenance(args):
    """What a record should say of the pretraining behind it without it being a deviation (None: not ours):
    the code that ran it, its mixed precision and its number of processes."""
    if args is None:
        return None
    return {key: args.get(key) for key in ("code_version", "amp_dtype", "world_size")}


def supervised_weights_deviations(weights_format, weights_sha256):
    """For supervised weights (the converter's ``torchvision`` layout: a state dict with its fc classifier), one
    deviation unless they are torchvision's IMAGENET1K_V1 ResNet-50, the weights of the paper's "Sup." row;
    nothing for any other layout."""
    if weights_format != SUPERVISED_FORMAT or weights_sha256.startswith(TORCHVISION_V1_SHA256_PREFIX):
        return []
    known = _KNOWN_SUPERVISED.get(weights_sha256[:8])
    which = f"{known}, sha256 {weights_sha256}" if known else f"sha256 {weights_sha256}"
    return [f"supervised weights ({which}) are not torchvision's IMAGENET1K_V1 ResNet-50 ({TORCHVISION_V1_FILE}, "
            f"sha256 {TORCHVISION_V1_SHA256_PREFIX}...), which the paper's Sup. row used (MoCo protocol)"]
