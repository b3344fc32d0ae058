"""Result records: the one format every runner writes and the report reads.

Each finished run writes ``<run_dir>/result.json``. Stdlib only: the report must not need
torch or Detectron2 to read results.

Record fields (``SCHEMA_VERSION`` 1):
  schema        int, SCHEMA_VERSION
  task          one of TASKS
  metrics       flat {name: finite number}; names per task in METRIC_KEYS (extra names are kept); linear and
                semi-supervised runs (BEST_TASKS) add <name>_best, the best epoch's (absent in older records)
  seed          int
  weights       {"path": str, "sha256": 64 hex digits, "label": str, "format": str (optional: the
                checkpoint layout it was read as; absent in older records)}  (label: how the report names it)
  protocol      {"full": bool, "deviations": [str, ...], "notes": [str, ...]}
                (full is True only when deviations is empty; notes, absent when there are none (and in
                records written before they existed), say what differs from the paper's set-up without
                departing from its protocol, e.g. 16 images on one GPU instead of 2 on each of 8)
  config        object, the resolved config / arguments of the run; for the tasks in PROTOCOL_VARIANTS the
                keys named there, when present, are strings
  config_sha256 sha256 of ``config`` (see fileio.sha256_json), 64 hex digits
  code_version  git describe of this repository, or the package version outside a checkout
  world_size    int >= 1, number of processes the run used
  extra         optional object for task-specific facts (e.g. the semi-supervised subset source)
"""
import json
import math
import re
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
# Settings of a run's config that choose between variants of one task's protocol, with the default variant's
# value (what a record without the key ran). Runs of different variants are never aggregated together.
PROTOCOL_VARIANTS = {
    "linear": {"schedule": "cosine"},
    "semisup-1": {"schedule": "cosine"},
    "semisup-10": {"schedule": "cosine"},
}
# Linear and semi-supervised runs record the last epoch's accuracy under the METRIC_KEYS names and the best
# epoch's (what the official evaluate.py prints) under the same names with BEST_SUFFIX.
BEST_TASKS = ("linear", "semisup-1", "semisup-10")
BEST_SUFFIX = "_best"
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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_sha256(value):
    return isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) is not None


def _shown(value):
    """A value for a message: its repr, cut short, with its JSON type."""
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


def validate(record, source):
    """``record`` if it follows the schema (the module docstring), checked field by field with types; otherwise
    ResultError naming ``source``, the key and what was expected. Keys outside the schema are kept unchecked."""
    def fail(what):
        raise ResultError(f"{source}: {what}")

    def expect(ok, key, expected, value):
        if not ok:
            fail(f"key '{key}' is {_shown(value)}, expected {expected}")

    if not isinstance(record, dict):
        fail(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        fail(f"missing key(s) {', '.join(missing)}")
    expect(_is_int(record["schema"]) and record["schema"] == SCHEMA_VERSION, "schema", SCHEMA_VERSION,
           record["schema"])
    task = record["task"]
    expect(isinstance(task, str) and task in TASKS, "task", f"one of {', '.join(TASKS)}", task)
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        fail("key 'metrics' is empty or not an object (the run finished without metrics?)")
    absent = [k for k in METRIC_KEYS[task] if k not in metrics]
    if absent:
        fail(f"key 'metrics' lacks {', '.join(absent)} for task {task!r}")
    for name, value in metrics.items():
        expect(_is_number(value), f"metrics.{name}", "a finite number", value)
    expect(_is_int(record["seed"]), "seed", "an integer", record["seed"])
    weights = record["weights"]
    expect(isinstance(weights, dict), "weights", "an object with 'path', 'sha256' and 'label'", weights)
    for key in ("path", "sha256", "label"):
        if key not in weights:
            fail(f"key 'weights' lacks '{key}'")
    expect(isinstance(weights["path"], str), "weights.path", "a string", weights["path"])
    expect(_is_sha256(weights["sha256"]), "weights.sha256", "64 lowercase hex digits", weights["sha256"])
    expect(isinstance(weights["label"], str), "weights.label", "a string", weights["label"])
    if "format" in weights:
        expect(isinstance(weights["format"], str) and weights["format"], "weights.format", "a non-empty string",
               weights["format"])
    protocol = record["protocol"]
    expect(isinstance(protocol, dict) and "full" in protocol and "deviations" in protocol, "protocol",
           "an object with 'full' and 'deviations'", protocol)
    deviations = protocol["deviations"]
    expect(isinstance(deviations, list), "protocol.deviations", "a list of strings", deviations)
    for index, deviation in enumerate(deviations):
        expect(isinstance(deviation, str), f"protocol.deviations[{index}]", "a string", deviation)
    expect(isinstance(protocol["full"], bool), "protocol.full", "true or false", protocol["full"])
    if protocol["full"] != (not deviations):
        fail("key 'protocol.full' must be true exactly when 'protocol.deviations' is empty")
    notes = protocol.get("notes", [])
    expect(isinstance(notes, list), "protocol.notes", "a list of non-empty strings", notes)
    for index, note in enumerate(notes):
        expect(isinstance(note, str) and note, f"protocol.notes[{index}]", "a non-empty string", note)
    config = record["config"]
    expect(isinstance(config, dict), "config", "an object", config)
    for key in PROTOCOL_VARIANTS.get(task, {}):
        if key in config:
            expect(isinstance(config[key], str) and config[key], f"config.{key}", "a non-empty string", config[key])
    expect(_is_sha256(record["config_sha256"]), "config_sha256", "64 lowercase hex digits", record["config_sha256"])
    expect(isinstance(record["code_version"], str), "code_version", "a string", record["code_version"])
    expect(_is_int(record["world_size"]) and record["world_size"] >= 1, "world_size", "a positive integer",
           record["world_size"])
    if "extra" in record:
        expect(isinstance(record["extra"], dict), "extra", "an object", record["extra"])
    return record


def protocol_variant(task, config):
    """The settings of ``config`` (a run's config, or the arguments of a run that has not finished) that pick a
    variant of ``task``'s protocol other than the default, as sorted ((key, value), ...); () for the default.
    A config without the key (an older record) ran the default."""
    defaults = PROTOCOL_VARIANTS.get(task, {})
    config = config if isinstance(config, dict) else {}
    chosen = {key: config.get(key, default) for key, default in defaults.items()}
    return tuple(sorted((key, str(value)) for key, value in chosen.items() if value != defaults[key]))


def load_result(path):
    path = Path(path)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ResultError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not valid JSON ({e})") from e
    except RecursionError:
        raise ResultError(f"{path}: not valid JSON (nested too deeply)") from None
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
