"""The front door (python -m bt_transfer.benchmark): plan, local runs that skip finished stages and survive a
failing one, the SLURM path through submitit's local executor, and status. The whole chain on every task is
tests/test_demo.py (the demo goes through this command)."""
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from bt_transfer.benchmark import cluster
from bt_transfer.benchmark.__main__ import main
from bt_transfer.benchmark.stages import build_stages
from bt_transfer.core.records import load_result

TINY = "--epochs 1 --image-size 32 --val-resize 36 --batch-size 32 --workers 0"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.manual_seed(0)
    torch.save({k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}, path)
    return path


def benchmark(weights, out, *options):
    return ["--weights", str(weights), "--label", "tiny run", "--out", str(out), "--gpus", "0", *options]


def test_plan_lists_every_stage_with_its_command_gpus_and_estimate(weights, tmp_path, capsys):
    main(benchmark(weights, tmp_path / "out", "--gpus", "8", "--plan"))
    text = capsys.readouterr().out
    for stage in ("linear", "semisup-1", "semisup-10", "voc", "coco", "report"):
        assert f"\n{stage} " in text
    assert "-m torch.distributed.run --standalone --nproc_per_node=8 -m pretrain.evaluate --mode linear" in text
    assert "-m bt_transfer.transfer coco" in text and "--seeds 1 2 3 4 5 --num-gpus 8" in text
    assert "Detectron2 MODEL_ZOO.md R50-C4 1x" in text and "NVIDIA DeepLearningExamples" in text
    assert not (tmp_path / "out").exists()  # runs nothing


def test_slurm_stages_are_one_job_per_detection_seed():
    options = dict(weights="w.pth", label="x", fmt="auto", out="o", tasks=["voc", "coco"], seeds=[1, 2],
                   coco_seeds=[3], gpus=8, data="d", datasets_root=None, subset_files={}, stage_args={})
    names = [(s.name, s.seeds) for s in build_stages(options, per_seed=True)]
    assert names == [("voc-seed1", (1,)), ("voc-seed2", (2,)), ("coco-seed3", (3,)), ("report", ())]


def test_bad_weights_and_options_stop_before_any_stage(tmp_path):
    resnet18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet18)
    with pytest.raises(SystemExit, match=r"^error: .*resnet18.pth: .*ResNet-18"):
        main(benchmark(resnet18, tmp_path / "out"))
    with pytest.raises(SystemExit, match=r"^error: --stage-args lineer=...: unknown task"):
        main(benchmark(resnet18, tmp_path / "out", "--stage-args", "lineer=--epochs 1"))
    assert not (tmp_path / "out").exists()


def test_a_failing_stage_does_not_stop_the_others_and_a_rerun_skips_finished_ones(weights, generated_data,
                                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    argv = benchmark(weights, out, "--tasks", "voc", "linear", "--data", str(generated_data / "imagenet"),
                     "--datasets-root", str(generated_data), "--seeds", "1", "--stage-args", f"linear={TINY}",
                     "--stage-args", "voc=--smoke --opts SOLVER.NO_SUCH_KEY 1")
    with pytest.raises(SystemExit, match=r"^error: 1 stage\(s\) failed: voc"):
        main(argv)
    table = capsys.readouterr().out.split("\nstage ")[-1]
    assert "voc     failed" in table and f"see {out / 'logs' / 'voc.log'}" in table
    assert "linear  done" in table and "report  done" in table
    assert "SOLVER.NO_SUCH_KEY" in (out / "logs" / "voc.log").read_text()
    assert load_result(out / "linear" / "result.json")["weights"]["label"] == "tiny run"
    assert (out / "tables" / "table1_linear.md").is_file()

    with pytest.raises(SystemExit):
        main(argv)
    table = capsys.readouterr().out.split("\nstage ")[-1]
    assert "linear  skipped" in table and "voc     failed" in table


def test_slurm_path_through_submitits_local_executor_and_status(weights, generated_data, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bt_transfer.benchmark", *benchmark(weights, out, "--tasks", "semisup-1",
               "--data", str(generated_data / "imagenet"), "--stage-args", f"semisup-1={TINY}",
               "--slurm", "--executor", "local", "--timeout-min", "30")]
    submitted = subprocess.run(command, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "submitted 2 jobs" in submitted.stdout
    deadline = time.monotonic() + 600
    while cluster.read_status(out, next(s for s in cluster.load_plan(out / cluster.PLAN_FILE)[0]
                                        if s.name == "report")) != "done":
        assert time.monotonic() < deadline, cluster.status(out)
        time.sleep(1)
    assert load_result(out / "semisup-1" / "result.json")["task"] == "semisup-1"
    assert (out / "tables" / "table2_semisup.md").is_file()
    shown = subprocess.run([sys.executable, "-m", "bt_transfer.benchmark", "status", str(out)],
                           capture_output=True, text=True, check=True).stdout
    assert [line.split()[:2] for line in shown.splitlines()[1:]] == [["semisup-1", "done"], ["report", "done"]]
