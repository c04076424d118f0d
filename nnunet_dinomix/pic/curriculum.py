"""The PIC curriculum: running class voxel counts and the class sampling distribution ``pi_c(t) ∝ n_c^-gamma(t)``.

``gamma`` starts at 1 (classes drawn inversely to their voxel count: the tail first) and ends at 0 (uniform
over classes) [ours: the schedule's shape is a setting]. The counts are an exponential moving average of per-batch
voxel counts from ground truth and confident pseudo-labels, bias-corrected as in Adam so that the first batches
are not pulled towards zero. No nnU-Net import.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

SCHEDULES = ("linear", "cosine", "constant")


def gamma_at(progress: float, start: float = 1.0, end: float = 0.0, shape: str = "linear") -> float:
    """The exponent at ``progress`` in [0, 1] of training: ``start`` -> ``end`` along ``shape``.

    ``linear``: straight line; ``cosine``: half cosine (stays near ``start`` longer, then eases into ``end``);
    ``constant``: ``start`` throughout (for ablations).
    """
    p = min(max(float(progress), 0.0), 1.0)
    if shape == "linear":
        f = p
    elif shape == "cosine":
        f = 0.5 * (1.0 - math.cos(math.pi * p))
    elif shape == "constant":
        f = 0.0
    else:
        raise ValueError(f"unknown gamma schedule '{shape}'; choose one of {', '.join(SCHEDULES)}")
    return start + (end - start) * f


def class_probabilities(counts: torch.Tensor, gamma: float, min_count: float = 1.0) -> torch.Tensor:
    """``pi_c ∝ max(n_c, min_count)^-gamma`` over the classes of ``counts`` (1D); sums to 1.

    Computed in log space, so counts of 1e9 voxels and gamma 1 stay exact. ``min_count`` keeps a class that was
    never seen finite; whether it can be drawn is decided by the caller (it must be present in a sample).
    """
    log_n = torch.log(counts.double().clamp_min(min_count))
    return torch.softmax(-gamma * log_n, dim=0).to(torch.float32)


class ClassCounts:
    """Exponential moving average of per-class voxel counts, bias-corrected, with a state dict for resuming."""

    def __init__(self, num_classes: int, momentum: float = 0.99):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self._average = torch.zeros(num_classes, dtype=torch.float64)
        self.updates = 0

    def update(self, counts: torch.Tensor) -> None:
        counts = counts.detach().to("cpu", torch.float64).reshape(-1)
        if counts.numel() != self.num_classes:
            raise ValueError(f"expected {self.num_classes} counts, got {counts.numel()}")
        self._average.mul_(self.momentum).add_(counts, alpha=1.0 - self.momentum)
        self.updates += 1

    @property
    def value(self) -> torch.Tensor:
        """Bias-corrected average counts (zeros before the first update)."""
        if self.updates == 0:
            return torch.zeros(self.num_classes, dtype=torch.float64)
        return self._average / (1.0 - self.momentum ** self.updates)

    def state_dict(self) -> Dict[str, object]:
        return {"average": self._average.clone(), "updates": self.updates, "momentum": self.momentum}

    def load_state_dict(self, state: Optional[Dict[str, object]]) -> None:
        if state is None:
            return
        average = torch.as_tensor(state["average"], dtype=torch.float64)
        if average.numel() != self.num_classes:
            raise ValueError(f"saved counts have {average.numel()} classes, this curriculum {self.num_classes}")
        self._average = average.clone()
        self.updates = int(state["updates"])
        self.momentum = float(state["momentum"])


def voxel_counts(labels: torch.Tensor, weight: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sum of ``weight`` over voxels (``labels`` int in [0, num_classes), same shape as ``weight``)."""
    return torch.bincount(labels.reshape(-1).long(), weights=weight.reshape(-1).double(), minlength=num_classes)
