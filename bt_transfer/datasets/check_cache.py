"""What the dataset checks have passed already, so that a rerun on unchanged data does not pay twice.

One small json file, ``dataset-checks.json`` in ``$BT_TRANSFER_CACHE`` (default ``$XDG_CACHE_HOME/bt-transfer``,
else ``~/.cache/bt-transfer``), maps each split that passed to a fingerprint: a hash of the check's own code,
what it expected, and the path, size and mtime of every file it read. Any change to one of them checks the
split again; a split with problems is never recorded. The file lives outside the datasets root because that
is often shared and read-only, and because Detectron2 and other tools list its folders: nothing is ever
added there. It holds hashes only, no data, and only this module reads it. Writes are atomic; losing the
file, or a concurrent writer's entry, only costs a recheck.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

from bt_transfer.core.fileio import write_json

CACHE_FILE = "dataset-checks.json"


def cache_file():
    folder = os.environ.get("BT_TRANSFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "bt-transfer")
    return Path(folder) / CACHE_FILE


def file_stats(paths):
    """Sorted (path, size, mtime_ns) of ``paths``, or None if one is missing (the check will say which)."""
    try:
        return sorted((str(path), (s := os.stat(path)).st_size, s.st_mtime_ns) for path in paths)
    except FileNotFoundError:
        return None


def folder_stats(folder):
    """Sorted (path, size, mtime_ns) of every file under ``folder`` (symbolic links followed)."""
    stats, pending = [], [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    pending.append(entry.path)
                else:
                    status = entry.stat()
                    stats.append((entry.path, status.st_size, status.st_mtime_ns))
    return sorted(stats)


def fingerprint(*parts):
    """sha256 of JSON-serialisable parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()


def code_fingerprint(modules):
    """sha256 of the source files of ``modules``: a changed check never trusts an older verdict."""
    return fingerprint([hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest() for module in modules])


class CheckCache:
    """The fingerprints of the splits that passed, by key (a split's name and the paths it reads)."""

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else cache_file()
        self.entries = self._read()

    def _read(self):
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, unreadable or damaged: a cache starts over
            return {}
        return entries if isinstance(entries, dict) else {}

    def passed(self, key, fingerprint):
        return fingerprint is not None and self.entries.get(key) == fingerprint

    def record(self, key, fingerprint):
        """Remember that ``key`` passed with ``fingerprint``; a cache that cannot be written is only slower."""
        self.entries = {**self._read(), key: fingerprint}  # keep what another run recorded meanwhile
        try:
            write_json(self.path, self.entries)
        except OSError as error:
            print(f"note: cannot record the dataset check in {self.path} ({error}); the next run checks again",
                  file=sys.stderr)
