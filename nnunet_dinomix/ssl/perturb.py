"""Input perturbations that keep voxels aligned, so a teacher's pseudo-labels stay valid for the student."""
from __future__ import annotations

import torch


def clipped_gaussian_noise(x: torch.Tensor, std: float, clip: float = 2.0, generator=None) -> torch.Tensor:
    """``x + clamp(N(0, std^2), -clip*std, clip*std)`` (the noise of UA-MT's teacher input). ``std=0`` is identity."""
    if std <= 0:
        return x
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * std
    return x + noise.clamp_(-clip * std, clip * std)
