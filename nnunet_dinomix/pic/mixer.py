"""PIC as one object: curriculum, running class counts, box sampler and its random state, and the mirroring that
follows the mix. A trainer holds a :class:`PICMixer` or ``None`` (no mixing); ``state_dict`` is what ``--c``
resumes. No nnU-Net import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from nnunet_dinomix.pic.curriculum import ClassCounts, class_probabilities, gamma_at, voxel_counts
from nnunet_dinomix.pic.cutmix import PASTE_MODE_CHOICES, PASTE_MODES, MixBatch, apply_boxes, draw_boxes, mirror


@dataclass
class PICSettings:
    gamma_start: float = 1.0  # curriculum exponent at the start of mixing: the tail first
    gamma_end: float = 0.0  # ... and at the end of training: uniform over classes
    gamma_schedule: str = "linear"  # linear | cosine | constant
    box_fraction: Tuple[float, float] = (0.25, 0.5)  # box side as a random fraction of the patch
    count_momentum: float = 0.99  # EMA momentum of the class voxel counts
    seed: int = 12345
    donors: str = "any"  # any: boxes cross labeled <-> unlabeled both ways; labeled: only ground truth is pasted
    paste: str = "box"  # box: the whole box (CutMix); class: only the drawn class's voxels inside it (ClassMix)
    # training progress (0..1) from which no box is pasted (the batch is still mirrored), so that the last steps
    # see only whole anatomy, as YOLOX turns its Mosaic and MixUp off for the last epochs; 1: paste to the end
    paste_until: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.paste_until <= 1.0:
            raise ValueError(f"PICSettings.paste_until is a share of training in [0, 1], not {self.paste_until!r}")
        if self.donors not in ("any", "labeled"):
            raise ValueError(f"PICSettings.donors must be 'any' or 'labeled', not {self.donors!r}")
        if self.paste not in PASTE_MODES:
            raise ValueError(f"PICSettings.paste must be {PASTE_MODE_CHOICES}, not {self.paste!r}")


class PICMixer:
    """``mixer(batch, progress)``: count the usable voxels of every class, draw one box per sample from
    ``pi_c ∝ n_c^-gamma(progress)`` and paste it, then mirror (nnU-Net's axes) image, label and provenance together.

    During burn-in the batch holds only labeled samples, so boxes move between labeled samples only; afterwards they
    cross between the labeled and unlabeled halves (see :func:`draw_boxes`), or, with ``donors="labeled"``, go
    from labeled samples only, so that no pseudo-labelled box is pasted.
    """

    def __init__(self, num_foreground_classes: int, settings: PICSettings = PICSettings(),
                 mirror_axes: Optional[Sequence[int]] = None, rank: int = 0):
        self.settings = settings
        self.counts = ClassCounts(num_foreground_classes, settings.count_momentum)
        self.generator = torch.Generator().manual_seed(settings.seed + rank)
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else None

    def gamma(self, progress: float) -> float:
        s = self.settings
        return gamma_at(progress, s.gamma_start, s.gamma_end, s.gamma_schedule)

    def probabilities(self, progress: float) -> torch.Tensor:
        """The sampling distribution over the foreground classes at ``progress`` in [0, 1] of training."""
        return class_probabilities(self.counts.value, self.gamma(progress))

    def __call__(self, batch: MixBatch, progress: float) -> MixBatch:
        self.counts.update(voxel_counts(batch.label, batch.usable, self.counts.num_classes + 1)[1:])
        if progress >= self.settings.paste_until:
            return mirror(batch, self.mirror_axes, self.generator)
        boxes = draw_boxes(batch, self.probabilities(progress), self.settings.box_fraction, self.generator,
                           labeled_donors_only=self.settings.donors == "labeled")
        return mirror(apply_boxes(batch, boxes, class_only=self.settings.paste == "class"), self.mirror_axes,
                      self.generator)

    def state_dict(self) -> Dict[str, object]:
        return {"counts": self.counts.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Optional[Dict[str, object]]) -> None:
        if state is None:
            return
        self.counts.load_state_dict(state["counts"])
        self.generator.set_state(state["generator"])
