"""The batch each process trains on: the split of the global batch over the processes and, for pretraining on
a GPU, whether it can fit there. Both are checked before any model is built, and the error says what to set.

Memory of one image pair (two 224 px views through ResNet-50 and the 8192-8192-8192 projector): the activations
autograd keeps for backward are 164 MiB in float32 and 84 MiB under bf16 or fp16 autocast, counted on CPU
with saved-tensor hooks (``python -m bench step`` prints the count at its size; ``tests/test_pretrain_gpu_batch.py``
checks these constants against it). They grow with the pixels. A GPU also holds the weights and LARS's momentum
(8 bytes per parameter, 1.3 GiB; autocast adds a 2-byte copy of the weights), so a step needs at least
``pairs x per-pair + state``; backward's transient gradients, cuDNN workspaces and the allocator's slack come
on top. That lower bound is what the check refuses on, so it never turns down a batch that would fit.

The Barlow Twins loss normalises and correlates the embeddings over the whole batch: it is not a sum over
micro-batches, so plain gradient accumulation would compute another loss and is not offered. A large batch
on small GPUs needs more of them.
"""
import math

import torch

from bt_transfer.core.errors import UserError

# Activations saved for backward per image pair at 224 px, by bytes per activation element
# (4: float32; 2: bf16 or fp16 autocast), in MiB.
PAIR_MIB_AT_224 = {4: 164, 2: 84}
STATE_BYTES_PER_PARAMETER = 8  # float32 weights + LARS momentum; gradients are freed (set to None) before each step
AUTOCAST_COPY_BYTES_PER_PARAMETER = 2  # autocast's half-precision copy of the weights, kept for backward
GIB = 2**30


class BatchError(UserError):
    """A global batch that cannot be split over the processes, or whose share does not fit a GPU."""


def split_batch(global_batch, processes, set_batch):
    """Images per process, or a BatchError saying what to set. ``set_batch`` formats a batch size as the
    user sets it, e.g. ``"BATCH={}"``."""
    if global_batch % processes == 0:
        return global_batch // processes
    multiple = global_batch - global_batch % processes or processes
    divisor = max(d for d in range(1, processes + 1) if global_batch % d == 0)
    raise BatchError(f"--batch-size {global_batch} does not split over {processes} processes: set "
                     f"{set_batch.format(multiple)} (a multiple of {processes}) or start a number of processes "
                     f"that divides {global_batch} (e.g. GPUS={divisor} on one machine)")


def activation_bytes_per_pair(image_size, amp_dtype=None):
    """Activations saved for backward per image pair at ``image_size`` px (see the module docstring)."""
    element_bytes = torch.finfo(amp_dtype).bits // 8 if amp_dtype is not None else 4
    return PAIR_MIB_AT_224[element_bytes] * 2**20 * (image_size / 224) ** 2


def parameter_count(projector):
    """Parameters of the Barlow Twins model with this projector, counted on the meta device (nothing allocated)."""
    from pretrain.barlow_twins import BarlowTwins

    with torch.device("meta"):
        return sum(p.numel() for p in BarlowTwins(projector).parameters())


def state_bytes(parameters, amp_dtype=None):
    """Weights and LARS momentum, plus autocast's copy of the weights."""
    copy = AUTOCAST_COPY_BYTES_PER_PARAMETER if amp_dtype is not None else 0
    return parameters * (STATE_BYTES_PER_PARAMETER + copy)


def check_fits(global_batch, processes, image_size, amp_dtype, parameters, total_bytes, device_name):
    """Refuse, with what to set, a per-GPU batch whose lower-bound memory exceeds the GPU's ``total_bytes``."""
    pairs = global_batch // processes
    pair, state = activation_bytes_per_pair(image_size, amp_dtype), state_bytes(parameters, amp_dtype)
    need = pairs * pair + state
    if need <= total_bytes:
        return
    fit = max(int((total_bytes - state) // pair), 0)
    precision = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "float32"
    weights = "weights, their autocast copy" if amp_dtype is not None else "weights"
    advice = "no batch fits this GPU"
    if fit:
        enough = next(p for p in range(math.ceil(global_batch / fit), global_batch + 1) if global_batch % p == 0)
        advice = f"start at least {enough} processes (GPUS x machines) or set BATCH={fit * processes} or less"
    raise BatchError(
        f"--batch-size {global_batch} over {processes} processes puts {pairs} image pairs on each GPU, which needs "
        f"at least {need / GIB:.1f} GiB ({pair / 2**20:.0f} MiB per pair at {image_size} px in {precision}, plus "
        f"{state / GIB:.1f} GiB of {weights} and LARS momentum); {device_name} has {total_bytes / GIB:.1f} GiB: "
        f"{advice}. The loss is not a sum over micro-batches, so there is no gradient accumulation")


def check_pretraining_batch(global_batch, processes, image_size, projector, amp_dtype, device):
    """The per-process pretraining batch (image pairs), after checking that it splits and, on a GPU, fits."""
    pairs = split_batch(global_batch, processes, "BATCH={}")
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        check_fits(global_batch, processes, image_size, amp_dtype, parameter_count(projector),
                   properties.total_memory, f"{device} ({properties.name})")
    return pairs
