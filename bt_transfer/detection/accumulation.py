"""Gradient accumulation: one optimizer step over k micro-batches per GPU (``SOLVER.ACCUMULATION_STEPS``).

Detectron2 averages the losses of the GPUs (DDP averages their gradients); each micro-batch is treated the
same way, as if it were one more GPU: its losses are weighted 1/k, so k micro-batches of m images on G GPUs
give the gradient of G x k groups of m images, which is the gradient of one batch of G x k x m images for
every loss normalised per image (the RPN's, and the box head's with its fixed ROIs per image). What remains
different is BN, which normalises each micro-batch on its own (the resolved config records it). The data
loader yields micro-batches (``SOLVER.IMS_PER_BATCH / k`` images over all processes); PreciseBN runs k times
as many of them, so its statistics cover the same number of images.
"""
import contextlib
import time

from detectron2.engine import SimpleTrainer, hooks


def micro_batch_config(cfg):
    """``cfg`` with ``SOLVER.IMS_PER_BATCH`` the images of one micro-batch over all processes: what the
    train loader (and PreciseBN's) must yield."""
    steps = cfg.SOLVER.ACCUMULATION_STEPS
    if steps == 1:
        return cfg
    micro = cfg.clone()
    micro.defrost()
    micro.SOLVER.IMS_PER_BATCH = cfg.SOLVER.IMS_PER_BATCH // steps
    micro.freeze()
    return micro


def accumulate_gradients(model, micro_batches):
    """Forward and backward of each micro-batch with its losses weighted 1/k, adding into the parameters'
    ``.grad``; returns the losses averaged over the micro-batches (detached).

    Under DDP the gradients are all-reduced once, with the last micro-batch's backward.
    """
    k = len(micro_batches)
    totals = {}
    for i, data in enumerate(micro_batches):
        last = i == k - 1
        no_sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with no_sync:
            loss_dict = model(data)
            (sum(loss_dict.values()) / k).backward()
        for name, value in loss_dict.items():
            totals[name] = totals.get(name, 0.0) + value.detach() / k
    return totals


class AccumulatingTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose step takes ``steps`` micro-batches from the loader and steps the optimizer once."""

    def __init__(self, model, data_loader, optimizer, steps):
        super().__init__(model, data_loader, optimizer)
        self.steps = steps

    def run_step(self):
        assert self.model.training, "[AccumulatingTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        micro_batches = [next(self._data_loader_iter) for _ in range(self.steps)]
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad()
        loss_dict = accumulate_gradients(self.model, micro_batches)
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def use_accumulation(trainer):
    """Make a ``DefaultTrainer``, just built, take ``SOLVER.ACCUMULATION_STEPS`` micro-batches per step (its
    loader must yield micro-batches: ``micro_batch_config``), PreciseBN included; nothing changes with 1."""
    steps = trainer.cfg.SOLVER.ACCUMULATION_STEPS
    if steps == 1:
        return
    # Detectron2 0.6 builds its inner SimpleTrainer in DefaultTrainer.__init__, with no way to choose another.
    trainer._trainer = AccumulatingTrainer(trainer.model, trainer.data_loader, trainer.optimizer, steps)
    for hook in trainer._hooks:
        if isinstance(hook, hooks.PreciseBN) and not hook._disabled:
            hook._num_iter *= steps  # the same number of images as without accumulation (0.6 keeps it here)
