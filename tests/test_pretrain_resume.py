"""Pretraining end to end on CPU: a run killed with SIGKILL and restarted, with the kNN monitor on, ends
bit-identical to an uninterrupted one without it; the outputs (metrics, args, export) are what the rest of
the suite reads."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from bt_transfer.core.progress import read_metrics
from pretrain.checkpoint import read_checkpoint
from pretrain.train import main

ROOT = Path(__file__).resolve().parent.parent
# 12 images, global batch 4: 3 steps per epoch, 2 epochs. A tiny image and projector keep a
# ResNet-50 step cheap on CPU; 0 workers and fixed seeds make the run bit-reproducible.
STEPS = 6


@pytest.fixture(scope="module")
def tiny_folder(generated_data, tmp_path_factory):
    """train/ with 2 classes of 6 images, and val/ beside it (3 images a class) for the kNN monitor."""
    root = tmp_path_factory.mktemp("pretrain")
    for split, count in (("train", 6), ("val", 3)):
        for cls in sorted((generated_data / "imagenet" / split).iterdir())[:2]:
            (root / split / cls.name).mkdir(parents=True)
            for image in sorted(cls.iterdir())[:count]:
                shutil.copy(image, root / split / cls.name / image.name)
    return root / "train"


def train_args(data, out, checkpoint_every, knn_every=0):
    return ["--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4", "--projector", "32-16",
            "--image-size", "16", "--workers", "0", "--seed", "3", "--log-every", "1",
            "--checkpoint-every", str(checkpoint_every), "--knn-every", str(knn_every)]


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_folder, tmp_path_factory):
    """Run A: all the steps in one go, colour operations in the loader (--augment auto on CPU)."""
    run_a = tmp_path_factory.mktemp("uninterrupted") / "a"
    main(train_args(tiny_folder, run_a, checkpoint_every=100))
    return run_a


def assert_same_weights_and_losses(run_a, run_b):
    a = torch.load(run_a / "resnet50.pth", weights_only=True)
    b = torch.load(run_b / "resnet50.pth", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{run_b.name}: weights differ from the uninterrupted run"
    state_a, state_b = read_checkpoint(run_a / "checkpoint.pth"), read_checkpoint(run_b / "checkpoint.pth")
    assert state_a["step"] == state_b["step"] == STEPS
    for key, value in state_a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], state_b["optimizer"]["state"][key]["momentum_buffer"])
    # The losses of the resumed steps are those of the uninterrupted run.
    losses_a = {r["step"]: r["loss"] for r in read_metrics(run_a / "metrics.jsonl")}
    losses_b = {r["step"]: r["loss"] for r in read_metrics(run_b / "metrics.jsonl") if "loss" in r}
    assert losses_a == losses_b and sorted(losses_a) == list(range(1, STEPS + 1))
    return a


def test_killed_and_resumed_run_matches_uninterrupted_run(tiny_folder, uninterrupted_run, tmp_path):
    run_a, run_b = uninterrupted_run, tmp_path / "b"

    # Run B, with the kNN monitor after each epoch, in its own process, killed as soon as its first
    # checkpoint (step 2, mid-epoch 0) lands.
    # Same thread count as this process: CPU kernels split their reductions by thread.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "pretrain.train", *train_args(tiny_folder, run_b, 2, knn_every=1)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (run_b / "checkpoint.pth").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "run B wrote no checkpoint"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    killed_at = read_checkpoint(run_b / "checkpoint.pth")["step"]
    assert 2 <= killed_at < STEPS and not (run_b / "resnet50.pth").exists()

    stale = run_b / ".checkpoint.pth.killed.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"partial")
    main(train_args(tiny_folder, run_b, 2, knn_every=1))  # restart: resumes from the checkpoint
    assert not list(run_b.glob(".checkpoint.pth.*.tmp"))

    a = assert_same_weights_and_losses(run_a, run_b)
    # One kNN accuracy after each epoch; a step evaluated again after the restart gets the same one.
    knn_b = {}
    for record in read_metrics(run_b / "metrics.jsonl"):
        if "knn_top1" in record:
            knn_b.setdefault(record["step"], set()).add(record["knn_top1"])
    assert sorted(knn_b) == [3, STEPS] and all(len(values) == 1 for values in knn_b.values())

    # Outputs the report and the converter read.
    records = read_metrics(run_a / "metrics.jsonl")
    assert {"step", "epoch", "loss", "lr", "images_per_s", "data_time", "max_memory_gb"} <= records[0].keys()
    assert [r["epoch"] for r in records] == [0, 0, 0, 1, 1, 1] and records[0]["lr"] == 0.0
    args = json.loads((run_a / "args.json").read_text())
    assert args["world_size"] == 1 and args["batch_size"] == 4 and args["steps_per_epoch"] == 3 and args["code_version"]
    assert args["augment"] == "cpu"  # "auto", resolved for the CPU
    assert list((run_a / "tensorboard").glob("events.out.tfevents.*"))
    missing, unexpected = torchvision.models.resnet50().load_state_dict(a, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_colour_on_the_device_resumes_exactly_and_trains_like_the_loader_pipeline(tiny_folder, uninterrupted_run,
                                                                                   tmp_path):
    """--augment device on CPU, stopped mid-epoch and resumed: bit-identical to the uninterrupted --augment cpu
    run, since the batched colour operations reproduce PIL's pixels from the same per-sample decisions."""
    run_c = tmp_path / "c"
    args = train_args(tiny_folder, run_c, checkpoint_every=100) + ["--augment", "device"]
    main(args + ["--max-steps", "2"])
    assert read_checkpoint(run_c / "checkpoint.pth")["step"] == 2
    main(args)
    assert_same_weights_and_losses(uninterrupted_run, run_c)
    recorded = json.loads((run_c / "args.json").read_text())
    assert recorded["augment"] == "device" and recorded["resumed_from_step"] == 2


def test_a_rerun_with_other_settings_is_refused_before_anything_is_written(tiny_folder, tmp_path):
    """The same command resumes (--max-steps only cuts the run short); any setting that changes what is
    trained is refused, naming each change, and OUT is left as it was."""
    run = tmp_path / "run"
    args = train_args(tiny_folder, run, checkpoint_every=100)
    main(args + ["--max-steps", "1"])
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    for changed, message in ((["--lambd", "0.01", "--seed", "4"], r"\(lambd 0.0051 -> 0.01; seed 3 -> 4\)"),
                             (["--grad-scaling", "exact"], r"\(grad_scaling 'paper' -> 'exact'; "
                                                           r"gradient_divisor 32 -> 1\)"),
                             (["--data", str(tiny_folder.parent / "val")], r"data '.*/train' -> '.*/val'; "
                                                                           r"images 12 -> 6\)")):
        with pytest.raises(SystemExit, match=f"^error: {run} holds another pretrain run: .*{message}"):
            main(args + changed)
        assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    main(args + ["--max-steps", "2", "--log-every", "2", "--workers", "0", "--knn-train-per-class", "2"])
    assert json.loads((run / "args.json").read_text())["resumed_from_step"] == 1
    assert read_checkpoint(run / "checkpoint.pth")["step"] == 2
