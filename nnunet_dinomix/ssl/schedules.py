"""Ramp-up schedules for loss weights, as functions of the training progress."""
from __future__ import annotations

import math


def sigmoid_rampup(step: int, length: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = step / length`` clipped to [0, 1] (Laine & Aila, 2017). 1 after ``length``."""
    if length <= 0:
        return 1.0
    t = min(max(step, 0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(step: int, length: int) -> float:
    if length <= 0:
        return 1.0
    return min(max(step, 0), length) / length
