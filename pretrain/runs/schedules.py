"""Per-step schedules of the ATST recipe (official ``cosine_scheduler_step``, as functions).

``cosine_schedule(step, ...)`` equals element ``step`` of the official precomputed array:
a linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps`` steps (both ends
included), then a half cosine from ``base`` to ``final`` over the remaining steps. Steps past
the end keep the last value.
"""

from __future__ import annotations

import math


def cosine_schedule(
    step: int, *, base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> float:
    """Value of the warm-up + cosine schedule at optimizer step ``step`` (0-based)."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    step = min(max(step, 0), total_steps - 1)
    if step < warmup_steps:
        if warmup_steps == 1:
            return base
        return warmup_start + (base - warmup_start) * step / (warmup_steps - 1)
    i, n = step - warmup_steps, total_steps - warmup_steps
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))


def learning_rate(step: int, *, peak: float, total_steps: int, warmup_steps: int, final: float = 1e-6) -> float:
    return cosine_schedule(step, base=peak, final=final, total_steps=total_steps, warmup_steps=warmup_steps)


def weight_decay(step: int, *, total_steps: int, start: float = 0.04, end: float = 0.4) -> float:
    return cosine_schedule(step, base=start, final=end, total_steps=total_steps)


def ema_momentum(step: int, *, base: float, total_steps: int) -> float:
    return cosine_schedule(step, base=base, final=1.0, total_steps=total_steps)


def exponential_warmup(
    step: int, *, peak: float, warmup_steps: int, total_steps: int, cos_down: bool, min_scale: float = 0.1
) -> float:
    """The DCASE task 4 baseline's ``ExponentialWarmup``, as ATST-SED steps it (``train/local/
    scheduler.py``): counted from step 1, ``peak * exp(-5 (1 - s / R)^2)`` during the ``R`` warm-up
    steps, then constant (``cos_down=False``, stage 1) or a half cosine from ``peak`` to
    ``min_scale * peak`` at ``total_steps`` (stage 2)."""
    s = step + 1
    if s < warmup_steps:
        return peak * math.exp(-5.0 * (1.0 - s / warmup_steps) ** 2)
    if not cos_down or total_steps <= warmup_steps:
        return peak
    progress = min((s - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return peak * (min_scale + (1 - min_scale) * 0.5 * (1 + math.cos(math.pi * progress)))
