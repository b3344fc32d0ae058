"""Training-loop pieces that need no data: mixed precision choice, device views, one bf16 step on CPU."""
import pytest
import torch

from pretrain.augment import normalize_batch
from pretrain.barlow_twins import BarlowTwins
from pretrain.train import amp_dtype_for, resolve_amp, to_device_views


def test_amp_choice():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16 and resolve_amp("fp16", cpu) == torch.float16


@pytest.mark.parametrize("capability, automatic", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                   ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                                   ((9, 0), torch.bfloat16)])
def test_auto_amp_is_bf16_from_ampere_on_and_fp16_on_earlier_gpus_which_only_emulate_bf16(capability, automatic):
    """V100 (7.0) and T4 / RTX 20xx (7.5) get fp16, A100 (8.0), RTX 30xx (8.6) and H100 (9.0) bf16."""
    assert amp_dtype_for("auto", capability) == automatic
    assert amp_dtype_for("off", capability) is None
    assert amp_dtype_for("bf16", capability) == torch.bfloat16 and amp_dtype_for("fp16", capability) == torch.float16


def test_device_views_are_normalised_and_channels_last_on_request():
    batch = [torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8) for _ in range(2)]
    views = to_device_views(batch, torch.device("cpu"), channels_last=True)
    assert all(v.is_contiguous(memory_format=torch.channels_last) and v.dtype == torch.float32 for v in views)
    torch.testing.assert_close(views[0], normalize_batch(batch[0]))


def test_bf16_autocast_step_keeps_the_loss_in_float32_and_close_to_full_precision():
    torch.manual_seed(0)
    model = BarlowTwins("32-16")
    # 32 px, not less: at 16 px layer4's strided conv sees a 1x1 input, where oneDNN's bf16 backward gives NaN.
    y1, y2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    full = model(y1, y2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(y1, y2)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(full.item(), rel=0.1)
    mixed.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
