"""The CPU side of `make gpu-check` (bench/gpu_check.py): what it runs, how it judges a stage, and its refusal
without CUDA. The check itself runs where a GPU is (docs/PERFORMANCE.md)."""
import subprocess
import sys

import pytest
import torch

from bench import gpu_check


def test_stages_run_every_cuda_path_through_the_real_commands(tmp_path):
    stages = {s.name: s for s in gpu_check.stages(tmp_path, gpus=4, python="py")}
    assert list(stages) == ["generate data", "pretrain (killed)", "pretrain (resumed)", "convert", "voc", "coco",
                            "linear", "semisup", "bench loss+step"]
    pretrain = stages["pretrain (killed)"].command
    assert pretrain[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert pretrain[pretrain.index("--batch-size") + 1] == "256"  # the paper's 64 per GPU
    assert {"--channels-last", "--image-size"} <= set(pretrain) and pretrain[pretrain.index("--amp") + 1] == "auto"
    assert stages["pretrain (killed)"].kill_when == tmp_path / "pretrain" / "checkpoint.pth"
    assert stages["pretrain (resumed)"].command == pretrain
    voc = stages["voc"].command
    assert voc[:4] == ["py", "-m", "bt_transfer.transfer", "voc"] and voc[voc.index("--num-gpus") + 1] == "4"
    assert voc[voc.index("--images-per-gpu") + 1] == "4"  # the protocol's 16 over 4 GPUs: no accumulation
    # Smaller GPUs accumulate micro-batches that fit; the batch stays 16.
    assert [gpu_check.images_per_gpu(1, gb) for gb in (16, 24, 40, 80, 141)] == [2, 4, 7, 15, 16]
    assert stages["bench loss+step"].command[-2:] == ["--out", str(tmp_path / "bench")]


def test_a_stage_is_judged_by_its_exit_status_or_by_being_killed_after_its_checkpoint(tmp_path):
    marker = tmp_path / "checkpoint.pth"
    slow = [sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"]
    killed = gpu_check.run_stage(gpu_check.Stage("killed", slow, 30, kill_when=marker), tmp_path)
    assert killed.ok and killed.seconds < 30 and "SIGKILL" in killed.detail
    failing = [sys.executable, "-c", "import sys; print('loading'); sys.exit('error: --data x: no such folder')"]
    failed = gpu_check.run_stage(gpu_check.Stage("failing", failing, 30), tmp_path)
    assert not failed.ok and failed.detail == "error: --data x: no such folder"
    late = gpu_check.run_stage(gpu_check.Stage("late", [sys.executable, "-c", "import time; time.sleep(30)"], 1),
                               tmp_path)
    assert not late.ok and late.detail == "timed out after 1 s"
    assert "FAILED" in gpu_check.table([failed]) and "killed" in gpu_check.table([killed])


def test_the_first_error_line_is_the_exception_not_the_traceback_header():
    log = "step 1\nTraceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out of memory.\n"
    assert gpu_check.first_error_line(log) == "torch.OutOfMemoryError: CUDA out of memory."


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_exits_at_once_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "gpu-check: torch sees no CUDA device on this machine; nothing to check"
    assert not (tmp_path / "out").exists()
