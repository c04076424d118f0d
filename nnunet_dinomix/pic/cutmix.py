"""Class-aware CutMix across a batch of labeled and unlabeled patches, with per-voxel provenance.

A :class:`MixBatch` is the student's batch before and after mixing: images, one label map, and for every voxel
whether its label is ground truth (``ground_truth``) or a pseudo-label and how much it counts
(``pseudo_weight``: the teacher's confidence mask; 0 on ground-truth voxels). Mixing copies a box of all four
from a source sample into a target sample at the same position, so provenance travels with the voxels and the
supervised and unsupervised losses each see their own voxels.

Box drawing (METHOD.md, PIC): for each target draw a class from the curriculum's distribution (restricted to the
classes that another sample of the batch holds), pick a source that holds it, preferring the other subset
(labeled <-> unlabeled, both directions) [ours, BCP-style], and centre a box on one of its voxels of that class.
The box side is a random fraction of the patch [ours], and the box is shifted inside the patch at the borders
so it keeps its size and still contains the chosen voxel. No nnU-Net import.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


PASTE_MODES = ("box", "class")  # the whole box (CutMix), or only the drawn class's voxels in it (ClassMix-style)
PASTE_MODE_CHOICES = " or ".join(repr(m) for m in PASTE_MODES)  # for error messages: 'box' or 'class'


@dataclass(frozen=True)
class Box:
    target: int
    source: int
    cls: int
    slices: Tuple[slice, ...]  # spatial slices, the same in source and target


@dataclass
class MixBatch:
    image: torch.Tensor  # (N, C, *spatial)
    label: torch.Tensor  # (N, 1, *spatial) int64, ground truth or pseudo-label
    ground_truth: torch.Tensor  # (N, 1, *spatial) bool: the label is ground truth
    pseudo_weight: torch.Tensor  # (N, 1, *spatial) float: weight of the pseudo-label (0 on ground truth)
    num_labeled: int  # the first num_labeled samples came from the labeled batch
    boxes: List[Box] = field(default_factory=list)

    @property
    def usable(self) -> torch.Tensor:
        """Voxels whose label may seed a box: ground truth, or a pseudo-label the teacher is confident about."""
        return self.ground_truth | (self.pseudo_weight > 0)


def assemble(x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, pseudo_label: torch.Tensor,
             pseudo_mask: torch.Tensor, ignore_label: Optional[int] = None) -> MixBatch:
    """The unmixed batch: labeled samples first (ground truth except at ``ignore_label``), then unlabeled ones
    (the teacher's pseudo-labels, weighted by ``pseudo_mask``)."""
    y_l = y_l.long()
    annotated = torch.ones_like(y_l, dtype=torch.bool) if ignore_label is None else y_l != ignore_label
    label_l = torch.where(annotated, y_l, torch.zeros_like(y_l))
    return MixBatch(
        image=torch.cat((x_l, x_u)),
        label=torch.cat((label_l, pseudo_label.long())),
        ground_truth=torch.cat((annotated, torch.zeros_like(pseudo_label, dtype=torch.bool))),
        pseudo_weight=torch.cat((torch.zeros_like(y_l, dtype=pseudo_mask.dtype), pseudo_mask)),
        num_labeled=x_l.shape[0])


def class_presence(batch: MixBatch, num_classes: int) -> torch.Tensor:
    """(N, num_classes) bool: sample n holds at least one usable voxel of class c."""
    n = batch.label.shape[0]
    flat = (batch.label.reshape(n, -1) + 1) * batch.usable.reshape(n, -1)  # 0 = unusable, c + 1 = class c
    present = torch.zeros(n, num_classes + 1, dtype=torch.bool, device=flat.device)
    present.scatter_(1, flat, True)
    return present[:, 1:].cpu()


def box_around(centre: Sequence[int], side: Sequence[int], shape: Sequence[int]) -> Tuple[slice, ...]:
    """A box of ``side`` voxels containing ``centre``, centred on it where possible and shifted inside ``shape``."""
    slices = []
    for c, s, n in zip(centre, side, shape):
        s = min(max(int(s), 1), n)
        start = min(max(int(c) - s // 2, 0), n - s)
        slices.append(slice(start, start + s))
    return tuple(slices)


def draw_boxes(batch: MixBatch, class_probs: torch.Tensor, size_range: Tuple[float, float] = (0.25, 0.5),
               generator: Optional[torch.Generator] = None, foreground_only: bool = True,
               labeled_donors_only: bool = False) -> List[Box]:
    """One box per target sample (none where no other sample holds a usable class).

    ``class_probs``: the curriculum's distribution over classes ``1..K`` (foreground) when ``foreground_only``,
    else over ``0..K``. ``labeled_donors_only``: only labeled samples give boxes (every pasted label is ground
    truth); unlabeled samples still receive them.
    """
    offset = 1 if foreground_only else 0
    num_classes = class_probs.numel() + offset
    present = class_presence(batch, num_classes)[:, offset:]  # (N, len(class_probs))
    n = present.shape[0]
    labeled = torch.arange(n) < batch.num_labeled
    if labeled_donors_only:
        present &= labeled[:, None]
    shape = batch.label.shape[2:]
    boxes = []
    for target in range(n):
        others = torch.arange(n) != target
        available = present[others].any(0)
        if not available.any():
            continue
        p = class_probs.cpu().double() * available
        if p.sum() <= 0:  # the drawn-from distribution gives zero mass to everything available
            p = available.double()
        k = int(torch.multinomial(p / p.sum(), 1, generator=generator))
        holders = others & present[:, k]
        crossing = holders & (labeled != labeled[target])
        candidates = torch.nonzero(crossing if crossing.any() else holders).flatten()
        source = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
        cls = k + offset
        voxels = torch.nonzero((batch.label[source, 0] == cls) & batch.usable[source, 0])
        centre = voxels[int(torch.randint(len(voxels), (1,), generator=generator))].tolist()
        low, high = size_range
        fraction = low + (high - low) * float(torch.rand((), generator=generator))
        side = [max(1, round(fraction * s)) for s in shape]
        boxes.append(Box(target, source, cls, box_around(centre, side, shape)))
    return boxes


def apply_boxes(batch: MixBatch, boxes: Sequence[Box], class_only: bool = False) -> MixBatch:
    """Paste every box from the unmixed ``batch`` (sources are read before any paste) into a mixed copy.

    ``class_only``: inside each box, paste only the source's usable voxels of the box's class (ClassMix-style), so
    that the drawn class is added without the neighbours that share its box.
    """
    image, label = batch.image.clone(), batch.label.clone()
    ground_truth, pseudo_weight = batch.ground_truth.clone(), batch.pseudo_weight.clone()
    for box in boxes:
        where = (slice(None), *box.slices)
        keep = None
        if class_only:
            keep = (batch.label[box.source][where] == box.cls) & batch.usable[box.source][where]  # (1, *box)
        for out, src in ((image, batch.image), (label, batch.label), (ground_truth, batch.ground_truth),
                         (pseudo_weight, batch.pseudo_weight)):
            pasted = src[box.source][where]
            out[box.target][where] = pasted if keep is None else torch.where(keep, pasted, out[box.target][where])
    return replace(batch, image=image, label=label, ground_truth=ground_truth, pseudo_weight=pseudo_weight,
                   boxes=list(batch.boxes) + list(boxes))


def downsample_nearest(maps: torch.Tensor, scales: Optional[Sequence[Sequence[float]]]) -> List[torch.Tensor]:
    """``maps`` (N, 1, *spatial) at nnU-Net's deep-supervision scales, as its ``DownsampleSegForDSTransform`` does
    (``nearest-exact``, sizes rounded); ``scales=None`` means no deep supervision."""
    if scales is None:
        return [maps]
    out, as_float = [], None
    for s in scales:
        if all(f == 1 for f in s):
            out.append(maps)
            continue
        if as_float is None:
            as_float = maps.float()
        size = [round(n * f) for n, f in zip(maps.shape[2:], s)]
        out.append(F.interpolate(as_float, size, mode="nearest-exact").to(maps.dtype))
    return out


def mirror(batch: MixBatch, axes: Optional[Sequence[int]], generator: Optional[torch.Generator] = None) -> MixBatch:
    """nnU-Net's mirroring augmentation (each allowed spatial axis flipped with probability 1/2, per sample),
    applied to image, label and provenance together.

    PIC runs it after mixing instead of in the loaders: when source and target are mirrored independently, a
    pasted left kidney lands on the target's right side and the pair of lateral classes gets confused. Mixing
    unmirrored samples and mirroring the result keeps every box on its anatomical side.
    """
    if not axes:
        return batch
    out = {name: getattr(batch, name).clone() for name in ("image", "label", "ground_truth", "pseudo_weight")}
    flips = torch.rand(batch.image.shape[0], len(axes), generator=generator) < 0.5
    for i in range(batch.image.shape[0]):
        dims = [2 + a for a, f in zip(axes, flips[i].tolist()) if f]
        if dims:
            for name, tensor in out.items():
                tensor[i] = torch.flip(tensor[i:i + 1], dims)[0]
    return replace(batch, **out)
