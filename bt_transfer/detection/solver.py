"""The solver values a detection run can train with, checked before anything is written.

Detectron2 takes any value: a batch of 0 fails deep in a training process, a NaN or negative learning rate
trains to nonsense, LR steps at or beyond ``MAX_ITER`` are dropped with a log line. Each value is checked
against what it means, and every wrong one is named in one message.
"""
import math

from bt_transfer.core.errors import UserError


class SolverValueError(UserError, ValueError):
    """Config values no run can train with; the message names each key."""


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# key: (accepts the value, what is expected)
RULES = {
    "SOLVER.IMS_PER_BATCH": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "SOLVER.MAX_ITER": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "SOLVER.CHECKPOINT_PERIOD": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "SOLVER.WARMUP_ITERS": (lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),
    "SOLVER.BASE_LR": (lambda v: _number(v) and v > 0, "a finite positive number"),
    "SOLVER.GAMMA": (lambda v: _number(v) and v > 0, "a finite positive number"),
    "SOLVER.BIAS_LR_FACTOR": (lambda v: _number(v) and v > 0, "a finite positive number"),
    "SOLVER.MOMENTUM": (lambda v: _number(v) and 0 <= v < 1, "a number from 0 to below 1"),
    "SOLVER.WARMUP_FACTOR": (lambda v: _number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "SOLVER.WEIGHT_DECAY": (lambda v: _number(v) and v >= 0, "a finite number, 0 or more"),
    "SOLVER.WEIGHT_DECAY_NORM": (lambda v: _number(v) and v >= 0, "a finite number, 0 or more"),
    "SOLVER.WEIGHT_DECAY_BIAS": (lambda v: v is None or (_number(v) and v >= 0),
                                 "None (SOLVER.WEIGHT_DECAY) or a finite number, 0 or more"),
    "TEST.EVAL_PERIOD": (lambda v: _whole(v) and v >= 0, "a whole number, 0 (only at the end) or more"),
    "TEST.PRECISE_BN.NUM_ITER": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "DATALOADER.NUM_WORKERS": (lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),
}


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def solver_problems(cfg):
    """``KEY = value (expected ...)`` for every value of ``cfg`` (a Detectron2 config) no run can train with."""
    problems = [f"{key} = {_value(cfg, key)!r} (expected {what})"
                for key, (accepts, what) in RULES.items() if not accepts(_value(cfg, key))]
    steps, max_iter = tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER
    if not (all(_whole(s) and s > 0 for s in steps) and list(steps) == sorted(set(steps))):
        problems.append(f"SOLVER.STEPS = {steps!r} (expected increasing positive whole numbers)")
    elif _whole(max_iter) and any(s >= max_iter for s in steps):
        # Detectron2 would drop them with a log line: the run would train without the LR drops it asks for.
        problems.append(f"SOLVER.STEPS = {steps!r} (expected steps below SOLVER.MAX_ITER {max_iter}; "
                        "SOLVER.STEPS '()' for no LR drop)")
    return problems


def check_solver(cfg):
    """Raise ``SolverValueError`` naming every value of ``cfg`` that ``solver_problems`` finds."""
    problems = solver_problems(cfg)
    if problems:
        raise SolverValueError("config values no run can train with: " + "; ".join(problems))
