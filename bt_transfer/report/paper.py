"""The paper's Tables 1, 2 and 4: their layout and their published numbers.

The numbers live in ``bt_transfer/report/data/paper_results.csv``, one value per line with its source, in the
paper's row order; an empty value is the paper's "-". The paper calls its own rows "Barlow Twins (ours)" and
"BT (ours)"; here they are "(paper)" so that they cannot be confused with the runs of this suite.

Stdlib only: the report must not import torch or Detectron2.
"""
import csv
from dataclasses import dataclass
from importlib import resources

PAPER_CSV = "paper_results.csv"
CSV_FIELDS = ("table", "method", "role", "task", "metric", "value", "source")
ROLES = ("supervised", "self-supervised", "barlow-twins")


@dataclass(frozen=True)
class Column:
    task: str      # a results.TASKS entry
    metric: str    # a key of the record's flat metrics
    group: str     # spanning header, as in the paper
    header: str    # column header under the group (Markdown, CSV)
    tex: str       # the same header in LaTeX

    @property
    def key(self):
        return f"{self.task}:{self.metric}"


@dataclass(frozen=True)
class TableSpec:
    name: str          # output file stem under tables/
    number: int
    caption: str
    columns: tuple
    # How the paper marks the best values: "bold" the best per column, or "underline-top3-ssl" the
    # three best self-supervised methods per column (the paper's Table 1 bolds nothing).
    marking: str


TABLES = (
    TableSpec(
        "table1_linear", 1,
        "Top-1 and top-5 accuracies (in %) under linear evaluation on ImageNet. All models use a ResNet-50 "
        "encoder. Top-3 best self-supervised methods are underlined.",
        (Column("linear", "top1", "", "Top-1", "Top-1"), Column("linear", "top5", "", "Top-5", "Top-5")),
        "underline-top3-ssl",
    ),
    TableSpec(
        "table2_semisup", 2,
        "Semi-supervised learning on ImageNet using 1% and 10% training examples (top-1 and top-5 accuracy in %). "
        "Results for the supervised method are from Zhai et al. (2019). Best results are in bold.",
        (
            Column("semisup-1", "top1", "Top-1", "1%", r"1\%"), Column("semisup-10", "top1", "Top-1", "10%", r"10\%"),
            Column("semisup-1", "top5", "Top-5", "1%", r"1\%"), Column("semisup-10", "top5", "Top-5", "10%", r"10\%"),
        ),
        "bold",
    ),
    TableSpec(
        "table4_detection", 4,
        "Transfer learning: object detection on VOC07+12 with Faster R-CNN and detection and instance "
        "segmentation on COCO with Mask R-CNN, both R50-C4, COCO with the 1x schedule (AP in %). "
        "Best results are in bold.",
        (
            Column("voc", "bbox/AP", "VOC07+12 det", "AP", r"AP$_\mathrm{all}$"),
            Column("voc", "bbox/AP50", "VOC07+12 det", "AP50", r"AP$_{50}$"),
            Column("voc", "bbox/AP75", "VOC07+12 det", "AP75", r"AP$_{75}$"),
            Column("coco", "bbox/AP", "COCO det", "AP^bb", r"AP$^\mathrm{bb}$"),
            Column("coco", "bbox/AP50", "COCO det", "AP50^bb", r"AP$_{50}^\mathrm{bb}$"),
            Column("coco", "bbox/AP75", "COCO det", "AP75^bb", r"AP$_{75}^\mathrm{bb}$"),
            Column("coco", "segm/AP", "COCO instance seg", "AP^mk", r"AP$^\mathrm{mk}$"),
            Column("coco", "segm/AP50", "COCO instance seg", "AP50^mk", r"AP$_{50}^\mathrm{mk}$"),
            Column("coco", "segm/AP75", "COCO instance seg", "AP75^mk", r"AP$_{75}^\mathrm{mk}$"),
        ),
        "bold",
    ),
)

TASK_NAMES = {
    "linear": "ImageNet linear", "semisup-1": "ImageNet 1%", "semisup-10": "ImageNet 10%",
    "voc": "VOC07+12", "coco": "COCO",
}


@dataclass(frozen=True)
class PaperRow:
    method: str
    role: str                 # one of ROLES
    source: str
    values: dict              # Column.key -> float, absent where the paper prints "-"


def load_paper_rows(text=None):
    """{table name: [PaperRow, ...] in the paper's order}. ``text`` replaces the packaged CSV (for tests)."""
    if text is None:
        text = resources.files("bt_transfer.report").joinpath("data", PAPER_CSV).read_text()
    where = f"bt_transfer/report/data/{PAPER_CSV}"
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != CSV_FIELDS:
        raise ValueError(f"{where}: header is {reader.fieldnames}, expected {list(CSV_FIELDS)}")
    specs = {spec.name: {c.key for c in spec.columns} for spec in TABLES}
    tables = {name: {} for name in specs}
    for line, entry in enumerate(reader, start=2):
        def fail(what):
            raise ValueError(f"{where}, line {line}: {what}")

        if entry["table"] not in specs:
            fail(f"table {entry['table']!r}, expected one of {sorted(specs)}")
        if entry["role"] not in ROLES:
            fail(f"role {entry['role']!r}, expected one of {ROLES}")
        key = f"{entry['task']}:{entry['metric']}"
        if key not in specs[entry["table"]]:
            fail(f"column {key!r} is not in {entry['table']}")
        rows = tables[entry["table"]]
        row = rows.setdefault(entry["method"], PaperRow(entry["method"], entry["role"], entry["source"], {}))
        if (row.role, row.source) != (entry["role"], entry["source"]):
            fail(f"{entry['method']!r} has a different role or source than on its earlier lines")
        if key in row.values:
            fail(f"{entry['method']!r} {key} appears twice")
        if entry["value"]:
            row.values[key] = float(entry["value"])
    for name, rows in tables.items():
        if sum(row.role == "barlow-twins" for row in rows.values()) != 1:
            raise ValueError(f"{where}: {name} needs exactly one barlow-twins row (the reference for deltas)")
    return {name: list(rows.values()) for name, rows in tables.items()}
