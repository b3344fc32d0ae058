"""Bad input to pretraining: each a clear error naming the file or folder and what was expected."""
import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.augment import TwoViews
from pretrain.barlow_twins import BarlowTwins
from pretrain.checkpoint import CheckpointError, export_backbone, read_checkpoint, resume, save_checkpoint
from pretrain.data import ResumableSampler, TwoViewDataset
from pretrain.images import CorruptImageError, DataError
from pretrain.lars import LARS, param_groups
from pretrain.train import main, parse_args


def write_jpeg(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_missing_data_folder_is_named_in_one_line_before_anything_is_written(tmp_path):
    missing = tmp_path / "imagenet" / "train"
    with pytest.raises(SystemExit, match=f"^error: {missing}: data folder not found"):
        main(["--data", str(missing), "--out", str(tmp_path / "run"), "--workers", "0"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError):  # what the one line comes from: an error the user can fix
        TwoViewDataset(missing, TwoViews(16))


def test_dataset_root_instead_of_its_train_split_is_refused(tmp_path):
    write_jpeg(tmp_path / "imagenet" / "train" / "n01" / "1.JPEG")
    write_jpeg(tmp_path / "imagenet" / "val" / "n01" / "2.JPEG")
    with pytest.raises(DataError, match=f"dataset root.*--data {tmp_path / 'imagenet' / 'train'}"):
        TwoViewDataset(tmp_path / "imagenet", TwoViews(16))


def test_empty_class_folder_is_named(tmp_path):
    write_jpeg(tmp_path / "train" / "cat" / "1.JPEG")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=f"class folder\\(s\\) without images .*{tmp_path / 'train' / 'dog'}"):
        TwoViewDataset(tmp_path / "train", TwoViews(16))
    with pytest.raises(DataError, match="no class sub-folders"):
        TwoViewDataset(tmp_path / "train" / "dog", TwoViews(16))


def test_corrupt_or_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    good = write_jpeg(tmp_path / "train" / "cat" / "a.JPEG", size=(64, 48))
    truncated = tmp_path / "train" / "cat" / "b.JPEG"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "train" / "dog" / "c.JPEG"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a jpeg at all" * 10)
    dataset = TwoViewDataset(tmp_path / "train", TwoViews(16, normalize=False))
    assert [v.shape for v in dataset[(0, 0)]] == [(3, 16, 16), (3, 16, 16)]
    for index, path in ((1, truncated), (2, garbage)):
        with pytest.raises(CorruptImageError, match=f"{path}: cannot decode this image"):
            dataset[(0, index)]


def test_dataset_smaller_than_one_batch_and_uneven_batch(tmp_path):
    with pytest.raises(DataError, match="has 3 images, fewer than one global batch of 4"):
        ResumableSampler(3, 4)
    with pytest.raises(ValueError, match="--batch-size 6 is not divisible by the 4 processes"):
        ResumableSampler(100, 6, rank=0, world_size=4)


@pytest.mark.parametrize("argv, message", [
    (["--projector", "8192-big"], "--projector"),
    (["--batch-size", "1"], "at least 2"),
    (["--epochs", "0"], "argument --epochs: expected an integer > 0, got 0"),
    (["--lambd", "-0.1"], "argument --lambd: expected a finite number >= 0, got -0.1"),
    (["--lambd", "nan"], "argument --lambd: expected a finite number, got nan"),
    (["--warmup-epochs", "-1"], "argument --warmup-epochs: expected an integer >= 0, got -1"),
    (["--learning-rate-weights", "0"], "argument --learning-rate-weights: expected a finite number > 0, got 0"),
    (["--learning-rate-biases", "-0.001"], "argument --learning-rate-biases: expected a finite number >= 0"),
    (["--weight-decay", "inf"], "argument --weight-decay: expected a finite number, got inf"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--workers", "-2"], "argument --workers: expected an integer >= 0, got -2"),
    (["--max-steps", "0"], "argument --max-steps: expected an integer > 0, got 0"),
    (["--knn-every", "-1"], "argument --knn-every: expected an integer >= 0, got -1"),
    (["--grad-scaling", "half"], "argument --grad-scaling: invalid choice: 'half'"),
])
def test_bad_command_line_values_name_their_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", *argv])
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    model = BarlowTwins("32-16")
    optimizer = LARS(param_groups(model))
    save_checkpoint(path, step=5, steps_per_epoch=3, global_batch=4, projector="32-16", model=model,
                    optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False))
    return path, model


def test_truncated_checkpoint_is_named(saved_checkpoint, tmp_path):
    path, _ = saved_checkpoint
    truncated = tmp_path / "checkpoint.pth"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=f"{truncated}: not a readable PyTorch checkpoint \\(truncated"):
        read_checkpoint(truncated)


def test_checkpoint_of_another_architecture_or_schedule_is_refused(saved_checkpoint, tmp_path):
    path, model = saved_checkpoint
    other = BarlowTwins("32-8")
    kwargs = dict(optimizer=LARS(param_groups(other)), scaler=torch.amp.GradScaler("cpu", enabled=False))
    with pytest.raises(CheckpointError, match=f"{path}: checkpoint of another architecture: projector '32-16'"):
        resume(path, model=other, steps_per_epoch=3, global_batch=4, projector="32-8", **kwargs)
    with pytest.raises(CheckpointError, match="written with global batch 4 .* this run has 8"):
        resume(path, model=model, optimizer=LARS(param_groups(model)), scaler=kwargs["scaler"],
               steps_per_epoch=3, global_batch=8, projector="32-16")
    # A backbone export is not a resumable checkpoint.
    export = export_backbone(model, tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match=f"{export}: not a bt-transfer pretraining checkpoint"):
        read_checkpoint(export)
    # A resumable one round-trips.
    fresh = BarlowTwins("32-16")
    step = resume(path, model=fresh, optimizer=LARS(param_groups(fresh)), scaler=kwargs["scaler"],
                  steps_per_epoch=3, global_batch=4, projector="32-16")
    assert step == 5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
