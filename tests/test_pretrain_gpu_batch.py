"""The per-process batch: the split check of pretraining and evaluation, the GPU memory check (a lower bound from
counted activations), and that pretraining checks both before it reads, builds or writes anything."""
import pytest
import torch

from bench.step import saved_activation_bytes_per_pair
from pretrain import gpu_batch
from pretrain.barlow_twins import BarlowTwins
from pretrain.distributed import DistInfo
from pretrain.gpu_batch import BatchError, activation_bytes_per_pair, check_fits, split_batch, state_bytes
from pretrain.train import parse_args, train

GIB = 2**30
PAPER_PARAMETERS = 174_535_744  # ResNet-50 without fc + projector 8192-8192-8192


def test_a_batch_that_splits_gives_each_process_its_share():
    assert split_batch(2048, 8, "BATCH={}") == 256
    assert split_batch(256, 1, "BATCH={}") == 256


@pytest.mark.parametrize("batch, processes, set_batch, expected", [
    (2048, 3, "BATCH={}", "--batch-size 2048 does not split over 3 processes: set BATCH=2046 (a multiple of 3) or "
                          "start a number of processes that divides 2048 (e.g. GPUS=2 on one machine)"),
    (256, 6, "ARGS='--batch-size {}'", "set ARGS='--batch-size 252' (a multiple of 6) or start a number of "
                                       "processes that divides 256 (e.g. GPUS=4 on one machine)"),
    (2, 3, "BATCH={}", "set BATCH=3 (a multiple of 3)"),
])
def test_a_batch_that_does_not_split_says_what_to_set(batch, processes, set_batch, expected):
    with pytest.raises(BatchError) as refused:
        split_batch(batch, processes, set_batch)
    assert expected in str(refused.value)


def test_the_parameter_count_is_the_models():
    assert gpu_batch.parameter_count("8192-8192-8192") == PAPER_PARAMETERS
    assert gpu_batch.parameter_count("32-16") == sum(p.numel() for p in BarlowTwins("32-16").parameters())


def test_the_memory_per_pair_is_what_autograd_keeps():
    """The constants behind the check against the saved tensors counted by the step benchmark, at 64 px (they
    scale with the pixels; the projector's small share does not, hence the tolerance)."""
    torch.manual_seed(0)
    model = BarlowTwins()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 10x faster than two threads on a shared 2-core machine
    try:
        for dtype in (None, torch.bfloat16):
            counted = saved_activation_bytes_per_pair(model, 64, torch.device("cpu"), dtype)
            assert activation_bytes_per_pair(64, dtype) == pytest.approx(counted, rel=0.05), dtype
    finally:
        torch.set_num_threads(threads)


def test_the_paper_batch_fits_eight_80gb_gpus_in_bf16_but_not_in_float32():
    check_fits(2048, 8, 224, torch.bfloat16, PAPER_PARAMETERS, 80 * GIB, "cuda:0")
    with pytest.raises(BatchError, match=r"256 image pairs on each GPU, which needs at least 42\.3 GiB \(164 MiB "
                                         r"per pair at 224 px in float32, plus 1\.3 GiB .*cuda:0 has 40\.0 GiB"):
        check_fits(2048, 8, 224, None, PAPER_PARAMETERS, 40 * GIB, "cuda:0")


@pytest.mark.parametrize("processes, total_gib, amp", [(1, 80, torch.bfloat16), (4, 24, torch.float16),
                                                        (8, 16, None)])
def test_the_advice_for_a_batch_that_cannot_fit_is_the_smallest_change_that_does(processes, total_gib, amp):
    def fits(batch, count):
        try:
            check_fits(batch, count, 224, amp, PAPER_PARAMETERS, total_gib * GIB, "cuda:0")
            return True
        except BatchError:
            return False

    with pytest.raises(BatchError) as refused:
        check_fits(2048, processes, 224, amp, PAPER_PARAMETERS, total_gib * GIB, "cuda:0")
    message = str(refused.value)
    assert "\n" not in message and "no gradient accumulation" in message
    enough = int(message.split("start at least ")[1].split()[0])
    largest = int(message.split("set BATCH=")[1].split()[0])
    assert fits(2048, enough) and not any(fits(2048, p) for p in range(1, enough) if 2048 % p == 0)
    assert fits(largest, processes) and not fits(largest + processes, processes)


def test_state_counts_weights_momentum_and_the_autocast_copy():
    assert state_bytes(10) == 80 and state_bytes(10, torch.bfloat16) == 100


def test_pretraining_checks_the_split_before_reading_building_or_writing(tmp_path):
    args = parse_args(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"), "--batch-size", "64"])
    three_processes = DistInfo(rank=0, local_rank=0, world_size=3, device=torch.device("cpu"))
    with pytest.raises(BatchError, match="--batch-size 64 does not split over 3 processes: set BATCH=63"):
        train(args, three_processes)  # a missing --data would fail later, with another error
    assert not (tmp_path / "run").exists()
