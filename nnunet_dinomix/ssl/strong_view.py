"""The student's strong view of an unlabeled batch (FixMatch's weak-to-strong consistency, intensity only).

Mean Teacher's student and teacher see the same augmented crop; the student's only difference is a little Gaussian
noise. Once the student has converged to its own EMA (burn-in ends with teacher = student), it predicts what the
teacher predicts and the unlabeled loss carries almost no gradient: on the label-limited phantom its CE stayed at
0.005-0.016 for the whole second half (benchmarks/results/ssl_quality_cpu_label_limited_seed3_mt_anchor.md).
FixMatch, UniMatch and their 3D medical variants give the student a *strongly* perturbed view and the teacher the
weak one, so that agreeing with the teacher is something the student has to learn.

The perturbations here are batchgeneratorsv2's intensity transforms (the ones nnU-Net's own training pipeline
uses, drawn far more often and wider): they move no voxel, so the teacher's pseudo-labels of the weak view stay
valid voxel for voxel. They work on any device and draw from the global generators (torch's for CUDA tensors from
the CUDA generator), so a caller that wants a reproducible stream wraps the call in its own
:class:`~nnunet_dinomix.random_stream.RandomStream`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform


@dataclass
class StrongViewSettings:
    """Ranges and probabilities. nnU-Net's own training augmentation uses brightness and contrast (0.75, 1.25) at
    p 0.15, gamma (0.7, 1.5) at p 0.3 and noise variance (0, 0.1) at p 0.1: the strong view draws each far more
    often, and brightness and contrast from wider ranges."""
    brightness: Tuple[float, float] = (0.7, 1.3)
    contrast: Tuple[float, float] = (0.65, 1.5)
    gamma: Tuple[float, float] = (0.7, 1.5)
    noise_variance: Tuple[float, float] = (0.0, 0.1)
    p_brightness: float = 0.8
    p_contrast: float = 0.8
    p_gamma: float = 0.5
    p_noise: float = 0.5


def strong_intensity_transforms(settings: StrongViewSettings = StrongViewSettings()) -> ComposeTransforms:
    """One sample's strong intensity augmentation, as a batchgeneratorsv2 pipeline on ``{"image": (C, ...)}``.
    Channels are perturbed independently, as nnU-Net does."""
    s = settings
    return ComposeTransforms([
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast(s.brightness),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=s.p_brightness),
        RandomTransform(ContrastTransform(contrast_range=BGContrast(s.contrast), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=s.p_contrast),
        RandomTransform(GammaTransform(gamma=BGContrast(s.gamma), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1),
                        apply_probability=s.p_gamma),
        RandomTransform(GaussianNoiseTransform(noise_variance=s.noise_variance, p_per_channel=1,
                                               synchronize_channels=True),
                        apply_probability=s.p_noise),
    ])


class StrongView:
    """``view(x)`` for a batch ``(B, C, *spatial)``: each sample through :func:`strong_intensity_transforms` on
    its own draw. The input is never modified (the transforms work in place, on a copy here)."""

    def __init__(self, settings: StrongViewSettings = StrongViewSettings()):
        self.settings = settings
        self.transforms = strong_intensity_transforms(settings)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().float().clone()
        for i in range(out.shape[0]):
            out[i] = self.transforms(image=out[i])["image"]
        return out.to(x.dtype)


@dataclass
class SpatialViewSettings:
    """Per sample, an in-plane rotation (about the first spatial axis, nnU-Net's lowest-resolution one in 3D) drawn
    from ``±rotation_degrees`` and a zoom from ``scale``, rigid in voxel space."""
    rotation_degrees: float = 30.0
    scale: Tuple[float, float] = (0.8, 1.2)


class SpatialView:
    """The student's crop rotated and zoomed, with the teacher's pseudo-labels moved along (nearest neighbour), so
    that they still say what is under each voxel; voxels that come from outside the crop are not trusted.

    Intensity changes leave a network's prediction nearly where it was; a new geometry does not. Offline pseudo-
    labelling gets this for free (its labels are made once and then augmented like ground truth), Mean Teacher
    does not: its teacher sees the very crop nnU-Net's spatial augmentation made for the student. Parameters are
    drawn on the CPU from the global torch generator, also for CUDA tensors."""

    def __init__(self, settings: SpatialViewSettings = SpatialViewSettings()):
        self.settings = settings

    def draw(self, n: int, spatial: Tuple[int, ...]) -> torch.Tensor:
        """(n, d, d + 1) float: ``affine_grid``'s matrices (output to input coordinates, axes in x, y, (z) order:
        the last spatial axis first)."""
        s = self.settings
        d = len(spatial)
        angle = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.radians(s.rotation_degrees)
        zoom = s.scale[0] + torch.rand(n, dtype=torch.float64) * (s.scale[1] - s.scale[0])
        half = torch.tensor(spatial[::-1], dtype=torch.float64) / 2  # voxels per unit of the normalised axes
        theta = torch.zeros(n, d, d + 1, dtype=torch.float64)
        theta[:, :d, :d] = torch.eye(d, dtype=torch.float64)
        rotation = torch.stack((torch.stack((angle.cos(), -angle.sin()), -1),
                                torch.stack((angle.sin(), angle.cos()), -1)), -2)  # in the x-y plane
        theta[:, :2, :2] = rotation
        theta[:, :d, :d] = theta[:, :d, :d] / zoom[:, None, None]
        # rigid in voxels: normalised -> voxels, rotate and zoom, back to normalised
        theta[:, :d, :d] = theta[:, :d, :d] * half[None, None, :] / half[None, :, None]
        return theta.float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, mask: torch.Tensor):
        """``(x', labels', confidence', mask')``: the image by linear interpolation (zero outside), the others by
        nearest neighbour, the trust mask 0 where a voxel comes from outside the crop."""
        theta = self.draw(x.shape[0], tuple(x.shape[2:])).to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        image = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved = F.grid_sample(torch.cat((labels.float(), confidence.float(), mask.float()), 1), grid,
                              mode="nearest", padding_mode="zeros", align_corners=False)
        inside = (grid.abs() <= 1).all(-1).unsqueeze(1)
        return (image.to(x.dtype), moved[:, :1].round().long(), moved[:, 1:2].to(confidence.dtype),
                (moved[:, 2:3] * inside).to(mask.dtype))
