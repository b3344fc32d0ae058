"""Child processes that die with the process that started them.

A ``kill -9`` of a command would otherwise leave the command it started running on, holding a run folder's lock
and writing into it, with nobody left to report its outcome; every command that runs another passes
``preexec_fn=dying_with_this_process()`` (Linux's ``PR_SET_PDEATHSIG``, so the chain demo -> benchmark ->
transfer -> train_net goes down together).
"""
import ctypes
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform.startswith("linux") else None


def _die_with(parent):
    """In the child, between fork and exec: the kernel kills it when ``parent`` dies, even by ``kill -9``."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def dying_with_this_process():
    """``preexec_fn`` that ties a child's life to this process (Linux; elsewhere None: the child may outlive it)."""
    return functools.partial(_die_with, os.getpid()) if _PRCTL is not None else None
