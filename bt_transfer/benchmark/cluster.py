"""Submitting a benchmark through submitit: every stage, and every detection seed, as its own job, in parallel;
each requeued on preemption or timeout, resuming itself (every stage's command resumes its run folder). The
report is a job of its own that starts once the others have ended (a SLURM dependency, and it also waits for
their status files, which is what submitit's local executor relies on).

Each job writes ``OUT/logs/<stage>.status`` ("running", then "done" or "failed") beside its log; ``status``
reads those, the run folders and, on SLURM, the scheduler's state.
"""
import subprocess
import sys
import time
from pathlib import Path

import submitit

from bt_transfer.benchmark.local import log_path, run_logged
from bt_transfer.benchmark.stages import REPORT, finished, load_plan, save_plan, slug
from bt_transfer.core.fileio import atomic_write

SUBMITIT_DIR = "slurm"
PLAN_FILE = "benchmark.json"


def status_path(out, stage):
    return log_path(out, stage).with_suffix(".status")


def _write_status(path, state):
    with atomic_write(path) as f:
        f.write(state + "\n")


def read_status(out, stage):
    try:
        return status_path(out, stage).read_text().strip()
    except OSError:
        return None


class StageJob(submitit.helpers.Checkpointable):
    """What one job runs: the stage's command. Checkpointable: on preemption or timeout submitit requeues the
    same job, and the command resumes from its run folder."""

    def __init__(self, stage, out, waits_for=()):
        self.stage, self.out, self.waits_for = stage, Path(out), tuple(waits_for)

    def __call__(self):
        for other in self.waits_for:  # the report: the other jobs first (a SLURM dependency does the same)
            while read_status(self.out, other) not in ("done", "failed"):
                time.sleep(10)
        status = status_path(self.out, self.stage)
        status.parent.mkdir(parents=True, exist_ok=True)
        _write_status(status, "running")
        code = run_logged(self.stage.command, log_path(self.out, self.stage), sys.stdout)
        ok = code == 0 and (not self.stage.results or finished(self.stage))
        _write_status(status, "done" if ok else "failed")
        if not ok:
            raise RuntimeError(f"stage {self.stage.name} failed (exit status {code}); see "
                               f"{log_path(self.out, self.stage)}")
        return self.stage.name


def make_executor(out, options):
    """A submitit executor for this benchmark: SLURM, or ``local`` (this machine, for tests and small runs)."""
    executor = submitit.AutoExecutor(folder=Path(out) / SUBMITIT_DIR, cluster=options["executor"],
                                     slurm_max_num_timeout=options["max_requeues"])
    slurm = {key: options[key] for key in ("partition", "account", "qos") if options.get(key)}
    executor.update_parameters(timeout_min=options["timeout_min"], nodes=1, tasks_per_node=1,
                               **({"mem_gb": options["mem_gb"]} if options.get("mem_gb") else {}),
                               **{f"slurm_{key}": value for key, value in slurm.items()})
    return executor


def submit(stages, out, options):
    """Submit every stage (the report last, after the others); record the jobs in ``OUT/benchmark.json``."""
    executor = make_executor(out, options)
    jobs, submitted = {}, []
    work = [s for s in stages if s.task != REPORT]
    for stage in work:
        if finished(stage):
            continue
        executor.update_parameters(
            name=f"bt-{slug(options['label'])}-{stage.name}", gpus_per_node=stage.gpus,
            cpus_per_task=max(1, stage.gpus) * options["cpus_per_gpu"],
            slurm_additional_parameters=dict(options["slurm_params"]))
        job = executor.submit(StageJob(stage, out))
        jobs[stage.name] = job.job_id
        submitted.append(stage)
    report = next(s for s in stages if s.task == REPORT)
    dependency = {"dependency": "afterany:" + ":".join(jobs.values())} if jobs else {}
    executor.update_parameters(name=f"bt-{slug(options['label'])}-{REPORT}", gpus_per_node=0, cpus_per_task=2,
                               slurm_additional_parameters={**options["slurm_params"], **dependency})
    jobs[REPORT] = executor.submit(StageJob(report, out, waits_for=submitted)).job_id
    save_plan(Path(out) / PLAN_FILE, stages, {name: {"id": job_id, "executor": options["executor"] or "slurm"}
                                              for name, job_id in jobs.items()})
    return jobs


def scheduler_state(out, job):
    """The scheduler's word on a SLURM job (PENDING, RUNNING, COMPLETED...), or "" where there is none."""
    if job.get("executor") != "slurm":
        return ""
    try:
        return submitit.SlurmJob(Path(out) / SUBMITIT_DIR, job["id"]).state
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError):
        return "unknown"


def status(out):
    """One line per stage of the benchmark in ``out``: its state from the run folders, status files and jobs."""
    out = Path(out)
    stages, jobs = load_plan(out / PLAN_FILE)
    lines = []
    for stage in stages:
        job = jobs.get(stage.name, {})
        if finished(stage):
            state = "done"
        elif (written := read_status(out, stage)) in ("done", "failed", "running"):
            state = written
        elif stage.folder.exists():
            state = "interrupted" if not job else "started"
        else:
            state = "queued" if job else "not started"
        scheduler = scheduler_state(out, job)
        where = f"job {job['id']}{f' {scheduler}' if scheduler else ''}" if job else "no job"
        detail = f"see {log_path(out, stage)}" if state == "failed" else str(stage.folder)
        lines.append(f"{stage.name:<16} {state:<12} {where:<24} {detail}")
    return "\n".join([f"{'stage':<16} {'state':<12} {'job':<24} detail", *lines])
