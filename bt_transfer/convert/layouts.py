"""The checkpoint layouts of ResNet-50 releases, as data: where each file keeps its trunk, what else it holds, and
the repository file the layout was read from. ``formats`` reads checkpoints with them; ``--help`` lists them.

Every name below is a state-dict key after the ``module.`` that DistributedDataParallel may put before all keys.
"""
from dataclasses import dataclass, field
from types import MappingProxyType

# torchvision ResNet children by position, as ``nn.Sequential(*list(resnet.children())[:-1])`` numbers them
# (2, 3 and 8 are ReLU and pooling, without weights).
_RESNET_CHILDREN = MappingProxyType({"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                                     "7": "layer4"})


@dataclass(frozen=True)
class Layout:
    """How one kind of file holds a ResNet-50.

    ``path``: the keys leading from the loaded object to the state dict. ``trunk``: the prefix of the trunk's
    keys in it. ``drop``: the known non-backbone parts, dropped; a key belongs to part P when it is P or starts
    with "P.". ``marks``: parts that must all be present for ``auto`` to take the layout; they tell it from
    layouts with the same path and trunk prefix. ``copies``: prefixes under which the trunk module is registered
    a second time (the same tensors); each key there must equal its twin under ``trunk``, then it is dropped.
    ``ddp``: whether DistributedDataParallel's ``module.`` may precede every key. ``rename``: the first name
    component of a trunk key -> torchvision's, where they differ.
    """

    summary: str  # what the file is, one line
    source: str  # the repository files the layout was read from, one line
    path: tuple = ()
    trunk: str = ""
    drop: tuple = ()
    marks: tuple = ()
    copies: tuple = ()
    ddp: bool = True
    rename: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


LAYOUTS = MappingProxyType({
    "barlowtwins": Layout(
        "a bare trunk with torchvision names and no fc: the resnet50.pth of Barlow Twins (official or ours) and of "
        "VICReg, DINO's dino_resnet50_pretrain.pth",
        "facebookresearch/barlowtwins main.py; facebookresearch/vicreg main_vicreg.py; facebookresearch/dino "
        "eval_linear.py + utils.py"),
    "checkpoint": Layout(
        "a Barlow Twins training checkpoint.pth (official or ours): {'model': {backbone, projector, bn}}",
        "facebookresearch/barlowtwins main.py (BarlowTwins, checkpoint.pth); pretrain/checkpoint.py",
        path=("model",), trunk="backbone.", drop=("projector", "bn"), marks=("bn",)),
    "torchvision": Layout(
        "a torchvision state dict with its fc classifier: torchvision's ImageNet weights, timm's resnet50 weights "
        "and clean_checkpoint.py output, byol-pytorch's saved net",
        "pytorch/vision torchvision/models/resnet.py; huggingface/pytorch-image-models timm/models/resnet.py + "
        "clean_checkpoint.py; lucidrains/byol-pytorch README.md + byol_pytorch/trainer.py",
        drop=("fc",), marks=("fc",)),
    "moco": Layout(
        "MoCo v1/v2 checkpoint: {'state_dict': {encoder_q (with its fc head), encoder_k, queue}}",
        "facebookresearch/moco main_moco.py + moco/builder.py + detection/convert-pretrain-to-detectron2.py",
        path=("state_dict",), trunk="encoder_q.", drop=("encoder_q.fc", "encoder_k", "queue", "queue_ptr")),
    "vissl": Layout(
        "VISSL checkpoint: the trunk's _feature_blocks under ['classy_state_dict']['base_model']['model']['trunk']",
        "facebookresearch/vissl vissl/utils/checkpoint.py + vissl/models/trunks/resnext.py",
        path=("classy_state_dict", "base_model", "model", "trunk"), trunk="_feature_blocks.", ddp=False),
    "swav": Layout(
        "SwAV (and DeepCluster-v2, SeLa-v2) released *_pretrain.pth.tar: trunk, projection_head, prototypes",
        "facebookresearch/swav hubconf.py + src/resnet50.py; issue #6 (heads added to the released files)",
        drop=("projection_head", "prototypes"), marks=("prototypes",)),
    "swav-checkpoint": Layout(
        "SwAV (and DeepCluster-v2) training checkpoint.pth.tar / ckp-N.pth: {'state_dict': as 'swav'}",
        "facebookresearch/swav main_swav.py + main_deepclusterv2.py (save_dict)",
        path=("state_dict",), drop=("projection_head", "prototypes"), marks=("prototypes",)),
    "dino": Layout(
        "DINO checkpoint.pth / *_full_checkpoint.pth: the teacher's backbone, as DINO's evaluations read it "
        "(--checkpoint_key teacher); its head and the student are dropped",
        "facebookresearch/dino main_dino.py (save_dict) + utils.py (MultiCropWrapper) + eval_linear.py",
        path=("teacher",), trunk="backbone.", drop=("head",)),
    "vicreg": Layout(
        "VICReg training model.pth / resnet50_fullckpt.pth: {'model': {backbone, projector}}",
        "facebookresearch/vicreg main_vicreg.py (VICReg, model.pth) + resnet.py",
        path=("model",), trunk="backbone.", drop=("projector",)),
    "mocov3": Layout(
        "MoCo v3 ResNet-50 checkpoint (r-50-*ep.pth.tar): {'state_dict': {base_encoder, momentum_encoder, "
        "predictor}}",
        "facebookresearch/moco-v3 main_moco.py + moco/builder.py (MoCo_ResNet) + main_lincls.py",
        path=("state_dict",), trunk="base_encoder.",
        drop=("base_encoder.fc", "momentum_encoder", "predictor")),
    "simsiam": Layout(
        "SimSiam checkpoint_*.pth.tar: {'state_dict': {encoder (with its fc projector), predictor}}",
        "facebookresearch/simsiam main_simsiam.py + simsiam/builder.py + main_lincls.py",
        path=("state_dict",), trunk="encoder.", drop=("encoder.fc", "predictor")),
    "byol": Layout(
        "byol-pytorch's Lightning checkpoint: the BYOL learner's net (online network) under 'state_dict'",
        "lucidrains/byol-pytorch examples/lightning/train.py + byol_pytorch/byol_pytorch.py (BYOL, NetWrapper)",
        path=("state_dict",), trunk="learner.net.",
        drop=("learner.net.fc", "learner.online_encoder.projector", "learner.online_predictor",
              "learner.target_encoder"),
        copies=("learner.online_encoder.net.",), ddp=False),
    "solo-learn": Layout(
        "solo-learn Lightning .ckpt: {'state_dict': {backbone, classifier, projector, momentum_backbone, ...}}",
        "vturrisi/solo-learn solo/methods/base.py + solo/methods/*.py + "
        "downstream/object_detection/convert_model_to_detectron2.py",
        path=("state_dict",), trunk="backbone.",
        drop=("classifier", "momentum_classifier", "projector", "momentum_projector", "predictor",
              "momentum_backbone", "prototypes", "head", "momentum_head", "dino_loss_func", "queue", "queue_ptr",
              "queue_y", "queue_index", "local_memory_index", "local_memory_embeddings"),
        marks=("classifier",), ddp=False),
    "lightly": Layout(
        "lightly Lightning .ckpt (ImageNet ResNet-50 benchmarks, examples' Sequential backbone): {'state_dict': "
        "{backbone, projection_head, ...}}",
        "lightly-ai/lightly benchmarks/imagenet/resnet50/*.py + examples/pytorch_lightning/*.py",
        path=("state_dict",), trunk="backbone.",
        drop=("projection_head", "prediction_head", "online_classifier", "knn_classifier", "backbone_momentum",
              "projection_head_momentum", "teacher_backbone", "teacher_projection_head", "student_backbone",
              "student_projection_head", "key_backbone", "key_projection_head", "prototypes", "queues",
              "memory_bank", "criterion"),
        marks=("projection_head",), ddp=False, rename=_RESNET_CHILDREN),
    "mmselfsup": Layout(
        "MMSelfSup (OpenMMLab) checkpoint, 1.x or 0.x: {'meta', 'state_dict': {backbone, neck, head, momentum "
        "encoder, queue}}",
        "open-mmlab/mmselfsup mmselfsup/models/algorithms/*.py on main (1.x) and 0.x",
        path=("state_dict",), trunk="backbone.",
        drop=("neck", "head", "encoder_k", "target_net", "momentum_encoder", "queue", "queue_ptr", "queue2",
              "queue2_ptr", "encoder_q.1", "online_net.1", "encoder.1"),
        copies=("encoder_q.0.", "online_net.0.", "encoder.0."), marks=("neck",), ddp=False),
    "mmselfsup-backbone": Layout(
        "MMSelfSup's extracted backbone: {'state_dict': trunk with torchvision names, 'author': 'MMSelfSup'}",
        "open-mmlab/mmselfsup tools/model_converters/extract_backbone_weights.py",
        path=("state_dict",), ddp=False),
    "timm": Layout(
        "timm train.py checkpoint, its model weights (what timm's validate.py reads by default)",
        "huggingface/pytorch-image-models timm/utils/checkpoint_saver.py + timm/models/resnet.py + validate.py",
        path=("state_dict",), drop=("fc",), marks=("fc",)),
    "timm-ema": Layout(
        "timm train.py checkpoint, its EMA weights (what timm's load_state_dict and clean_checkpoint.py prefer)",
        "huggingface/pytorch-image-models timm/utils/checkpoint_saver.py + timm/models/_helpers.py",
        path=("state_dict_ema",), drop=("fc",), marks=("fc",)),
})


def describe():
    """The ``--help`` listing: every layout's name, what it is, and where it was read from."""
    width = max(map(len, LAYOUTS)) + 2
    lines = ["formats (--format NAME reads the file as NAME; auto tries every one and takes the one that accounts "
             "for every key):"]
    for name, layout in LAYOUTS.items():
        lines += [f"  {name:<{width}}{layout.summary}", f"  {'':<{width}}source: {layout.source}"]
    return "\n".join(lines)
