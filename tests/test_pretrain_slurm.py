"""The SLURM launcher without a cluster: the sbatch script it would submit, requeue wiring, and the
job itself run by submitit's in-process DebugExecutor."""
import os

import pytest
import submitit

from pretrain.slurm import PretrainJob, build_executor, main, parse

TRAIN = ["--data", "data/train", "--out", "runs/pt", "--epochs", "3", "--batch-size", "64"]


def test_options_split_from_training_arguments_which_are_validated_first(capsys):
    options, train_argv, train_args = parse(["--nodes", "4", "--partition", "learnlab", *TRAIN, "--channels-last"])
    assert (options.nodes, options.gpus_per_node, options.partition) == (4, 8, "learnlab")
    assert train_argv == [*TRAIN, "--channels-last"] and train_args.channels_last and train_args.epochs == 3
    with pytest.raises(SystemExit):
        parse(["--partition", "p", "--data", "d", "--out", "o", "--projector", "wide"])
    assert "--projector" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0"], "argument --nodes: expected an integer > 0, got 0"),
    (["--gpus-per-node", "-8"], "argument --gpus-per-node: expected an integer > 0, got -8"),
    (["--mem-gb", "0"], "argument --mem-gb: expected an integer > 0, got 0"),
    (["--max-requeues", "-1"], "argument --max-requeues: expected an integer >= 0, got -1"),
    (["--lambd", "nan"], "argument --lambd: expected a finite number, got nan"),  # a pretrain.train option
])
def test_bad_numbers_are_refused_naming_their_option_before_anything_is_submitted(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(["--partition", "p", *TRAIN, *argv])
    assert message in capsys.readouterr().err


def test_a_machine_without_slurm_gets_one_line_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(SystemExit, match=r"^error: .*On one machine use torchrun instead \(make pretrain\)\.$"):
        main(["--partition", "p", "--data", "d", "--out", str(tmp_path / "run")])


def test_sbatch_script_has_one_task_per_gpu_and_the_requeue_signal(tmp_path, monkeypatch):
    # submitit only checks that `srun` exists before building a SlurmExecutor; it is never run here.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    options, _, _ = parse(["--nodes", "2", "--gpus-per-node", "8", "--partition", "learnlab", "--timeout-min", "4320",
                           "--constraint", "volta32gb", "--mem-gb", "480", *TRAIN])
    executor = build_executor(options, tmp_path / "slurm")
    script = executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=learnlab", "--time=4320",
                 "--signal=USR2@120", "--constraint=volta32gb", "--mem=480GB", "--cpus-per-task=10"):
        assert f"#SBATCH {line}\n" in script
    assert executor.max_num_timeout == 20


def test_requeued_job_reruns_the_same_training_command():
    job = PretrainJob(TRAIN)
    assert isinstance(job, submitit.helpers.Checkpointable)
    resubmission = job.checkpoint()
    assert resubmission.function.train_argv == TRAIN


def test_job_trains_under_submitit(generated_data, tmp_path, monkeypatch):
    # The job exports the torch.distributed variables; monkeypatch restores them for the other tests.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    data = generated_data / "imagenet" / "train"
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
            "--projector", "32-16", "--image-size", "16", "--workers", "0", "--max-steps", "1"]
    job = submitit.AutoExecutor(folder=tmp_path / "slurm", cluster="debug").submit(PretrainJob(argv))
    job.result()
    assert (tmp_path / "run" / "resnet50.pth").is_file() and (tmp_path / "run" / "checkpoint.pth").is_file()
