"""Commands that start commands (demo -> benchmark -> transfer -> train_net) take them down when killed, even by
``kill -9``: every child is started with ``bt_transfer.core.children.dying_with_this_process``. The whole chain
through transfer's real command is tests/test_transfer.py; here, the mechanism against a control without it."""
import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = """
import subprocess, sys, time
from bt_transfer.core.children import dying_with_this_process
child = subprocess.Popen(["sleep", "120"], preexec_fn=dying_with_this_process() if sys.argv[1] == "tied" else None)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _child_after_killing_its_parent(mode):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_tied_child_dies_with_its_killed_parent_and_an_untied_one_does_not():
    assert not _alive(_child_after_killing_its_parent("tied"))
    untied = _child_after_killing_its_parent("untied")  # the control: the sleep runs on for its 120 s
    try:
        assert _alive(untied)
    finally:
        os.kill(untied, signal.SIGKILL)
