"""From result records to table rows: seeds aggregated, our rows beside the paper's, best values marked.

Pure functions on plain data (records as ``bt_transfer.core.records.collect_results`` returns them), so every
rule here is testable on hand-made cases. The rules:

* A *group* is every run with the same weights (sha256 and label), task, protocol variant (e.g. the cosine or
  the paper's step schedule of semi-supervised runs, ``records.PROTOCOL_VARIANTS``) and protocol deviations; its
  seeds are aggregated as mean, sample standard deviation (ddof=1; none for a single seed) and n.
* A *row* of ours joins the groups of one backbone and variant across the tasks of a table. Full-protocol groups
  share one row; runs off the protocol never share a row with full-protocol runs and carry a footnote with their
  deviations; a variant other than the default is footnoted too (it stays the paper's protocol).
* Linear and semi-supervised rows show the last epoch's accuracy, or with ``epoch="best"`` the best epoch's.
* Delta: our row's displayed (one-decimal) mean minus the paper's Barlow Twins row, so the reader can check it.
* Marks as the paper does them (bold best, or underlined top-3 self-supervised for Table 1), computed among the
  paper's rows and our full-protocol rows only: a run off the protocol (e.g. on generated data) neither wins a
  mark nor takes one away from the paper's rows. Ties at one decimal are all marked, as the paper does.
"""
import statistics
from dataclasses import dataclass, field

from bt_transfer.core.records import BEST_SUFFIX, BEST_TASKS, METRIC_KEYS, PROTOCOL_VARIANTS, protocol_variant
from bt_transfer.report.paper import TASK_NAMES

EPOCHS = ("last", "best")
# What a variant other than the default is, in words; others are named by their setting.
VARIANT_NOTES = {
    ("schedule", "paper-step"): "the paper's step schedule (its Appendix B: backbone lr 0.002, ×0.2 after epochs "
                                "12 and 16) instead of the official code's cosine",
}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None      # None for a single seed and for the paper's values
    n: int | None          # None for the paper's values (the paper does not say)


@dataclass(frozen=True)
class Group:
    label: str
    sha256: str
    task: str
    variant: tuple         # records.protocol_variant: () for the default
    deviations: tuple
    records: tuple         # sorted by seed, one per seed

    @property
    def seeds(self):
        return tuple(r["seed"] for r in self.records)

    @property
    def formats(self):
        """The checkpoint layouts its weights were read as (``weights.format``; older records do not say)."""
        return tuple(sorted({r["weights"]["format"] for r in self.records if "format" in r["weights"]}))

    def stat(self, metric):
        """Mean, std and n of ``metric`` over the seeds; None when the runs did not record it."""
        values = [r["metrics"][metric] for r in self.records if metric in r["metrics"]]
        if len(values) != len(self.records):
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return Stat(statistics.fmean(values), std, len(values))


@dataclass
class Row:
    method: str
    source: str
    kind: str                                       # "paper" or "run"
    role: str                                       # paper.ROLES, or "run"
    cells: dict                                     # Column.key -> Stat
    groups: dict = field(default_factory=dict)      # task -> Group (runs only)
    marker: str = ""                                # footnote marker of a run off the protocol
    delta: dict = field(default_factory=dict)       # Column.key -> float
    marks: dict = field(default_factory=dict)       # Column.key -> "bold" | "underline"

    @property
    def full_protocol(self):
        return self.kind == "paper" or not any(g.deviations for g in self.groups.values())

    @property
    def sha256(self):
        return next(iter(self.groups.values())).sha256 if self.groups else ""

    @property
    def variant(self):
        return next(iter(self.groups.values())).variant if self.groups else ()


@dataclass
class Table:
    spec: object                                    # paper.TableSpec
    rows: list
    footnotes: list                                 # [(marker, text)]
    epoch: str | None = None                        # "last" or "best" for tables of accuracies, else None

    @property
    def run_rows(self):
        return [row for row in self.rows if row.kind == "run"]


def shown_metric(task, metric, epoch):
    """The record's metric behind a column: ``metric``, or its best-epoch twin for ``epoch="best"``."""
    return metric + BEST_SUFFIX if epoch == "best" and task in BEST_TASKS else metric


def group_runs(records, epoch="last"):
    """Group records; returns (groups sorted by key, problems). A seed recorded twice in one group keeps the
    first file (sorted by path) and reports the others; a metric outside [0, 100] (not a percentage) drops its
    run, and so does, for ``epoch="best"``, a record without the best epoch's accuracies (older records)."""
    by_key, problems = {}, []
    for record in sorted(records, key=lambda r: r["_path"]):
        bad = sorted(k for k, v in record["metrics"].items() if not 0 <= v <= 100)
        if bad:
            problems.append(f"{record['_path']}: metric(s) {', '.join(bad)} outside [0, 100], expected percentages; left out")
            continue
        task = record["task"]
        lacking = [name for metric in METRIC_KEYS[task] if (name := shown_metric(task, metric, epoch)) not in
                   record["metrics"]]
        if lacking:
            problems.append(f"{record['_path']}: no {', '.join(lacking)} (a record written before runs kept the best "
                            "epoch's accuracy); left out of the best-epoch tables (--metric best)")
            continue
        weights = record["weights"]
        key = (weights["label"], weights["sha256"], task, protocol_variant(task, record["config"]),
               tuple(record["protocol"]["deviations"]))
        seeds = by_key.setdefault(key, {})
        if record["seed"] in seeds:
            problems.append(f"{record['_path']}: seed {record['seed']} already recorded by "
                            f"{seeds[record['seed']]['_path']} for the same weights, task and protocol; left out")
            continue
        seeds[record["seed"]] = record
    groups = [Group(*key, tuple(seeds[s] for s in sorted(seeds))) for key, seeds in sorted(by_key.items())]
    return groups, problems


def _run_rows(spec, groups, epoch):
    """Rows of ours for one table: full-protocol groups of a backbone and protocol variant share a row; its groups
    off the protocol fill further rows, the k-th group of each task (in deviation order) in the k-th row."""
    tasks = list(dict.fromkeys(c.task for c in spec.columns))     # in the table's column order
    slots = {}
    for group in groups:
        if group.task in tasks:
            slot = slots.setdefault((bool(group.deviations), group.label, group.sha256, group.variant), {})
            slot.setdefault(group.task, []).append(group)
    rows = []
    for (_, label, sha256, _), by_task in sorted(slots.items()):    # full-protocol rows first, default variant first
        for k in range(max(len(g) for g in by_task.values())):
            row_groups = {task: by_task[task][k] for task in tasks if k < len(by_task.get(task, ()))}
            cells = {}
            for column in spec.columns:
                group = row_groups.get(column.task)
                stat = group.stat(shown_metric(column.task, column.metric, epoch)) if group else None
                if stat:
                    cells[column.key] = stat
            rows.append(Row(label, _run_source(row_groups, sha256), "run", "run", cells, row_groups))
    return rows


def _run_source(row_groups, sha256):
    counts = {TASK_NAMES[task]: len(group.records) for task, group in row_groups.items()}
    if len(set(counts.values())) == 1:
        seeds = f"n={next(iter(counts.values()))}"
    else:
        seeds = ", ".join(f"{name} n={n}" for name, n in counts.items())
    return f"this suite, {seeds}; weights {sha256[:12]}"


def variant_setting(variant):
    """A protocol variant as its settings, e.g. "schedule paper-step"; "" for the default."""
    return " ".join(f"{key} {value}" for key, value in variant)


def variant_text(variant):
    """A protocol variant in words (the runs section and footnotes)."""
    defaults = {key: default for task in PROTOCOL_VARIANTS.values() for key, default in task.items()}
    return "; ".join(VARIANT_NOTES.get((key, value), f"{key} {value} instead of the default {defaults[key]}")
                     for key, value in variant)


def row_note(row):
    """The footnote text of a row: its protocol variant when not the default, and its deviations (per task when
    the tasks differ) when it is off the protocol; "" for a full-protocol row of the default variant."""
    parts = []
    if row.variant:
        parts.append(f"A variant of the paper's protocol, never averaged with runs of the default: "
                     f"{variant_text(row.variant)}.")
    lists = {task: group.deviations for task, group in row.groups.items() if group.deviations}
    if lists:
        if len(set(lists.values())) == 1 and len(lists) == len(row.groups):
            detail = "; ".join(next(iter(lists.values()))) + "."
        else:
            detail = " ".join(f"{TASK_NAMES[task]}: {'; '.join(devs)}." for task, devs in lists.items())
        parts.append(f"Not the paper's protocol, so not comparable with its rows and never marked best: {detail}")
    return " ".join(parts)


def _assign_footnotes(rows):
    """One marker (a, b, ...) per distinct footnote text, in row order."""
    footnotes = {}
    for row in rows:
        if note := row_note(row):
            row.marker = footnotes.setdefault(note, chr(ord("a") + len(footnotes)))
    return [(marker, note) for note, marker in footnotes.items()]


def _mark(spec, rows):
    eligible = [row for row in rows if row.full_protocol]
    if spec.marking == "underline-top3-ssl":
        eligible, style, places = [row for row in eligible if row.role != "supervised"], "underline", 3
    else:
        style, places = "bold", 1
    for column in spec.columns:
        shown = {id(row): round(row.cells[column.key].mean, 1) for row in eligible if column.key in row.cells}
        if not shown:
            continue
        threshold = sorted(shown.values(), reverse=True)[:places][-1]
        for row in eligible:
            if shown.get(id(row), -1) >= threshold:
                row.marks[column.key] = style


def build_table(spec, paper_rows, groups, epoch="last"):
    """The table ``spec``: the paper's rows in its order, then ours (full protocol first), with deltas and marks.
    Linear and semi-supervised cells hold the ``epoch`` ("last" or "best") epoch's accuracy."""
    if epoch not in EPOCHS:
        raise ValueError(f"epoch {epoch!r}, expected one of {EPOCHS}")
    rows = [Row(p.method, p.source, "paper", p.role, {k: Stat(v, None, None) for k, v in p.values.items()})
            for p in paper_rows]
    reference = next(row for row in rows if row.role == "barlow-twins")
    ours = _run_rows(spec, groups, epoch)
    for row in ours:
        row.delta = {key: round(round(stat.mean, 1) - reference.cells[key].mean, 1)
                     for key, stat in row.cells.items() if key in reference.cells}
    rows += ours
    footnotes = _assign_footnotes(ours)
    _mark(spec, rows)
    shows_epoch = any(column.task in BEST_TASKS for column in spec.columns)
    return Table(spec, rows, footnotes, epoch if shows_epoch else None)
