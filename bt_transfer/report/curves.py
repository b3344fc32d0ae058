"""Training curves of the runs under the results folders, for the figures beside the tables.

Each run's log is read as the run writes it: pretraining's ``metrics.jsonl`` (per logged step: loss; from the kNN
monitor: knn_top1), the ImageNet evaluations' ``metrics.jsonl`` (per epoch: loss, top1, top5) and Detectron2's
``metrics.json`` in each seed folder (per iteration: total_loss and loss_*; at each evaluation: bbox/AP...). A
torn last line (a killed run) is skipped and a step logged twice (a resumed run) keeps the later line. A run
without a usable ``result.json`` still gets its curves, marked unfinished. Stdlib only.
"""
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from bt_transfer.core.progress import read_metrics
from bt_transfer.core.records import RESULT_FILE, TASKS, protocol_variant
from bt_transfer.report.paper import TASK_NAMES

EVAL_LOG = "metrics.jsonl"           # pretraining and the ImageNet evaluations (bt_transfer.core.progress)
DETECTRON2_LOG = "metrics.json"      # Detectron2's JSONWriter, one per seed folder
ARGS = "args.json"                   # pretraining's and the evaluations' resolved arguments
PRETRAINED = "resnet50.pth"          # what a finished pretraining exports
DETECTRON2_CONFIG = "config.yaml"
LOSS_PANELS = "loss_*"               # stands for every loss_* a detection log holds, one panel each
# Files a run writes before it finishes (ours, Detectron2's): a folder holding one but no result.json is a run
# that did not finish, e.g. a missing seed.
RUN_FILES = ("args.json", "config.yaml", "log.txt", "metrics.json", "metrics.jsonl")


@dataclass(frozen=True)
class Stage:
    title: str
    log: str           # the run's log file
    x: str             # the log's step key
    panels: tuple      # (metric, axis label); LOSS_PANELS expands to the losses found


_ACCURACY = (("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("loss", "training loss"))
_DETECTION = (("total_loss", "total loss"), (LOSS_PANELS, ""), ("bbox/AP", "box AP (%)"))
# One figure each, ``curves_<key>.png``, in this order.
STAGES = {
    "pretrain": Stage("Pretraining", EVAL_LOG, "step", (("loss", "Barlow Twins loss"), ("knn_top1", "kNN top-1 (%)"))),
    "linear": Stage(f"{TASK_NAMES['linear']} evaluation", EVAL_LOG, "epoch", _ACCURACY),
    "semisup-1": Stage(f"{TASK_NAMES['semisup-1']} semi-supervised", EVAL_LOG, "epoch", _ACCURACY),
    "semisup-10": Stage(f"{TASK_NAMES['semisup-10']} semi-supervised", EVAL_LOG, "epoch", _ACCURACY),
    "voc": Stage(f"{TASK_NAMES['voc']} detection (Faster R-CNN R50-C4)", DETECTRON2_LOG, "iteration",
                 (*_DETECTION, ("bbox/AP50", "box AP50 (%)"))),
    "coco": Stage(f"{TASK_NAMES['coco']} detection and segmentation (Mask R-CNN R50-C4)", DETECTRON2_LOG, "iteration",
                  (*_DETECTION, ("segm/AP", "mask AP (%)"))),
}
EVALUATIONS = tuple(stage for stage, spec in STAGES.items() if spec.x == "epoch")


@dataclass(frozen=True)
class RunCurves:
    stage: str         # a STAGES key
    folder: Path
    label: str         # the record's weights label; for a run without one, what its files tell (see find_runs)
    sha256: str        # the weights' sha256, "" when not known
    variant: tuple     # records.protocol_variant
    seed: int | None
    finished: bool     # has a usable result.json (pretraining: has exported resnet50.pth)
    series: dict = None  # metric -> ((x, ...), (y, ...)), x increasing (read_log)


@dataclass(frozen=True)
class CurveGroup:
    """The runs of one label (and weights and protocol variant) in one stage: its seeds."""
    label: str
    sha256: str
    variant: tuple
    runs: tuple

    def averaged(self, metric):
        """The runs the mean of ``metric`` is taken over: those that logged it, only the finished ones if any
        finished (a seed that has just started would cut the mean short to its first steps)."""
        logged = [run for run in self.runs if metric in run.series]
        return [run for run in logged if run.finished] or logged

    def mean(self, metric):
        """(xs, ys): the mean over the ``averaged`` runs at the steps all of them logged; None for fewer than two
        runs (a single run is its own mean)."""
        series = [run.series[metric] for run in self.averaged(metric)]
        if len(series) < 2:
            return None
        common = sorted(set.intersection(*(set(xs) for xs, _ in series)))
        if not common:
            return None
        by_x = [dict(zip(xs, ys)) for xs, ys in series]
        return tuple(common), tuple(statistics.fmean(values[x] for values in by_x) for x in common)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_log(path, x_key, wanted):
    """{metric: ((x, ...), (y, ...))} of the metrics ``wanted(name)`` selects, keyed by the integer ``x_key``.

    A torn line is skipped; a step logged again (a resumed run) keeps the later line; lines that are not
    objects, without an integer ``x_key``, and values that are not finite numbers are ignored. Raises OSError or
    UnicodeDecodeError for a file that cannot be read as text."""
    points = {}
    for line in read_metrics(path):
        if not isinstance(line, dict):
            continue
        x = line.get(x_key)
        if not isinstance(x, int) or isinstance(x, bool):
            continue
        for name, value in line.items():
            if name != x_key and wanted(name) and _is_number(value):
                points.setdefault(name, {})[x] = value
    return {name: (tuple(sorted(by_x)), tuple(by_x[x] for x in sorted(by_x))) for name, by_x in sorted(points.items())}


def _wanted(stage):
    metrics = {metric for metric, _ in STAGES[stage].panels}
    return lambda name: name in metrics or (LOSS_PANELS in metrics and name.startswith("loss_"))


def _read_json_object(path):
    """The JSON object in ``path``, or None when it is missing or not one (the caller falls back on other facts)."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _text(value):
    return value if isinstance(value, str) and value.strip() else None


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sha256(value):
    return value if isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) else ""


def _seed_of_folder(folder):
    match = re.fullmatch(r"seed(\d+)", folder.name)
    return int(match.group(1)) if match else None


def _detection_task(folder):
    """voc or coco, from the datasets named in the seed's Detectron2 config (the report reads no YAML library)."""
    try:
        text = (folder / DETECTRON2_CONFIG).read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^\s*-\s*(voc|coco)_", text, re.MULTILINE)
    return match.group(1) if match else None


def _evaluation_task(args):
    mode, percent = args.get("mode"), args.get("percent")
    task = "linear" if mode == "linear" else f"semisup-{percent}" if mode == "semisup" else None
    return task if task in TASKS else None


def _pretraining(folder, args, records):
    """A pretraining folder: labelled as the evaluations of its export are, else by the folder as given."""
    exported = (folder / PRETRAINED).resolve()
    labels = sorted({r["weights"]["label"] for r in records if Path(r["weights"]["path"]).resolve() == exported})
    return RunCurves("pretrain", folder, " / ".join(labels) or str(folder), "", (), _int((args or {}).get("seed")),
                     (folder / PRETRAINED).is_file())


def _detection(folder, record, siblings):
    """A Detectron2 seed folder; an unfinished seed takes its label and weights from a finished sibling seed
    (the seeds of one transfer folder share their weights), else is named by the transfer folder."""
    known = record or next(iter(siblings), None)
    task = known["task"] if known else _detection_task(folder)
    if task not in ("voc", "coco"):
        return None
    label, sha256 = (known["weights"]["label"], known["weights"]["sha256"]) if known else (folder.parent.name, "")
    seed = record["seed"] if record else _seed_of_folder(folder)
    return RunCurves(task, folder, label, sha256, (), seed, record is not None)


def _evaluation(folder, task, args, record):
    """A linear or semi-supervised run: named by its record, else by its arguments."""
    if record:
        weights = record["weights"]
        return RunCurves(task, folder, weights["label"], weights["sha256"], protocol_variant(task, record["config"]),
                         record["seed"], True)
    return RunCurves(task, folder, _text(args.get("label")) or folder.name, _sha256(args.get("weights_sha256")),
                     protocol_variant(task, args), _int(args.get("seed")), False)


def _describe(folder, files, record, records, siblings):
    """The RunCurves (without its series) of a run folder; None for any other folder."""
    if DETECTRON2_LOG in files:
        return _detection(folder, record, siblings)
    if EVAL_LOG not in files:
        return None
    args = _read_json_object(folder / ARGS)
    task = record["task"] if record else _evaluation_task(args or {})
    if task is not None:
        return _evaluation(folder, task, args or {}, record) if task in EVALUATIONS else None
    if args is None or "mode" in args:
        return None                 # no arguments, or an evaluation's that name no task: not a log we know
    return _pretraining(folder, args, records)


def find_runs(roots, pretrain_logs=(), records=()):
    """(curves, problems): the RunCurves of every run folder under ``roots`` and of the pretraining folders
    ``pretrain_logs``; problems ("path: reason") for logs that cannot be read and for run folders without a
    usable result.json (left out of the tables, drawn as unfinished). ``records`` are the usable records
    (``collect_results``, with their ``_path``)."""
    by_folder = {Path(r["_path"]).parent: r for r in records}
    by_parent = {}
    for folder in sorted(by_folder):
        by_parent.setdefault(folder.parent, []).append(by_folder[folder])
    runs, problems = [], []

    def add(run):
        """Read the run's log; True when it gave curves."""
        stage = STAGES[run.stage]
        path = run.folder / stage.log
        try:
            series = read_log(path, stage.x, _wanted(run.stage))
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{path}: cannot be read ({e}); no curves")
            return False
        if not series:
            if path.stat().st_size:             # an empty log is a run that has logged nothing yet
                problems.append(f"{path}: no line with an integer '{stage.x}' and a metric of the {stage.title} "
                                "figure; no curves")
            return False
        runs.append(replace(run, series=series))
        return True

    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            folder, files = Path(dirpath), set(filenames)
            if RESULT_FILE in files:
                dirnames.clear()            # what lies below a finished run belongs to it
            siblings = [r for r in by_parent.get(folder.parent, ()) if Path(r["_path"]).parent != folder]
            run = _describe(folder, files, by_folder.get(folder), records, siblings)
            drawn = run is not None and add(run)
            found = sorted(files & set(RUN_FILES))
            if found and RESULT_FILE not in files and not (run and run.stage == "pretrain"):
                problems.append(f"{folder}: has {', '.join(found)} but no {RESULT_FILE} (a seed or run that did not "
                                f"finish?); left out{'; its curves are drawn as unfinished' if drawn else ''}")
    drawn = {run.folder for run in runs}
    for folder in map(Path, pretrain_logs):
        if folder not in drawn:
            add(_pretraining(folder, _read_json_object(folder / ARGS), records))
    return runs, problems


def group_curves(runs):
    """{stage: [CurveGroup, ...]} in STAGES order, groups sorted by label, runs by seed then folder."""
    grouped = {}
    for run in runs:
        grouped.setdefault(run.stage, {}).setdefault((run.label, run.sha256, run.variant), []).append(run)
    return {stage: [CurveGroup(*key, tuple(sorted(members, key=lambda r: (r.seed is None, r.seed or 0, str(r.folder)))))
                    for key, members in sorted(grouped[stage].items())]
            for stage in STAGES if stage in grouped}


def panels(stage, groups):
    """The (metric, axis label) panels of a stage's figure that some run has data for."""
    found = {metric for group in groups for run in group.runs for metric in run.series}
    expanded = []
    for metric, axis in STAGES[stage].panels:
        if metric == LOSS_PANELS:
            expanded += [(name, name.removeprefix("loss_").replace("_", " ") + " loss")
                         for name in sorted(found) if name.startswith("loss_")]
        elif metric in found:
            expanded.append((metric, axis))
    return expanded
