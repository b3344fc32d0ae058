"""Timing, peak memory, machine facts and tables shared by every benchmark.

Side by side means interleaved: each repetition runs every implementation once, in turn (the order
alternating), so that a noisy neighbour on a shared machine slows all of them alike and the ratios stay honest.
"""
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch


def machine_info(device):
    """The facts a reader needs to compare figures across machines."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other processes' load at start: on a shared machine absolute times move with it, interleaved ratios less.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    with contextlib.suppress(ImportError):
        import torchvision
        import PIL

        info["torchvision"] = torchvision.__version__
        info["pillow"] = PIL.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _cpu_model():
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def format_machine(info):
    return " | ".join(f"{key} {value}" for key, value in info.items())


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median: float
    runs: list

    @property
    def spread(self):
        """(max - min) / median: how far to trust the median on a shared machine."""
        return (max(self.runs) - min(self.runs)) / self.median if self.median else float("nan")


def time_side_by_side(functions, device, reps=3, warmup=1, before_each=None):
    """Median wall time of each ``name -> fn()``, the repetitions interleaved across names.

    ``before_each(name)`` runs untimed before every call (e.g. to clear gradients).
    """
    def call(name, fn):
        if before_each is not None:
            before_each(name)
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        for name, fn in functions.items():
            call(name, fn)
    runs = {name: [] for name in functions}
    order = list(functions.items())
    for rep in range(reps):
        # Alternate the order (A B, B A, ...): whatever one leaves behind (caches, freed memory the next must
        # fault back in) then falls on each in turn.
        for name, fn in order if rep % 2 == 0 else reversed(order):
            runs[name].append(call(name, fn))
    return {name: Timing(statistics.median(r), r) for name, r in runs.items()}


@contextlib.contextmanager
def quiet_stderr():
    """Kineto prints start/stop lines straight to file descriptor 2; keep the tables readable."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_increase(fn, device):
    """Peak bytes of tensors allocated by ``fn()`` above what was allocated before it.

    CUDA: the caching allocator's own counters. CPU: torch.profiler's memory events (every
    allocation and free of the CPU allocator, in order); their running sum's maximum is the
    peak of live tensor memory. This counts tensors only, not interpreter or library overhead,
    which is what the formulations differ in.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def peak_rss_increase(setup, *args):
    """Peak resident memory growth (bytes) of one call in a fresh Python process: what a user's process sees.

    In the child, ``setup`` ("module:function") called with ``args`` builds the inputs and returns the call to
    measure; the growth is counted from the resident memory with the inputs in place, over the first call. A fresh
    process per measurement, so that nothing another measurement left behind (memory an allocator or a library
    keeps after a free) can hide or inflate it. Everything resident counts: tensors, allocator slack, library
    workspaces. The child resets its peak (``/proc/self/clear_refs``) and reads ``VmHWM``, not ``ru_maxrss``,
    which a child inherits from the process that spawned it: after the reference's multi-GiB pass in this
    process, every child's ``ru_maxrss`` would start above its own peak. Returns None where ``/proc`` does not
    allow this (not Linux).
    """
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    child = "import sys; from bench.harness import _peak_rss_child; _peak_rss_child(*sys.argv[1:])"
    command = [sys.executable, "-c", child, setup, json.dumps(args), str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"peak RSS measurement of {setup}{tuple(args)} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.splitlines()[-1])


def _peak_rss_child(setup, args, threads):
    """The child of ``peak_rss_increase``: prints the growth in bytes (or null) as the last line of stdout."""
    torch.set_num_threads(int(threads))
    module, function = setup.split(":")
    call = getattr(importlib.import_module(module), function)(*json.loads(args))
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
    except OSError:
        print(json.dumps(None))
        return
    before = _proc_status_bytes("VmRSS")
    call()
    print(json.dumps(_proc_status_bytes("VmHWM") - before))


def _proc_status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def format_table(header, rows):
    """Plain fixed-width table: columns as wide as their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(
            cell.rjust(w) if k and _is_number(cell) else cell.ljust(w) for cell, w in zip(row, widths)
        ).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(text):
    try:
        float(text.rstrip("x%").replace("GiB", "").replace("MiB", ""))
        return True
    except ValueError:
        return False


def mib(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f}"


def ratio(ours, reference):
    return "n/a" if ours is None or reference is None else f"{ours / reference:.2f}x"
