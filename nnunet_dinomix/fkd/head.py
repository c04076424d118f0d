"""The projection head that maps a student feature map to the teacher's channels and grid (no nnU-Net import)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunet_dinomix.fkd.features import resample_to


class ProjectionHead(nn.Module):
    """pointwise conv -> InstanceNorm -> LeakyReLU -> pointwise conv (3D, or 2D for 2D
    configurations), then resampling to the teacher grid.

    Pointwise on purpose: the spatial layout is the student's; the head only translates channels, so the
    distillation signal shapes the student's features rather than a large head's.
    """

    def __init__(self, in_channels: int, teacher_channels: int, hidden_channels: int = 0, spatial_dims: int = 3):
        super().__init__()
        hidden = hidden_channels or max(in_channels, teacher_channels // 2)
        conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if spatial_dims == 3 else (nn.Conv2d, nn.InstanceNorm2d)
        self.net = nn.Sequential(
            conv(in_channels, hidden, 1),
            norm(hidden, affine=True),
            nn.LeakyReLU(inplace=True),
            conv(hidden, teacher_channels, 1),
        )

    def forward(self, features: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return resample_to(self.net(features), grid)
