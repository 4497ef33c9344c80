"""Stopping a run whose loss or weights stop being numbers.

A learning rate too large for the data, or half precision overflowing, turns the loss into NaN or
Inf; the optimizer then writes NaN into every weight and the run would go on "training" and save
those weights as its result. Instead the step that first sees a non-finite loss raises
``TrainingDivergedError`` (naming the step and the learning rate), and no checkpoint is written
from non-finite weights, so ``last.ckpt`` keeps the last good state to resume from with other
settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class TrainingDivergedError(ArithmeticError):
    """The loss or the weights of a run became NaN or Inf."""


Vote = Callable[[bool], bool]  # one process's answer -> the answer every process agrees on


def every_process(trainer) -> Vote:
    """The vote of a Lightning run: finite only if finite on every process, so that all of them
    stop together (a process that skipped the vote would wait for the others forever)."""
    return lambda finite: trainer.strategy.reduce_boolean_decision(finite, all=True)


def check_loss(loss: Tensor, *, step: int, lr: float, agree: Vote | None = None) -> None:
    """Raise if ``loss`` is not finite; ``agree`` (``every_process``) makes the decision common to
    every process, else this process's own loss decides."""
    finite = bool(torch.isfinite(loss.detach()).all())
    finite = finite if agree is None else agree(finite)
    if not finite:
        value = float(loss.detach().float().reshape(-1)[0])
        raise TrainingDivergedError(
            f"training diverged at step {step}: the loss is "
            f"{value if not math.isfinite(value) else 'non-finite on another process'} "
            f"(learning rate {lr:.3g}); no checkpoint was written from this step. Resume from the last "
            "checkpoint with a smaller learning rate (or float32 precision)"
        )


def check_weights(module: nn.Module, *, step: int, agree: Vote | None = None) -> None:
    """Raise if any parameter or buffer of ``module`` holds NaN or Inf (called before a checkpoint
    is written); ``agree`` as for ``check_loss`` (sharded weights differ per process)."""
    bad = next(
        (
            name
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ),
        None,
    )
    finite = bad is None if agree is None else agree(bad is None)
    if not finite:
        where = f"weight '{bad}'" if bad else "a weight on another process"
        raise TrainingDivergedError(
            f"training diverged by step {step}: {where} holds NaN or Inf; the checkpoint was not written"
        )


__all__ = ["TrainingDivergedError", "Vote", "check_loss", "check_weights", "every_process"]
