"""The kNN monitor: the weighted vote against a brute-force one, its labelled splits, two gloo processes
against one, and a pretraining run with the monitor on bit-identical to one with it off."""
import functools
import io
import json
import math
import os
import re
import shutil

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from bt_transfer.core.progress import Progress, read_metrics
from pretrain.barlow_twins import BarlowTwins
from pretrain.checkpoint import read_checkpoint
from pretrain.distributed import cleanup, free_port, init_distributed
from pretrain.knn import KnnMonitor, labelled_splits, weighted_knn_predict
from pretrain.train import main


def brute_force_vote(queries, bank, labels, num_classes, k, temperature):
    """Each query's class by the definition: the k most cosine-similar bank rows vote exp(sim / T)."""
    predictions = []
    for query in queries.tolist():
        similarities = [sum(q * b for q, b in zip(query, row)) for row in bank.tolist()]
        nearest = sorted(range(len(similarities)), key=lambda i: -similarities[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[labels[i]] += math.exp(similarities[i] / temperature)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return predictions


@pytest.mark.parametrize("k", [1, 5, 20, 60])
def test_weighted_vote_matches_brute_force(k):
    generator = torch.Generator().manual_seed(k)
    bank = F.normalize(torch.randn(37, 8, generator=generator, dtype=torch.float64), dim=1)
    queries = F.normalize(torch.randn(23, 8, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (37,), generator=generator)
    got = weighted_knn_predict(queries, bank, labels, num_classes=5, k=k, temperature=0.07)
    assert got.tolist() == brute_force_vote(queries, bank, labels.tolist(), 5, k, 0.07)


def unit(angle):
    return [math.cos(angle), math.sin(angle)]


def test_near_neighbours_outvote_many_far_ones_at_a_low_temperature():
    query = torch.tensor([unit(0.0)])
    # One class-0 image close to the query, two class-1 images further away.
    bank, labels = torch.tensor([unit(0.1), unit(0.5), unit(-0.5)]), torch.tensor([0, 1, 1])
    assert weighted_knn_predict(query, bank, labels, num_classes=2, k=3, temperature=0.07).tolist() == [0]
    assert weighted_knn_predict(query, bank, labels, num_classes=2, k=3, temperature=10.0).tolist() == [1]
    # Equal votes: the lowest class index, whichever neighbour comes first.
    for order in ([0, 1], [1, 0]):
        tied = torch.tensor([unit(0.3), unit(-0.3)])
        assert weighted_knn_predict(query, tied, torch.tensor(order), num_classes=2, k=2).tolist() == [0]


def copy_images(source, target, classes, per_class):
    for cls in sorted(source.iterdir())[:classes]:
        (target / cls.name).mkdir(parents=True)
        for image in sorted(cls.iterdir())[:per_class]:
            shutil.copy(image, target / cls.name / image.name)


@pytest.fixture(scope="module")
def small_imagenet(generated_data, tmp_path_factory):
    """train/: 3 classes of 6 images; val/: the same classes, 5 images each."""
    root = tmp_path_factory.mktemp("knn")
    copy_images(generated_data / "imagenet" / "train", root / "train", classes=3, per_class=6)
    copy_images(generated_data / "imagenet" / "val", root / "val", classes=3, per_class=5)
    return root


def test_the_bank_is_balanced_fixed_by_its_seed_and_no_larger_than_the_smallest_class(generated_data):
    train = generated_data / "imagenet" / "train"
    (bank, val), reason = labelled_splits(train, image_size=32, per_class=4, seed=1)
    assert reason is None and bank.classes == val.classes and len(val) == 100
    assert sorted(bank.targets) == [c for c in range(10) for _ in range(4)]
    assert labelled_splits(train, 32, 4, seed=1)[0][0].files == bank.files
    assert labelled_splits(train, 32, 4, seed=2)[0][0].files != bank.files
    assert len(labelled_splits(train, 32, 1000, seed=1)[0][0]) == 10 * 26  # every image of the 26-image classes
    image, label = val[7]
    assert image.shape == (3, 32, 32) and torch.equal(image, val[7][0]) and label == val.targets[7]


def test_no_usable_validation_split_is_a_reason_not_an_error(small_imagenet, tmp_path):
    data = tmp_path / "images"
    shutil.copytree(small_imagenet / "train", data)
    splits, reason = labelled_splits(data, 32, 2, seed=0)
    assert splits is None and reason == f"no labelled validation split {tmp_path / 'val'} beside --data {data}"
    (tmp_path / "val").mkdir()
    shutil.copy(sorted(data.glob("*/*"))[0], tmp_path / "val")  # images not sorted into classes, as ImageNet's come
    assert "is not a labelled validation split" in labelled_splits(data, 32, 2, seed=0)[1]
    shutil.rmtree(tmp_path / "val")
    copy_images(small_imagenet / "val", tmp_path / "val", classes=2, per_class=1)
    assert "hold different classes" in labelled_splits(data, 32, 2, seed=0)[1]


def test_the_monitor_leaves_weights_statistics_rng_and_mode_untouched(small_imagenet):
    torch.manual_seed(0)
    model = BarlowTwins("32-16")
    model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))  # running statistics away from their init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = KnnMonitor(*labelled_splits(small_imagenet / "train", 32, 5, seed=0)[0], batch_size=4)
    rng = torch.get_rng_state()
    record = monitor.evaluate(model.backbone)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.backbone.training
    assert record["knn_top1"] == monitor.top1(model.backbone)
    assert {k: record[k] for k in ("knn_k", "knn_temperature", "knn_train_images", "knn_train_per_class",
                                   "knn_val_images")} == dict(knn_k=20, knn_temperature=0.07, knn_train_images=15,
                                                              knn_train_per_class=5, knn_val_images=15)


def monitored(root, rank=0, world_size=1):
    torch.manual_seed(0)
    model = BarlowTwins("32-16")
    model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    monitor = KnnMonitor(*labelled_splits(root / "train", 32, 5, seed=0)[0], batch_size=2, rank=rank,
                         world_size=world_size)
    return model.backbone, monitor


def worker(rank, world_size, port, root, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    info = init_distributed()
    try:
        backbone, monitor = monitored(root, info.rank, info.world_size)
        torch.save(dict(bank=monitor.bank_features(backbone), top1=monitor.top1(backbone)),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


def test_two_processes_get_the_accuracy_of_one(small_imagenet, tmp_path):
    # 15 bank and 15 val images over 2 processes: uneven shards, so the padding of the gather is exercised.
    mp.spawn(worker, args=(2, free_port(), small_imagenet, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    backbone, monitor = monitored(small_imagenet)
    backbone.eval()
    with torch.no_grad():
        features = {name: F.normalize(backbone(torch.stack([image for image, _ in split])), dim=1)
                    for name, split in (("bank", monitor.bank), ("val", monitor.val))}
    bank_labels = torch.tensor(monitor.bank.targets)
    predicted = weighted_knn_predict(features["val"], features["bank"], bank_labels, num_classes=3)
    expected = 100 * (predicted == torch.tensor(monitor.val.targets)).double().mean().item()
    backbone.train()
    assert monitor.top1(backbone) == pytest.approx(expected, abs=1e-9)
    for rank in ranks:
        features_gathered, labels_gathered = rank["bank"]
        assert torch.equal(labels_gathered, bank_labels)
        torch.testing.assert_close(features_gathered, features["bank"], rtol=1e-4, atol=1e-5)
        assert rank["top1"] == pytest.approx(expected, abs=1e-9)


def pretrain_args(data, out, knn_every):
    return ["--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "6", "--projector", "32-16",
            "--image-size", "16", "--workers", "0", "--seed", "3", "--log-every", "1", "--knn-every", str(knn_every)]


def test_a_run_with_the_monitor_on_is_bit_identical_to_one_with_it_off(small_imagenet, tmp_path, monkeypatch):
    off, on = tmp_path / "off", tmp_path / "on"
    main(pretrain_args(small_imagenet / "train", off, knn_every=0))
    progress_lines = io.StringIO()
    monkeypatch.setattr("pretrain.train.Progress", functools.partial(Progress, stream=progress_lines))
    main(pretrain_args(small_imagenet / "train", on, knn_every=1))
    state_off, state_on = read_checkpoint(off / "checkpoint.pth"), read_checkpoint(on / "checkpoint.pth")
    for key in ("model", "rng"):  # every weight and BN statistic; the torch generator's state
        assert state_off[key].keys() == state_on[key].keys()
        assert all(torch.equal(state_off[key][k], state_on[key][k]) for k in state_off[key]), key
    for key, value in state_off["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], state_on["optimizer"]["state"][key]["momentum_buffer"])

    knn_lines = [r for r in read_metrics(on / "metrics.jsonl") if "knn_top1" in r]
    assert [(r["step"], r["epoch"]) for r in knn_lines] == [(3, 0), (6, 1)]  # 18 images, batch 6: 3 steps/epoch
    assert all(0 <= r["knn_top1"] <= 100 and r["knn_k"] == 20 and r["knn_val_images"] == 15 for r in knn_lines)
    assert not any("knn_top1" in r for r in read_metrics(off / "metrics.jsonl"))
    assert json.loads((on / "args.json").read_text())["knn_monitor"]["knn_train_images"] == 18
    assert json.loads((off / "args.json").read_text())["knn_monitor"] == {"skipped": "--knn-every 0"}
    # Each evaluation forces a progress line; the loss lines after it show the last accuracy.
    lines = [line for line in progress_lines.getvalue().splitlines() if "knn" in line]
    assert re.fullmatch(r"pretrain 3/6 .* \| epoch 0 knn top-1 [\d.]+ \(20-NN, 18 train / 15 val images, .*s\)",
                        lines[0])
    assert re.fullmatch(r"pretrain 6/6 .* \| epoch 1 loss .* knn top-1 [\d.]+", lines[-2])
    assert re.fullmatch(r"pretrain 6/6 .* \| epoch 1 knn top-1 [\d.]+ .*", lines[-1])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(on / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("knn_top1")] == [3, 6]


def test_without_a_validation_split_the_run_says_so_once_and_trains(small_imagenet, tmp_path, capfd):
    data = tmp_path / "data" / "train"
    shutil.copytree(small_imagenet / "train", data)
    main([*pretrain_args(data, tmp_path / "run", knn_every=1), "--max-steps", "1"])
    skipped = [line for line in capfd.readouterr().err.splitlines() if "kNN" in line]
    reason = f"no labelled validation split {tmp_path / 'data' / 'val'} beside --data {data}"
    assert skipped == [f"pretrain: no kNN monitor: {reason}"]
    assert json.loads((tmp_path / "run" / "args.json").read_text())["knn_monitor"] == {"skipped": reason}
    assert (tmp_path / "run" / "resnet50.pth").exists()
