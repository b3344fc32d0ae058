"""The report (bt_transfer.report): paper tables, seed aggregation, marks, deltas, footnotes, bad inputs, goldens.

Golden files live in tests/golden/report/. After an intended change of the output, regenerate them with

    BT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py -k golden

and review the diff before committing it.
"""
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bt_transfer.report import aggregate, paper, render
from bt_transfer.report import build as report
from bt_transfer.report.build import build_report
from bt_transfer.core.records import METRIC_KEYS, make_record, write_result

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


def record(task, metrics, seed, weights=OURS, deviations=(), path=None):
    """A validated record as collect_results returns it; metrics the task needs but the test leaves out are 0."""
    full = {key: 0.0 for key in METRIC_KEYS[task]} | metrics
    made = make_record(task, full, seed, weights, {"seed": seed}, 1, deviations)
    return {**made, "_path": path or f"runs/{weights['label']}/{task}/seed{seed}/result.json"}


def write_run(root, folder, *args, **kwargs):
    rec = record(*args, **kwargs)
    del rec["_path"]
    write_result(Path(root) / folder, rec)


def table(name, records):
    groups, problems = aggregate.group_runs(records)
    assert problems == []
    spec = next(s for s in paper.TABLES if s.name == name)
    return aggregate.build_table(spec, paper.load_paper_rows()[name], groups)


def read_csv(path):
    return {row["method"]: row for row in csv.DictReader(io.StringIO(Path(path).read_text()))}


def write_scenario(root):
    """Full-protocol VOC (3 seeds) and COCO (1 seed) runs, demo runs off the protocol, a linear and a 1% run."""
    for seed, ap in [(1, 56.9), (2, 57.3), (3, 56.8)]:
        write_run(root, f"transfer-voc/seed{seed}", "voc", {"bbox/AP": ap, "bbox/AP50": 82.9, "bbox/AP75": 63.1}, seed)
    write_run(root, "transfer-coco/seed1", "coco", {"bbox/AP": 39.4, "bbox/AP50": 59.0, "bbox/AP75": 42.3,
                                                    "segm/AP": 34.3, "segm/AP50": 55.9, "segm/AP75": 36.6}, 1)
    write_run(root, "linear", "linear", {"top1": 73.1, "top5": 91.2}, 0)
    write_run(root, "semisup-1", "semisup-1", {"top1": 54.2, "top5": 78.8}, 0,
              deviations=["subset drawn from seed 0 (class-balanced), not SimCLR's 1percent.txt"])
    for seed, ap in [(1, 1.2), (2, 1.6)]:
        write_run(root, f"demo/voc/seed{seed}", "voc", {"bbox/AP": ap, "bbox/AP50": 3.5, "bbox/AP75": 0.4}, seed,
                  weights=DEMO, deviations=VOC_DEMO)
    write_run(root, "demo/coco/seed1", "coco", {"bbox/AP": 2.0, "segm/AP": 1.5}, 1, weights=DEMO, deviations=COCO_DEMO)


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
    (Path("runs/demo/pretrain")).mkdir(parents=True)
    Path("runs/demo/pretrain/args.json").write_text("{}\n")
    Path("runs/demo/pretrain/metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "epoch": 0, "loss": 5000.0 / (s + 1), "lr": 0.2}) + "\n" for s in range(30)))
    build_report(["runs"], "tables")
    names = [f"{n}.{ext}" for n in TABLE_NAMES for ext in ("md", "csv", "tex")] + ["README.md"]
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name in names:
            (GOLDEN / name).write_bytes((Path("tables") / name).read_bytes())
    for name in names:
        assert (Path("tables") / name).read_text() == (GOLDEN / name).read_text(), (
            f"{name} differs from tests/golden/report/{name}; if intended, rerun with BT_UPDATE_GOLDEN=1")
    assert Path("tables/pretrain_loss.png").stat().st_size > 0


def test_reruns_are_byte_identical_and_a_stale_loss_plot_is_removed(tmp_path):
    results = tmp_path / "runs"
    write_scenario(results)
    log = tmp_path / "pretrain"
    log.mkdir()
    (log / "args.json").write_text("{}")
    (log / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 10.0 - s}) + "\n" for s in range(5)))
    first, second = tmp_path / "first", tmp_path / "second"
    build_report([results], first, pretrain_logs=[log])
    build_report([results], second, pretrain_logs=[log])
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir()) and "pretrain_loss.png" in files
    assert not [p for p in first.iterdir() if p.name.startswith(".")]          # no temporary files left
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    build_report([results], first)                              # the log is gone: its plot must go too
    assert not (first / "pretrain_loss.png").exists()
    assert "pretrain_loss.png" not in (first / "README.md").read_text()


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
    problems = build_report([results, tmp_path / "nowhere"], tmp_path / "out")

    expected = {
        "runs/invalid/result.json": "not valid JSON", "runs/missing-keys/result.json": "missing key(s)",
        "runs/no-metrics/result.json": "key 'metrics' is empty", "runs/voc/seed1b/result.json": "seed 1 already",
        "runs/linear-out-of-range/result.json": "outside [0, 100]", "runs/voc/seed2": "no result.json",
        "nowhere": "no such folder",
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


def test_loss_curve_of_a_resumed_pretraining_keeps_the_later_lines(tmp_path):
    resumed, empty = tmp_path / "resumed", tmp_path / "empty"
    for folder in (resumed, empty):
        folder.mkdir()
        (folder / "args.json").write_text("{}")
    lines = [{"step": 0, "loss": 9.0}, {"step": 1, "loss": 8.0}, {"step": 1, "loss": 7.5}, {"step": 2, "loss": 7.0}]
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "lo')
    (empty / "metrics.jsonl").write_text('{"epoch": 0, "top1": 1.0}\n')
    assert report.is_pretrain_log(resumed) and not report.is_pretrain_log(empty)
    curves, problems = report.loss_curves([resumed, empty])
    assert curves == [(str(resumed), [0, 1, 2], [9.0, 7.5, 7.0])]
    assert problems == [f"{empty / 'metrics.jsonl'}: no line with an integer 'step' and a numeric 'loss'; no loss curve"]
