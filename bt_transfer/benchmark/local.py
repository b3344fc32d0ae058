"""Running a benchmark's stages one after another on this machine, each logged to ``OUT/logs/<stage>.log``.

A finished stage is skipped; every other one runs its command, which resumes whatever it left unfinished.
A stage that fails does not stop the others; the report runs last over whatever finished.
"""
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bt_transfer.benchmark.stages import finished
from bt_transfer.core.children import dying_with_this_process
from bt_transfer.core.progress import format_duration

LOG_DIR = "logs"


@dataclass(frozen=True)
class Outcome:
    stage: str
    state: str          # "done", "skipped" (finished before), "failed"
    seconds: float
    detail: str         # the log of a failed stage, the results of a finished one


def log_path(out, stage):
    return Path(out) / LOG_DIR / f"{stage.name}.log"


def run_logged(command, log, stream):
    """Run ``command``, its output both shown on ``stream`` and appended to ``log``; return its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as record:
        record.write(f"$ {' '.join(command)}\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   preexec_fn=dying_with_this_process())
        for line in process.stdout:
            stream.write(line)
            record.write(line)
        return process.wait()


def run_stage(stage, out, stream):
    if finished(stage):
        return Outcome(stage.name, "skipped", 0.0, ", ".join(map(str, stage.results)))
    log = log_path(out, stage)
    print(f"\n== {stage.name}: {stage.shell()}", file=stream, flush=True)
    start = time.monotonic()
    status = run_logged(stage.command, log, stream)
    seconds = time.monotonic() - start
    if status != 0:
        return Outcome(stage.name, "failed", seconds, f"exit status {status}, see {log}")
    if stage.results and not finished(stage):
        return Outcome(stage.name, "failed", seconds, f"ended without its result files, see {log}")
    return Outcome(stage.name, "done", seconds, ", ".join(map(str, stage.results)) or str(stage.folder))


def run_all(stages, out, stream=None):
    """Run every stage in order; returns their outcomes (the summary table is ``summary(outcomes)``)."""
    stream = stream or sys.stdout
    return [run_stage(stage, out, stream) for stage in stages]


def summary(outcomes):
    """The closing table: one line per stage with its state, time and log or results."""
    width = max(len(o.stage) for o in outcomes)
    lines = [f"{'stage':<{width}}  {'state':<8} {'time':>8}  detail"]
    lines += [f"{o.stage:<{width}}  {o.state:<8} {format_duration(o.seconds):>8}  {o.detail}" for o in outcomes]
    return "\n".join(lines)
