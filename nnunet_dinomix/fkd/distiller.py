"""Foundational Knowledge Distillation as one object: frozen DINOv3 teacher + trainable projection head + loss.

``FKDistiller.loss(student_features, x)`` is METHOD.md's FKD step: the teacher encodes the slices of the
student's input patch ``x`` (intensities mapped back to [0, 1] by ``to_unit``), the head maps the student's
feature map to the teacher's channels on the teacher's grid, and the loss is the normalised MSE between them,
optionally weighted by the teacher tokens' semantic uniqueness. No nnU-Net import: the trainer passes plain
numbers (slice axis, intensity statistics).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_dinomix.fkd.features import ct_to_unit, normalized_mse, robust_minmax_per_slice, slice_features
from nnunet_dinomix.fkd.head import ProjectionHead

UnitMap = Callable[[torch.Tensor], torch.Tensor]


def intensity_to_unit(normalization_scheme: str, foreground_properties: Optional[Mapping[str, float]]) -> UnitMap:
    """How to map one channel of nnU-Net's normalised input back to [0, 1] for the teacher.

    CT (``CTNormalization``): undo the z-score with the fingerprint's foreground mean/std and window to its
    0.5-99.5 percentiles, the range nnU-Net clips to, so every patch sees the same HU window. Anything else (MR's
    z-score, rescaling): each slice between its own 1st and 99th percentile.
    """
    if normalization_scheme == "CTNormalization":
        if not foreground_properties:
            raise ValueError("CTNormalization needs the fingerprint's foreground intensity properties")
        p = foreground_properties
        mean, std = float(p["mean"]), float(p["std"])
        low, high = float(p["percentile_00_5"]), float(p["percentile_99_5"])
        return lambda x: ct_to_unit(x, mean, std, low, high)
    return robust_minmax_per_slice


def to_volume_order(features: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """(B, C, S, h, w) from :func:`slice_features` -> (B, C, *grid) in the volume's axis order."""
    return features.movedim(2, 2 + slice_axis)


def semantic_uniqueness(teacher_features: torch.Tensor) -> torch.Tensor:
    """Per-token weight ``1 - cos(token, mean token of its sample)`` clamped at 0: tokens unlike the patch's
    average semantics (mostly background) count more [ours]. (B, C, *grid) -> (B, 1, *grid)."""
    t = F.normalize(teacher_features.float(), dim=1)
    mean = F.normalize(t.flatten(2).mean(2), dim=1).view(*t.shape[:2], *([1] * (t.ndim - 2)))
    return (1.0 - (t * mean).sum(1, keepdim=True)).clamp_min(0.0)


class FKDistiller(nn.Module):
    """Holds the frozen teacher (excluded from ``parameters()`` and ``state_dict()``) and the trainable head."""

    def __init__(self, teacher: nn.Module, student_channels: int, to_unit: UnitMap, slice_axis: int = 0,
                 channel: int = 0, teacher_scale: float = 1.0, chunk: int = 32, uniqueness_weighting: bool = False,
                 autocast_dtype: Optional[torch.dtype] = None, spatial_dims: int = 3):
        super().__init__()
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never trained, saved or switched to train()
        self.head = ProjectionHead(student_channels, teacher.embed_dim, spatial_dims=spatial_dims)
        self.to_unit, self.slice_axis, self.channel = to_unit, slice_axis, channel
        self.teacher_scale, self.chunk = teacher_scale, chunk
        self.uniqueness_weighting, self.autocast_dtype = uniqueness_weighting, autocast_dtype

    def to(self, *args, **kwargs):
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *spatial) student input -> (B, C_t, *grid) teacher features in the volume's axis order."""
        self.teacher.eval()  # in train mode DINOv3 implementations jitter their RoPE coordinates
        volume = x[:, self.channel:self.channel + 1]
        is_2d = volume.ndim == 4  # a 2D configuration: each sample is one slice
        features = slice_features(self.teacher, volume[:, :, None] if is_2d else volume, self.to_unit,
                                  slice_axis=0 if is_2d else self.slice_axis, scale=self.teacher_scale,
                                  chunk=self.chunk, autocast_dtype=self.autocast_dtype)
        return features[:, :, 0] if is_2d else to_volume_order(features, self.slice_axis)

    def loss(self, student_features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        target = self.teacher_features(x)
        prediction = self.head(student_features, target.shape[2:])
        weight = semantic_uniqueness(target) if self.uniqueness_weighting else None
        return normalized_mse(prediction, target, weight)


def default_student_stage(strides: Sequence[Sequence[int]], slice_axis: int, max_in_plane_stride: int = 16) -> int:
    """The deepest encoder stage whose in-plane stride is at most ``max_in_plane_stride`` (the ViT's patch size),
    so the student's features are at least as fine as the teacher's token grid in plane."""
    total = [1] * len(strides[0])
    best = 0
    for i, s in enumerate(strides):
        total = [t * int(f) for t, f in zip(total, s)]
        if max(t for a, t in enumerate(total) if a != slice_axis) <= max_in_plane_stride:
            best = i
    return best
