"""Training-step benchmark: one full pretraining step (ResNet-50 + projector + loss + LARS), ours vs the reference.

Both models start from the same weights, see the same batch and resolution and take the same step:
zero the gradients, loss of the two views, backward, optimizer step. On a GPU ours is also measured with
channels_last + the autocast dtype ``--amp auto`` picks there (bf16, fp16 before Ampere), against fp32. A
torch.profiler summary of one step of ours says where the time goes, and the activations autograd keeps per
image pair are counted, against what pretraining's batch check assumes (``pretrain.gpu_batch``).
"""
import contextlib

import torch

from bench import harness, reference

CPU_DEFAULTS = dict(batch=16, size=64)
# All three models stay on the GPU (175 M parameters each): their weights and LARS momentum and two models'
# gradients (5.2 GiB) and one fp32 step's activations (16 pairs x 164 MiB at 224 px, 2.6 GiB) need at least
# 7.8 GiB (memory_lower_bound; backward's transients, cuDNN workspaces and the CUDA context come on top), so the
# default runs on a 16 GB card. --step-batch 128, a per-GPU batch of real runs, needs at least 25.7 GiB.
GPU_DEFAULTS = dict(batch=16, size=224)
MODELS_ON_DEVICE = 3
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
        from pretrain.train import resolve_amp

        amp_dtype = resolve_amp("auto", device)
        amp_model, amp_optimizer = suite_model_and_optimizer(projector)
        amp_model.load_state_dict(ours_model.state_dict())
        trainers[f"ours, channels_last + {dtype_name(amp_dtype)}"] = Trainer(
            amp_model, amp_optimizer, device, channels_last=True, autocast_dtype=amp_dtype)
    return trainers


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def memory_lower_bound(batch, size, projector):
    """Bytes the benchmark needs at least on a GPU: every model's weights and LARS momentum, the gradients the
    other models keep between their steps, and the activations of one fp32 step (the models step in turn)."""
    from pretrain.gpu_batch import STATE_BYTES_PER_PARAMETER, activation_bytes_per_pair, parameter_count

    gradients_kept = (MODELS_ON_DEVICE - 1) * 4
    per_parameter = MODELS_ON_DEVICE * STATE_BYTES_PER_PARAMETER + gradients_kept
    return per_parameter * parameter_count(projector) + batch * activation_bytes_per_pair(size)


def saved_activation_bytes_per_pair(model, size, device, autocast_dtype=None):
    """Bytes autograd keeps for backward per image pair at ``size`` px: the saved tensors' storages (each
    counted once) of a forward of 4 pairs minus one of 2, so the weights and autocast's copies of them cancel."""
    def saved_bytes(pairs):
        storages = {}

        def keep(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        y1, y2 = (torch.randn(pairs, 3, size, size, device=device) for _ in range(2))
        autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                    else contextlib.nullcontext())
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast:
            model(y1, y2)  # the graph, and with it every saved tensor, lives until this returns
        return sum(storages.values())

    return (saved_bytes(4) - saved_bytes(2)) / 2


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
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        print(f"needs at least {memory_lower_bound(batch, size, projector) / 2**30:.1f} GiB of the GPU's "
              f"{total / 2**30:.1f} GiB ({MODELS_ON_DEVICE} models' weights, gradients and momentum, one fp32 step's "
              "activations); --step-batch sets the batch")
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
    activation_report(trainers, size, device, projector, log)
    print("RATIOS step (image pairs per second, ours/reference, same process): " + "; ".join(ratios))


def activation_report(trainers, size, device, projector, log):
    """Activations kept per image pair by ours, counted, against pretraining's batch check; the CUDA peak."""
    from pretrain.gpu_batch import activation_bytes_per_pair

    model = trainers["ours"].model
    half = next((t.autocast_dtype for t in trainers.values() if t.autocast_dtype), torch.bfloat16)
    for dtype in (None, half):
        counted = saved_activation_bytes_per_pair(model, size, device, dtype)
        assumed = activation_bytes_per_pair(size, dtype)
        print(f"activations kept for backward per image pair at {size} px, {dtype_name(dtype) if dtype else 'fp32'}: "
              f"{counted / 2**20:.1f} MiB counted, {assumed / 2**20:.1f} MiB assumed by pretraining's batch check")
        log.write(bench="step-activations", size=size, dtype=dtype_name(dtype) if dtype else "float32",
                  projector=projector, counted_bytes=counted, assumed_bytes=assumed)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        print(f"CUDA peak allocated over the benchmark: {peak / 2**30:.1f} GiB")
        log.write(bench="step-memory", peak_bytes=peak)
