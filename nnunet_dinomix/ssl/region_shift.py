"""The student's view with each pseudo-labelled structure's intensity shifted on its own draw [ours].

With two labeled cases a network learns each organ's intensity as well as its shape and place. Where an unseen
case's organ is brighter or darker than the labeled ones (contrast timing, patient), the teacher does not call it
that organ, and is not unsure of it either. So self-training carries the labeled range over to the student and no
confidence rule sees it (benchmarks/results/seed1_mirror01_diagnosis.md: the pancreases at 99 and 110 HU against
a labeled 68 and 72). The global intensity transforms of nnU-Net and of the strong view keep the organs' order (a
brighter pancreas stays darker than a kidney), so they cannot teach this.

This view shifts the intensity of every region the teacher labels with a foreground class c by an offset of its
own, drawn per sample, channel and class, uniform in ``[-shift, shift]`` (in nnU-Net's normalised units: for CT,
foreground standard deviations), for each class with probability ``p_per_class``. The student must still call the
region c, whatever its intensity relative to its neighbours. Background and classes not drawn keep their
intensities. The offset map is smoothed over a 3-voxel box, so the step it makes at the pseudo-label's boundary is
no sharper than an organ's own edge. No voxel moves, so the pseudo-labels stay valid voxel for voxel. Following
batchgeneratorsv2's split, ``get_parameters`` draws and ``apply`` shifts. Draws come from the global torch
generator on the CPU, also for CUDA tensors, so a caller's :class:`~nnunet_dinomix.random_stream.RandomStream`
makes them reproducible.

The same shift on the labeled samples, with their ground truth in place of pseudo-labels, is a supervised
augmentation (the benchmark setting ``labeled_region_shift`` of the Budget trainers, training/budget.py): it
teaches the labeled fit itself, and so the teacher, that an organ keeps its name at another intensity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class RegionShiftSettings:
    shift: float = 1.0  # half-width of the uniform offset, normalised intensity units
    p_per_class: float = 0.5  # probability that one class of one sample and channel is shifted at all


class RegionIntensityShift:
    def __init__(self, num_classes: int, settings: Optional[RegionShiftSettings] = None):
        settings = settings or RegionShiftSettings()
        if settings.shift < 0 or not 0.0 <= settings.p_per_class <= 1.0:
            raise ValueError(f"region shift: shift must be >= 0 and p_per_class in [0, 1], got {settings}")
        self.num_classes, self.settings = num_classes, settings

    def get_parameters(self, batch: int, channels: int) -> torch.Tensor:
        """(batch, channels, num_classes) float offsets; 0 for background and for every class not drawn."""
        s = self.settings
        offsets = (torch.rand(batch, channels, self.num_classes) * 2 - 1) * s.shift
        offsets = offsets * (torch.rand(batch, channels, self.num_classes) < s.p_per_class)
        offsets[..., 0] = 0.0
        return offsets

    @staticmethod
    def apply(x: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *spatial) with each voxel shifted by its label's offset (``labels`` (B, 1, *spatial) int),
        the offset map box-smoothed over 3 voxels per axis; a new tensor. Label values without an offset (nnU-Net's
        -1 padding, an ignore label) count as background."""
        b, c = x.shape[:2]
        flat = labels.reshape(b, 1, -1).long()
        flat = flat.where((flat >= 0) & (flat < offsets.shape[-1]), 0).expand(b, c, -1)
        shift = offsets.to(x.device, torch.float32).gather(2, flat).reshape(x.shape)
        pool = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}[x.dim()]
        shift = pool(shift, 3, stride=1, padding=1, count_include_pad=False)
        return (x.float() + shift).to(x.dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.apply(x, labels, self.get_parameters(x.shape[0], x.shape[1]))
