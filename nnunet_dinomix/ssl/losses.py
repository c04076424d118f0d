"""Voxel-masked segmentation losses, for ground-truth voxels and for pseudo-labelled ones.

The masked Dice + CE follows nnU-Net's ``DC_and_CE_loss`` (``MemoryEfficientSoftDiceLoss``, background excluded
from Dice, smooth 1e-5, negative Dice) restricted to the voxels of a mask, so that a pseudo-label loss is on the
same scale as nnU-Net's supervised loss. With ``mask = target != ignore`` it equals nnU-Net's loss with that
ignore label (tested). Inputs: logits ``(B, C, *spatial)``, integer targets ``(B, 1, *spatial)`` or
``(B, *spatial)``, masks of the target's shape (bool or float weights).

The unlabeled loss is a choice (:data:`UNLABELED_LOSSES`): CE only (DHC, and safe for classes absent from a
masked pseudo-label), nnU-Net's per-sample Dice + CE, or Dice + CE with the Dice over the whole batch (a class
absent from one sample's pseudo-label is then not pushed to zero there).

A *marginal background* (``merged``, a (K,) bool over classes) reads a background pseudo-label as "background or
one of the merged classes": the CE of a background voxel is ``-log(p_0 + sum_{c merged} p_c)``, and the Dice
leaves the merged classes out. The teacher's background is evidence against the classes it segments, not against
those it has not learned yet (the partial-label marginal loss of Shi et al., MedIA 2021; Fang & Yan's target
adaptive loss, TMI 2020), so a class the gate holds closed is never pushed down where the teacher sees nothing.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F


def _as_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t if t.ndim == ndim else t.unsqueeze(1)


def marginal_background_nll(logits: torch.Tensor, target: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """Per-voxel negative log-likelihood ``(B, *spatial)`` where background (0) stands for background or any class
    with ``merged[c]``; every other target is plain CE. ``merged[0]`` is ignored."""
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, target.unsqueeze(1))[:, 0]
    group = merged.to(logits.device).clone()
    group[0] = True
    background_or_merged = torch.logsumexp(log_p[:, group], dim=1)
    return torch.where(target == 0, -background_or_merged, nll)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         class_weights: Optional[torch.Tensor] = None,
                         merged: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean CE over the masked voxels (mask values act as weights); 0 if the mask is empty.

    ``class_weights`` (K,) additionally weight each voxel by its target class, normalised by the total weight as
    ``F.cross_entropy(weight=...)`` does, so the loss stays a mean CE whatever the weights' scale. ``merged`` (K,)
    bool: the marginal background (:func:`marginal_background_nll`)."""
    target = _as_channel(target, logits.ndim)[:, 0].long()
    mask = _as_channel(mask, logits.ndim)[:, 0].to(logits.dtype)
    if class_weights is not None:
        mask = mask * class_weights.to(logits.device, logits.dtype)[target]
    if merged is not None and bool(merged[1:].any()):
        ce = marginal_background_nll(logits, target, merged)
    else:
        ce = F.cross_entropy(logits, target, reduction="none")
    denominator = mask.sum()
    if denominator <= 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact
    return (ce * mask).sum() / denominator


def masked_soft_dice(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, batch_dice: bool,
                     do_bg: bool = False, smooth: float = 1e-5,
                     merged: Optional[torch.Tensor] = None, weigh_samples: bool = False) -> torch.Tensor:
    """Negative soft Dice of ``softmax(logits)`` against ``target`` on masked voxels, averaged over classes (those
    with ``merged[c]`` left out).

    Per-sample Dice (``batch_dice`` False) is averaged over the samples uniformly, as nnU-Net does; with
    ``weigh_samples`` each sample counts by the share of its voxels in the mask. That is for a mixed batch, where an
    unlabeled sample's ground truth is one pasted box: most classes are absent from it, their Dice is about 0
    whatever the network does, and a uniform mean would scale the labeled samples' Dice gradient down by the
    batch's share of labeled samples (half, with nnU-Net's batch and as many unlabeled samples)."""
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
    if merged is not None:
        kept = ~merged.to(dice.device)[0 if do_bg else 1:]
        if not bool(kept.any()):  # every class merged into background: nothing for the Dice to score
            return probs.sum() * 0.0
        dice = dice[..., kept]
    if weigh_samples and not batch_dice:  # voxel counts: the normalisation makes them shares; 0 if the mask is empty
        counted = mask.flatten(1).sum(1, dtype=torch.float32)
        return -(dice.mean(1) * counted).sum() / counted.sum().clamp_min(1.0)
    return -dice.mean()


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, batch_dice: bool,
                   weight_ce: float = 1.0, weight_dice: float = 1.0,
                   class_weights: Optional[torch.Tensor] = None,
                   merged: Optional[torch.Tensor] = None, weigh_samples: bool = False) -> torch.Tensor:
    return (weight_ce * masked_cross_entropy(logits, target, mask, class_weights, merged) +
            weight_dice * masked_soft_dice(logits, target, mask, batch_dice, merged=merged,
                                           weigh_samples=weigh_samples))


UNLABELED_LOSSES = ("ce", "dice_ce", "batch_dice_ce")


def unlabeled_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, batch_dice: bool,
                   class_weights: Optional[torch.Tensor] = None,
                   merged: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss against pseudo-labels: ``kind`` from :data:`UNLABELED_LOSSES`; ``batch_dice`` is the plans'
    setting, used by ``dice_ce``; ``merged``: the classes a background pseudo-label does not rule out."""
    if kind == "ce":
        return masked_cross_entropy(logits, target, mask, class_weights, merged)
    if kind == "dice_ce":
        return masked_dice_ce(logits, target, mask, batch_dice, class_weights=class_weights, merged=merged)
    if kind == "batch_dice_ce":
        return masked_dice_ce(logits, target, mask, True, class_weights=class_weights, merged=merged)
    raise ValueError(f"unknown unlabeled loss {kind!r}; choose one of {UNLABELED_LOSSES}")


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
