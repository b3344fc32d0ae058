"""The environment the suite stands on: Detectron2 0.6 from .venv with its compatibility edits, and the
small shared modules (atomic files, progress, result records)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bt_transfer.core import fileio, progress, provenance
from bt_transfer.core import records as results
from bt_transfer.datasets.facts import generated_manifest

ROOT = Path(__file__).resolve().parent.parent
PURE_PYTHON_BUILD = "purepy" in __import__("importlib.metadata").metadata.version("detectron2")


def test_detectron2_06_is_imported_from_the_project_environment():
    import detectron2

    assert detectron2.__version__.startswith("0.6")
    assert Path(detectron2.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())


@pytest.mark.skipif(not PURE_PYTHON_BUILD, reason="a full Detectron2 build has the real compiled _C")
def test_compiled_stand_in_answers_environment_queries_and_names_compiled_ops():
    import torch
    from detectron2 import _C
    from detectron2.layers import nms_rotated
    from detectron2.utils.collect_env import collect_env_info

    assert "pure-Python" in _C.get_compiler_version() and _C.has_cuda() is False
    assert "pure-Python" in collect_env_info()  # reached from engine.default_setup on every run
    with pytest.raises(NotImplementedError, match=r"detectron2\._C\.deform_conv_forward .*compiled-only"):
        _C.deform_conv_forward
    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(NotImplementedError, match="nms_rotated"):
        nms_rotated(boxes, torch.ones(1), 0.5)


def test_compatibility_edits_are_live():
    from PIL import Image

    from detectron2.data.common import MapDataset
    from detectron2.data.transforms import ExtentTransform
    from detectron2.model_zoo import get_config_file

    assert ExtentTransform((0, 0, 1, 1), (1, 1)).interp == Image.BILINEAR  # Pillow 10 dropped LINEAR
    assert Path(get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")).is_file()  # no pkg_resources
    # A sample whose mapper returns None (an unreadable image) is replaced by another one; on Python 3.11
    # the unpatched random.sample(set) raised TypeError here.
    dataset = MapDataset(list(range(4)), lambda i: None if i == 0 else i)
    assert dataset[0] in (1, 2, 3)


def test_build_refuses_an_sdist_whose_code_differs(tmp_path):
    spec = importlib.util.spec_from_file_location("d2_build", ROOT / "third_party" / "detectron2" / "build.py")
    d2_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(d2_build)
    rel, old, _ = d2_build.EDITS[0]
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("nothing to patch here\n")
    with pytest.raises(SystemExit, match="expected exactly one occurrence"):
        d2_build.apply_edits(tmp_path)


def test_setup_is_up_to_date_so_a_second_run_does_nothing():
    if not (ROOT / ".venv" / ".bt-transfer-setup").exists():
        pytest.skip("environment not made by `make setup`")
    assert subprocess.run(["make", "-q", "setup"], cwd=ROOT).returncode == 0


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    fileio.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~fileio._umask()  # not mkstemp's 0600


def test_metrics_log_survives_a_torn_last_line_and_progress_shows_eta(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    with progress.MetricsLog(path) as log:
        log.write(step=1, loss=2.0)
        log.write(step=2, loss=1.5)
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a run killed mid-line
    assert [r["loss"] for r in progress.read_metrics(path)] == [2.0, 1.5]
    assert progress.peak_memory_gb("cpu") == progress.peak_rss_gb() > 0  # no GPU: the process's peak RSS
    meter = progress.Progress(total=100, name="train", unit="img", stream=sys.stdout)
    line = meter.update(10, items_per_step=8, force=True)
    assert line.startswith("train 10/100 |") and "img/s" in line and "ETA" in line and "GB" in line


def _record(**changes):
    record = results.make_record(
        task="voc", metrics={"bbox/AP": 50.0, "bbox/AP50": 80.0, "bbox/AP75": 55.0}, seed=1,
        weights={"path": "w.pkl", "sha256": "0" * 64, "label": "BT"}, config={"SOLVER": {"MAX_ITER": 24000}},
        world_size=8,
    )
    record.update(changes)
    return record


def test_result_records_round_trip_and_reject_bad_input(tmp_path):
    good = _record()
    assert good["protocol"] == {"full": True, "deviations": []}
    results.write_result(tmp_path / "run1", good)
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "result.json").write_text("{not json")
    results.write_result(tmp_path / "run3", {**good, "protocol": {"full": False, "deviations": ["4 iterations"]}})
    (tmp_path / "run4").mkdir()
    (tmp_path / "run4" / "result.json").write_text(json.dumps({**good, "metrics": {}}))
    records, problems = results.collect_results([tmp_path, tmp_path / "absent"])
    assert [Path(r["_path"]).parent.name for r in records] == ["run1", "run3"]
    assert len(problems) == 3
    assert "run2/result.json: not valid JSON" in problems[0]
    assert "run4/result.json: key 'metrics' is empty" in problems[1]
    assert "absent: no such folder" in problems[2]
    with pytest.raises(results.ResultError, match="lacks bbox/AP75"):
        results.validate(_record(metrics={"bbox/AP": 1.0, "bbox/AP50": 1.0}), "x.json")
    with pytest.raises(results.ResultError, match="protocol.full"):
        results.validate(_record(protocol={"full": True, "deviations": ["generated data"]}), "x.json")
    with pytest.raises(results.ResultError, match="x.json: missing key\\(s\\) seed"):
        results.validate({k: v for k, v in good.items() if k != "seed"}, "x.json")


def test_evaluations_of_a_short_pretraining_on_generated_data_are_not_full_protocol(tmp_path):
    data = tmp_path / "data"
    (data / "imagenet" / "train").mkdir(parents=True)
    (data / "synthetic.json").write_text("{}")
    manifest = generated_manifest(data / "imagenet" / "train")
    assert manifest == data / "synthetic.json" and generated_manifest(tmp_path) is None
    run = tmp_path / "pretrain"
    fileio.write_json(run / "args.json", {"epochs": 2, "batch_size": 2048, "projector": "512-512",
                                         "lambd": 0.0051, "image_size": 224, "max_steps": None,
                                         "grad_scaling": "paper", "jpeg_draft": False,
                                         "data": str(data / "imagenet" / "train"), "generated_data": str(manifest)})
    args = provenance.read_pretraining_args(run / "resnet50.pth")
    assert provenance.pretraining_deviations(args) == [
        "backbone pretrained with epochs 2 (paper: 1000)",
        "backbone pretrained with projector 512-512 (paper: 8192-8192-8192)",
        f"backbone pretrained on generated data ({data / 'imagenet' / 'train'})",
    ]
    # Weights from elsewhere (no pretraining record beside them) add nothing; an evaluation's args.json is not one.
    assert provenance.read_pretraining_args(tmp_path / "resnet50.pth") is None
    fileio.write_json(tmp_path / "linear" / "args.json", {"mode": "linear", "epochs": 100})
    assert provenance.read_pretraining_args(tmp_path / "linear" / "resnet50.pth") is None
    assert provenance.pretraining_deviations(None) == []
