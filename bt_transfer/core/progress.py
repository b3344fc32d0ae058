"""Progress lines (throughput, ETA, memory) and JSON-lines metrics for long runs.

It never imports torch, so the report can read metrics without it; ``peak_memory_gb`` asks CUDA for its
peak only in a process that has already imported torch.
"""
import json
import math
import resource
import sys
import time
from pathlib import Path


def peak_rss_gb():
    """Peak resident memory of this process in GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_memory_gb(device=None):
    """Peak memory of this process's work in GiB: CUDA's peak allocation when it runs on a GPU
    (``device`` of type cuda, or any visible GPU when ``device`` is None), else peak resident memory.

    torch is used only if the caller has already imported it, so this module stays torch-free.
    """
    torch = sys.modules.get("torch")
    on_gpu = torch is not None and torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    return torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else peak_rss_gb()


def format_duration(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class MetricsLog:
    """Append-only JSON-lines file: one object per line, flushed at once so a crash loses nothing."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)

    def write(self, **record):
        record.setdefault("time", round(time.time(), 3))
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path):
    """All records of a JSON-lines metrics file; a torn last line (a killed run) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class Progress:
    """Prints ``name step/total | items/s | ETA | memory`` every ``every`` seconds.

    ``step`` counts from ``start`` (a resumed run) so throughput and ETA reflect this process only.
    """

    def __init__(self, total, name="", unit="img", every=10.0, start=0, stream=sys.stderr):
        self.total, self.name, self.unit, self.every, self.stream = total, name, unit, every, stream
        self._t0 = self._last = time.monotonic()
        self._start = start

    def update(self, step, items_per_step, extra="", memory_gb=None, force=False):
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return None
        self._last = now
        done = max(step - self._start, 1e-9)
        elapsed = now - self._t0
        rate = done * items_per_step / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) * elapsed / done
        memory = peak_rss_gb() if memory_gb is None else memory_gb
        line = (
            f"{self.name} {step}/{self.total} | {rate:.1f} {self.unit}/s | "
            f"ETA {format_duration(eta)} | mem {memory:.2f} GB"
        )
        if extra:
            line += f" | {extra}"
        print(line, file=self.stream, flush=True)
        return line
