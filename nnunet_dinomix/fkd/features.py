"""Slice-wise DINOv3 features of a 3D patch (METHOD.md, FKD step).

nnU-Net hands the network normalised intensities. For the 2D teacher each slice is mapped back to [0, 1],
repeated to three channels, normalised with ImageNet statistics (DINOv3's LVD-1689M training), resized in plane
to a multiple of the patch size 16, and encoded; the patch tokens (CLS and register tokens dropped) of all
slices stack into a feature volume ``(B, C_t, D, h, w)``. Slices go through the teacher in chunks, so memory is
bounded for any patch size. No nnU-Net import.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 16


def ct_to_unit(x: torch.Tensor, mean: float, std: float, low: float, high: float) -> torch.Tensor:
    """Invert nnU-Net's ``CTNormalization`` (z-score of the clipped HU) and window ``[low, high]`` HU to [0, 1].

    ``mean``/``std`` are the dataset fingerprint's foreground intensity statistics; ``low``/``high`` are
    typically its 0.5 and 99.5 foreground percentiles (the window nnU-Net itself clips to).
    """
    hu = x * std + mean
    return ((hu - low) / max(high - low, 1e-6)).clamp_(0, 1)


def robust_minmax_per_slice(x: torch.Tensor, quantiles: Tuple[float, float] = (0.01, 0.99)) -> torch.Tensor:
    """Map every 2D slice of ``x`` (N, 1, H, W) to [0, 1] between its own intensity quantiles (for MR)."""
    flat = x.flatten(1).float()
    lo = torch.quantile(flat, quantiles[0], dim=1).view(-1, 1, 1, 1)
    hi = torch.quantile(flat, quantiles[1], dim=1).view(-1, 1, 1, 1)
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp_(0, 1)


def teacher_input_size(height: int, width: int, scale: float = 1.0) -> Tuple[int, int]:
    """In-plane size for the teacher: ``scale`` times the slice, rounded to a multiple of 16 (at least 16)."""
    return tuple(max(PATCH, int(round(s * scale / PATCH)) * PATCH) for s in (height, width))


def to_teacher_rgb(slices01: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (N, 3, *size), ImageNet-normalised."""
    x = F.interpolate(slices01, size=size, mode="bilinear", align_corners=False) if slices01.shape[-2:] != size \
        else slices01
    # python scalars, not a device tensor built from a list: that would be a synchronising host-to-device copy
    return torch.cat([(x - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dim=1)


def patch_tokens(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C, H/16, W/16): the teacher's final-norm patch tokens as a feature map."""
    tokens = teacher.forward_features(images)[:, teacher.num_prefix_tokens:]
    n, _, c = tokens.shape
    h, w = images.shape[-2] // PATCH, images.shape[-1] // PATCH
    return tokens.transpose(1, 2).reshape(n, c, h, w)


@torch.no_grad()
def slice_features(teacher: nn.Module, volume: torch.Tensor, to_unit: Callable[[torch.Tensor], torch.Tensor],
                   slice_axis: int = 0, scale: float = 1.0, chunk: int = 32,
                   autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Teacher features of every slice of ``volume`` (B, 1, *spatial) along ``slice_axis`` (0-2 of spatial).

    Returns ``(B, C_t, S, h, w)`` with ``S`` the number of slices and ``(h, w)`` the token grid, the slice axis
    first. ``to_unit`` maps (N, 1, H, W) normalised intensities to [0, 1].
    """
    if volume.ndim != 5 or volume.shape[1] != 1:
        raise ValueError(f"expected (B, 1, X, Y, Z), got {tuple(volume.shape)}")
    spatial = [2, 3, 4]
    axis = spatial.pop(slice_axis)
    v = volume.permute(0, axis, 1, *spatial)  # (B, S, 1, H, W)
    b, s = v.shape[:2]
    slices = v.reshape(b * s, 1, *v.shape[-2:])
    size = teacher_input_size(*slices.shape[-2:], scale=scale)
    outputs = []
    for start in range(0, slices.shape[0], chunk):
        images = to_teacher_rgb(to_unit(slices[start:start + chunk].float()), size)
        if autocast_dtype is not None:
            with torch.autocast(images.device.type, dtype=autocast_dtype):
                outputs.append(patch_tokens(teacher, images).float())
        else:
            outputs.append(patch_tokens(teacher, images))
    feats = torch.cat(outputs)  # (B*S, C, h, w)
    return feats.reshape(b, s, *feats.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   eps: float = 1e-6) -> torch.Tensor:
    """MSE between channel-wise L2-normalised feature vectors (= 2 - 2 cos), averaged over positions.

    ``student`` and ``teacher``: (B, C, *grid) on the same grid; ``weight`` (B, 1, *grid) optional per-position
    weights (e.g. semantic uniqueness), normalised to sum to the number of positions.
    """
    s = F.normalize(student.float(), dim=1, eps=eps)
    t = F.normalize(teacher.float(), dim=1, eps=eps)
    per_position = (s - t).pow(2).sum(1, keepdim=True)
    if weight is None:
        return per_position.mean()
    weight = weight.float()
    return (per_position * weight).sum() / weight.sum().clamp_min(eps)


def resample_to(features: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Resample (B, C, *spatial) onto ``grid``: average pooling along axes that shrink (no aliasing), then
    (bi/tri)linear interpolation along axes that grow."""
    grid = tuple(int(g) for g in grid)
    if tuple(features.shape[2:]) == grid:
        return features
    pooled = tuple(min(s, g) for s, g in zip(features.shape[2:], grid))
    if pooled != tuple(features.shape[2:]):
        pool = F.adaptive_avg_pool3d if features.ndim == 5 else F.adaptive_avg_pool2d
        features = pool(features, pooled)
    if pooled == grid:
        return features
    mode = "trilinear" if features.ndim == 5 else "bilinear"
    return F.interpolate(features, size=grid, mode=mode, align_corners=False)
