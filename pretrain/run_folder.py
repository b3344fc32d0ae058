"""The run folder of a multi-process run, claimed once for all its processes.

Rank 0 claims it (``bt_transfer.core.rundir.claim``: lock and identity) and tells the other processes the
outcome before any of them goes on, so none writes into a folder rank 0 refused, and all stop with the same
one-line error instead of waiting for each other.
"""
import contextlib

import torch.distributed as dist

from bt_transfer.core.errors import UserError
from bt_transfer.core.rundir import RunFolderError, claim


@contextlib.contextmanager
def claim_for_all(folder, kind, identity, info, may_exist=()):
    """``claim(folder, kind, identity, may_exist)`` on rank 0, held until the block ends; every process of
    ``info`` (a ``pretrain.distributed.DistInfo``) raises if rank 0 could not claim the folder."""
    with contextlib.ExitStack() as held:
        failure = None
        if info.is_main:
            try:
                held.enter_context(claim(folder, kind, identity, may_exist))
            except Exception as error:  # any failure: the other processes must not wait for a claim that never comes
                failure = error
        if info.distributed:
            outcome = [None if failure is None else (str(failure), isinstance(failure, UserError))]
            dist.broadcast_object_list(outcome, src=0)
            if outcome[0] is not None and failure is None:
                message, expected = outcome[0]
                failure = RunFolderError(message) if expected else RuntimeError(
                    f"rank 0 could not claim {folder}: {message}")
        if failure is not None:
            raise failure
        yield folder
