"""How the detection protocol's batch of 16 is split over GPUs and micro-batches, and the linear scaling rule.

The protocol (Barlow Twins Appendix C.2, after MoCo) trains with 16 images per iteration, 2 per GPU on 8
GPUs, with SyncBN over all 16. On G GPUs the same batch splits into 16/G images per GPU; when fewer fit in
a GPU's memory, each GPU runs k micro-batches per iteration and accumulates their gradients
(``micro_batches``). The linear scaling rule (Goyal et al. 2017) is the other way to fewer GPUs: keep a
few images per GPU, scale the learning rate with the batch and every iteration count inversely, so the run
sees the same number of epochs with the same per-image learning-rate budget. Plain data in, plain data
out: no Detectron2 here, so the arithmetic is testable on its own.
"""
from dataclasses import dataclass

PROTOCOL_GPUS = 8
IMAGES_PER_GPU = 2  # the protocol's images per GPU, and the linear scaling rule's default


@dataclass(frozen=True)
class Schedule:
    """The solver values the rule touches (Detectron2's ``SOLVER.*`` keys of the same names)."""

    ims_per_batch: int
    base_lr: float
    max_iter: int
    steps: tuple
    warmup_iters: int

    @classmethod
    def from_solver(cls, solver):
        return cls(solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER, tuple(solver.STEPS), solver.WARMUP_ITERS)

    def to_opts(self):
        """As Detectron2 ``KEY VALUE`` overrides."""
        return [
            "SOLVER.IMS_PER_BATCH", self.ims_per_batch, "SOLVER.BASE_LR", self.base_lr,
            "SOLVER.MAX_ITER", self.max_iter, "SOLVER.STEPS", self.steps,
            "SOLVER.WARMUP_ITERS", self.warmup_iters,
        ]


# Schedule field, the words a sentence uses for it, and its Detectron2 key.
FIELDS = (
    ("ims_per_batch", "batch", "SOLVER.IMS_PER_BATCH"), ("base_lr", "BASE_LR", "SOLVER.BASE_LR"),
    ("max_iter", "MAX_ITER", "SOLVER.MAX_ITER"), ("steps", "STEPS", "SOLVER.STEPS"),
    ("warmup_iters", "WARMUP_ITERS", "SOLVER.WARMUP_ITERS"),
)


def linear_scaling(protocol, num_gpus, images_per_gpu=IMAGES_PER_GPU):
    """The schedule for ``num_gpus`` processes with ``images_per_gpu`` each.

    With a batch at least the protocol's, the protocol is returned unchanged (16 images on 16
    GPUs is still the protocol, one image each); the batch must then split evenly over the GPUs.
    """
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be at least 1, got {num_gpus}")
    batch = images_per_gpu * num_gpus
    if batch >= protocol.ims_per_batch:
        if protocol.ims_per_batch % num_gpus:
            raise ValueError(
                f"the protocol's batch of {protocol.ims_per_batch} images does not split over {num_gpus} GPUs; "
                f"use a GPU count that divides it or at most {protocol.ims_per_batch // images_per_gpu}"
            )
        return protocol
    stretch = protocol.ims_per_batch / batch
    return Schedule(
        ims_per_batch=batch,
        base_lr=protocol.base_lr / stretch,
        max_iter=round(protocol.max_iter * stretch),
        steps=tuple(round(step * stretch) for step in protocol.steps),
        warmup_iters=round(protocol.warmup_iters * stretch),
    )


def kept_by_run(protocol, scaled, final):
    """The Detectron2 keys whose value the run kept from the rule (``final``: the run's schedule after any
    later override) and that differ from the protocol's."""
    return [key for field, _, key in FIELDS
            if getattr(final, field) == getattr(scaled, field) != getattr(protocol, field)]


def describe(protocol, scaled, num_gpus, final=None):
    """One sentence for logs and result records, naming only the rule's values the run kept (``final``, the
    run's schedule after later overrides; default: ``scaled``); empty when none differs from the protocol."""
    final = scaled if final is None else final
    kept = set(kept_by_run(protocol, scaled, final))
    parts = []
    for field, words, key in FIELDS:
        if key not in kept:
            continue
        ours, theirs = getattr(scaled, field), getattr(protocol, field)
        if field == "ims_per_batch":
            parts.append(f"batch {ours} (protocol {theirs})")
        elif field == "base_lr":
            parts.append(f"BASE_LR {ours:g} ({theirs:g})")
        else:
            parts.append(f"{words} {ours} ({theirs})")
    if not parts:
        return ""
    return f"linear scaling rule for {num_gpus} GPU(s) x {scaled.ims_per_batch // num_gpus} images: " + ", ".join(parts)


def micro_batches(images_per_process, images_per_gpu=None):
    """(images per forward pass, micro-batches per iteration) for a process's share of the batch.

    ``images_per_gpu`` is the most one GPU holds (None: the whole share). The micro-batch is the largest
    count not above it that divides the share, so every micro-batch has the same size and the accumulated
    gradient weighs every image alike.
    """
    if images_per_gpu is None or images_per_gpu >= images_per_process:
        return images_per_process, 1
    if images_per_gpu < 1:
        raise ValueError(f"images per GPU must be at least 1, got {images_per_gpu}")
    micro = max(d for d in range(1, images_per_gpu + 1) if images_per_process % d == 0)
    return micro, images_per_process // micro
