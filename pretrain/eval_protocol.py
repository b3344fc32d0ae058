"""The published ImageNet evaluation protocols as data, and how a run departs from them.

Sources: facebookresearch/barlowtwins ``evaluate.py`` and README (linear: SGD momentum 0.9, lr 0.3 for
the classifier, weight decay 1e-6, cosine over 100 epochs, batch 256; semi-supervised: 20 epochs, backbone
lr 0.005, classifier lr 0.5, weight decay 0, cosine) and the paper's Appendix B (semi-supervised: backbone
lr 0.002, classifier 0.5, both x0.2 after epochs 12 and 16). Augmentation: RandomResizedCrop(224) + flip
for training, Resize(256) + CenterCrop(224) for validation. The learning rate changes once per epoch, as
``CosineAnnealingLR(optimizer, epochs)`` stepped after each epoch does in the official code.
"""
import math

from pretrain.subsets import SIMCLR_SUBSET_IMAGES

PROTOCOLS = {
    ("linear", "cosine"): dict(epochs=100, batch_size=256, lr_classifier=0.3, lr_backbone=0.0, weight_decay=1e-6),
    ("semisup", "cosine"): dict(epochs=20, batch_size=256, lr_classifier=0.5, lr_backbone=0.005, weight_decay=0.0),
    ("semisup", "paper-step"): dict(epochs=20, batch_size=256, lr_classifier=0.5, lr_backbone=0.002, weight_decay=0.0),
}
# The paper's steps fall after 12 and 16 of 20 epochs; shorter or longer runs keep the same fractions.
STEP_FRACTIONS = (0.6, 0.8)
STEP_GAMMA = 0.2
IMAGE_SIZE, VAL_RESIZE = 224, 256
# ILSVRC-2012 as the paper used it.
IMAGENET = dict(classes=1000, train_images=1281167, val_images=50000)


def task_name(mode, percent):
    return "linear" if mode == "linear" else f"semisup-{percent}"


def resolve(config):
    """Fill the protocol's defaults into ``config`` (a dict of CLI values, None = default) and refuse
    combinations that have no meaning. Returns a new dict; raises ValueError naming the option."""
    config = dict(config)
    mode, schedule = config["mode"], config["schedule"]
    if mode == "linear":
        for option, flag in (("percent", "--percent"), ("subset_file", "--subset-file"),
                             ("lr_backbone", "--lr-backbone")):
            if config.get(option) is not None:
                raise ValueError(f"{flag} applies to --mode semisup only (linear evaluation trains the "
                                 f"classifier on all images over a frozen backbone)")
        if schedule == "paper-step":
            raise ValueError("--schedule paper-step is the paper's semi-supervised schedule; "
                             "linear evaluation uses cosine")
        config["lr_backbone"] = 0.0
    elif config.get("percent") is None:
        raise ValueError("--mode semisup needs --percent 1 or --percent 10")
    for key, value in PROTOCOLS[mode, schedule].items():
        if config.get(key) is None:
            config[key] = value
    if config.get("image_size") is None:
        config["image_size"] = IMAGE_SIZE
    if config.get("val_resize") is None:
        # Keep the protocol's 256/224 ratio when a smaller crop is asked for.
        config["val_resize"] = round(config["image_size"] * VAL_RESIZE / IMAGE_SIZE)
    if config["val_resize"] < config["image_size"]:
        raise ValueError(f"--val-resize {config['val_resize']} is smaller than the "
                         f"--image-size {config['image_size']} crop it must contain")
    if config["epochs"] < 1 or config["batch_size"] < 1:
        raise ValueError("--epochs and --batch-size must be positive")
    return config


def lr_scale(schedule, epoch, epochs):
    """Multiplier of every base learning rate during 0-based ``epoch`` of ``epochs``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "paper-step":
        steps = sum(epoch >= round(fraction * epochs) for fraction in STEP_FRACTIONS)
        return STEP_GAMMA ** steps
    raise ValueError(f"unknown schedule {schedule!r}, expected cosine or paper-step")


def deviations(config, data, subset=None):
    """Every way this run departs from the published protocol, in words (empty for a full-protocol run).

    ``data`` describes the ImageFolder: classes, train_images (the whole train folder), val_images;
    ``subset`` the labelled subset of a semi-supervised run: generated (bool) and images.
    """
    found = []
    protocol = PROTOCOLS[config["mode"], config["schedule"]]
    names = dict(epochs="epochs", batch_size="batch size", lr_classifier="classifier lr",
                 lr_backbone="backbone lr", weight_decay="weight decay")
    for key, name in names.items():
        if config[key] != protocol[key]:
            found.append(f"{name} {config[key]:g} instead of the protocol's {protocol[key]:g}")
    if (config["image_size"], config["val_resize"]) != (IMAGE_SIZE, VAL_RESIZE):
        found.append(f"images cropped to {config['image_size']} px (val resized to {config['val_resize']}) "
                     f"instead of {IMAGE_SIZE} ({VAL_RESIZE})")
    if data["classes"] != IMAGENET["classes"]:
        found.append(f"data has {data['classes']:,} classes, not ImageNet's {IMAGENET['classes']:,}")
    if data["val_images"] != IMAGENET["val_images"]:
        found.append(f"val has {data['val_images']:,} images, not ImageNet's {IMAGENET['val_images']:,}")
    if config["mode"] == "linear":
        if data["train_images"] != IMAGENET["train_images"]:
            found.append(f"train has {data['train_images']:,} images, not ImageNet's {IMAGENET['train_images']:,}")
    elif subset["generated"]:
        found.append(f"subset drawn from seed {config['subset_seed']} (class-balanced), not SimCLR's "
                     f"{config['percent']}percent.txt")
    elif subset["images"] != SIMCLR_SUBSET_IMAGES[config["percent"]]:
        found.append(f"subset file lists {subset['images']:,} images; SimCLR's {config['percent']}percent.txt "
                     f"lists {SIMCLR_SUBSET_IMAGES[config['percent']]:,}")
    return found
