"""One run, one folder, one identity.

Before a run writes anything into its folder it ``claim``s it: an exclusive lock (``flock``, so the kernel
releases it on any exit, ``kill -9`` included; the holder's pid, host and command are written into the lock
file for the message a second run prints), then the folder's identity. ``run.json`` records what defines the
run (the settings that change its numbers, the hashes of its inputs); a folder that is empty, or holds
``run.json`` of the same identity, is this run's, anything else is refused with the settings that differ.
Settings that do not change the numbers (workers, logging, the number of seeds) stay out of the identity, so
a rerun with more seeds or another logging interval continues the same run.
"""
import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from bt_transfer.core.errors import UserError
from bt_transfer.core.fileio import write_json
from bt_transfer.core.text import listing

LOCK_FILE = ".lock"
IDENTITY_FILE = "run.json"


class RunFolderError(UserError):
    """A run folder that is busy or belongs to another run; the message names the folder and the holder."""


def _holder():
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv])}


def _describe(holder):
    if not isinstance(holder, dict):
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {time.ctime(holder.get('started', 0))}: " \
           f"{holder.get('command')}"


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def identity_changes(recorded, identity):
    """``key recorded -> wanted`` for every setting in which two identities differ."""
    keys = sorted(set(recorded) | set(identity))
    return [f"{key} {recorded.get(key)!r} -> {identity.get(key)!r}" for key in keys
            if recorded.get(key) != identity.get(key)]


@contextlib.contextmanager
def claim(folder, kind, identity, may_exist=(), stream=None):
    """Hold ``folder`` for a run of ``kind`` (e.g. "pretrain") defined by ``identity`` (JSON-able settings).
    ``may_exist`` names entries a launcher may have made before the run's first claim (e.g. SLURM logs).

    Raises RunFolderError, before writing anything but the lock file, when another live process holds the
    folder or the folder holds another run or other files. The lock is released when the block ends.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{folder} is in use by another run ({_describe(_read_json(lock_path))}); wait "
                                 "for it to finish or choose another --out") from None
        # A clean release empties the lock file, so a holder still named in it ended without one (killed).
        if previous := _read_json(lock_path):
            print(f"{folder}: taking over the lock of a run that ended without releasing it "
                  f"({_describe(previous)})", file=stream or sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        try:
            _check_identity(folder, kind, identity, may_exist)
            yield folder
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _check_identity(folder, kind, identity, may_exist):
    wanted = {"kind": kind, "identity": identity}
    recorded = _read_json(folder / IDENTITY_FILE)
    if recorded is None:
        others = sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_FILE, IDENTITY_FILE, *may_exist))
        if (folder / IDENTITY_FILE).exists() or others:
            raise RunFolderError(f"{folder} is not empty and holds no readable {IDENTITY_FILE} of a run ("
                                 f"{listing(others or [IDENTITY_FILE], shown=5)}); choose another --out or empty it")
        write_json(folder / IDENTITY_FILE, wanted)
        return
    if recorded.get("kind") != kind:
        raise RunFolderError(f"{folder} holds a {recorded.get('kind')!r} run, not a {kind!r} run; "
                             "choose another --out")
    changes = identity_changes(recorded.get("identity") or {}, identity)
    if changes:
        raise RunFolderError(f"{folder} holds another {kind} run: resuming it with these settings would mix two "
                             f"runs ({'; '.join(changes)}); choose another --out, or rerun with its settings")
