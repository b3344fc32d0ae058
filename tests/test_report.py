"""The report (bt_transfer.report): paper tables, seed aggregation, marks, deltas, footnotes, protocol variants,
last/best epoch, provenance, training curves, bad inputs (fault injection), the output written as one set, goldens.

Golden files live in tests/golden/report/. After an intended change of the output, regenerate them with

    BT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py -k golden

and review the diff before committing it.
"""
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bt_transfer.report import aggregate, curves, paper, plots, render
from bt_transfer.report.__main__ import main as report_main
from bt_transfer.report.build import ReportError, build_report
from bt_transfer.core.records import (METRIC_KEYS, ResultError, collect_results, load_result, make_record, validate,
                                      write_result)

GOLDEN = Path(__file__).parent / "golden" / "report"
UPDATE_GOLDEN = os.environ.get("BT_UPDATE_GOLDEN") == "1"
TABLE_NAMES = ("table1_linear", "table2_semisup", "table4_detection")
OURS = {"path": "runs/pretrain/resnet50.pth", "sha256": "ab" * 32, "label": "Barlow Twins (this suite)"}
DEMO = {"path": "runs/demo/pretrain/resnet50.pth", "sha256": "cd" * 32, "label": "demo BT"}
VOC_DEMO = ["generated data (bt_transfer.synthetic), not VOC07+12", "SOLVER.MAX_ITER: 20 (protocol: 24000)"]
COCO_DEMO = ["generated data (bt_transfer.synthetic), not COCO 2017", "SOLVER.MAX_ITER: 10 (protocol: 90000)"]

# The published numbers, typed in from the paper (Zbontar et al. 2021) independently of bt_transfer/data.
PUBLISHED = {
    "table1_linear": {
        "Supervised": (76.5, None), "MoCo": (60.6, None), "PIRL": (63.6, None), "SimCLR": (69.3, 89.0),
        "MoCo v2": (71.1, 90.1), "SimSiam": (71.3, None), "SwAV (w/o multi-crop)": (71.8, None),
        "BYOL": (74.3, 91.6), "SwAV": (75.3, None), "Barlow Twins (paper)": (73.2, 91.0),
    },
    "table2_semisup": {  # top-1 1%, 10%, top-5 1%, 10%
        "Supervised": (25.4, 56.4, 48.4, 80.4), "PIRL": (None, None, 57.2, 83.8),
        "SimCLR": (48.3, 65.6, 75.5, 87.8), "BYOL": (53.2, 68.8, 78.4, 89.0), "SwAV": (53.9, 70.2, 78.5, 89.9),
        "Barlow Twins (paper)": (55.0, 69.7, 79.2, 89.3),
    },
    "table4_detection": {  # VOC AP, AP50, AP75; COCO box AP, AP50, AP75; COCO mask AP, AP50, AP75
        "Sup.": (53.5, 81.3, 58.8, 38.2, 58.2, 41.2, 33.3, 54.7, 35.2),
        "MoCo-v2": (57.4, 82.5, 64.0, 39.3, 58.9, 42.5, 34.4, 55.8, 36.5),
        "SwAV": (56.1, 82.6, 62.7, 38.4, 58.6, 41.3, 33.8, 55.2, 35.9),
        "SimSiam": (57.0, 82.4, 63.7, 39.2, 59.3, 42.1, 34.4, 56.0, 36.7),
        "BT (paper)": (56.8, 82.6, 63.4, 39.2, 59.0, 42.5, 34.3, 56.0, 36.5),
    },
}


def record(task, metrics, seed, weights=OURS, deviations=(), path=None, config=None):
    """A validated record as collect_results returns it; metrics the task needs but the test leaves out are 0."""
    full = {key: 0.0 for key in METRIC_KEYS[task]} | metrics
    made = make_record(task, full, seed, weights, {"seed": seed, **(config or {})}, 1, deviations)
    return {**made, "_path": path or f"runs/{weights['label']}/{task}/seed{seed}/result.json"}


def write_run(root, folder, *args, **kwargs):
    rec = record(*args, **kwargs)
    del rec["_path"]
    write_result(Path(root) / folder, rec)


def table(name, records, epoch="last"):
    groups, problems = aggregate.group_runs(records, epoch)
    assert problems == []
    spec = next(s for s in paper.TABLES if s.name == name)
    return aggregate.build_table(spec, paper.load_paper_rows()[name], groups, epoch)


def jsonl(path, lines, tail=""):
    """A JSON-lines log as the runs write it; ``tail`` is appended as is (a torn last line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines) + tail)


def read_csv(path):
    return {row["method"]: row for row in csv.DictReader(io.StringIO(Path(path).read_text()))}


def write_scenario(root):
    """Full-protocol VOC (3 seeds, a 4th unfinished) and COCO (1 seed) runs, demo runs off the protocol, a linear
    run, a 1% run off the protocol, a 10% run with the paper's step schedule; logs for the training curves."""
    root = Path(root)
    for seed, ap in [(1, 56.9), (2, 57.3), (3, 56.8)]:
        write_run(root, f"transfer-voc/seed{seed}", "voc", {"bbox/AP": ap, "bbox/AP50": 82.9, "bbox/AP75": 63.1}, seed)
    for seed in (1, 2, 3, 4):       # Detectron2's metrics.json; seed 4 did not finish
        losses = [{"iteration": i, "total_loss": 2.0 - 0.01 * i - 0.01 * seed, "loss_cls": 1.0 - 0.005 * i,
                   "loss_box_reg": 0.5, "lr": 0.1} for i in range(19, 100, 20)]
        evaluation = [{"iteration": 99, "bbox/AP": 56.0 + seed / 2, "bbox/AP50": 82.0}] if seed < 4 else []
        jsonl(root / f"transfer-voc/seed{seed}/metrics.json", losses + evaluation)
    (root / "transfer-voc/seed4/config.yaml").write_text("DATASETS:\n  TRAIN:\n  - voc_2007_trainval\n")
    write_run(root, "transfer-coco/seed1", "coco", {"bbox/AP": 39.4, "bbox/AP50": 59.0, "bbox/AP75": 42.3,
                                                    "segm/AP": 34.3, "segm/AP50": 55.9, "segm/AP75": 36.6}, 1)
    write_run(root, "linear", "linear", {"top1": 73.1, "top5": 91.2, "top1_best": 73.3, "top5_best": 91.3}, 0)
    jsonl(root / "linear/metrics.jsonl", [{"epoch": e, "loss": 3.0 / e, "top1": 70.0 + e, "top5": 90.0 + e / 3}
                                          for e in (1, 2, 3)])
    write_run(root, "semisup-1", "semisup-1", {"top1": 54.2, "top5": 78.8}, 0,
              deviations=["subset drawn from seed 0 (class-balanced), not SimCLR's 1percent.txt"])
    write_run(root, "semisup-10-step", "semisup-10", {"top1": 69.5, "top5": 89.1}, 0, config={"schedule": "paper-step"})
    for seed, ap in [(1, 1.2), (2, 1.6)]:
        write_run(root, f"demo/voc/seed{seed}", "voc", {"bbox/AP": ap, "bbox/AP50": 3.5, "bbox/AP75": 0.4}, seed,
                  weights=DEMO, deviations=VOC_DEMO)
    write_run(root, "demo/coco/seed1", "coco", {"bbox/AP": 2.0, "segm/AP": 1.5}, 1, weights=DEMO, deviations=COCO_DEMO)
    (root / "demo/pretrain").mkdir(parents=True)
    (root / "demo/pretrain/args.json").write_text('{"seed": 0}\n')
    (root / "demo/pretrain/resnet50.pth").write_bytes(b"")          # exported: a finished pretraining
    jsonl(root / "demo/pretrain/metrics.jsonl",
          [{"step": s, "epoch": 0, "loss": 5000.0 / (s + 1), "lr": 0.2} for s in range(0, 30, 5)]
          + [{"step": 29, "epoch": 0, "knn_top1": 31.0, "knn_k": 20}])


def test_paper_only_tables_reproduce_the_published_numbers(tmp_path, capsys):
    build_report([], tmp_path)
    for name, rows in PUBLISHED.items():
        spec = next(s for s in paper.TABLES if s.name == name)
        got = read_csv(tmp_path / f"{name}.csv")
        assert list(got) == list(rows), name                       # the paper's rows, in the paper's order
        for method, values in rows.items():
            cells = tuple(float(got[method][c.key]) if got[method][c.key] else None for c in spec.columns)
            assert cells == values, (name, method)
            assert got[method]["source"].startswith(f"Zbontar et al. 2021, Table {spec.number}")
        markdown = (tmp_path / f"{name}.md").read_text()
        assert "SimSiam | 57.0 |" in markdown or name != "table4_detection"   # the paper's "57"
    assert "**No results found**" in (tmp_path / "README.md").read_text()
    assert "no results found: wrote the paper's tables alone" in capsys.readouterr().out


def test_paper_marks_match_the_paper():
    """Bold best per column (ties all bold) in Tables 2 and 4; Table 1 underlines the top-3 self-supervised."""
    def marked(name):
        built = table(name, [])
        return {c.key: {r.method for r in built.rows if c.key in r.marks} for c in built.spec.columns}

    assert marked("table1_linear") == {"linear:top1": {"SwAV", "BYOL", "Barlow Twins (paper)"},
                                       "linear:top5": {"BYOL", "Barlow Twins (paper)", "MoCo v2"}}
    assert set(table("table1_linear", []).rows[0].marks.values()) == set()     # supervised is never underlined
    assert marked("table2_semisup") == {"semisup-1:top1": {"Barlow Twins (paper)"}, "semisup-10:top1": {"SwAV"},
                                        "semisup-1:top5": {"Barlow Twins (paper)"}, "semisup-10:top5": {"SwAV"}}
    t4 = marked("table4_detection")
    assert t4["voc:bbox/AP50"] == {"SwAV", "BT (paper)"} and t4["coco:segm/AP"] == {"MoCo-v2", "SimSiam"}
    assert t4["coco:segm/AP75"] == {"SimSiam"}


def test_mean_sample_std_and_n_over_seeds():
    runs = [record("voc", {"bbox/AP": ap}, seed) for seed, ap in [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]]
    ours = table("table4_detection", runs).run_rows
    assert len(ours) == 1
    stat = ours[0].cells["voc:bbox/AP"]
    assert stat.n == 4 and stat.mean == pytest.approx(2.5)
    assert stat.std == pytest.approx((5 / 3) ** 0.5)            # ddof=1: sum of squares 5 over n-1 = 3
    assert "2.5 ± 1.3" in render.markdown(table("table4_detection", runs))


def test_single_seed_says_n1_and_has_no_std():
    built = table("table1_linear", [record("linear", {"top1": 70.04, "top5": 90.0}, 0)])
    row = built.run_rows[0]
    assert row.cells["linear:top1"].std is None and "n=1" in row.source
    line = next(line for line in render.markdown(built).splitlines() if line.startswith("| Barlow Twins (this suite)"))
    assert "| 70.0 | 90.0 |" in line and "±" not in line
    assert ",70.04,,1," in render.csv_text(built)


def test_delta_is_the_displayed_mean_minus_the_paper_bt_row():
    built = table("table1_linear", [record("linear", {"top1": 73.26, "top5": 90.0}, 0)])
    delta = built.run_rows[0].delta
    assert delta == {"linear:top1": pytest.approx(0.1), "linear:top5": pytest.approx(-1.0)}   # 73.3 - 73.2, 90.0 - 91.0
    assert "| ↳ Δ vs. Barlow Twins (paper) | +0.1 | −1.0 |" in render.markdown(built)


def test_full_protocol_run_can_win_the_bold_but_never_one_off_the_protocol():
    better = {"bbox/AP": 99.0, "bbox/AP50": 99.0, "bbox/AP75": 99.0}
    built = table("table4_detection", [record("voc", better, 1),
                                       record("voc", better, 1, weights=DEMO, deviations=VOC_DEMO)])
    full, demo = built.run_rows
    assert full.marks["voc:bbox/AP"] == "bold" and not demo.marks
    paper_bold = {r.method for r in built.rows if r.kind == "paper" and "voc:bbox/AP" in r.marks}
    assert paper_bold == set()                                 # the better full-protocol run took it
    demo_only = table("table4_detection", [record("voc", better, 1, weights=DEMO, deviations=VOC_DEMO)])
    assert {r.method for r in demo_only.rows if "voc:bbox/AP" in r.marks} == {"MoCo-v2"}   # as in the paper


def test_runs_off_the_protocol_get_their_own_row_and_a_footnote():
    runs = [record("voc", {"bbox/AP": 56.0}, 1), record("voc", {"bbox/AP": 50.0}, 2, deviations=VOC_DEMO[1:]),
            record("coco", {"bbox/AP": 30.0}, 1, deviations=COCO_DEMO[1:])]
    built = table("table4_detection", runs)
    full, off = built.run_rows
    assert full.marker == "" and full.cells["voc:bbox/AP"].mean == 56.0 and "coco:bbox/AP" not in full.cells
    assert off.marker == "a" and off.cells["voc:bbox/AP"].mean == 50.0 and off.cells["coco:bbox/AP"].mean == 30.0
    assert built.footnotes == [("a", "Not the paper's protocol, so not comparable with its rows and never marked "
                                     "best: VOC07+12: SOLVER.MAX_ITER: 20 (protocol: 24000). "
                                     "COCO: SOLVER.MAX_ITER: 10 (protocol: 90000).")]
    markdown, tex = render.markdown(built), render.latex(built)
    assert "| Barlow Twins (this suite)<sup>a</sup> | 50.0 |" in markdown and "<sup>a</sup> Not the paper's" in markdown
    assert r"Barlow Twins (this suite)\textsuperscript{a}" in tex and r"\textsuperscript{a}Not the paper" in tex
    assert [r["protocol"] for r in csv.DictReader(io.StringIO(render.csv_text(built))) if r["kind"] == "run"] == [
        "full", "deviates"]


def test_latex_rows_have_one_cell_per_column_and_balanced_braces():
    built = table("table4_detection", [record("voc", {"bbox/AP": 50.0}, 1, deviations=["a_b & 100%"]),
                                       record("voc", {"bbox/AP": 52.0}, 2, deviations=["a_b & 100%"])])
    tex = render.latex(built)
    body = tex[tex.index("\\midrule"):tex.index("\\bottomrule")].splitlines()
    rows = [line for line in body if line.endswith("\\\\")]
    assert len(rows) == len(built.rows) + len(built.run_rows)       # each run row has its delta row
    assert all(line.count(" & ") == len(built.spec.columns) for line in rows)
    assert tex.count("{") == tex.count("}") and r"a\_b \& 100\%" in tex


def test_golden_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                 # relative paths, as `make tables` gives them
    write_scenario("runs")
    build_report(["runs"], "tables")
    names = ([f"{n}.{ext}" for n in TABLE_NAMES for ext in ("md", "csv", "tex")] + ["README.md"]
             + [f"curves_{stage}.csv" for stage in ("pretrain", "linear", "voc")])
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name in names:
            (GOLDEN / name).write_bytes((Path("tables") / name).read_bytes())
    for name in names:
        assert (Path("tables") / name).read_text() == (GOLDEN / name).read_text(), (
            f"{name} differs from tests/golden/report/{name}; if intended, rerun with BT_UPDATE_GOLDEN=1")
    assert sorted(p.name for p in Path("tables").iterdir()) == sorted(
        names + [f"{n}.png" for n in TABLE_NAMES] + [f"curves_{s}.png" for s in ("pretrain", "linear", "voc")])


def test_reruns_are_byte_identical_and_the_set_is_replaced_whole(tmp_path):
    results = tmp_path / "runs"
    write_scenario(results)
    log = tmp_path / "pretrain"
    jsonl(log / "metrics.jsonl", [{"step": s, "loss": 10.0 - s} for s in range(5)])
    (log / "args.json").write_text("{}")
    first, second = tmp_path / "first", tmp_path / "second"
    build_report([results], first, pretrain_logs=[log])
    build_report([results], second, pretrain_logs=[log])
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir()) and "curves_pretrain.png" in files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "pretrain", "runs", "second"]  # nothing left aside
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    shutil.rmtree(results / "demo/pretrain")
    build_report([results], first)                  # no pretraining log any more: its curves must go too
    assert not (first / "curves_pretrain.png").exists() and not (first / "curves_pretrain.csv").exists()
    assert "curves_pretrain" not in (first / "README.md").read_text()


def test_malformed_and_partial_inputs_are_reported_and_left_out(tmp_path, capsys):
    results = tmp_path / "runs"
    write_run(results, "voc/seed1", "voc", {"bbox/AP": 57.0}, 1)
    write_run(results, "voc/seed1b", "voc", {"bbox/AP": 10.0}, 1)           # the same seed again
    write_run(results, "linear-out-of-range", "linear", {"top1": 173.0, "top5": 91.0}, 0)
    bad = {"invalid": "{not json", "missing-keys": json.dumps({"schema": 1, "task": "voc"})}
    no_metrics = record("voc", {}, 3)
    no_metrics["metrics"] = {}
    bad["no-metrics"] = json.dumps({k: v for k, v in no_metrics.items() if k != "_path"})
    for folder, text in bad.items():
        (results / folder).mkdir(parents=True)
        (results / folder / "result.json").write_text(text)
    (results / "voc/seed2").mkdir()
    (results / "voc/seed2/metrics.jsonl").write_text('{"iteration": 5, "total_loss": 1.0}\n')   # died mid-run
    (results / "linear-out-of-range" / "metrics.jsonl").write_text("")     # belongs to a finished run: not a problem
    problems = build_report([results], tmp_path / "out")

    expected = {
        "runs/invalid/result.json": "not valid JSON", "runs/missing-keys/result.json": "missing key(s)",
        "runs/no-metrics/result.json": "key 'metrics' is empty", "runs/voc/seed1b/result.json": "seed 1 already",
        "runs/linear-out-of-range/result.json": "outside [0, 100]", "runs/voc/seed2": "no result.json",
    }
    assert len(problems) == len(expected), problems
    for where, what in expected.items():
        assert any(p.startswith(f"{tmp_path / where}: ") and what in p for p in problems), (where, problems)
    printed = capsys.readouterr().out
    readme = (tmp_path / "out" / "README.md").read_text()
    for problem in problems:
        assert f"warning: {problem}" in printed and render.md_escape(problem) in readme
    ours = read_csv(tmp_path / "out" / "table4_detection.csv")["Barlow Twins (this suite)"]
    assert ours["voc:bbox/AP"] == "57.0" and ours["voc:bbox/AP:n"] == "1"         # the valid run is still there
    assert "Barlow Twins (this suite)" not in read_csv(tmp_path / "out" / "table1_linear.csv")


def test_paper_csv_errors_name_the_line():
    text = ",".join(paper.CSV_FIELDS) + '\ntable4_detection,X,teacher,voc,bbox/AP,1.0,"Zbontar et al. 2021, Table 4"\n'
    with pytest.raises(ValueError, match=r"paper_results.csv, line 2: role 'teacher'"):
        paper.load_paper_rows(text)


def test_report_cli_imports_neither_torch_nor_detectron2(tmp_path):
    code = ("import sys; from bt_transfer.report.__main__ import main; main(['--results', '--out', sys.argv[1]]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'detectron2', 'torchvision')); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, text=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{n}.{ext}" for n in TABLE_NAMES for ext in ("md", "csv", "tex", "png")] + ["README.md"])




# ---------------------------------------------------------------- odd records never crash the report

def _good_json(kind="voc", **changes):
    """A record as a runner writes it (VOC AP 50, seed 1), with ``changes`` to its top-level keys."""
    made = record(kind, {"bbox/AP": 50.0} if kind == "voc" else {}, 1)
    del made["_path"]
    return made | changes


def _voc(ap):
    return {"metrics": {"bbox/AP": ap, "bbox/AP50": 0.0, "bbox/AP75": 0.0}}


# (folder, the record's JSON text or bytes, the key its reason must name)
ODD_RECORDS = [
    ("seed-string", json.dumps(_good_json(seed="2")), "key 'seed' is '2' (str), expected an integer"),
    ("seed-list", json.dumps(_good_json(seed=[3])), "key 'seed' is [3] (list)"),
    ("seed-bool", json.dumps(_good_json(seed=True)), "key 'seed' is True (bool)"),
    ("seed-float", json.dumps(_good_json(seed=4.5)), "key 'seed' is 4.5 (float)"),
    ("deviation-number", json.dumps(_good_json(protocol={"full": False, "deviations": [3]})),
     "key 'protocol.deviations[0]' is 3 (int), expected a string"),
    ("deviations-string", json.dumps(_good_json(protocol={"full": False, "deviations": "short run"})),
     "key 'protocol.deviations' is 'short run' (str), expected a list"),
    ("full-string", json.dumps(_good_json(protocol={"full": "yes", "deviations": []})), "key 'protocol.full'"),
    ("metrics-list", json.dumps(_good_json(metrics=[50.0])), "key 'metrics' is empty or not"),
    ("metric-string", json.dumps(_good_json(**_voc("57"))), "key 'metrics.bbox/AP' is '57' (str)"),
    ("metric-bool", json.dumps(_good_json(**_voc(True))), "key 'metrics.bbox/AP' is True (bool)"),
    ("metric-nan", json.dumps(_good_json(**_voc(float("nan")))), "key 'metrics.bbox/AP' is nan"),
    ("metric-inf", json.dumps(_good_json(**_voc(float("inf")))), "key 'metrics.bbox/AP' is inf"),
    ("weights-no-sha", json.dumps(_good_json(weights={"path": "w.pth", "label": "X"})), "key 'weights' lacks 'sha256'"),
    ("weights-sha-number", json.dumps(_good_json(weights={**OURS, "sha256": 12})), "key 'weights.sha256' is 12"),
    ("weights-list", json.dumps(_good_json(weights=["w.pth"])), "key 'weights' is ['w.pth'] (list)"),
    ("label-number", json.dumps(_good_json(weights={**OURS, "label": 7})), "key 'weights.label' is 7 (int)"),
    ("format-number", json.dumps(_good_json(weights={**OURS, "format": 1})), "key 'weights.format' is 1 (int)"),
    ("task-list", json.dumps(_good_json(task=["voc"])), "key 'task' is ['voc'] (list)"),
    ("schema-bool", json.dumps(_good_json(schema=True)), "key 'schema' is True (bool)"),
    ("config-string", json.dumps(_good_json(config="lr=0.1")), "key 'config' is 'lr=0.1' (str)"),
    ("schedule-list", json.dumps(_good_json("semisup-1", config={"schedule": ["cosine"]})),
     "key 'config.schedule' is ['cosine'] (list)"),
    ("config-sha-none", json.dumps(_good_json(config_sha256=None)), "key 'config_sha256' is None"),
    ("world-size-zero", json.dumps(_good_json(world_size=0)), "key 'world_size' is 0 (int), expected a positive"),
    ("extra-list", json.dumps(_good_json(extra=[1])), "key 'extra' is [1] (list)"),
    ("a-list", json.dumps([_good_json()]), "expected a JSON object, got list"),
    ("null", "null", "expected a JSON object, got NoneType"),
    ("not-utf8", b'{"seed": "\xff"}', "not UTF-8 text"),
    ("nested", "[" * 100000 + "]" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize("folder, text, reason", ODD_RECORDS, ids=[case[0] for case in ODD_RECORDS])
def test_validate_names_the_key_and_what_was_expected(tmp_path, folder, text, reason):
    path = tmp_path / "result.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ResultError) as error:
        load_result(path)
    assert str(error.value).startswith(f"{path}: ") and reason in str(error.value)


def test_records_written_by_the_runners_stay_valid():
    """Every shape make_record writes (and older records without format, best-epoch metrics or schedule)."""
    for made in (record("voc", {}, 1), record("linear", {"top1": 1.0, "top1_best": 2.0, "top5_best": 3.0}, 0),
                 record("semisup-1", {}, 0, weights={**OURS, "format": "moco"}, config={"schedule": "paper-step"}),
                 record("coco", {}, 2, deviations=COCO_DEMO)):
        validate({k: v for k, v in made.items() if k != "_path"}, "x")


def test_one_odd_result_json_never_crashes_the_report(tmp_path, capsys):
    """Fault injection: every odd record beside good ones, seeds of mixed types in one group among them; the
    report is written, each odd file listed under "left out" with its reason, the good runs in their rows."""
    results = tmp_path / "runs"
    write_run(results, "good/seed1", "voc", {"bbox/AP": 50.0}, 1)
    write_run(results, "good/seed3", "voc", {"bbox/AP": 52.0}, 3)
    for folder, text, _ in ODD_RECORDS:
        (results / folder).mkdir(parents=True)
        (results / folder / "result.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    problems = build_report([results], tmp_path / "out")
    for folder, _, reason in ODD_RECORDS:
        assert any(p.startswith(f"{results / folder / 'result.json'}: ") and reason in p for p in problems), folder
    assert len(problems) == len(ODD_RECORDS)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## Left out" in readme and all(render.md_escape(p) in readme for p in problems)
    ours = read_csv(tmp_path / "out" / "table4_detection.csv")["Barlow Twins (this suite)"]
    assert (ours["voc:bbox/AP"], ours["voc:bbox/AP:n"], ours["seeds"]) == ("51.0", "2", "voc: 1 3")
    assert "warning: " in capsys.readouterr().out


# ---------------------------------------------------------------- the output folder, written as one set

def test_a_missing_results_folder_is_an_error_and_nothing_is_written(tmp_path):
    out = tmp_path / "tables"
    with pytest.raises(SystemExit) as exit_:
        report_main(["--results", str(tmp_path / "runs"), "--out", str(out)])
    assert exit_.value.code == f"error: --results {tmp_path / 'runs'}: no such folder"    # one line, status 1
    assert not out.exists()
    build_report([], out)                                   # an earlier report stays as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "file").write_text("")
    for results, logs, message in (([tmp_path / "runs"], [], "no such folder"), ([tmp_path / "file"], [], "not a folder"),
                                   ([], [tmp_path / "nolog"], "--pretrain-log")):
        with pytest.raises(ReportError, match=message):
            build_report(results, out, logs)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tables"]


def test_results_given_alone_write_the_papers_tables(tmp_path):
    report_main(["--results", "--out", str(tmp_path / "tables")])
    assert "**No results found** (no results folder given)" in (tmp_path / "tables" / "README.md").read_text()


def test_a_failure_halfway_leaves_the_previous_set_whole(tmp_path, monkeypatch):
    results, out = tmp_path / "runs", tmp_path / "tables"
    write_run(results, "voc/seed1", "voc", {"bbox/AP": 50.0}, 1)
    build_report([results], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_run(results, "linear", "linear", {"top1": 70.0, "top5": 90.0}, 0)     # new inputs change every table

    def fail(table, path):
        if table.spec.name == "table2_semisup":             # after table 1 has been written
            raise OSError("disk full")
        real_plot_table(table, path)

    real_plot_table = plots.plot_table
    monkeypatch.setattr(plots, "plot_table", fail)
    with pytest.raises(OSError, match="disk full"):
        build_report([results], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tables"]           # nothing left aside


def test_an_output_folder_holding_other_files_is_refused(tmp_path):
    """The output folder is replaced as a whole: one holding anything else than an earlier report is refused."""
    notes, report, lookalike = tmp_path / "notes", tmp_path / "report", tmp_path / "lookalike"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    with pytest.raises(ReportError, match="notes holds mine.txt, not written by this report"):
        build_report([], notes)
    build_report([], report)
    (report / "runs").mkdir()                                   # an earlier report, and something of the user's
    with pytest.raises(ReportError, match="report holds runs, not written by this report"):
        build_report([], report)
    lookalike.mkdir()
    (lookalike / "table1_linear.md").write_text("my own table")
    with pytest.raises(ReportError, match="lookalike has no README.md written by this report"):
        build_report([], lookalike)
    assert (notes / "mine.txt").read_text() == "keep me" and (report / "runs").is_dir()
    assert (lookalike / "table1_linear.md").read_text() == "my own table"


# ---------------------------------------------------------------- protocol variants, last or best epoch

def test_cosine_and_paper_step_semisup_runs_are_never_averaged():
    cosine = [record("semisup-1", {"top1": 50.0}, seed, config={"schedule": "cosine"}) for seed in (1, 2)]
    older = record("semisup-1", {"top1": 53.0}, 3)                     # written before the key: the default
    step = record("semisup-1", {"top1": 60.0}, 4, config={"schedule": "paper-step"})
    built = table("table2_semisup", [*cosine, older, step])
    default, variant = built.run_rows
    assert default.cells["semisup-1:top1"].mean == pytest.approx(51.0) and default.cells["semisup-1:top1"].n == 3
    assert variant.cells["semisup-1:top1"].mean == 60.0 and variant.cells["semisup-1:top1"].n == 1
    assert default.marker == "" and variant.marker == "a" and variant.full_protocol   # the paper's own variant
    assert "paper's step schedule" in built.footnotes[0][1] and "never averaged" in built.footnotes[0][1]
    assert "| Barlow Twins (this suite)<sup>a</sup> | **60.0** |" in render.markdown(built)
    rows = [r for r in csv.DictReader(io.StringIO(render.csv_text(built))) if r["kind"] == "run"]
    assert [r["variant"] for r in rows] == ["", "schedule paper-step"]


def test_tables_show_the_last_or_the_best_epoch_and_say_which():
    runs = [record("linear", {"top1": 70.0, "top5": 90.0, "top1_best": 71.0, "top5_best": 90.5}, 0)]
    last, best = table("table1_linear", runs), table("table1_linear", runs, epoch="best")
    assert last.run_rows[0].cells["linear:top1"].mean == 70.0 and best.run_rows[0].cells["linear:top1"].mean == 71.0
    assert "Our accuracies are the last epoch's" in render.markdown(last)
    assert "Our accuracies are the best epoch's" in render.markdown(best) and "best epoch" in render.latex(best)
    assert read_rows(render.csv_text(best))["Barlow Twins (this suite)"]["epoch"] == "best"
    assert table("table4_detection", [record("voc", {}, 1)], epoch="best").epoch is None    # no epochs in Table 4
    older = record("linear", {"top1": 70.0, "top5": 90.0}, 1)
    groups, problems = aggregate.group_runs([older], "best")
    assert groups == [] and "no top1_best, top5_best" in problems[0] and "--metric best" in problems[0]


def test_metric_option_reaches_the_tables(tmp_path):
    results = tmp_path / "runs"
    write_run(results, "linear", "linear", {"top1": 70.0, "top5": 90.0, "top1_best": 71.0, "top5_best": 90.5}, 0)
    report_main(["--results", str(results), "--out", str(tmp_path / "best"), "--metric", "best"])
    assert read_csv(tmp_path / "best" / "table1_linear.csv")["Barlow Twins (this suite)"]["linear:top1"] == "71.0"
    assert "--metric best" in (tmp_path / "best" / "README.md").read_text()


def read_rows(text):
    return {row["method"]: row for row in csv.DictReader(io.StringIO(text))}


# ---------------------------------------------------------------- provenance, labels that could break a table

def test_provenance_names_the_checkpoint_format_and_its_hash(tmp_path):
    results = tmp_path / "runs"
    moco = {"path": "moco_v2_800ep.pth.tar", "sha256": "ef" * 32, "label": "MoCo v2 (ours)", "format": "moco"}
    write_run(results, "moco/seed1", "voc", {"bbox/AP": 57.0}, 1, weights=moco)
    write_run(results, "old/seed1", "voc", {"bbox/AP": 56.0}, 1)                 # an older record: no format
    build_report([results], tmp_path / "out")
    section = (tmp_path / "out" / "README.md").read_text().split("## Our runs")[1]
    assert f"| MoCo v2 (ours) | moco | `{'ef' * 32}` | voc | default | 1 | full |" in section
    assert f"| Barlow Twins (this suite) | - | `{'ab' * 32}` | voc |" in section
    methods = read_csv(tmp_path / "out" / "table4_detection.csv")
    assert methods["MoCo v2 (ours)"]["weights_sha256"] == "ef" * 32


def _md_tables(text):
    """The Markdown tables of ``text``: runs of consecutive lines that start with a pipe."""
    blocks = [[]]
    for line in text.split("\n"):
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def _md_cells(line):
    """The cells of a Markdown table line, split at the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_labels_with_a_newline_a_pipe_or_markup_break_no_table(tmp_path):
    label = "A|B\nC $x^$ <b>_u"
    odd = {"path": "w.pth", "sha256": "12" * 32, "label": label}
    results = tmp_path / "runs"
    write_run(results, "odd/seed1", "voc", {"bbox/AP": 57.0}, 1, weights=odd, deviations=["x | y\nz"])
    write_run(results, "odd-lin", "linear", {"top1": 70.0, "top5": 90.0}, 0, weights={**odd, "label": "_hidden"})
    jsonl(results / "odd/seed1/metrics.json", [{"iteration": 1, "total_loss": 1.0}])
    build_report([results], tmp_path / "out")
    out = tmp_path / "out"
    for name in ("table4_detection.md", "table1_linear.md", "README.md"):
        for block in _md_tables((out / name).read_text()):
            assert len({len(_md_cells(line)) for line in block}) == 1, block     # every row as wide as the header
    markdown = (out / "table4_detection.md").read_text()
    assert r"| A\|B C $x^$ &lt;b>_u<sup>a</sup> | 57.0 |" in markdown
    assert r"x \| y z" in markdown
    tex = (out / "table4_detection.tex").read_text()
    assert r"A\textbar{}B C \$x\textasciicircum{}\$ \textless{}b\textgreater{}\_u\textsuperscript{a}" in tex
    assert tex.count("{") == tex.count("}") and "\n\n" not in tex
    rows = read_csv(out / "table4_detection.csv")
    assert rows["A|B C $x^$ <b>_u"]["voc:bbox/AP"] == "57.0"
    assert len((out / "table4_detection.csv").read_text().splitlines()) == len(rows) + 1     # one line a row
    assert plots.plain("$x^$") == r"\$x^\$" and plots.plain("_hidden") == " _hidden"     # literal, in the legend
    assert (out / "table1_linear.png").stat().st_size > 0 and (out / "curves_voc.png").stat().st_size > 0


# ---------------------------------------------------------------- training curves

def test_a_log_keeps_the_later_line_of_a_repeated_step_and_skips_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 0, "loss": 9.0}, {"step": 1, "loss": 8.0}, {"step": 2, "loss": 7.9},     # killed after step 2,
             {"step": 1, "loss": 7.5}, {"step": 2, "loss": 7.0, "knn_top1": 20.0},            # resumed from step 1
             {"step": True, "loss": 1.0}, {"step": 3.0, "loss": 1.0}, {"step": 4, "loss": "x"}, [5], 6]
    jsonl(path, lines, tail='{"step": 3, "lo')
    assert curves.read_log(path, "step", lambda name: name in ("loss", "knn_top1")) == {
        "knn_top1": ((2,), (20.0,)), "loss": ((0, 1, 2), (9.0, 7.5, 7.0))}


def test_curves_of_every_stage_with_seeds_around_their_mean_and_unfinished_runs_marked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # the records name the pretraining's export relative to here
    results = Path("runs")
    write_scenario(results)
    jsonl(results / "semisup-10-step/metrics.jsonl", [{"epoch": 1, "loss": 1.0, "top1": 60.0, "top5": 80.0}])
    unfinished = results / "linear-killed"                           # an evaluation killed after 2 epochs
    jsonl(unfinished / "metrics.jsonl", [{"epoch": 1, "top1": 10.0}, {"epoch": 2, "top1": 20.0}], tail='{"epo')
    (unfinished / "args.json").write_text(json.dumps({"mode": "linear", "label": "killed", "seed": 5,
                                                      "weights_sha256": "ab" * 32, "schedule": "cosine"}))
    records, _ = collect_results([results])
    runs, problems = curves.find_runs([results], records=records)
    figures = curves.group_curves(runs)
    assert list(figures) == ["pretrain", "linear", "semisup-10", "voc"]
    (voc,) = figures["voc"]
    assert voc.label == OURS["label"] and [r.seed for r in voc.runs] == [1, 2, 3, 4]
    assert [r.finished for r in voc.runs] == [True, True, True, False]     # seed 4: no result.json, still drawn
    assert voc.mean("bbox/AP") == ((99,), (pytest.approx(57.0),))           # the three seeds that evaluated
    xs, ys = voc.mean("total_loss")
    assert xs == (19, 39, 59, 79, 99) and ys[0] == pytest.approx(2.0 - 0.19 - 0.02)   # of the finished seeds
    assert any(p.startswith(f"{results / 'transfer-voc/seed4'}: ") and "drawn as unfinished" in p for p in problems)
    linear = {g.label: g for g in figures["linear"]}
    assert not linear["killed"].runs[0].finished and linear["killed"].runs[0].series["top1"] == ((1, 2), (10.0, 20.0))
    assert figures["semisup-10"][0].variant == (("schedule", "paper-step"),)
    (pretrain,) = figures["pretrain"]
    assert pretrain.label == DEMO["label"] and pretrain.runs[0].finished      # named like the runs of its export
    assert pretrain.runs[0].series["knn_top1"] == ((29,), (31.0,))
    assert [name for name, _ in curves.panels("voc", figures["voc"])] == [
        "total_loss", "loss_box_reg", "loss_cls", "bbox/AP", "bbox/AP50"]
    text = render.curves_csv("voc", figures["voc"], curves.panels("voc", figures["voc"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {(r["seed"], r["finished"]) for r in rows if r["run"].endswith("seed4")} == {("4", "false")}
    assert [r["value"] for r in rows if r["run"] == "mean" and r["metric"] == "bbox/AP"] == ["57.0"]
    assert {r["seed"] for r in rows if r["run"] == "mean" and r["metric"] == "bbox/AP"} == {"1 2 3"}


def test_unreadable_logs_are_left_out_with_a_reason(tmp_path):
    results = tmp_path / "runs"
    jsonl(results / "voc/seed1/metrics.json", [{"iter": 1, "total_loss": 1.0}])          # no iteration key
    (results / "voc/seed1/config.yaml").write_text("  TRAIN:\n  - coco_2017_train\n")
    (results / "voc/seed2").mkdir()
    (results / "voc/seed2/metrics.json").write_bytes(b'{"iteration": 1, "total_loss": \xff}\n')
    (results / "voc/seed2/config.yaml").write_text("  TRAIN:\n  - voc_2007_trainval\n")
    (results / "voc/seed3").mkdir()
    (results / "voc/seed3/metrics.json").write_text("")                                   # just started
    runs, problems = curves.find_runs([results])
    assert runs == []
    assert f"{results / 'voc/seed1/metrics.json'}: no line with an integer 'iteration'" in problems[0]
    assert f"{results / 'voc/seed2/metrics.json'}: cannot be read" in problems[2]
    assert len(problems) == 5 and sum("no result.json" in p for p in problems) == 3
