"""Overlap and surface metrics of binary masks, in millimetres and as the DHC benchmark computes them.

Surfaces follow the convention of medpy (which the DHC/DINO-Mix benchmark code calls): the surface of a mask is
the mask minus its erosion with the face-connected structuring element, and distances are Euclidean distances,
scaled by the voxel spacing, from surface voxels of one mask to the nearest surface voxel of the other.

* ``asd``: average surface distance from the prediction's surface to the reference's (one-directional, medpy's
  ``asd``). With ``spacing=None`` it is in voxels, as the benchmark reports it (it passes no spacing);
* ``hd95``: 95th percentile of the distances in both directions (medpy's ``hd95``);
* empty masks: the metric is undefined (NaN) in millimetres; :func:`benchmark_case_scores` applies the
  benchmark's own convention instead (Dice 0 and ASD 128 voxels when exactly one mask is empty; Dice 1 and ASD 0
  when both are).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage

EMPTY_ASD_VOXELS = 128.0  # the benchmark's ASD when exactly one of prediction and reference is empty


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """``2|P∩R| / (|P|+|R|)``; NaN when both are empty."""
    p, r = prediction.astype(bool), reference.astype(bool)
    total = p.sum() + r.sum()
    return float("nan") if total == 0 else float(2.0 * np.logical_and(p, r).sum() / total)


def surface(mask: np.ndarray) -> np.ndarray:
    mask = mask.astype(bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(source: np.ndarray, target: np.ndarray,
                      spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Distance of every surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    source_surface, target_surface = surface(source), surface(target)
    if not source_surface.any() or not target_surface.any():
        raise ValueError("both masks must be non-empty")
    distance_to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)
    return distance_to_target[source_surface]


def asd(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Average surface distance from prediction to reference (NaN if either is empty)."""
    if not prediction.any() or not reference.any():
        return float("nan")
    return float(surface_distances(prediction, reference, spacing).mean())


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile of the symmetric surface distances (NaN if either is empty)."""
    if not prediction.any() or not reference.any():
        return float("nan")
    both = np.concatenate([surface_distances(prediction, reference, spacing),
                           surface_distances(reference, prediction, spacing)])
    return float(np.percentile(both, 95))


def crop_to_union(a: np.ndarray, b: np.ndarray, margin: int = 1):
    """Both masks cropped to their union's bounding box plus ``margin`` voxels (clipped at the volume's border).
    Surfaces and the distances between them are unchanged; the distance transforms get much cheaper."""
    union = a | b
    if not union.any():
        return a, b
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, union.shape[axis])))
    return a[tuple(box)], b[tuple(box)]


def case_scores(prediction: np.ndarray, reference: np.ndarray, label: int,
                spacing: Sequence[float]) -> Dict[str, float]:
    """Dice, ASD and HD95 in mm, and ASD in voxels with the benchmark's conventions, for one class of one case."""
    p, r = crop_to_union(prediction == label, reference == label)
    scores = {"dice": dice(p, r), "asd_mm": asd(p, r, spacing), "hd95_mm": hd95(p, r, spacing)}
    scores.update(benchmark_case_scores(p, r))
    return scores


def benchmark_case_scores(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Dice and voxel ASD exactly as the DHC evaluation script scores a class in a case."""
    p_any, r_any = bool(prediction.any()), bool(reference.any())
    if p_any and r_any:
        return {"dice_benchmark": dice(prediction, reference), "asd_voxels": asd(prediction, reference)}
    if p_any or r_any:
        return {"dice_benchmark": 0.0, "asd_voxels": EMPTY_ASD_VOXELS}
    return {"dice_benchmark": 1.0, "asd_voxels": 0.0}
