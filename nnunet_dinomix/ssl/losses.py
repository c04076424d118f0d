"""Pseudo-labels and voxel-masked segmentation losses.

The masked Dice + CE follows nnU-Net's ``DC_and_CE_loss`` (``MemoryEfficientSoftDiceLoss``, background excluded
from Dice, smooth 1e-5, negative Dice) restricted to the voxels of a mask, so that a pseudo-label loss is on the
same scale as nnU-Net's supervised loss. With ``mask = target != ignore`` it equals nnU-Net's loss with that
ignore label (tested). Inputs: logits ``(B, C, *spatial)``, integer targets ``(B, 1, *spatial)`` or
``(B, *spatial)``, masks of the target's shape (bool or float weights).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F


class PseudoLabels(NamedTuple):
    labels: torch.Tensor  # (B, 1, *spatial) int64
    confidence: torch.Tensor  # (B, 1, *spatial) max softmax probability
    mask: torch.Tensor  # (B, 1, *spatial) float, 1 where confidence >= threshold


@torch.no_grad()
def pseudo_labels(logits: torch.Tensor, threshold: float) -> PseudoLabels:
    """Arg-max labels, their softmax confidence and the confidence mask of one output scale."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, labels = probs.max(dim=1, keepdim=True)
    return PseudoLabels(labels, confidence, (confidence >= threshold).float())


def _as_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t if t.ndim == ndim else t.unsqueeze(1)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE over the masked voxels (mask values act as weights); 0 if the mask is empty."""
    target = _as_channel(target, logits.ndim)[:, 0].long()
    mask = _as_channel(mask, logits.ndim)[:, 0].to(logits.dtype)
    ce = F.cross_entropy(logits, target, reduction="none")
    denominator = mask.sum()
    if denominator <= 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact
    return (ce * mask).sum() / denominator


def masked_soft_dice(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, batch_dice: bool,
                     do_bg: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """Negative soft Dice of ``softmax(logits)`` against ``target`` on masked voxels, averaged over classes."""
    probs = torch.softmax(logits, dim=1)
    target = _as_channel(target, logits.ndim).long()
    mask = _as_channel(mask, logits.ndim).to(probs.dtype)
    axes = tuple(range(2, logits.ndim))
    with torch.no_grad():
        onehot = torch.zeros_like(probs, dtype=torch.float32).scatter_(1, target, 1.0)
        if not do_bg:
            onehot = onehot[:, 1:]
        sum_gt = (onehot * mask).sum(axes, dtype=torch.float32)
    if not do_bg:
        probs = probs[:, 1:]
    intersect = (probs * onehot * mask).sum(axes, dtype=torch.float32)
    sum_pred = (probs * mask).sum(axes, dtype=torch.float32)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    return -dice.mean()


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, batch_dice: bool,
                   weight_ce: float = 1.0, weight_dice: float = 1.0) -> torch.Tensor:
    return (weight_ce * masked_cross_entropy(logits, target, mask) +
            weight_dice * masked_soft_dice(logits, target, mask, batch_dice))


def deep_supervision_sum(loss_fn: Callable[..., torch.Tensor], weights: Sequence[float],
                         *per_scale_inputs: Sequence) -> torch.Tensor:
    """``sum_i w_i * loss_fn(inputs_i...)``, evaluating only scales with a non-zero weight (as nnU-Net's
    ``DeepSupervisionWrapper``). Each of ``per_scale_inputs`` is a list with one entry per output scale."""
    total = None
    for w, inputs in zip(weights, zip(*per_scale_inputs)):
        if w != 0:
            term = w * loss_fn(*inputs)
            total = term if total is None else total + term
    if total is None:
        raise ValueError("all deep supervision weights are zero")
    return total


def pseudo_label_consistency(student_outputs: Sequence[torch.Tensor], teacher_outputs: Sequence[torch.Tensor],
                             weights: Sequence[float], threshold: float, batch_dice: bool):
    """Confidence-masked Dice + CE of the student against the teacher's arg-max, at every output scale.

    Returns ``(loss, confident_fraction)``; the fraction is that of the highest-resolution scale.
    """
    pseudo = [pseudo_labels(t, threshold) for t in teacher_outputs]
    loss = deep_supervision_sum(lambda s, p: masked_dice_ce(s, p.labels, p.mask, batch_dice), weights,
                                student_outputs, pseudo)
    return loss, pseudo[0].mask.mean()
