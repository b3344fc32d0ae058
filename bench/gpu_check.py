"""``make gpu-check``: every CUDA path of the suite through its real command, in one short run on any number of GPUs.

Generated data, the protocol's sizes: pretraining through torchrun on all visible GPUs (AMP, channels_last, SyncBN
with more than one; killed with SIGKILL after its first checkpoint, then resumed), the converter, Faster R-CNN on
VOC and Mask R-CNN on COCO at the protocol's image sizes, ROI counts and batch of 16 for a few iterations and an
evaluation, linear and semi-supervised evaluation for a few steps, and the loss and step benchmarks. A failing
stage does not stop the others. Prints one table (stage, ok or the first error line, seconds, images/s per GPU,
peak GPU memory), writes it to ``OUT/gpu_check.json`` and exits non-zero if any stage failed. Each stage's output
is in ``OUT/<stage>.log``. Without CUDA it exits at once.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bt_transfer.core.fileio import write_json

PER_GPU_BATCH = 64  # the paper's 2048 over 32 GPUs
ERROR_LINE = re.compile(r"^(error: |\w*(Error|Exception)\b|RuntimeError|AssertionError|CUDA|Traceback)")


@dataclass
class Stage:
    name: str
    command: list
    timeout: int                                  # seconds
    kill_when: Path | None = None                 # SIGKILL the stage once this file exists (then it must fail)
    throughput: object = None                     # (stage folder) -> images/s over all GPUs, or None
    env: dict = field(default_factory=dict)


@dataclass
class Result:
    stage: str
    ok: bool
    detail: str
    seconds: float
    images_per_s_per_gpu: float | None
    peak_gpu_memory_gb: float | None


def first_error_line(text):
    """The line of a log that says what went wrong: an ``error:`` line or the exception at the end of a traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line) and not line.startswith("Traceback")]
    return (errors or lines or ["no output"])[-1][:200]


def _last_jsonl(path, key):
    """The mean of ``key`` over the last 5 JSON lines of ``path`` that have it (the first steps warm up)."""
    values = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record.get(key), (int, float)):
            values.append(record[key])
    return sum(values[-5:]) / len(values[-5:]) if values else None


def detectron2_images_per_s(folder, batch):
    """Images per second from Detectron2's metrics.json (``time`` is seconds per iteration)."""
    seconds = _last_jsonl(Path(folder) / "seed1" / "metrics.json", "time")
    return batch / seconds if seconds else None


class GpuMemoryPoller:
    """The largest memory in use on any GPU while a stage runs, read with nvidia-smi (the stages run in other
    processes, so their own counters are out of reach); None when nvidia-smi cannot be run."""

    def __init__(self, every=0.5):
        self.every, self.peak, self._stop = every, None, threading.Event()

    def _read(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            return max(float(v) for v in out.split()) / 1024
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    def _run(self):
        while not self._stop.is_set():
            used = self._read()
            if used is not None:
                self.peak = max(self.peak or 0.0, used)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_stage(stage, out):
    log = out / f"{stage.name}.log"
    start = time.monotonic()
    with open(log, "w") as output, GpuMemoryPoller() as memory:
        process = subprocess.Popen(stage.command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **stage.env})
        killed = False
        try:
            while process.poll() is None:
                if stage.kill_when is not None and stage.kill_when.exists() and not killed:
                    os.killpg(process.pid, signal.SIGKILL)
                    killed = True
                if time.monotonic() - start > stage.timeout:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    raise TimeoutError(f"timed out after {stage.timeout} s")
                time.sleep(0.2)
        except TimeoutError as error:
            return Result(stage.name, False, str(error), time.monotonic() - start, None, memory.peak)
    seconds = time.monotonic() - start
    if stage.kill_when is not None:
        ok = killed
        detail = "killed with SIGKILL after its first checkpoint" if killed else "ended before its first checkpoint"
    else:
        ok = process.returncode == 0
        detail = "ok" if ok else first_error_line(log.read_text())
    return Result(stage.name, ok, detail, seconds, None, memory.peak)


def images_per_gpu(gpus, memory_gb):
    """Detection images per GPU and micro-batch: the protocol's 16/G, or what fits by the rule of thumb of
    ``--images-per-gpu`` (about 5 GB per image at 800 px with 512 ROIs, 2 GB fixed; docs/PERFORMANCE.md)."""
    return max(1, min(16 // gpus, int((memory_gb - 2) // 5)))


def stages(out, gpus, python, memory_gb=80.0):
    """Every stage of the check, in order; ``memory_gb`` is one GPU's memory."""
    data, pretrain = out / "data", out / "pretrain"
    weights = pretrain / "resnet50.pth"
    batch = PER_GPU_BATCH * gpus
    torchrun = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    pretrain_command = [*torchrun, "-m", "pretrain.train", "--data", str(data / "imagenet" / "train"),
                        "--out", str(pretrain), "--batch-size", str(batch), "--epochs", "100", "--max-steps", "12",
                        "--checkpoint-every", "4", "--log-every", "1", "--image-size", "224", "--workers", "6",
                        "--amp", "auto", "--channels-last", "--knn-every", "0"]
    detection = ["--num-gpus", str(gpus), "--datasets-root", str(data), "--seeds", "1",
                 "--images-per-gpu", str(images_per_gpu(gpus, memory_gb)),
                 "--opts", "SOLVER.MAX_ITER", "8", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "2",
                 "TEST.PRECISE_BN.NUM_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "8"]
    evaluation = ["--weights", str(weights), "--data", str(data / "imagenet"), "--epochs", "1",
                  "--batch-size", str(batch), "--workers", "6"]
    return [
        Stage("generate data", [python, "-m", "bt_transfer.synthetic", "--out", str(data), "--size", "256"], 300),
        Stage("pretrain (killed)", pretrain_command, 300, kill_when=pretrain / "checkpoint.pth"),
        Stage("pretrain (resumed)", pretrain_command, 300,
              throughput=lambda: _last_jsonl(pretrain / "metrics.jsonl", "images_per_s")),
        Stage("convert", [python, "-m", "bt_transfer.convert", str(weights), str(out / "backbone.pkl")], 120),
        Stage("voc", [python, "-m", "bt_transfer.transfer", "voc", "--weights", str(weights),
                      "--out", str(out / "voc"), *detection], 600,
              throughput=lambda: detectron2_images_per_s(out / "voc", 16)),
        Stage("coco", [python, "-m", "bt_transfer.transfer", "coco", "--weights", str(weights),
                       "--out", str(out / "coco"), *detection], 600,
              throughput=lambda: detectron2_images_per_s(out / "coco", 16)),
        Stage("linear", [*torchrun, "-m", "pretrain.evaluate", "--mode", "linear", *evaluation,
                         "--out", str(out / "linear")], 300,
              throughput=lambda: _last_jsonl(out / "linear" / "metrics.jsonl", "images_per_s")),
        Stage("semisup", [*torchrun, "-m", "pretrain.evaluate", "--mode", "semisup", "--percent", "10", *evaluation,
                          "--out", str(out / "semisup")], 300,
              throughput=lambda: _last_jsonl(out / "semisup" / "metrics.jsonl", "images_per_s")),
        Stage("bench loss+step", [python, "-m", "bench", "loss", "step", "--device", "cuda", "--reps", "2",
                                  "--n", "1024", "2048", "--d", "8192", "--no-crossover", "--max-pass-seconds", "5",
                                  "--out", str(out / "bench")], 300),
    ]


def table(results):
    lines = [f"{'stage':<20} {'result':<8} {'seconds':>8} {'img/s/GPU':>10} {'peak GB':>8}  detail"]
    for r in results:
        speed = f"{r.images_per_s_per_gpu:.1f}" if r.images_per_s_per_gpu else "-"
        memory = f"{r.peak_gpu_memory_gb:.1f}" if r.peak_gpu_memory_gb is not None else "-"
        lines.append(f"{r.stage:<20} {'ok' if r.ok else 'FAILED':<8} {r.seconds:>8.1f} {speed:>10} {memory:>8}  "
                     f"{r.detail}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="folder for logs and results")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: torch sees no CUDA device on this machine; nothing to check")
    gpus = torch.cuda.device_count()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}; logs in {args.out}",
          flush=True)
    results = []
    memory_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
    for stage in stages(args.out.resolve(), gpus, sys.executable, memory_gb):
        result = run_stage(stage, args.out)
        if result.ok and stage.throughput is not None:
            with_rate = stage.throughput()
            result.images_per_s_per_gpu = with_rate / gpus if with_rate else None
        results.append(result)
        print(table([result]).splitlines()[1], flush=True)
    print("\n" + table(results))
    write_json(args.out / "gpu_check.json", {"gpus": gpus, "device": torch.cuda.get_device_name(0),
                                             "torch": torch.__version__, "results": [asdict(r) for r in results]})
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
