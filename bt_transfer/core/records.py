"""Result records: the one format every runner writes and the report reads.

Each finished run writes ``<run_dir>/result.json``. Stdlib only: the report must not need
torch or Detectron2 to read results.

Record fields (``SCHEMA_VERSION`` 1):
  schema        int, SCHEMA_VERSION
  task          one of TASKS
  metrics       flat {name: float}; names per task in METRIC_KEYS (extra names are kept)
  seed          int
  weights       {"path": str, "sha256": str, "label": str}  (label: how the report names the backbone)
  protocol      {"full": bool, "deviations": [str, ...], "notes": [str, ...]}
                (full is True only when deviations is empty; notes, absent when there are none (and in
                records written before they existed), say what differs from the paper's set-up without
                departing from its protocol, e.g. 16 images on one GPU instead of 2 on each of 8)
  config        the resolved config / arguments of the run (any JSON)
  config_sha256 sha256 of ``config`` (see fileio.sha256_json)
  code_version  git describe of this repository, or the package version outside a checkout
  world_size    int, number of processes the run used
  extra         optional dict for task-specific facts (e.g. the semi-supervised subset source)
"""
import json
import subprocess
from pathlib import Path

from bt_transfer import __version__
from bt_transfer.core.fileio import sha256_json, write_json

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
TASKS = ("voc", "coco", "linear", "semisup-1", "semisup-10")
METRIC_KEYS = {
    "voc": ("bbox/AP", "bbox/AP50", "bbox/AP75"),
    "coco": (
        "bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl",
        "segm/AP", "segm/AP50", "segm/AP75", "segm/APs", "segm/APm", "segm/APl",
    ),
    "linear": ("top1", "top5"),
    "semisup-1": ("top1", "top5"),
    "semisup-10": ("top1", "top5"),
}
REQUIRED = ("schema", "task", "metrics", "seed", "weights", "protocol", "config", "config_sha256",
            "code_version", "world_size")


class ResultError(ValueError):
    """A result record that cannot be used; the message names the file and the key."""


def code_version():
    """``git describe`` of the checkout this code runs from (``-dirty`` if modified), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=root,
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


def make_record(task, metrics, seed, weights, config, world_size, deviations=(), extra=None, notes=()):
    """Build and validate a record. ``weights`` is {"path", "sha256", "label"}; ``deviations`` lists
    every way this run departs from the paper's protocol, in words (empty for a full-protocol run),
    those of the backbone's pretraining included (``bt_transfer.core.provenance``); ``notes`` what
    differs without departing from it."""
    deviations = list(deviations)
    record = {
        "schema": SCHEMA_VERSION,
        "task": task,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "seed": int(seed),
        "weights": dict(weights),
        "protocol": {"full": not deviations, "deviations": deviations, **({"notes": list(notes)} if notes else {})},
        "config": config,
        "config_sha256": sha256_json(config),
        "code_version": code_version(),
        "world_size": int(world_size),
    }
    if extra:
        record["extra"] = extra
    validate(record, "<new record>")
    return record


def write_result(run_dir, record):
    """Validate and atomically write ``run_dir/result.json``; returns its path."""
    path = Path(run_dir) / RESULT_FILE
    validate(record, path)
    write_json(path, record)
    return path


def validate(record, source):
    def fail(what):
        raise ResultError(f"{source}: {what}")

    if not isinstance(record, dict):
        fail(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        fail(f"missing key(s) {', '.join(missing)}")
    if record["schema"] != SCHEMA_VERSION:
        fail(f"key 'schema' is {record['schema']!r}, expected {SCHEMA_VERSION}")
    if record["task"] not in TASKS:
        fail(f"key 'task' is {record['task']!r}, expected one of {', '.join(TASKS)}")
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        fail("key 'metrics' is empty or not an object (the run finished without metrics?)")
    absent = [k for k in METRIC_KEYS[record["task"]] if k not in metrics]
    if absent:
        fail(f"key 'metrics' lacks {', '.join(absent)} for task {record['task']!r}")
    for name, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            fail(f"metric {name!r} is {value!r}, expected a finite number")
    weights = record["weights"]
    if not isinstance(weights, dict) or not all(isinstance(weights.get(k), str) for k in ("path", "sha256", "label")):
        fail("key 'weights' must be an object with string 'path', 'sha256' and 'label'")
    protocol = record["protocol"]
    if not isinstance(protocol, dict) or not isinstance(protocol.get("deviations"), list):
        fail("key 'protocol' must be an object with a list 'deviations'")
    if protocol.get("full") != (not protocol["deviations"]):
        fail("key 'protocol.full' must be true exactly when 'protocol.deviations' is empty")
    notes = protocol.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(note, str) and note for note in notes):
        fail("key 'protocol.notes' must be a list of non-empty strings")
    return record


def load_result(path):
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not valid JSON ({e})") from e
    return validate(record, path)


def collect_results(folders):
    """Every valid record under ``folders`` (searched recursively), sorted by path, and a list of
    problems ("path: reason") for the files that could not be used."""
    records, problems = [], []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            problems.append(f"{folder}: no such folder")
            continue
        for path in sorted(folder.rglob(RESULT_FILE)):
            try:
                record = load_result(path)
            except (ResultError, OSError) as e:
                problems.append(str(e))
                continue
            records.append({**record, "_path": str(path)})
    return records, problems
