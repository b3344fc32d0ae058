"""Machine 0 decides, the other machines verify: one decision per seed for a transfer run on several machines.

Every machine runs the same ``transfer`` command on one shared OUT, and the training processes of a seed
pair up across machines. Whether a seed is skipped (finished), resumed (from which checkpoint) or trained
from scratch is decided by machine 0 alone; each other machine compares its own view of the folder with that
decision before it starts anything, and a difference stops every machine with one line: OUT is then not one
folder that every machine sees, or the machines do not run the same command.

The exchange goes through small files in ``OUT/.machines/`` and needs no synchronised clocks: machine 0
opens a session (a random id); each other machine answers it with a random id of its own; machine 0's
decision names the session and every machine's id, so no file of an earlier attempt passes for a current one.
"""
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

from bt_transfer.core.errors import UserError
from bt_transfer.core.fileio import write_json
from bt_transfer.core.rundir import identity_changes
from bt_transfer.core.text import listing

MACHINES_DIR = ".machines"
WAIT_S = 1800.0  # as long as torch's default rendezvous timeout


class MachinesError(UserError):
    """Machines that do not agree on a seed, or a machine that never answered; every machine stops."""


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # not there yet, or being replaced
        return None


def _current(path, session, **expected):
    """The file's content if it belongs to ``session`` (and holds the ``expected`` values), else None."""
    found = _read(path)
    if found and found.get("session") == session and all(found.get(k) == v for k, v in expected.items()):
        return found
    return None


def _wait(read, what, timeout, poll):
    """The first non-None ``read()``, polled every ``poll`` s; MachinesError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (value := read()) is None:
        if time.monotonic() > deadline:
            raise MachinesError(f"waited {timeout:.0f} s for {what}; start the same command on every machine "
                                "(--machine-rank 0 to --num-machines - 1) with one --out they all see")
        time.sleep(poll)
    return value


def _differences(decided, view):
    return "; ".join(identity_changes(decided, view))


class Alone:
    """One machine: its own view is the decision."""

    def start(self):
        pass

    def agree(self, seed, view):
        if "error" in view:
            raise MachinesError(view["error"])
        return view


class Lead:
    """Machine 0: decides each seed and waits until every other machine has checked the decision."""

    def __init__(self, folder, num_machines, timeout=WAIT_S, poll=0.5, stream=sys.stdout):
        self.folder, self.others = Path(folder), range(1, num_machines)
        self.timeout, self.poll, self.stream = timeout, poll, stream

    def start(self):
        shutil.rmtree(self.folder, ignore_errors=True)  # an earlier attempt's exchange
        self.session = uuid.uuid4().hex
        write_json(self.folder / "session.json", {"session": self.session})
        print(f"machine 0: waiting for machines {listing(self.others)} to join ({self.folder})",
              file=self.stream, flush=True)
        self.ids = {str(k): self._wait(f"hello-{k}.json", f"machine {k} to join")["id"] for k in self.others}

    def _wait(self, name, what, **expected):
        return _wait(lambda: _current(self.folder / name, self.session, **expected), what, self.timeout, self.poll)

    def agree(self, seed, view):
        write_json(self.folder / f"seed{seed}.json", {"session": self.session, "ids": self.ids, "view": view})
        if "error" in view:
            raise MachinesError(view["error"])
        verdicts = [self._wait(f"seed{seed}-{k}.json", f"machine {k} to check seed {seed}", id=self.ids[str(k)])
                    for k in self.others]
        stop = "; ".join(verdict["stop"] for verdict in verdicts if verdict["stop"])
        write_json(self.folder / f"seed{seed}-go.json", {"session": self.session, "stop": stop})
        if stop:
            raise MachinesError(stop)
        return view


class Follower:
    """Machine k > 0: checks each of machine 0's decisions against its own view before acting on it."""

    def __init__(self, folder, machine_rank, timeout=WAIT_S, poll=0.5):
        self.folder, self.rank = Path(folder), machine_rank
        self.timeout, self.poll = timeout, poll
        self.id, self.session = uuid.uuid4().hex, None

    def _join(self):
        """Answer machine 0's current session (again, if it opened a new one); False while it has none."""
        session = (_read(self.folder / "session.json") or {}).get("session")
        if session and session != self.session:
            try:
                write_json(self.folder / f"hello-{self.rank}.json", {"session": session, "id": self.id})
            except OSError:  # machine 0 is clearing the folder for a new session: answer that one
                return False
            self.session = session
        return session is not None

    def start(self):
        _wait(lambda: self._join() or None, "machine 0 to start", self.timeout, self.poll)

    def agree(self, seed, view):
        def decision():
            self._join()  # machine 0 may have restarted since: its decision names only machines that joined it
            found = _read(self.folder / f"seed{seed}.json")
            return found if found and found.get("ids", {}).get(str(self.rank)) == self.id else None
        decided = _wait(decision, f"machine 0's decision on seed {seed}", self.timeout, self.poll)
        if "error" in decided["view"]:
            raise MachinesError(f"machine 0 stopped: {decided['view']['error']}")
        view = json.loads(json.dumps(view))  # as machine 0's decision reads back (lists, not tuples)
        stop = ""
        if "error" in view:
            stop = f"seed {seed}: machine {self.rank}: {view['error']}"
        elif decided["view"] != view:
            stop = (f"seed {seed}: machine {self.rank} does not see what machine 0 sees "
                    f"({_differences(decided['view'], view)}, machine 0 -> machine {self.rank}); OUT must be one "
                    "folder every machine sees under the same path, and every machine must run the same command")
        write_json(self.folder / f"seed{seed}-{self.rank}.json",
                   {"session": decided["session"], "id": self.id, "stop": stop})
        if stop:
            raise MachinesError(stop)
        go = _wait(lambda: _current(self.folder / f"seed{seed}-go.json", decided["session"]),
                   f"machine 0's go for seed {seed}", self.timeout, self.poll)
        if go["stop"]:
            raise MachinesError(go["stop"])
        return decided["view"]


def machines_for(out, machine_rank, num_machines, **waiting):
    """The coordination of machine ``machine_rank`` of ``num_machines`` running into ``out``."""
    if num_machines == 1:
        return Alone()
    folder = Path(out) / MACHINES_DIR
    return Lead(folder, num_machines, **waiting) if machine_rank == 0 else Follower(folder, machine_rank, **waiting)
