"""Training-step benchmark: one full pretraining step (ResNet-50 + projector + loss + LARS), ours vs the reference.

Both models start from the same weights, see the same batch and resolution and take the same step:
zero the gradients, loss of the two views, backward, optimizer step. On a GPU ours is also measured with
channels_last + bf16 autocast, against fp32. A torch.profiler summary of one step of ours says where the
time goes.
"""
import contextlib

import torch

from bench import harness, reference

CPU_DEFAULTS = dict(batch=16, size=64)
GPU_DEFAULTS = dict(batch=128, size=224)
PROFILE_ROWS = 12


def suite_model_and_optimizer(projector):
    try:
        from pretrain.barlow_twins import BarlowTwins
        from pretrain.lars import LARS, param_groups, set_learning_rate
    except ImportError as err:
        raise SystemExit(f"bench step: cannot import the suite's model or LARS ({err})") from err
    model = BarlowTwins(projector=projector)
    optimizer = LARS(param_groups(model, weight_decay=reference.WEIGHT_DECAY))
    set_learning_rate(optimizer, 1.0, (reference.LR_WEIGHTS, reference.LR_BIASES))
    return model, optimizer


class Trainer:
    """One model, its optimizer and how it runs: what a step of one implementation is."""

    def __init__(self, model, optimizer, device, channels_last=False, autocast_dtype=None):
        self.model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        self.model.train()
        self.optimizer, self.device = optimizer, device
        self.channels_last, self.autocast_dtype = channels_last, autocast_dtype

    def step(self, y1, y2):
        if self.channels_last:
            y1, y2 = (y.contiguous(memory_format=torch.channels_last) for y in (y1, y2))
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            loss = self.model(y1, y2)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def build_trainers(device, projector):
    ours_model, ours_optimizer = suite_model_and_optimizer(projector)
    ref_model = reference.ReferenceBarlowTwins(projector=projector)
    # Same starting point: the keys match the official model's by design.
    ref_model.load_state_dict(ours_model.state_dict())
    trainers = {
        "reference": Trainer(ref_model, reference.reference_optimizer(ref_model), device),
        "ours": Trainer(ours_model, ours_optimizer, device),
    }
    if device.type == "cuda":
        amp_model, amp_optimizer = suite_model_and_optimizer(projector)
        amp_model.load_state_dict(ours_model.state_dict())
        trainers["ours, channels_last + bf16"] = Trainer(amp_model, amp_optimizer, device, channels_last=True,
                                                         autocast_dtype=torch.bfloat16)
    return trainers


def profile_summary(trainer, y1, y2):
    """Self time by operator over one step, plus the share of forward, backward and optimizer."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    model, optimizer = trainer.model, trainer.optimizer
    optimizer.zero_grad(set_to_none=True)
    # Synchronising inside each phase makes its wall time include the GPU work it launched.
    with harness.quiet_stderr(), profile(activities=activities) as prof:
        with record_function("phase: forward"):
            loss = model(y1, y2)
            harness.synchronize(trainer.device)
        with record_function("phase: backward"):
            loss.backward()
            harness.synchronize(trainer.device)
        with record_function("phase: optimizer"):
            optimizer.step()
            harness.synchronize(trainer.device)
    sort_by = "self_device_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    phases = {e.key: e.cpu_time_total for e in averages if e.key.startswith("phase: ")}
    total = sum(phases.values())
    shares = ", ".join(f"{key[7:]} {value / total:.0%}" for key, value in phases.items())
    return shares, averages.table(sort_by=sort_by, row_limit=PROFILE_ROWS, max_name_column_width=40)


def run(device, reps, batch, size, projector, log):
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    batch, size = batch or defaults["batch"], size or defaults["size"]
    print(f"\n== step: ResNet-50 + projector {projector} + loss + LARS, batch {batch} x 2 views at {size} px, "
          f"fp32 on {device} ==")
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as the official run does
    trainers = build_trainers(device, projector)
    y1, y2 = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    losses = {name: trainer.step(y1, y2).item() for name, trainer in trainers.items()}  # also the warm-up
    timings = harness.time_side_by_side(
        {name: (lambda t=trainer: t.step(y1, y2)) for name, trainer in trainers.items()}, device, reps=reps, warmup=0)
    rows = []
    for name, timing in timings.items():
        rate = batch / timing.median
        rows.append([name, f"{timing.median * 1e3:.0f}", f"{rate:.1f}", f"{timing.spread:.2f}",
                     f"{losses[name]:.4f}"])
        log.write(bench="step", impl=name, batch=batch, size=size, projector=projector, device=str(device),
                  seconds=timing.median, images_per_second=rate, spread=timing.spread, first_loss=losses[name])
    print(harness.format_table(["impl", "ms/step", "img pairs/s", "spread", "first loss"], rows))
    shares, table = profile_summary(trainers["ours"], y1, y2)
    print(f"\nwhere one step of ours goes (torch.profiler, one step): {shares}")
    print(table)
    log.write(bench="step-profile", phases=shares)
    ratios = [f"{name} {timings['reference'].median / timings[name].median:.2f}x" for name in timings
              if name != "reference"]
    print("RATIOS step (image pairs per second, ours/reference, same process): " + "; ".join(ratios))
