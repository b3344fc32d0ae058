"""Run folders (bt_transfer.core.rundir): one run per folder, held by one process at a time."""
import json
import os
import signal
import subprocess
import sys

import pytest

from bt_transfer.core.rundir import IDENTITY_FILE, LOCK_FILE, RunFolderError, claim

HOLD = """
import sys, time
from bt_transfer.core.rundir import claim
with claim(sys.argv[1], "pretrain", {"lambd": 0.0051}):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_fresh_folder_is_claimed_and_its_identity_recorded(tmp_path):
    with claim(tmp_path / "run", "pretrain", {"lambd": 0.0051, "epochs": 2}) as folder:
        (folder / "checkpoint.pth").write_text("x")
    assert json.loads((tmp_path / "run" / IDENTITY_FILE).read_text()) == {
        "kind": "pretrain", "identity": {"epochs": 2, "lambd": 0.0051}}
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # a clean release names no holder
    with claim(tmp_path / "run", "pretrain", {"epochs": 2, "lambd": 0.0051}):  # the same run continues
        pass


def test_another_run_is_refused_naming_every_changed_setting(tmp_path):
    with claim(tmp_path, "pretrain", {"lambd": 0.0051, "seed": 0, "epochs": 2}):
        pass
    with pytest.raises(RunFolderError, match=r"holds another pretrain run: .*\(lambd 0.0051 -> 0.01; seed 0 -> 1\)"):
        with claim(tmp_path, "pretrain", {"lambd": 0.01, "seed": 1, "epochs": 2}):
            pytest.fail("entered")
    with pytest.raises(RunFolderError, match="holds a 'pretrain' run, not a 'linear' run"):
        with claim(tmp_path, "linear", {}):
            pytest.fail("entered")


def test_a_folder_with_other_files_is_refused_unless_they_are_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"is not empty and holds no readable run.json .*notes.txt"):
        with claim(tmp_path, "pretrain", {}):
            pytest.fail("entered")
    assert not (tmp_path / IDENTITY_FILE).exists()
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "slurm").mkdir()
    with claim(tmp_path, "pretrain", {}, may_exist=("slurm",)):
        pass


def test_a_busy_folder_is_refused_naming_its_holder(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(RunFolderError, match=rf"is in use by another run \(pid {holder.pid} on "):
            with claim(tmp_path, "pretrain", {"lambd": 0.0051}):
                pytest.fail("entered")
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over_saying_so(tmp_path, capsys):
    holder = hold_in_another_process(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with claim(tmp_path, "pretrain", {"lambd": 0.0051}):
        pass
    assert f"taking over the lock of a run that ended without releasing it (pid {holder.pid} " in capsys.readouterr().err
