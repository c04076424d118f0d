"""Labeled-only PIC as a batchgeneratorsv2 transform: in nnU-Net's loader workers, paste a box from another labeled
case, centred on a voxel of a class drawn tail-first, into the training sample.

This is the half of PIC that needs no teacher, so it runs where nnU-Net's augmentation runs, off the training
step's critical path. The donor's image and label travel together. It sits first in nnU-Net's pipeline, before the
spatial transform, so that the pasted box is rotated, scaled, mirrored and noised with the sample that receives it.

* The class is drawn from ``pi_c ∝ n_c^-gamma`` (:func:`~nnunet_dinomix.pic.curriculum.class_probabilities`)
  over the classes some donor holds. ``n_c`` is counted from nnU-Net's own ``class_locations`` of the training
  cases: nnU-Net stores every voxel of a class below 10,000 voxels per case and a sample above, so the counts are
  exact for the rare classes the curriculum is about and saturate for the large ones. The loader workers do not
  know the training progress, so ``gamma`` is constant here [ours]; the progressive schedule stays with the
  trainer's :class:`~nnunet_dinomix.pic.mixer.PICMixer`.
* The donor is a random training case holding that class (never a validation case: the trainer passes its training
  split), the centre a random one of its stored voxels of that class; the box side is a random fraction of the
  patch, shifted inside the donor where it would cross its border.
* The box lands at a random position inside the central ``patch_size`` window of the sample (nnU-Net's loader
  crops a larger patch for rotations and the spatial transform keeps the centre), so the pasted class survives the
  crop. Position in the body is not preserved [ours, as CutMix]; the sample's own position in its volume is not
  known to a transform.
* ``class_only``: inside the box, only the donor's voxels of the drawn class are pasted (ClassMix-style, as
  ``PICSettings(paste="class")`` in the trainer's mixer); the sample keeps its own image and label around them.

No nnU-Net import: the donors are any object with ``identifiers`` and nnU-Net's dataset ``load_case``.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_dinomix.pic.curriculum import class_probabilities
from nnunet_dinomix.pic.cutmix import box_around


def class_location_counts(properties: Sequence[Mapping]) -> Tuple[Dict[int, float], Dict[int, List[int]]]:
    """From the cases' nnU-Net properties: per label, the number of stored ``class_locations`` summed over cases,
    and the indices of the cases that hold it. Region keys (tuples) are skipped."""
    counts: Dict[int, float] = {}
    holders: Dict[int, List[int]] = {}
    for i, p in enumerate(properties):
        for label, locations in p.get("class_locations", {}).items():
            if isinstance(label, tuple) or len(locations) == 0:
                continue
            counts[int(label)] = counts.get(int(label), 0.0) + float(len(locations))
            holders.setdefault(int(label), []).append(i)
    return counts, holders


def paste_position(box_shape: Sequence[int], sample_shape: Sequence[int], window: Sequence[int]) -> Tuple[slice, ...]:
    """Where a box of ``box_shape`` goes in a sample of ``sample_shape``: uniformly inside the centred ``window``
    (nnU-Net's final patch inside the loader's larger one), or inside the sample where the window is smaller."""
    slices = []
    for b, n, w in zip(box_shape, sample_shape, window):
        w = min(max(int(w), b), n)
        low = (n - w) // 2
        start = low + np.random.randint(0, w - b + 1)
        slices.append(slice(start, start + b))
    return tuple(slices)


class LabeledPICTransform(BasicTransform):
    """Paste, with probability ``p``, one box of a donor labeled case into the sample (``image`` (C, *spatial),
    ``segmentation`` (S, *spatial)) before nnU-Net's spatial transform.

    ``donors``: nnU-Net's training dataset (``identifiers``, ``load_case``); ``patch_size``: nnU-Net's final patch
    (spatial, as the samples arrive: 2D configurations of 3D data get 2D samples); ``gamma``: the curriculum
    exponent (1: classes drawn inversely to their voxel counts); ``box_fraction``: the box side as a random
    fraction of the patch; ``class_only``: paste only the drawn class's voxels of the box.
    """

    def __init__(self, donors, patch_size: Sequence[int], gamma: float = 1.0,
                 box_fraction: Tuple[float, float] = (0.25, 0.5), p: float = 0.5, class_only: bool = False):
        super().__init__()
        self.donors = donors
        self.identifiers = list(donors.identifiers)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.gamma, self.box_fraction, self.p = float(gamma), tuple(box_fraction), float(p)
        self.class_only = bool(class_only)
        properties = [donors.load_case(i)[3] for i in self.identifiers]
        counts, self.holders = class_location_counts(properties)
        self.classes = sorted(counts)
        probabilities = class_probabilities(
            torch.tensor([counts[c] for c in self.classes], dtype=torch.float64), self.gamma).numpy() \
            if self.classes else np.zeros(0)
        # float64 and renormalised: np.random.choice wants the probabilities to sum to 1 within 1e-8
        self.probabilities = probabilities.astype(np.float64) / max(probabilities.astype(np.float64).sum(), 1e-12)
        # draws use NumPy's global generator, as nnU-Net's own transforms do: nnU-Net seeds it per loader worker

    def get_parameters(self, **data_dict) -> dict:
        if not self.classes or np.random.random() >= self.p:
            return {"box": None}
        spatial = tuple(data_dict["image"].shape[1:])
        cls = self.classes[np.random.choice(len(self.classes), p=self.probabilities)]
        donor = self.identifiers[np.random.choice(self.holders[cls])]
        data, seg, _, properties = self.donors.load_case(donor)  # nnU-Net's blosc2 arrays open lazily
        locations = properties["class_locations"][cls]
        centre = [int(v) for v in locations[np.random.randint(len(locations))][1:]]  # rows are (channel, *spatial)
        volume = tuple(seg.shape[1:])
        fixed = centre[:len(volume) - len(spatial)]  # a 2D sample from 3D data: the donor's slice
        in_plane_centre, in_plane_volume = centre[len(fixed):], volume[len(fixed):]
        fraction = self.box_fraction[0] + (self.box_fraction[1] - self.box_fraction[0]) * np.random.random()
        side = [max(1, min(round(fraction * s), n, m)) for s, n, m in zip(self.patch_size, in_plane_volume, spatial)]
        source = tuple(slice(c, c + 1) for c in fixed) + box_around(in_plane_centre, side, in_plane_volume)
        return {"box": {"donor": donor, "cls": cls, "source": source, "side": tuple(side),
                        "target": paste_position(side, spatial, self.patch_size), "arrays": (data, seg)}}

    def apply(self, data_dict: dict, **params) -> dict:
        box = params["box"]
        if box is None:
            return data_dict
        data, seg = box["arrays"]  # opened by get_parameters: each donor case is loaded once per sample
        source = (slice(None), *box["source"])
        target = (slice(None), *box["target"])
        image, segmentation = data_dict["image"], data_dict["segmentation"]
        donor_image = torch.from_numpy(np.asarray(data[source]).reshape(-1, *box["side"])).to(image.dtype)
        # the donor's label, into the sample's first channel (a cascade's previous-stage channel is not supported)
        donor_label = torch.from_numpy(np.asarray(seg[source]).reshape(-1, *box["side"])).to(segmentation.dtype)
        label_target = (slice(0, 1), *box["target"])
        if self.class_only:
            keep = donor_label == box["cls"]  # (1, *side): broadcast over the image channels
            donor_image = torch.where(keep, donor_image, image[target])
            donor_label = torch.where(keep, donor_label, segmentation[label_target])
        image[target] = donor_image
        segmentation[label_target] = donor_label
        return data_dict
