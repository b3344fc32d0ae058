"""The linear scaling rule that keeps the detection protocol's schedule on fewer GPUs.

The protocol (Barlow Twins Appendix C.2, after MoCo) trains with 16 images per iteration:
2 per GPU on 8 GPUs. On fewer GPUs we keep 2 images per GPU and, following Goyal et al.
(2017), scale the learning rate with the batch and every iteration count inversely, so the
run sees the same number of epochs with the same per-image learning-rate budget. Plain data
in, plain data out: no Detectron2 here, so the rule is testable on its own.
"""
from dataclasses import dataclass

PROTOCOL_GPUS = 8
IMAGES_PER_GPU = 2


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


def describe(protocol, scaled, num_gpus):
    """One sentence for logs and result records; empty when nothing changed."""
    if scaled == protocol:
        return ""
    return (
        f"linear scaling rule for {num_gpus} GPU(s) x {scaled.ims_per_batch // num_gpus} images: "
        f"batch {scaled.ims_per_batch} (protocol {protocol.ims_per_batch}), "
        f"BASE_LR {scaled.base_lr:g} ({protocol.base_lr:g}), MAX_ITER {scaled.max_iter} ({protocol.max_iter}), "
        f"STEPS {scaled.steps} ({protocol.steps}), WARMUP_ITERS {scaled.warmup_iters} ({protocol.warmup_iters})"
    )
