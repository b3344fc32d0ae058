"""Detection transfer end to end on CPU with real Detectron2, on generated data.

Convert a random ResNet-50 -> Faster R-CNN on VOC (killed after its first checkpoint, then
resumed: the same weights as an uninterrupted run) -> PascalVOCDetectionEvaluator -> result.json;
the checkpoint reloads and evaluates to the same AP; Mask R-CNN on COCO -> COCOEvaluator. Run
folders, model files and options that must be refused are refused before anything is written.
Test splits are cut to a few images (the evaluation dominates a CPU run); everything else is the
generated data as is.
"""
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bt_transfer.detection import protocol, runner as transfer, trainer as train_net
from bt_transfer.core.fileio import sha256_file, sha256_json
from bt_transfer.core.records import METRIC_KEYS, load_result
from bt_transfer.core.rundir import claim

SMALL, MEDIUM = 32**2, 96**2  # COCO's object-size ranges
TEST_OPTS = ("SOLVER.MAX_ITER", "2")  # on top of --smoke


def random_resnet50(path, arch="resnet50"):
    """torchvision weights with non-trivial BN statistics (random weights with unit BN train badly)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    torch.save(model.state_dict(), path)
    return path


def small_test_root(source, out, voc_test=6, coco_val=6):
    """A datasets root that links to ``source`` with shorter test splits (COCO: covering all object sizes)."""
    (out / "VOC2012").parent.mkdir(parents=True)
    os.symlink(source / "VOC2012", out / "VOC2012")
    voc = out / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for name in ("JPEGImages", "Annotations"):
        os.symlink(source / "VOC2007" / name, voc / name)
    main = source / "VOC2007" / "ImageSets" / "Main"
    shutil.copy(main / "trainval.txt", voc / "ImageSets" / "Main")
    test_ids = main.joinpath("test.txt").read_text().split()[:voc_test]
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(test_ids) + "\n")

    coco = out / "coco"
    (coco / "annotations").mkdir(parents=True)
    os.symlink(source / "coco" / "train2017", coco / "train2017")
    train_json = Path("annotations") / "instances_train2017.json"
    os.symlink(source / "coco" / train_json, coco / train_json)
    val = json.loads((source / "coco" / "annotations" / "instances_val2017.json").read_text())
    areas = {}
    for annotation in val["annotations"]:
        areas.setdefault(annotation["image_id"], set()).add(
            0 if annotation["area"] < SMALL else 1 if annotation["area"] < MEDIUM else 2)
    kept, seen = [], set()
    for image in val["images"]:
        if len(kept) < coco_val or seen != {0, 1, 2}:
            kept.append(image)
            seen |= areas.get(image["id"], set())
    ids = {image["id"] for image in kept}
    (coco / "val2017").mkdir()
    for image in kept:
        os.symlink(source / "coco" / "val2017" / image["file_name"], coco / "val2017" / image["file_name"])
    val.update(images=kept, annotations=[a for a in val["annotations"] if a["image_id"] in ids])
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_resnet50(tmp_path_factory.mktemp("weights") / "resnet50.pth")


@pytest.fixture(scope="module")
def voc_root(generated_data, tmp_path_factory):
    return small_test_root(generated_data, tmp_path_factory.mktemp("voc") / "datasets")


def transfer_args(task, weights, root, out, *opts):
    return [task, "--weights", str(weights), "--seeds", "1", "--num-gpus", "0", "--out", str(out),
            "--datasets-root", str(root), "--smoke", "--label", "random init", "--opts", *TEST_OPTS, *opts]


def kill_after_first_checkpoint(argv, folder, log, timeout=300):
    """Run the transfer CLI and SIGKILL it (and its training process) once iteration 0 is saved."""
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "bt_transfer.transfer", *argv], start_new_session=True,
                                   stdout=output, stderr=subprocess.STDOUT)
    marker, deadline = folder / "last_checkpoint", time.monotonic() + timeout
    try:
        while not (marker.is_file() and marker.read_text().strip() == "model_0000000.pth"):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no checkpoint of iteration 0 in {timeout} s"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone if the run stopped by itself
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def voc_run(weights, voc_root, tmp_path_factory):
    """One VOC run, killed after its first checkpoint and resumed by rerunning the same command."""
    out = tmp_path_factory.mktemp("transfer-voc")
    argv = transfer_args("voc", weights, voc_root, out, "SOLVER.CHECKPOINT_PERIOD", "1")
    kill_after_first_checkpoint(argv, out / "seed1", tmp_path_factory.mktemp("logs") / "killed-run.log")
    assert not (out / "seed1" / "result.json").exists()
    transfer.main(argv)
    return argv, out / "seed1"


def test_voc_result_record(voc_run, weights):
    _, folder = voc_run
    record = load_result(folder / "result.json")
    assert record["task"] == "voc" and record["seed"] == 1 and record["world_size"] == 1
    assert set(METRIC_KEYS["voc"]) <= set(record["metrics"])
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in record["metrics"].values())
    assert record["weights"] == {"path": str(weights), "sha256": sha256_file(weights), "label": "random init",
                                 "format": "torchvision"}
    assert record["config"] == yaml.safe_load((folder / "config.yaml").read_text())  # what Detectron2 ran
    assert record["config_sha256"] == sha256_json(record["config"])
    assert record["code_version"]
    deviations = record["protocol"]["deviations"]
    assert record["protocol"]["full"] is False
    assert deviations[0].startswith(
        "linear scaling rule for 1 GPU(s) x 2 images: batch 2 (protocol 16), BASE_LR 0.0125 (0.1)")
    assert deviations[1].startswith("plain BN on one process")
    for expected in ("SOLVER.MAX_ITER: 2 (protocol: 24000)", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE: 32 (protocol: 512)",
                     "INPUT.MIN_SIZE_TEST: 128 (protocol: 800)"):
        assert expected in deviations
    assert ("not the benchmark's data: voc_2007_trainval 60 images (real: 5011), voc_2012_trainval 60 images "
            "(real: 11540), voc_2007_test 6 images (real: 4952)") in deviations
    # A torchvision state dict with its classifier is supervised weights, and not the V1 ones of the "Sup." row.
    assert deviations[-1].startswith(f"supervised weights (sha256 {sha256_file(weights)}) are not torchvision's "
                                     "IMAGENET1K_V1 ResNet-50")
    assert record["protocol"]["notes"] == [
        "one process: plain BN instead of SyncBN for MODEL.RESNETS.NORM (the same statistics over the same images)"]


def test_voc_run_resumed_from_its_last_checkpoint(voc_run):
    _, folder = voc_run
    starts = [line.rsplit(" ", 1)[-1] for line in (folder / "log.txt").read_text().splitlines()
              if "Starting training from iteration" in line]
    assert starts == ["0", "1"]  # the killed run, then the resumed one: iteration 1 only
    assert load_result(folder / "result.json")["extra"]["resumed"] is True
    records = [json.loads(line) for line in (folder / "metrics.json").read_text().splitlines()]
    training = [r for r in records if "total_loss" in r]
    # The resumed run logs iteration 1; the killed one may have logged iteration 0 after its checkpoint.
    assert [r["iteration"] for r in training] in ([1], [0, 1])
    assert all(math.isfinite(r[k]) for r in training for k in r if k.startswith("loss") or k == "total_loss")
    assert training[0]["memory_gb"] > 0


@pytest.fixture(scope="module")
def uninterrupted_voc_run(voc_run, tmp_path_factory):
    """The same run as ``voc_run``, never interrupted."""
    argv, _ = voc_run
    out = tmp_path_factory.mktemp("transfer-voc-uninterrupted")
    transfer.main([*argv[:argv.index("--out") + 1], str(out), *argv[argv.index("--out") + 2:]])
    return out / "seed1"


def test_a_short_run_logs_every_iteration_for_its_curves_and_a_long_one_every_20(uninterrupted_voc_run):
    from bt_transfer.detection.trainer import metrics_period

    records = [json.loads(line) for line in (uninterrupted_voc_run / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1]
    assert len(list(uninterrupted_voc_run.glob("events.out.tfevents.*"))) == 1  # Detectron2's writers, not copies
    assert [metrics_period(n) for n in (2, 199, 500, 2000, 24000, 90000)] == [1, 1, 5, 20, 20, 20]


def _tensors(obj, prefix=""):
    """{path: tensor} of every tensor in a nested checkpoint, and {path: value} of everything else."""
    import torch

    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _tensors(value, f"{prefix}{key}/").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _tensors(value, f"{prefix}{i}/").items()}
    return {prefix: obj.clone() if isinstance(obj, torch.Tensor) else obj}


def test_a_run_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(voc_run, uninterrupted_voc_run):
    """Bit-exact on CPU with 0 workers: the optimizer state, the data stream and the random states carry over."""
    import torch

    _, folder = voc_run
    resumed = torch.load(folder / "model_final.pth", map_location="cpu", weights_only=True)
    uninterrupted = torch.load(uninterrupted_voc_run / "model_final.pth", map_location="cpu", weights_only=True)
    assert set(resumed["trainer"]) >= {"_trainer", "processes"}  # SGD momentum, stream positions, RNG states
    resumed, uninterrupted = _tensors(resumed), _tensors(uninterrupted)
    assert resumed.keys() == uninterrupted.keys()
    differing = [key for key, value in resumed.items()
                 if not (torch.equal(value, uninterrupted[key]) if isinstance(value, torch.Tensor)
                         else value == uninterrupted[key])]
    assert differing == []
    assert load_result(folder / "result.json")["metrics"] == load_result(uninterrupted_voc_run / "result.json")["metrics"]


def test_checkpoint_reloads_strictly_with_the_trained_weights(voc_run):
    import pickle

    import torch
    from detectron2.modeling import build_model

    _, folder = voc_run
    checkpoint = torch.load(folder / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 1
    cfg = protocol.resolve_config(protocol.CONFIGS["voc"], ["MODEL.DEVICE", "cpu"], world_size=1).cfg
    model = build_model(cfg)
    model.load_state_dict(checkpoint["model"], strict=True)  # every tensor, nothing left over
    converted_path = Path(load_result(folder / "result.json")["extra"]["converted_weights"])
    assert converted_path.parent == folder.parent and converted_path.name.startswith("backbone-")
    assert converted_path.name == f"backbone-{sha256_file(converted_path)[:12]}.pkl"  # named by its content
    with open(converted_path, "rb") as f:
        converted = pickle.load(f)["model"]
    trained = model.backbone.res2[0].conv1.weight.detach().numpy()
    assert trained.shape == converted["res2.0.conv1.weight"].shape
    assert not (trained == converted["res2.0.conv1.weight"]).all()  # fine-tuned, not the initial weights


def test_checkpoint_reloads_and_evaluates_to_the_recorded_ap(voc_run, voc_root, tmp_path, monkeypatch):
    _, folder = voc_run
    monkeypatch.setenv("DETECTRON2_DATASETS", str(voc_root))
    args = train_net.argument_parser().parse_args([
        "--config-file", str(protocol.CONFIGS["voc"]), "--num-gpus", "0", "--eval-only",
        *protocol.SMOKE_OPTS, *TEST_OPTS,
        "MODEL.WEIGHTS", str(folder / "model_final.pth"), "OUTPUT_DIR", str(tmp_path)])
    results = train_net.main(args)
    recorded = load_result(folder / "result.json")["metrics"]
    assert {f"bbox/{k}": v for k, v in results["bbox"].items()} == pytest.approx(recorded, abs=1e-9)


def test_finished_seed_is_skipped(voc_run, capsys):
    argv, folder = voc_run
    before = (folder / "result.json").stat().st_mtime_ns
    transfer.main(argv)
    assert "finished already" in capsys.readouterr().out
    assert (folder / "result.json").stat().st_mtime_ns == before


def _listing(folder):
    """Every file under ``folder`` with its modification time, but the lock (which a refused run opens too)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.name != ".lock"}


def test_another_config_into_a_run_folder_is_refused_before_anything_is_written(voc_run):
    argv, folder = voc_run
    before = _listing(folder.parent)
    with pytest.raises(SystemExit, match=r"holds another transfer-voc run: .*\(SOLVER.BASE_LR 0.0125 -> 0.5\); "
                                         r".*\(with make: OUT=runs/transfer-voc-resnet50, or --out "):
        transfer.main([*argv, "SOLVER.BASE_LR", "0.5"])
    assert _listing(folder.parent) == before


def test_other_weights_into_a_run_folder_never_replace_its_weights(voc_run, weights, tmp_path):
    """The second run's weights were converted over the first run's before the folder was checked."""
    import torch

    argv, folder = voc_run
    state = torch.load(weights, weights_only=True)
    state["conv1.weight"] += 1
    other = tmp_path / "other.pth"
    torch.save(state, other)
    before = _listing(folder.parent)
    with pytest.raises(SystemExit, match=r"holds another transfer-voc run: .*\(weights_sha256 '[0-9a-f]{64}' -> "
                                         rf"'{sha256_file(other)}'\).*OUT=runs/transfer-voc-other"):
        transfer.main([*argv[:argv.index("--weights") + 1], str(other), *argv[argv.index("--weights") + 2:]])
    assert _listing(folder.parent) == before


def test_a_busy_run_folder_is_refused_naming_its_holder(weights, voc_root, tmp_path):
    out = tmp_path / "out"
    with claim(out, "transfer-voc", {"task": "voc"}):  # a run in progress (the lock is per open file)
        with pytest.raises(SystemExit, match=rf"{out} is in use by another run \(pid {os.getpid()} on .*OUT="):
            transfer.main(transfer_args("voc", weights, voc_root, out))
    assert sorted(p.name for p in out.iterdir()) == [".lock", "run.json"]


def _children(pid):
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_kill_9_of_transfer_takes_its_training_process_with_it(weights, voc_root, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "bt_transfer.transfer",
                                *transfer_args("voc", weights, voc_root, tmp_path / "out")],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (children := _children(process.pid)):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 30
        while _alive(children[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(children[0]), "train_net outlived its transfer process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _code_pickle(path, marker):
    import pickle

    path.write_bytes(pickle.dumps({"model": _RunsCode(marker), "__author__": "x"}))
    return path


def _train_net(output_dir, *args):
    train_net.cli(["--config-file", str(protocol.CONFIGS["voc"]), "--num-gpus", "0", *args,
                   *protocol.SMOKE_OPTS, *TEST_OPTS, "OUTPUT_DIR", str(output_dir)])


def test_eval_only_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    evil = _code_pickle(tmp_path / "x.pkl", marker)
    with pytest.raises(SystemExit, match=rf"error: {evil}: refused: it would import and call (posix|os)\.system"):
        _train_net(tmp_path / "out", "--eval-only", "MODEL.WEIGHTS", str(evil))
    assert not marker.exists()


@pytest.mark.parametrize("initial", ["weights", "last_checkpoint"])
def test_training_refuses_a_pickle_that_would_run_code(initial, voc_root, tmp_path, monkeypatch):
    """As the weights to start from, or as the checkpoint that ``--resume`` follows."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(voc_root))
    marker, out = tmp_path / "ran", tmp_path / "out"
    out.mkdir()
    evil = _code_pickle(out / "model_0000009.pkl", marker)
    (out / "last_checkpoint").write_text(evil.name)
    weights = evil if initial == "weights" else tmp_path / "unused.pkl"
    with pytest.raises(SystemExit, match=rf"error: {evil}: refused: it would import and call (posix|os)\.system"):
        _train_net(out, *["--resume"] * (initial == "last_checkpoint"), "MODEL.WEIGHTS", str(weights))
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_outside_its_run_folder(voc_run, voc_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(voc_root))
    _, folder = voc_run
    (tmp_path / "last_checkpoint").write_text(str(folder / "model_final.pth"))
    with pytest.raises(SystemExit, match=rf"last_checkpoint names {folder / 'model_final.pth'}, outside its run "
                                         "folder; a run resumes only from its own checkpoints"):
        _train_net(tmp_path, "--resume")


def test_resume_refuses_a_checkpoint_without_the_run_state(voc_run, voc_root, tmp_path, monkeypatch):
    """A checkpoint of Detectron2's own trainer (no optimizer, data positions or random states) would resume
    another run than the one it interrupted."""
    import torch

    monkeypatch.setenv("DETECTRON2_DATASETS", str(voc_root))
    _, folder = voc_run
    checkpoint = torch.load(folder / "model_0000000.pth", weights_only=True)
    torch.save({"model": checkpoint["model"], "trainer": {"iteration": 0}}, tmp_path / "model_0000000.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000000.pth")
    with pytest.raises(SystemExit, match=r"model_0000000.pth: holds no optimizer state, data positions or random"):
        _train_net(tmp_path, "--resume")


def test_missing_dataset_stops_before_training(weights, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        transfer.main(transfer_args("voc", weights, tmp_path / "nowhere", out))
    message = str(stop.value)
    assert str(tmp_path / "nowhere" / "VOC2007") in message and "Expected layout" in message
    assert not out.exists()


def test_missing_weights_stop_before_training(voc_root, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"weights {tmp_path / 'absent.pth'}: no such file"):
        transfer.main(transfer_args("voc", tmp_path / "absent.pth", voc_root, out))
    assert not out.exists()


def test_weights_the_converter_rejects_stop_before_training(voc_root, tmp_path):
    out = tmp_path / "out"
    resnet18 = random_resnet50(tmp_path / "resnet18.pth", arch="resnet18")
    with pytest.raises(SystemExit, match="weights rejected by the converter: .*resnet18.pth"):
        transfer.main(transfer_args("voc", resnet18, voc_root, out))
    assert not out.exists()


@pytest.fixture(scope="module")
def coco_root(generated_data, tmp_path_factory):
    return small_test_root(generated_data, tmp_path_factory.mktemp("coco") / "datasets")


def test_mask_rcnn_on_coco(weights, coco_root, tmp_path):
    transfer.main(transfer_args("coco", weights, coco_root, tmp_path))
    record = load_result(tmp_path / "seed1" / "result.json")
    assert record["task"] == "coco"
    assert set(METRIC_KEYS["coco"]) <= set(record["metrics"])  # bbox and segm AP, AP50, AP75, APs/m/l
    assert all(math.isfinite(v) for v in record["metrics"].values())
    assert (tmp_path / "seed1" / "inference" / "coco_instances_results.json").is_file()
    assert "SOLVER.MAX_ITER: 2 (protocol: 90000)" in record["protocol"]["deviations"]


def test_coco_test_set_without_large_objects_stops_before_training(weights, coco_root, tmp_path):
    """Without ground truth over 96x96 px, APl would be undefined, so the run does not start."""
    root = tmp_path / "datasets"
    (root / "coco" / "annotations").mkdir(parents=True)
    for rel in ("VOC2007", "VOC2012", "coco/train2017", "coco/val2017", "coco/annotations/instances_train2017.json"):
        os.symlink(coco_root / rel, root / rel)
    val = json.loads((coco_root / "coco" / "annotations" / "instances_val2017.json").read_text())
    val["annotations"] = [a for a in val["annotations"] if a["area"] < MEDIUM]
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    with pytest.raises(SystemExit, match="coco_2017_val .* no ground-truth objects of large size"):
        transfer.main(transfer_args("coco", weights, root, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_override_stops_before_training(weights, voc_root, tmp_path):
    with pytest.raises(SystemExit, match="SOLVER.NO_SUCH_KEY"):
        transfer.main(transfer_args("voc", weights, voc_root, tmp_path / "out", "SOLVER.NO_SUCH_KEY", "1"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, opts, message", [
    ((), ("SOLVER.BASE_LR", "-0.1", "SOLVER.MAX_ITER", "0"),
     "SOLVER.MAX_ITER = 0 (expected a positive whole number); SOLVER.BASE_LR = -0.1 (expected a finite positive"),
    ((), ("SOLVER.STEPS", "(5,)"), "SOLVER.STEPS = (5,) (expected steps below SOLVER.MAX_ITER 2;"),
    (("--seeds", "-1"), (), "--seeds -1: expected seeds of 0 or more"),
    (("--num-gpus", "-1"), (), "--num-gpus -1: expected 0 (CPU) or more"),
    (("--machine-rank", "1"), (), "--machine-rank 1: expected 0 to --num-machines - 1 (0)"),
], ids=["lr-and-iterations", "steps", "seed", "gpus", "machine-rank"])
def test_values_no_run_can_use_are_named_before_anything_is_written(flags, opts, message, weights, voc_root, tmp_path):
    argv = transfer_args("voc", weights, voc_root, tmp_path / "out", *opts)
    at = argv.index("--opts")  # the flags go before the trailing overrides, and replace the earlier ones
    with pytest.raises(SystemExit) as stop:
        transfer.main([*argv[:at], *flags, *argv[at:]])
    assert message in str(stop.value)
    assert not (tmp_path / "out").exists()


def test_a_bad_value_prints_one_line_not_a_traceback(weights, voc_root, tmp_path):
    argv = transfer_args("voc", weights, voc_root, tmp_path / "out", "SOLVER.IMS_PER_BATCH", "0")
    done = subprocess.run([sys.executable, "-m", "bt_transfer.transfer", *argv], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: config values no run can train with: SOLVER.IMS_PER_BATCH = 0 (expected a positive whole number)"]
    assert not (tmp_path / "out").exists()
