"""The paper's detection protocol on 1 to 8 GPUs: how the batch of 16 splits over GPUs and micro-batches, what
the record calls a deviation and what a note, the batch checked against the processes before any start, and
``--dry-run``. Resolution only: no model is built here (tests/test_detection_training.py trains).
"""
import json

import pytest
import torch

from bt_transfer.core.errors import UserError
from bt_transfer.core.provenance import PAPER_PRETRAINING
from bt_transfer.core.records import ResultError, make_record, validate
from bt_transfer.detection import runner as transfer
from bt_transfer.detection import trainer as train_net
from bt_transfer.detection.protocol import CONFIGS, resolve_config, resolve_task
from bt_transfer.detection.scaling import micro_batches

PAPER = {  # Barlow Twins Appendix C.2: batch 16; VOC lr 0.1, 24k iterations; COCO lr 0.03, 1x schedule
    "voc": {"IMS_PER_BATCH": 16, "BASE_LR": 0.1, "MAX_ITER": 24000, "STEPS": [18000, 22000], "WARMUP_ITERS": 1000},
    "coco": {"IMS_PER_BATCH": 16, "BASE_LR": 0.03, "MAX_ITER": 90000, "STEPS": [60000, 80000], "WARMUP_ITERS": 1000},
}
# Words any sentence about batch, LR, schedule or normalisation would use.
PROTOCOL_WORDS = ("batch", "LR", "MAX_ITER", "STEPS", "WARMUP", "BN", "scaling", "accumulation")


def dry_run(capsys, monkeypatch, tmp_path, *argv):
    """``python -m bt_transfer.transfer ... --dry-run`` in this process, run from ``tmp_path``: its JSON."""
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    transfer.main([*argv, "--datasets-root", str(tmp_path / "no-datasets"), "--out", str(tmp_path / "out"),
                   "--dry-run"])
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("task", ["voc", "coco"])
@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_dry_run_gives_the_papers_protocol_on_1_2_4_and_8_gpus(capsys, monkeypatch, tmp_path, task, gpus):
    planned = dry_run(capsys, monkeypatch, tmp_path, task, "--num-gpus", str(gpus))
    solver = planned["config"]["SOLVER"]
    assert {key: solver[key] for key in PAPER[task]} == PAPER[task]
    assert solver["ACCUMULATION_STEPS"] == 1  # 16/G images per GPU in one forward pass
    assert planned["world_size"] == gpus and planned["datasets"]["found"] is False
    assert planned["deviations"] == []
    assert planned["config"]["MODEL"]["RESNETS"]["NORM"] == ("BN" if gpus == 1 else "SyncBN")
    notes = planned["notes"]
    assert not any(word in note for note in notes for word in ("LR", "MAX_ITER", "scaling"))
    if gpus == 8:
        assert notes == []
    else:  # what still differs from 2 images on each of 8 GPUs is a note, never a deviation
        assert notes[-1 - (task == "coco")].startswith(f"{16 // gpus} image(s) per GPU per forward pass")
    assert any(note.startswith("one process: plain BN instead of SyncBN") for note in notes) == (gpus == 1)


def test_dry_run_adds_the_dataset_deviations_when_the_datasets_are_there(capsys, generated_data):
    transfer.main(["voc", "--num-gpus", "8", "--datasets-root", str(generated_data), "--dry-run"])
    planned = json.loads(capsys.readouterr().out)
    assert planned["datasets"] == {"root": str(generated_data), "found": True}
    assert len(planned["deviations"]) == 1 and planned["deviations"][0].startswith("not the benchmark's data")


def test_dry_run_adds_the_pretraining_deviations_of_the_weights(capsys, monkeypatch, tmp_path):
    pretraining = tmp_path / "pretrain"
    pretraining.mkdir()
    (pretraining / "args.json").write_text(json.dumps({**PAPER_PRETRAINING, "epochs": 2, "world_size": 8}))
    planned = dry_run(capsys, monkeypatch, tmp_path / "pretrain", "coco", "--num-gpus", "8",
                      "--weights", str(pretraining / "resnet50.pth"))
    assert planned["deviations"] == ["backbone pretrained with epochs 2 (paper: 1000)"]


def test_dry_run_needs_neither_weights_nor_out_but_a_run_does(capsys, tmp_path):
    with pytest.raises(SystemExit):
        transfer.main(["voc", "--num-gpus", "0"])
    assert "required: --weights, --out (except with --dry-run)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_a_real_run_of_more_processes_than_this_machine_runs_is_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="^error: --num-gpus 2 --num-machines 1 asked for, but CUDA is not available"):
        transfer.main(["voc", "--num-gpus", "2", "--weights", str(tmp_path / "w.pth"), "--out", str(out),
                       "--datasets-root", str(tmp_path)])
    assert not out.exists()


@pytest.mark.parametrize("images_per_gpu,gpus,micro,steps", [
    (8, 1, 8, 2), (2, 1, 2, 8), (3, 1, 2, 8), (1, 1, 1, 16), (4, 2, 4, 2), (1, 8, 1, 2), (2, 8, 2, 1), (16, 4, 4, 1),
])
def test_images_per_gpu_splits_each_gpus_share_into_equal_micro_batches(images_per_gpu, gpus, micro, steps):
    assert micro_batches(16 // gpus, images_per_gpu) == (micro, steps)
    resolved = resolve_task("voc", gpus, images_per_gpu=images_per_gpu)
    solver = resolved.cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER, solver.ACCUMULATION_STEPS) == (16, 0.1, 24000, steps)
    normalised = micro * gpus  # SyncBN over every GPU's micro-batch (plain BN on one)
    if normalised == 16:
        assert resolved.deviations == ()
    else:
        assert resolved.deviations == (
            f"gradient accumulation over {steps} micro-batches of {micro} image(s) per GPU (batch 16, its LR and "
            f"schedule kept): BN (and PreciseBN) batch statistics over {normalised} images at a time instead of "
            "the protocol's 16",)


def test_accumulation_with_bn_over_all_16_images_is_a_note():
    resolved = resolve_task("voc", 8, opts=["SOLVER.IMS_PER_BATCH", "32"], images_per_gpu=2)
    assert resolved.cfg.SOLVER.ACCUMULATION_STEPS == 2
    assert resolved.deviations == ("SOLVER.IMS_PER_BATCH: 32 (protocol: 16)",)
    assert resolved.notes == ("gradient accumulation over 2 micro-batches of 2 image(s) per GPU (batch 32, its LR "
                              "and schedule kept)",)


def test_accumulation_without_bn_is_exact_and_a_note():
    resolved = resolve_task("voc", 1, opts=["MODEL.RESNETS.NORM", "FrozenBN"], images_per_gpu=4)
    assert resolved.deviations == ("MODEL.RESNETS.NORM: 'FrozenBN' (protocol: 'SyncBN')",)
    assert resolved.notes[0] == ("gradient accumulation over 4 micro-batches of 4 image(s) per GPU (batch 16, its "
                                 "LR and schedule kept)")


def test_linear_scaling_stays_an_explicit_choice_recorded_as_today():
    resolved = resolve_task("coco", 2, schedule="linear-scaling", images_per_gpu=4)
    solver = resolved.cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER, solver.ACCUMULATION_STEPS) == (8, 0.015, 180000, 1)
    assert resolved.deviations == (
        "linear scaling rule for 2 GPU(s) x 4 images: batch 8 (protocol 16), BASE_LR 0.015 (0.03), MAX_ITER 180000 "
        "(90000), STEPS (120000, 160000) ((60000, 80000)), WARMUP_ITERS 2000 (1000)",
        "SyncBN across 2 processes x 4 images: batch statistics over 8 images instead of SyncBN over the protocol's 16",
    )


def test_smoke_is_the_linear_scaling_rule_at_2_images_per_process():
    for gpus, batch in ((1, 2), (3, 6), (8, 16)):
        assert resolve_task("voc", gpus, smoke=True).cfg.SOLVER.IMS_PER_BATCH == batch
    protocol = resolve_task("voc", 1, smoke=True, schedule="protocol").cfg.SOLVER
    assert (protocol.IMS_PER_BATCH, protocol.BASE_LR) == (16, 0.1)


def test_a_deviation_states_the_final_values_only():
    """The scaling sentence said MAX_ITER 192000 for a run of 4 iterations (--smoke): now each value once, final."""
    deviations = resolve_task("voc", 1, smoke=True, opts=["SOLVER.BASE_LR", "0.02"]).deviations
    assert deviations[0] == "linear scaling rule for 1 GPU(s) x 2 images: batch 2 (protocol 16)"
    assert "SOLVER.STEPS: () (protocol: (18000, 22000))" in deviations  # --smoke: no LR drop in 4 steps
    assert "SOLVER.MAX_ITER: 4 (protocol: 24000)" in deviations
    assert "SOLVER.WARMUP_ITERS: 2 (protocol: 1000)" in deviations
    assert "SOLVER.BASE_LR: 0.02 (protocol: 0.1)" in deviations
    assert not any(scaled in d for d in deviations for scaled in ("MAX_ITER 192000", "WARMUP_ITERS 8000", "0.0125"))


@pytest.mark.parametrize("argv,gpus", [
    (["--smoke", "--opts", "SOLVER.IMS_PER_BATCH", "2"], 8),  # issue 17: every worker died on Detectron2's assert
    (["--no-rescale"], 3), (["--no-rescale"], 5), (["--no-rescale"], 6), (["--no-rescale"], 7), ([], 3),
])
def test_a_batch_that_does_not_split_over_the_processes_is_refused_in_one_line(tmp_path, argv, gpus):
    with pytest.raises(SystemExit) as stop:
        transfer.main(["coco", "--num-gpus", str(gpus), "--datasets-root", str(tmp_path), "--dry-run", *argv])
    message = str(stop.value)
    assert "\n" not in message and message.startswith("error: config coco_R_50_C4_1x.yaml with these options: ")
    assert f"does not split over {gpus} processes: use 1" in message
    assert "(--num-gpus x --num-machines)" in message and "--opts SOLVER.IMS_PER_BATCH" in message
    assert ("--schedule linear-scaling" in message) == ("--smoke" not in argv)


def test_no_rescale_is_the_protocol_schedule_and_contradicts_linear_scaling():
    parse = train_net.argument_parser().parse_args
    voc = ["--config-file", str(CONFIGS["voc"]), "--num-gpus", "0"]
    assert train_net.resolve_args(parse([*voc, "--no-rescale"])).cfg.SOLVER.IMS_PER_BATCH == 16
    assert train_net.resolve_args(parse([*voc, "--images-per-gpu", "4"])).cfg.SOLVER.ACCUMULATION_STEPS == 4
    assert train_net.resolve_args(parse([*voc, "--schedule", "linear-scaling"])).cfg.SOLVER.IMS_PER_BATCH == 2
    with pytest.raises(UserError, match="--no-rescale and --schedule linear-scaling contradict"):
        train_net.resolve_args(parse([*voc, "--no-rescale", "--schedule", "linear-scaling"]))


def test_train_net_refuses_a_config_that_cannot_run_in_one_line():
    with pytest.raises(SystemExit, match="^error: config .*voc_R_50_C4_24k.yaml: SOLVER.ACCUMULATION_STEPS 3 does not "
                                         "split the 16 images per process into equal micro-batches"):
        train_net.cli(["--config-file", str(CONFIGS["voc"]), "--num-gpus", "0", "SOLVER.ACCUMULATION_STEPS", "3"])


def test_accumulation_is_refused_under_amp():
    with pytest.raises(ValueError, match="gradient accumulation .* fp32"):
        resolve_config(CONFIGS["voc"], ["SOLVER.AMP.ENABLED", "True"], world_size=1, images_per_gpu=4)


def test_records_carry_notes_beside_deviations_and_old_records_stay_valid():
    def record(**protocol):
        return make_record("voc", {"bbox/AP": 1.0, "bbox/AP50": 2.0, "bbox/AP75": 3.0}, 1,
                           {"path": "w", "sha256": "0" * 64, "label": "w"}, {}, 1, **protocol)

    noted = record(notes=["16 images per GPU"])
    assert noted["protocol"] == {"full": True, "deviations": [], "notes": ["16 images per GPU"]}
    assert record()["protocol"] == {"full": True, "deviations": []}  # as records were before notes existed
    validate(record(), "old.json")
    for bad, where in (("16 images per GPU", r"protocol.notes' is '16 images per GPU' \(str\), expected a list"),
                       ([""], r"protocol.notes\[0\]' is '' \(str\), expected a non-empty string"),
                       ([3], r"protocol.notes\[0\]' is 3 \(int\), expected a non-empty string")):
        with pytest.raises(ResultError, match=f"x.json: key '{where}"):
            validate({**noted, "protocol": {**noted["protocol"], "notes": bad}}, "x.json")
