"""Detection run integrity without a training run: the resumable data stream against Detectron2's own grouping,
random states, solver values, the memory a CPU run reports, and machine 0's decisions checked by the others."""
import itertools
import json
import random
import threading

import numpy as np
import pytest
import torch

from bt_transfer.detection import protocol  # first: it silences a warning Detectron2 gives at import
from bt_transfer.detection.machines import Follower, Lead, MachinesError, machines_for
from bt_transfer.detection.resume import ResumableStream, group_by_aspect, preserved_rng, restore_rng, rng_state
from bt_transfer.detection.solver import solver_problems
from bt_transfer.detection.trainer import ProgressHook
from detectron2.data.common import AspectRatioGroupedDataset  # noqa: I100
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer

# --- the data stream -------------------------------------------------------------------------------------------


def test_grouped_indices_form_the_batches_detectron2_forms():
    """Grouping indices before mapping gives exactly the batches AspectRatioGroupedDataset forms after it."""
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(90, 160, size=(50, 2))]
    landscape = [w > h for w, h in sizes]
    stream = list(itertools.islice(iter(TrainingSampler(len(sizes), seed=3)), 400))
    detectron2 = AspectRatioGroupedDataset([{"index": i, "width": sizes[i][0], "height": sizes[i][1]} for i in stream],
                                           batch_size=4)
    expected = [[d["index"] for d in batch] for batch in detectron2]
    ours = list(group_by_aspect(stream, landscape, 4))
    assert [ours[k:k + 4] for k in range(0, len(ours), 4)] == expected
    assert len(expected) > 90  # most of the stream, in both orientations
    assert {landscape[b[0]] for b in expected} == {True, False}


def test_a_stream_started_at_n_continues_the_whole_stream():
    landscape = [i % 3 == 0 for i in range(20)]
    full = ResumableStream(TrainingSampler(20, seed=7), landscape, batch_size=2)
    later = ResumableStream(TrainingSampler(20, seed=7), landscape, batch_size=2)
    later.start = 38
    assert list(itertools.islice(later, 50)) == list(itertools.islice(full, 38, 88))


def test_random_states_come_back_exactly_and_survive_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pth")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected
    with preserved_rng():
        random.random(), np.random.rand(), torch.rand(1)
    restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert random.random() == expected[0]


# --- solver values ---------------------------------------------------------------------------------------------


def test_the_protocol_and_the_smoke_preset_pass_the_solver_checks():
    for task in protocol.CONFIGS:
        for smoke in (False, True):
            assert solver_problems(protocol.resolve_task(task, 1, smoke=smoke, cpu=True).cfg) == []


@pytest.mark.parametrize("opts, problem", [
    (("SOLVER.IMS_PER_BATCH", "0"), "SOLVER.IMS_PER_BATCH = 0 (expected a positive whole number)"),
    (("SOLVER.BASE_LR", "-0.1"), "SOLVER.BASE_LR = -0.1 (expected a finite positive number)"),
    (("SOLVER.BASE_LR", "1e999"), "SOLVER.BASE_LR = inf (expected a finite positive number)"),
    (("SOLVER.MAX_ITER", "0"), "SOLVER.MAX_ITER = 0 (expected a positive whole number)"),
    (("SOLVER.STEPS", "(3, 5)"), "SOLVER.STEPS = (3, 5) (expected steps below SOLVER.MAX_ITER 4;"),
    (("SOLVER.STEPS", "(3, 2)"), "SOLVER.STEPS = (3, 2) (expected increasing positive whole numbers)"),
    (("SOLVER.MOMENTUM", "1.5"), "SOLVER.MOMENTUM = 1.5 (expected a number from 0 to below 1)"),
    (("SOLVER.CHECKPOINT_PERIOD", "0"), "SOLVER.CHECKPOINT_PERIOD = 0"),
])
def test_values_no_run_can_train_with_are_named(opts, problem):
    problems = solver_problems(protocol.resolve_task("voc", 1, smoke=True, opts=opts, cpu=True).cfg)
    assert len(problems) == 1 and problems[0].startswith(problem)


# --- memory ----------------------------------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch):
        return {"loss": (self.weight * torch.stack(batch)).sum()}


def test_a_cpu_run_reports_the_memory_of_the_cpu_even_where_cuda_is_there():
    """The hook asks for the memory of the model's device: CUDA's peak allocation is 0 for a CPU run on a GPU
    machine, which Detectron2's train_net used to report."""
    model = _Tiny()
    trainer = SimpleTrainer(model, itertools.repeat([torch.ones(3)]), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([ProgressHook(1, torch.device("cpu"), every=1e9)])
    trainer.train(0, 2)
    assert trainer.storage.history("memory_gb").latest() > 0.01  # this process's resident memory


# --- machines --------------------------------------------------------------------------------------------------

VIEW = {"task": "voc", "weights_sha256": "ab" * 32, "converted weights": "backbone-abababababab.pkl",
        "action": "resume", "checkpoint": "model_0000999.pth"}
FAST = {"timeout": 20, "poll": 0.01}


def _in_thread(function, *args):
    """Run ``function(*args)`` in a thread; returns a callable giving its result or raising its error."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except Exception as error:  # noqa: BLE001  (handed to the caller)
            outcome["error"] = error
    thread = threading.Thread(target=target)
    thread.start()

    def result():
        thread.join(30)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
    return result


def _machines(out, views, num_machines=2):
    """Machines 0..n-1 each deciding/verifying the seeds in ``views[k]`` (a list of (seed, view)) into ``out``."""
    def work(k):
        machine = machines_for(out, k, num_machines, **FAST)
        machine.start()
        return [machine.agree(seed, view)["action"] for seed, view in views[k]]
    return [_in_thread(work, k) for k in range(num_machines)]


def test_machines_that_see_the_same_folder_go_ahead_seed_by_seed(tmp_path):
    views = [[(1, {**VIEW, "action": "skip"}), (2, VIEW)]] * 3
    assert [result() for result in _machines(tmp_path, views, num_machines=3)] == [["skip", "resume"]] * 3


def test_a_machine_that_sees_otherwise_stops_every_machine_naming_the_difference(tmp_path):
    blind = {**VIEW, "converted weights": "missing", "action": "train", "checkpoint": None}
    lead, follower = _machines(tmp_path, [[(1, VIEW)], [(1, blind)]])
    expected = (r"seed 1: machine 1 does not see what machine 0 sees \(action 'resume' -> 'train'; checkpoint "
                r"'model_0000999.pth' -> None; converted weights 'backbone-abababababab.pkl' -> 'missing', machine 0 "
                r"-> machine 1\); OUT must be one folder every machine sees")
    for result in (lead, follower):
        with pytest.raises(MachinesError, match=expected):
            result()


def test_another_command_on_one_machine_stops_them_all(tmp_path):
    lead, follower, other = _machines(tmp_path, [[(1, VIEW)], [(1, VIEW)], [(1, {**VIEW, "task": "coco"})]], 3)
    for result in (lead, follower, other):
        with pytest.raises(MachinesError, match=r"seed 1: machine 2 does not see .*\(task 'voc' -> 'coco'"):
            result()


def test_an_error_on_machine_0_stops_the_others_with_it(tmp_path):
    lead, follower = _machines(tmp_path, [[(1, {"error": "seed1 holds another run"})], [(1, VIEW)]])
    with pytest.raises(MachinesError, match="^seed1 holds another run$"):
        lead()
    with pytest.raises(MachinesError, match="^machine 0 stopped: seed1 holds another run$"):
        follower()


def test_files_of_an_earlier_attempt_are_never_taken_for_the_current_decision(tmp_path):
    """A follower started before machine 0 finds the exchange of a killed attempt, whose decision matches its
    own (wrong) view; it must wait for machine 0's current decision, and then disagree."""
    folder = tmp_path / ".machines"
    folder.mkdir()
    old = {"session": "old", "ids": {"1": "any"}, "view": {**VIEW, "action": "train", "checkpoint": None}}
    for name, content in {"session.json": {"session": "old"}, "seed1.json": old,
                          "seed1-go.json": {"session": "old", "stop": ""}}.items():
        (folder / name).write_text(json.dumps(content))
    follower = Follower(folder, 1, **FAST)
    follower.start()  # joins the old session: nobody answers it
    verdict = _in_thread(follower.agree, 1, old["view"])
    lead = Lead(folder, 2, **FAST)
    lead.start()
    with pytest.raises(MachinesError, match=r"machine 1 does not see what machine 0 sees \(action 'resume' -> 'train'"):
        lead.agree(1, VIEW)
    with pytest.raises(MachinesError, match="machine 1 does not see"):
        verdict()


def test_a_machine_that_never_joins_is_named(tmp_path):
    lead = Lead(tmp_path, 3, timeout=0.2, poll=0.01)
    with pytest.raises(MachinesError, match=r"waited 0 s for machine 1 to join; start the same command on every"):
        lead.start()
