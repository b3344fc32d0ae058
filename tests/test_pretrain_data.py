"""The pretraining sampler and dataset: global batches independent of the process count, exact mid-epoch
resume positions and reproducible per-sample views."""
import numpy as np
import torch
from PIL import Image

from pretrain.augment import TwoViews
from pretrain.data import ResumableSampler, TwoViewDataset, make_loader


def batches(sampler, local_batch):
    keys = list(sampler)
    return [keys[i:i + local_batch] for i in range(0, len(keys), local_batch)]


def test_global_batches_do_not_depend_on_the_number_of_processes():
    single = batches(ResumableSampler(50, 8, seed=4), 8)
    assert len(single) == 6  # 50 // 8 whole batches, the rest dropped
    ranks = [ResumableSampler(50, 8, rank=r, world_size=4, seed=4) for r in range(4)]
    per_rank = [batches(s, 2) for s in ranks]
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(k for rank in per_rank for k in rank[step])
    assert all(epoch == 0 for epoch, _ in single[0])


def test_resume_position_skips_exactly_the_consumed_batches_and_epochs_differ():
    sampler = ResumableSampler(50, 8, rank=1, world_size=2, seed=4)
    sampler.set_position(epoch=3)
    full = batches(sampler, 4)
    sampler.set_position(epoch=3, start_step=2)
    assert batches(sampler, 4) == full[2:] and len(sampler) == 4 * 4
    sampler.set_position(epoch=4)
    assert [i for _, i in sum(batches(sampler, 4), [])] != [i for _, i in sum(full, [])]


def test_views_are_reproducible_per_sample_and_independent_of_workers(tmp_path):
    for c in range(2):
        for i in range(4):
            path = tmp_path / f"class{c}" / f"{i}.JPEG"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray((np.random.default_rng(c * 10 + i).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    dataset = TwoViewDataset(tmp_path, TwoViews(16, normalize=False), seed=7)
    first = dataset[(0, 3)]
    torch.rand(5)  # the caller's generator state must not matter...
    assert all(torch.equal(a, b) for a, b in zip(first, dataset[(0, 3)]))
    state = torch.get_rng_state()
    dataset[(1, 3)]
    assert torch.equal(state, torch.get_rng_state())  # ...nor be changed
    assert not torch.equal(first[0], dataset[(1, 3)][0])  # a new epoch, new views
    sampler = ResumableSampler(len(dataset), 4, seed=7)
    in_process = [b for b in make_loader(dataset, sampler, workers=0, pin_memory=False)]
    with_workers = [b for b in make_loader(dataset, sampler, workers=2, pin_memory=False)]
    assert len(in_process) == 2
    for a, b in zip(in_process, with_workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
