"""ImageNet evaluation (pretrain.evaluate): protocol, weights checks, the frozen backbone, learning signal, resume.

Runs use the generated ImageFolder (10 classes, 26 train / 10 val images each) at 32-48 px on CPU.
"""
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchvision import models, transforms

from bt_transfer.core.fileio import sha256_file, write_json
from bt_transfer.core import provenance
from bt_transfer.core.progress import read_metrics
from bt_transfer.core.records import load_result
from pretrain import eval_protocol, evaluate
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.distributed import DistInfo, free_port
from pretrain.images import DataError
from pretrain.eval_data import LabelledImages, image_folders
from bt_transfer.convert.resnet50 import ConversionError
from pretrain.evaluate import load_backbone

CHANCE_TOP1 = 10.0  # 10 generated classes


def backbone_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory):
    """An untrained backbone in the official resnet50.pth format (torchvision keys, no fc)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plain") / "resnet50.pth"
    torch.save(backbone_state(models.resnet50()), path)
    return path


@pytest.fixture(scope="module")
def seen_backbone(generated_data, tmp_path_factory):
    """resnet50.pth of a backbone that has seen the data: 30 supervised steps on the generated train split
    at 48 px, then BatchNorm statistics recomputed over that split with the final weights."""
    torch.manual_seed(0)
    to_tensor = transforms.Compose([transforms.Resize(48), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train = LabelledImages(generated_data / "imagenet" / "train", to_tensor)
    images = torch.stack([train[i][0] for i in range(len(train))])  # plain indices: no random augmentation
    labels = torch.tensor(train.targets)
    model = models.resnet50(num_classes=len(train.classes), zero_init_residual=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    for _ in range(30):
        batch = torch.randint(len(images), (32,))
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches that follow
    with torch.no_grad():
        model(images)
    path = tmp_path_factory.mktemp("seen") / "resnet50.pth"
    torch.save(backbone_state(model), path)
    return path


def pretrained_here(weights, folder, **settings):
    """``weights`` as the resnet50.pth of a pretrain.train run in ``folder`` with ``settings`` in its args.json."""
    folder.mkdir(parents=True)
    (folder / "resnet50.pth").write_bytes(weights.read_bytes())
    write_json(folder / "args.json", {**provenance.PAPER_PRETRAINING, "world_size": 8, "amp_dtype": "bfloat16",
                                      "code_version": "v0.1-3-gabc", **settings})
    return folder / "resnet50.pth"


def run(weights, data, out, *options):
    return evaluate.main(["--weights", str(weights), "--data", str(data / "imagenet"), "--out", str(out),
                          "--workers", "0", *map(str, options)])


# --- protocol -------------------------------------------------------------------------------------------

def test_learning_rates_follow_the_official_schedulers():
    """Per-epoch values equal torch's CosineAnnealingLR / MultiStepLR stepped once per epoch (the official code)."""
    for schedule, epochs, make in (
        ("cosine", 100, lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100)),
        ("paper-step", 20, lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [12, 16], gamma=0.2)),
    ):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler = make(optimizer)
        for epoch in range(epochs):
            expected = optimizer.param_groups[0]["lr"]
            assert eval_protocol.lr_scale(schedule, epoch, epochs) == pytest.approx(expected, abs=1e-12)
            optimizer.step()
            scheduler.step()


def test_defaults_are_the_published_protocols():
    paths = ["--weights", "w", "--data", "d", "--out", "o"]
    linear = evaluate.parse_args(["--mode", "linear", *paths])
    assert (linear["epochs"], linear["batch_size"], linear["lr_classifier"]) == (100, 256, 0.3)
    assert linear["weight_decay"] == 1e-6
    assert (linear["image_size"], linear["val_resize"], linear["lr_backbone"]) == (224, 256, 0.0)
    semisup = evaluate.parse_args(["--mode", "semisup", "--percent", "1", *paths])
    assert (semisup["epochs"], semisup["lr_classifier"], semisup["lr_backbone"]) == (20, 0.5, 0.005)
    assert semisup["weight_decay"] == 0.0
    paper = evaluate.parse_args(["--mode", "semisup", "--percent", "10", "--schedule", "paper-step", *paths])
    assert paper["lr_backbone"] == 0.002


@pytest.mark.parametrize("options, message", [
    (["--mode", "linear", "--percent", "1"], "--percent applies to --mode semisup only"),
    (["--mode", "linear", "--lr-backbone", "0.1"], "--lr-backbone applies to --mode semisup only"),
    (["--mode", "linear", "--schedule", "paper-step"], "linear evaluation uses cosine"),
    (["--mode", "semisup"], "needs --percent 1 or --percent 10"),
    (["--mode", "semisup", "--percent", "1", "--image-size", "64", "--val-resize", "32"], "smaller than"),
    (["--mode", "linear", "--lr-classifier", "nan"], "argument --lr-classifier: expected a finite number, got nan"),
    (["--mode", "semisup", "--percent", "1", "--lr-backbone", "-0.1"],
     "argument --lr-backbone: expected a finite number >= 0, got -0.1"),
    (["--mode", "linear", "--weight-decay", "inf"], "argument --weight-decay: expected a finite number, got inf"),
    (["--mode", "linear", "--epochs", "0"], "argument --epochs: expected an integer > 0, got 0"),
    (["--mode", "linear", "--batch-size", "-256"], "argument --batch-size: expected an integer > 0, got -256"),
    (["--mode", "linear", "--image-size", "0"], "argument --image-size: expected an integer > 0, got 0"),
    (["--mode", "linear", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--mode", "semisup", "--percent", "1", "--subset-seed", "-1"],
     "argument --subset-seed: expected an integer >= 0, got -1"),
    (["--mode", "linear", "--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
])
def test_meaningless_options_are_refused(options, message, capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(options + ["--weights", "w", "--data", "d", "--out", "o"])
    assert message in capsys.readouterr().err


def test_deviations_name_every_departure_and_nothing_for_the_protocol():
    imagenet = dict(eval_protocol.IMAGENET)
    config = evaluate.parse_args(["--mode", "semisup", "--percent", "1", "--subset-file", "1percent.txt",
                                  "--weights", "w", "--data", "d", "--out", "o"])
    assert eval_protocol.deviations(config, imagenet, dict(generated=False, images=12811)) == []
    linear = evaluate.parse_args(["--mode", "linear", "--weights", "w", "--data", "d", "--out", "o"])
    assert eval_protocol.deviations(linear, imagenet) == []
    small = dict(config, epochs=2, batch_size=32, image_size=64, val_resize=73)
    found = eval_protocol.deviations(small, dict(classes=10, train_images=260, val_images=100),
                                     dict(generated=True, images=10))
    assert found == [
        "epochs 2 instead of the protocol's 20",
        "batch size 32 instead of the protocol's 256",
        "images cropped to 64 px (val resized to 73) instead of 224 (256)",
        "data has 10 classes, not ImageNet's 1,000",
        "val has 100 images, not ImageNet's 50,000",
        "subset drawn from seed 0 (class-balanced), not SimCLR's 1percent.txt",
    ]
    assert eval_protocol.deviations(config, imagenet, dict(generated=False, images=128116)) == [
        "subset file lists 128,116 images; SimCLR's 1percent.txt lists 12,811"]


# --- weights --------------------------------------------------------------------------------------------

def test_official_format_loads_with_a_fresh_classifier(plain_weights):
    reference = torch.load(plain_weights, weights_only=True)
    model, trunk, fmt = load_backbone(plain_weights, num_classes=1000)
    assert fmt == "barlowtwins"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items() if "num_batches" not in k)
    assert trunk.keys() == {k for k in reference if "num_batches" not in k}
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(model.fc.bias) == 0


def test_weights_go_through_the_converters_reader_with_its_checks(plain_weights, tmp_path):
    state = torch.load(plain_weights, weights_only=True)
    cases = {
        "no_layer4.pth": ({k: v for k, v in state.items() if not k.startswith("layer4.2.")},
                          r"(?s)no_layer4.pth: .*missing \(\d+\): layer4.2.bn1.bias, "),
        "extra.pth": (dict(state, projector_weight=torch.zeros(1)),
                      r"(?s)extra.pth: .*unexpected \(1\): projector_weight"),
        "nan.pth": (dict(state, **{"conv1.weight": torch.full_like(state["conv1.weight"], float("nan"))}),
                    r"(?s)nan.pth: .*NaN or Inf\n  non-finite \(1\): conv1.weight"),
        "checkpoint.pth": ({"model": state, "epoch": 3}, "checkpoint.pth: not a recognised ResNet-50 checkpoint"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ConversionError, match=message):
            load_backbone(tmp_path / name)
    with pytest.raises(ConversionError, match="absent.pth: no such file"):
        load_backbone(tmp_path / "absent.pth")
    # The layouts the converter reads load here too: a DDP-prefixed state dict, a torchvision one with fc.
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    torch.save(dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}),
               tmp_path / "torchvision.pth")
    for name in ("ddp.pth", "torchvision.pth"):
        model, _, _ = load_backbone(tmp_path / name)
        assert torch.equal(model.state_dict()["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])


def test_a_moved_backbone_tensor_fails_the_frozen_check(plain_weights):
    model, trunk, _ = load_backbone(plain_weights)
    evaluate.assert_backbone_unchanged(model, trunk)  # the fresh fc does not count
    model.layer2[0].bn1.running_mean[0] += 1e-6
    with pytest.raises(RuntimeError, match=r"changed the frozen backbone: layer2.0.bn1.running_mean differ"):
        evaluate.assert_backbone_unchanged(model, trunk)


# --- runs -----------------------------------------------------------------------------------------------

LINEAR = ["--mode", "linear", "--epochs", 2, "--batch-size", 32, "--image-size", 48, "--label", "seen"]


@pytest.fixture(scope="module")
def linear_run(seen_backbone, generated_data, tmp_path_factory):
    """A linear evaluation of the seen backbone, exported by a pretraining run with another weight decay and
    exact gradients on 8 GPUs."""
    weights = pretrained_here(seen_backbone, tmp_path_factory.mktemp("pretrain") / "run", weight_decay=1e-5,
                              grad_scaling="exact")
    out = tmp_path_factory.mktemp("linear")
    return out, run(weights, generated_data, out, *LINEAR)


def test_linear_probe_learns_and_leaves_the_backbone_bit_identical(linear_run, seen_backbone):
    out, record = linear_run
    # The learning signal: a clear margin over chance (10 classes, 100 val images).
    assert record["metrics"]["top1"] >= 3 * CHANCE_TOP1, record["metrics"]
    assert record["metrics"]["top5"] >= record["metrics"]["top1"]

    # Every backbone parameter and BatchNorm buffer is bit-identical to the file.
    trained = torch.load(out / "checkpoint.pth", weights_only=True)["model"]
    reference = torch.load(seen_backbone, weights_only=True)
    assert set(trained) - set(reference) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(trained[k], v) for k, v in reference.items() if "num_batches" not in k)

    assert load_result(out / "result.json") == record
    assert record["task"] == "linear" and record["weights"]["label"] == "seen"
    assert record["weights"]["sha256"] == sha256_file(seen_backbone)
    assert "data has 10 classes, not ImageNet's 1,000" in record["protocol"]["deviations"]
    epochs = read_metrics(out / "metrics.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    # The last epoch's accuracies, and the best epoch's, as the official evaluate.py prints.
    for key in ("top1", "top5"):
        assert record["metrics"][key] == epochs[-1][key]
        assert record["metrics"][f"{key}_best"] == max(e[key] for e in epochs)
    assert {"loss", "lr", "top1", "top5", "images_per_s"} <= set(epochs[-1])
    assert epochs[0]["lr"] == 0.3 and epochs[1]["lr"] == pytest.approx(0.15)
    assert json.loads((out / "args.json").read_text())["mode"] == "linear"


def test_the_pretraining_behind_the_backbone_is_on_the_record(linear_run):
    """A backbone pretrained with another weight decay, or with exact gradients, is not the paper's: the record
    says so; its mixed precision and code version are provenance."""
    _, record = linear_run
    assert record["extra"] == dict(classes=10, train_images=260, val_images=100, epochs=2, pretraining=dict(
        code_version="v0.1-3-gabc", amp_dtype="bfloat16", world_size=8))
    assert record["protocol"]["deviations"][-2:] == [
        "backbone pretrained with weight_decay 1e-05 (paper: 1e-06)",
        "backbone pretrained with gradients divided by 1 (--grad-scaling exact on 8 processes; paper: 32, the "
        "official code on 32 GPUs)"]


def ddp_worker(rank, port, argv):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    evaluate.main(argv)


def test_two_processes_train_the_classifier_one_process_trains(linear_run, seen_backbone, generated_data, tmp_path):
    """Half the global batch per process, the same per-image crops: the same classifier, and validation
    sharded over the processes counts every image once."""
    out, single = linear_run
    argv = ["--weights", str(seen_backbone), "--data", str(generated_data / "imagenet"), "--out", str(tmp_path),
            "--workers", "0", *map(str, LINEAR)]
    mp.spawn(ddp_worker, args=(free_port(), argv), nprocs=2, join=True)
    one = torch.load(out / "checkpoint.pth", weights_only=True)["model"]
    two = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    double = load_result(tmp_path / "result.json")
    assert double["world_size"] == 2
    assert double["metrics"] == pytest.approx(single["metrics"], abs=1.0)  # at most one of 100 images flips


def recording_worker(rank, port, argvs, out_dir):
    """One of two processes: runs its own command line and writes how it ended to ``out_dir/rank<r>.txt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        evaluate.main(argvs[rank])
        ending = "finished"
    except SystemExit as exit:
        ending = str(exit)
    Path(out_dir, f"rank{rank}.txt").write_text(ending)


def run_two_processes(argvs, out_dir, timeout=120):
    """Both command lines under gloo; a failure rather than a hang if they have not ended after ``timeout`` s."""
    context = mp.spawn(recording_worker, args=(free_port(), argvs, str(out_dir)), nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two processes were still running after {timeout} s: they wait for each other")
    return [Path(out_dir, f"rank{rank}.txt").read_text() for rank in range(2)]


def test_processes_that_resume_different_epochs_all_stop_with_one_line(linear_run, seen_backbone, generated_data,
                                                                       tmp_path):
    """An --out that the processes do not share: rank 0 finds the finished run's checkpoint (epoch 2), rank 1
    an empty folder. Left alone, rank 0 would write a result while rank 1 trained epoch 0 waiting for it."""
    out, _ = linear_run
    (tmp_path / "rank0").mkdir()
    for name in ("checkpoint.pth", "run.json"):  # the finished run's folder, as rank 0 claims it
        shutil.copy(out / name, tmp_path / "rank0")
    argvs = [["--weights", str(seen_backbone), "--data", str(generated_data / "imagenet"),
              "--out", str(tmp_path / f"rank{rank}"), "--workers", "0", *map(str, LINEAR)] for rank in range(2)]
    endings = run_two_processes(argvs, tmp_path)
    for rank, ending in enumerate(endings):
        assert re.fullmatch(re.escape(f"error: the epoch resumed from {tmp_path / f'rank{rank}' / 'checkpoint.pth'} "
                                      "differs between processes: rank 0 2, rank 1 0; --out must be a folder every "
                                      "process sees") + ".*", ending), ending
    assert not (tmp_path / "rank0" / "result.json").exists()


def test_a_process_without_validation_images_does_not_hang_the_others(plain_weights, generated_data, tmp_path):
    """One validation image for two processes: rank 1's shard is empty, and validation runs no collective."""
    source = generated_data / "imagenet" / "train" / "n00000001"
    images = sorted(source.iterdir())
    for split, chosen in (("train", images[:8]), ("val", images[8:9])):
        (tmp_path / "data" / split / source.name).mkdir(parents=True)
        for image in chosen:
            shutil.copy(image, tmp_path / "data" / split / source.name)
    argv = ["--mode", "linear", "--weights", str(plain_weights), "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "run"), "--workers", "0", "--epochs", "1", "--batch-size", "4",
            "--image-size", "32"]
    assert run_two_processes([argv, argv], tmp_path) == ["finished", "finished"]
    record = load_result(tmp_path / "run" / "result.json")
    assert record["world_size"] == 2 and record["extra"]["val_images"] == 1
    assert record["metrics"]["top1"] == 100.0  # one class: the one image counted once, not lost nor doubled


def test_fine_tuning_on_several_gpus_normalises_over_the_global_batch():
    """SyncBatchNorm when fine-tuning on several GPUs, with the parameter and buffer names checkpoints use; a
    multi-process CPU run cannot have it, and says so in its record."""
    gpus, cpus = (DistInfo(0, 0, 4, torch.device(kind)) for kind in ("cuda", "cpu"))
    model = models.resnet50()
    names = list(model.state_dict())
    synced = evaluate.trainable(model, linear=False, info=gpus)
    assert isinstance(synced.layer1[0].bn1, torch.nn.SyncBatchNorm) and list(synced.state_dict()) == names
    assert not any(isinstance(m, torch.nn.SyncBatchNorm)
                   for m in evaluate.trainable(models.resnet50(), linear=False, info=cpus).modules())
    frozen = evaluate.trainable(models.resnet50(), linear=True, info=gpus)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]

    semisup = dict(mode="semisup", batch_size=256)
    assert evaluate.batch_norm_deviations(semisup, cpus) == [
        "batch norm over 64 images per process (4 processes on cpu, where SyncBatchNorm is unavailable) instead of "
        "the global batch of 256"]
    assert evaluate.batch_norm_deviations(semisup, gpus) == []
    assert evaluate.batch_norm_deviations(semisup, DistInfo(0, 0, 1, torch.device("cpu"))) == []
    assert evaluate.batch_norm_deviations(dict(semisup, mode="linear"), cpus) == []


def test_a_batch_that_does_not_split_over_the_processes_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "init_distributed", lambda: DistInfo(0, 0, 3, torch.device("cpu")))
    with pytest.raises(SystemExit, match=r"^error: --batch-size 256 does not split over 3 processes: set "
                                         r"ARGS='--batch-size 255' \(a multiple of 3\) or start a number of "
                                         r"processes that divides 256 \(e.g. GPUS=2 on one machine\)$"):
        evaluate.main(["--mode", "linear", "--weights", str(tmp_path / "absent.pth"), "--data", str(tmp_path),
                       "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


class Interrupted(Exception):
    pass


def test_semisup_fine_tunes_the_backbone_and_resumes_bit_exactly(seen_backbone, generated_data, tmp_path, monkeypatch):
    """Supervised weights (a torchvision state dict with its fc) other than torchvision's V1, fine-tuned, killed
    after the first epoch and rerun: the same weights and record as the uninterrupted run; another command
    into its folder is refused and changes nothing."""
    state = torch.load(seen_backbone, weights_only=True)
    supervised = tmp_path / "supervised.pth"
    torch.save(dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}), supervised)
    options = ["--mode", "semisup", "--percent", 1, "--epochs", 2, "--batch-size", 5, "--image-size", 32]
    whole = run(supervised, generated_data, tmp_path / "whole", *options)

    # The same run killed right after its first checkpoint, then started again.
    save = evaluate.save_atomically

    def save_then_die(path, state):
        save(path, state)
        raise Interrupted

    monkeypatch.setattr(evaluate, "save_atomically", save_then_die)
    with pytest.raises(Interrupted):
        run(supervised, generated_data, tmp_path / "cut", *options)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = run(supervised, generated_data, tmp_path / "cut", *options)

    final = torch.load(tmp_path / "whole" / "checkpoint.pth", weights_only=True)["model"]
    again = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert resumed["metrics"] == whole["metrics"]

    # Fine-tuning moved the backbone itself, not only the head.
    reference = torch.load(seen_backbone, weights_only=True)
    assert not torch.equal(final["layer1.0.conv1.weight"], reference["layer1.0.conv1.weight"])
    assert not torch.equal(final["bn1.running_mean"], reference["bn1.running_mean"])

    subset = whole["extra"]["subset"]
    assert whole["task"] == "semisup-1"
    assert subset["generated"] and subset["images"] == 10
    assert subset["sha256"] == sha256_file(tmp_path / "whole" / "subset.txt")
    assert "subset drawn from seed 0 (class-balanced), not SimCLR's 1percent.txt" in whole["protocol"]["deviations"]
    assert whole["weights"]["format"] == "torchvision"
    assert whole["protocol"]["deviations"][-1] == (
        f"supervised weights (sha256 {sha256_file(supervised)}) are not torchvision's IMAGENET1K_V1 ResNet-50 "
        "(resnet50-0676ba61.pth, sha256 0676ba61...), which the paper's Sup. row used "
        "(MoCo protocol)")

    before = {path.name: path.read_bytes() for path in (tmp_path / "cut").iterdir() if path.is_file()}
    for changed, message in (([*options, "--epochs", 3], r"\(epochs 2 -> 3\)"),
                             ([*options, "--subset-seed", 1], r"subset_seed 0 -> 1"),
                             (LINEAR, "a 'semisup-1' run, not a 'linear' run")):
        with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'cut'} holds .*{message}"):
            run(supervised, generated_data, tmp_path / "cut", *changed)
        assert {path.name: path.read_bytes() for path in (tmp_path / "cut").iterdir() if path.is_file()} == before


def test_nan_weights_fail_in_the_reader_with_one_line_before_anything_is_written(plain_weights, generated_data,
                                                                                 tmp_path):
    state = torch.load(plain_weights, weights_only=True)
    state["layer3.0.bn2.running_var"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    message = r"^error: .*nan.pth: .*NaN or Inf\n  non-finite \(1\): layer3.0.bn2.running_var"
    with pytest.raises(SystemExit, match=message):
        run(tmp_path / "nan.pth", generated_data, tmp_path / "out", *LINEAR)
    assert not (tmp_path / "out").exists()


def test_data_without_its_splits_is_named(generated_data):
    with pytest.raises(DataError, match=r"imagenet/train: no train or val folder; expected a dataset root"):
        image_folders(generated_data / "imagenet" / "train", 32, 36, seed=0)


def test_a_simclr_list_selects_exactly_its_images(generated_data, tmp_path):
    train = LabelledImages(generated_data / "imagenet" / "train", transform=None)
    listed = ["n00000003_7.JPEG", "n00000001_0.JPEG", "n00000010_25.JPEG"]
    (tmp_path / "1percent.txt").write_text("\n".join(listed) + "\n")
    config = dict(subset_file=tmp_path / "1percent.txt", percent=1, subset_seed=0)
    indices, info, drawn = evaluate.choose_subset(config, train, tmp_path)
    assert [train.paths[i].split("/")[-1] for i in indices] == listed
    assert drawn is None and info == dict(source=str(tmp_path / "1percent.txt"),
                                          sha256=sha256_file(tmp_path / "1percent.txt"), images=3, generated=False)
    (tmp_path / "1percent.txt").write_text("n00000001_0.JPEG\nn00000001_99.JPEG\n")
    with pytest.raises(ValueError, match="1 of 2 listed images are not in .*n00000001/n00000001_99.JPEG"):
        evaluate.choose_subset(config, train, tmp_path)
