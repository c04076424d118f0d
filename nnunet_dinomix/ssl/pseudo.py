"""Pseudo-labelling: which teacher predictions become training targets, and how much each class counts.

Two small stateful objects, both with a ``state_dict`` so that ``--c`` resumes them, and no nnU-Net import:

* :class:`PseudoLabeller` turns teacher logits into arg-max labels and a per-voxel trust mask under a confidence
  rule: ``None`` (trust every voxel, as BCP does), ``"global"`` (one threshold, as UA-MT / FixMatch), or
  ``"class_adaptive"`` (per class, the running ``quantile`` of the teacher's confidence on the voxels it assigns
  to that class, capped at the global threshold). The global rule removes exactly the uncertain voxels of rare
  organs; the adaptive one keeps the most confident share of every class (FlexMatch-like, in voxels).
  Optionally it is *gated* by class reliability (``reliable``, from :func:`class_reliability`): a class the model
  does not yet segment on labeled data gives no pseudo-labels, and neither does background where such a class is
  the teacher's runner-up. A confident confusion (one kidney called the other) passes every confidence rule; it
  does not pass a Dice measured against ground truth [ours].
  With ``largest_component``, a voxel the teacher gives a foreground class outside that class's largest connected
  component in its sample is not trusted either (:func:`largest_component_mask`): BCP keeps only the largest
  component of its teacher's prediction; here the fragments are left out of the loss rather than called background.
* :class:`ClassBalance` turns a running pseudo-label histogram into class weights (DHC's DistDW,
  ``w_c = log(n_max / n_c)`` normalised to a maximum of ``K``), so that the majority class (background) ends near 0
  and a wrong background pseudo-label on a rare organ costs little.
* :func:`pseudo_label_quality` counts, per class, what the teacher got right against a known truth (diagnostics
  only: the truth never reaches a loss).
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence

import numpy as np
import torch

from nnunet_dinomix.pic.curriculum import ClassCounts, voxel_counts

CONFIDENCE_RULES = (None, "global", "class_adaptive")


class PseudoLabels(NamedTuple):
    labels: torch.Tensor  # (B, 1, *spatial) int64
    confidence: torch.Tensor  # (B, 1, *spatial) max softmax probability
    mask: torch.Tensor  # (B, 1, *spatial) float: 1 where the pseudo-label is trusted


class PseudoLabeller:
    def __init__(self, num_classes: int, rule: Optional[str] = "global", threshold: float = 0.9,
                 quantile: float = 0.5, momentum: float = 0.99, largest_component: bool = False):
        if rule not in CONFIDENCE_RULES:
            raise ValueError(f"unknown confidence rule {rule!r}; choose one of {CONFIDENCE_RULES}")
        if not 0.0 <= threshold <= 1.0 or not 0.0 <= quantile <= 1.0:
            raise ValueError(f"threshold and quantile must lie in [0, 1], got {threshold} and {quantile}")
        self.num_classes, self.rule, self.threshold, self.quantile = num_classes, rule, threshold, quantile
        self.largest_component = largest_component
        # running per-class confidence quantile; starts at the global threshold
        self.momentum = momentum
        self.class_thresholds = torch.full((num_classes,), float(threshold), dtype=torch.float64)
        # (num_classes,) bool: classes whose pseudo-labels may be trusted; None: every class (no gate)
        self.reliable: Optional[torch.Tensor] = None

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor) -> PseudoLabels:
        probs = torch.softmax(logits.float(), dim=1)
        confidence, labels = probs.max(dim=1, keepdim=True)
        if self.rule is None:
            mask = torch.ones_like(confidence)
        elif self.rule == "global":
            mask = (confidence >= self.threshold).float()
        else:
            self._update_class_thresholds(confidence, labels)
            per_voxel = self.class_thresholds.to(confidence.device, confidence.dtype)[labels]
            mask = (confidence >= per_voxel).float()
        if self.reliable is not None:
            mask = mask * gate_mask(probs, labels, self.reliable.to(labels.device))
        if self.largest_component:
            mask = mask * largest_component_mask(labels).to(mask.device, mask.dtype)
        return PseudoLabels(labels, confidence, mask)

    def _update_class_thresholds(self, confidence: torch.Tensor, labels: torch.Tensor) -> None:
        for c in range(self.num_classes):
            values = confidence[labels == c]
            if values.numel() == 0:
                continue
            q = float(torch.quantile(values[:1_000_000].double().cpu(), self.quantile))
            t = self.momentum * float(self.class_thresholds[c]) + (1 - self.momentum) * q
            self.class_thresholds[c] = min(t, self.threshold)

    def state_dict(self) -> Dict[str, object]:
        return {"class_thresholds": self.class_thresholds.clone()}

    def load_state_dict(self, state: Optional[Dict[str, object]]) -> None:
        if state is not None:
            self.class_thresholds = torch.as_tensor(state["class_thresholds"], dtype=torch.float64).clone()


def gate_mask(probs: torch.Tensor, labels: torch.Tensor, reliable: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial) float: 1 where the pseudo-label ``labels`` may be trusted under the class gate.

    A voxel labelled with an unreliable class is not trusted. Nor is a background voxel whose runner-up class is
    unreliable: where the teacher cannot yet segment an organ, its "background" there is no evidence of absence
    (a wrong background label on an organ teaches the student to erase it)."""
    keep = reliable[labels]
    if probs.shape[1] > 1 and not bool(reliable[1:].all()):
        runner_up = probs.topk(2, dim=1).indices[:, 1:2]
        keep = keep & ~((labels == 0) & ~reliable[runner_up])
    return keep.to(probs.dtype)


def largest_component_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial) bool: False where a voxel's foreground class lies outside that class's largest connected
    component (full connectivity, diagonal neighbours included, as in nnU-Net's postprocessing) in the voxel's
    sample; True elsewhere, background included. Computed on the CPU with acvl_utils (an nnU-Net dependency)."""
    from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

    cpu = labels.detach().cpu().numpy()
    keep = np.ones(cpu.shape, dtype=bool)
    for b in range(cpu.shape[0]):
        sample = cpu[b, 0]
        for c in np.unique(sample):
            if c == 0:
                continue
            members = sample == c
            keep[b, 0][members & ~remove_all_but_largest_component(members)] = False
    return torch.from_numpy(keep)


def class_reliability(history: Sequence[Sequence[float]], momentum: float = 0.5) -> torch.Tensor:
    """Per foreground class, an exponential moving average over epochs of the model's Dice on labeled data
    (nnU-Net's ``dice_per_class_or_region``, one list per epoch). A NaN (class neither present nor predicted in that
    epoch's validation) leaves the average as it was; a class never measured gets NaN."""
    if not history:
        return torch.zeros(0, dtype=torch.float64)
    average = torch.full((len(history[-1]),), float("nan"), dtype=torch.float64)
    for epoch in history:
        for c, d in enumerate(epoch):
            d = float(d)
            if math.isnan(d):
                continue
            previous = float(average[c])
            average[c] = d if math.isnan(previous) else momentum * previous + (1 - momentum) * d
    return average


def reliable_classes(reliability: torch.Tensor, num_classes: int, threshold: float) -> torch.Tensor:
    """(num_classes,) bool over background + foreground: background always, a foreground class once its
    reliability (:func:`class_reliability`) reaches ``threshold``; all foreground closed before any measurement."""
    reliable = torch.zeros(num_classes, dtype=torch.bool)
    reliable[0] = True
    if reliability.numel():
        reliable[1:1 + reliability.numel()] = torch.nan_to_num(reliability, nan=-1.0) >= threshold
    return reliable


class ClassBalance:
    """DistDW class weights from an exponential moving average of the pseudo-label histogram."""

    def __init__(self, num_classes: int, momentum: float = 0.99):
        self.counts = ClassCounts(num_classes, momentum)

    def update(self, labels: torch.Tensor, mask: torch.Tensor) -> None:
        self.counts.update(voxel_counts(labels, mask, self.counts.num_classes))

    @property
    def weights(self) -> torch.Tensor:
        """``log(n_max / n_c) / max_c log(n_max / n_c) * K``; uniform (ones) before the first update."""
        n = self.counts.value
        k = self.counts.num_classes
        if self.counts.updates == 0 or n.max() <= 0:
            return torch.ones(k, dtype=torch.float32)
        log_ratio = torch.log((n.max() + 1e-8) / (n + 1e-8))
        if log_ratio.max() <= 0:  # all classes equally frequent
            return torch.ones(k, dtype=torch.float32)
        return (log_ratio / log_ratio.max() * k).to(torch.float32)

    def state_dict(self):
        return self.counts.state_dict()

    def load_state_dict(self, state) -> None:
        self.counts.load_state_dict(state)


@torch.no_grad()
def pseudo_label_quality(pseudo: PseudoLabels, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(4, K) float64 counts per class: true positives among trusted pseudo-labels, trusted pseudo-labels,
    true voxels, and true voxels the teacher trusts (whatever it calls them). Precision = row 0 / row 1, recall =
    row 0 / row 2 (a class masked away or mislabelled is missed), confident fraction = row 3 / row 2."""
    truth = truth.reshape(-1).to(pseudo.labels.device).long()
    valid = truth >= 0  # -1: a sample without a known truth
    labels, truth = pseudo.labels.reshape(-1)[valid], truth[valid]
    trusted = pseudo.mask.reshape(-1)[valid] > 0

    def count(selected: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.bincount(values[selected], minlength=num_classes)[:num_classes].double().cpu()

    return torch.stack((count(trusted & (labels == truth), labels), count(trusted, labels),
                        count(torch.ones_like(trusted), truth), count(trusted, truth)))
