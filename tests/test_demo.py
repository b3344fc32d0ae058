"""`make demo` end to end, with a few steps per stage: every runner's real CLI, chained through the
files each writes, ends in a report whose tables hold our rows, marked off-protocol, beside the paper's."""
import csv
import json
import shlex
import subprocess
import sys

from bt_transfer.demo import LABEL, stages


def test_demo_runs_every_stage_and_reports_our_rows_beside_the_papers(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "bt_transfer.demo", "--out", str(out), "--fast", "--seeds", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"report: {out / 'tables' / 'README.md'}" in done.stdout

    tables = out / "tables"
    for name, paper_bt_row in (("table1_linear", "Barlow Twins (paper)"), ("table2_semisup", "Barlow Twins (paper)"),
                               ("table4_detection", "BT (paper)")):
        rows = {row["method"]: row for row in csv.DictReader((tables / f"{name}.csv").open())}
        assert rows[paper_bt_row]["kind"] == "paper", name
        assert rows[LABEL]["kind"] == "run" and rows[LABEL]["protocol"] == "deviates", name
        for suffix in (".md", ".tex", ".png"):
            assert (tables / f"{name}{suffix}").stat().st_size > 0
        markdown = (tables / f"{name}.md").read_text()
        # Our row carries a footnote marker, and the footnote says why it is not the paper's protocol.
        assert f"| {LABEL}<sup>a</sup> |" in markdown, name
        assert "Not the paper's protocol" in markdown and "generated data" in markdown, name
    detection = (tables / "table4_detection.md").read_text()
    assert "not the benchmark's data: voc_2007_trainval" in detection and "coco_2017_val" in detection
    for stage in ("pretrain", "voc", "coco", "linear", "semisup-1", "semisup-10"):      # training curves, each stage
        assert (tables / f"curves_{stage}.png").stat().st_size > 0 and (tables / f"curves_{stage}.csv").is_file()
    assert "pretraining" in (tables / "README.md").read_text().lower()


def test_full_demo_trains_detection_long_enough_to_learn_and_fast_demo_does_not(tmp_path):
    """The demo's detection schedules, resolved by the transfer runner itself: 300 VOC and 200 COCO training images,
    where AP50 was measured clearly above 0 (the --smoke preset's 8 images score 0.0); --fast keeps 2 iterations."""
    def resolved_solvers(fast):
        benchmark_argv = dict(stages(tmp_path, [1], fast=fast))["benchmark"]
        stage_args = dict(value.split("=", 1) for flag, value in zip(benchmark_argv, benchmark_argv[1:])
                          if flag == "--stage-args")
        for task in ("voc", "coco"):
            done = subprocess.run([sys.executable, "-m", "bt_transfer.transfer", task, "--dry-run", "--num-gpus", "0",
                                   *shlex.split(stage_args[task])], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
            yield task, json.loads(done.stdout)["config"]

    for task, config in resolved_solvers(fast=False):
        solver = config["SOLVER"]
        assert solver["MAX_ITER"] * solver["IMS_PER_BATCH"] == {"voc": 300, "coco": 200}[task], task
        assert config["TEST"]["PRECISE_BN"]["NUM_ITER"] == 20, task
    for task, config in resolved_solvers(fast=True):
        assert config["SOLVER"]["MAX_ITER"] == 2, task
