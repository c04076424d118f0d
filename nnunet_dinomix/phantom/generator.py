"""Synthetic CT-like abdominal phantoms with Synapse-like class imbalance.

Each case is a body cross-section extruded along z with eight organs drawn as perturbed, rotated ellipsoids
(the aorta as a tube). The design targets what makes semi-supervised abdominal CT hard:

* imbalance: the liver has several hundred times the voxels of an adrenal gland;
* low contrast: pancreas, gallbladder and adrenal differ from the surrounding soft tissue by less than the
  noise level, while kidneys and aorta are contrast-enhanced and easy;
* variability: size, position, orientation and surface of every organ are drawn per case;
* absence: the gallbladder and the adrenal are missing from some cases.

Nothing here depends on nnU-Net; :mod:`nnunet_dinomix.phantom.dataset` writes the cases as an nnU-Net raw
dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

# label values follow the order in which nnU-Net's dataset.json lists them
LABELS: Dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "aorta": 5,
    "pancreas": 6,
    "gallbladder": 7,
    "adrenal": 8,
}

AIR_HU, FAT_HU, SOFT_TISSUE_HU, BONE_HU = -1000.0, -100.0, 30.0, 400.0


@dataclass(frozen=True)
class Organ:
    """An organ as an ellipsoid in body-relative coordinates (fractions of the volume's z, y, x extent)."""
    label: str
    centre: Tuple[float, float, float]
    radii: Tuple[float, float, float]
    hu: float
    p_absent: float = 0.0
    max_tilt_deg: float = 20.0


ORGANS: Tuple[Organ, ...] = (
    Organ("liver", (0.45, 0.45, 0.30), (0.30, 0.22, 0.18), 60.0),
    Organ("spleen", (0.45, 0.56, 0.74), (0.18, 0.10, 0.07), 52.0),
    Organ("kidney_left", (0.58, 0.68, 0.66), (0.15, 0.07, 0.05), 150.0),
    Organ("kidney_right", (0.60, 0.68, 0.34), (0.15, 0.07, 0.05), 150.0),
    # pancreas: long and thin, 12 HU above soft tissue with 12 HU noise
    Organ("pancreas", (0.52, 0.53, 0.50), (0.07, 0.04, 0.17), 42.0),
    # gallbladder: tucked under the liver, darker than liver, close to soft tissue
    Organ("gallbladder", (0.60, 0.38, 0.34), (0.09, 0.06, 0.05), 20.0, p_absent=0.3),
    # adrenal: tiny and nearly iso-dense
    Organ("adrenal", (0.40, 0.66, 0.62), (0.06, 0.03, 0.025), 38.0, p_absent=0.25),
)


@dataclass(frozen=True)
class PhantomConfig:
    shape: Tuple[int, int, int] = (40, 80, 80)  # z, y, x voxels
    spacing: Tuple[float, float, float] = (3.0, 2.0, 2.0)  # z, y, x in mm
    noise_hu: float = 12.0
    position_jitter: float = 0.03
    size_range: Tuple[float, float] = (0.8, 1.2)
    surface_roughness: float = 0.25
    # per case and organ, the organ's HU is shifted by a uniform draw in [-j, j] (contrast timing, patient); the
    # default 0 draws nothing, so the default phantom's random stream is the one it always was
    organ_hu_jitter: float = 0.0
    organs: Tuple[Organ, ...] = field(default=ORGANS)


def _label_limited() -> PhantomConfig:
    """A phantom on which a few labeled cases are not enough: the regime semi-supervised learning is for.

    On the default phantom a tiny CPU network trained for 1,500 steps is limited by its steps, not by its labels:
    four labeled cases score as well as twenty, and the three low-contrast rare organs stay at 0 Dice even with all
    labels (benchmarks/results/ssl_quality_cpu_gate.md). Here the rare organs are enhanced (pancreas and adrenal
    as in a pancreatic-phase scan, the gallbladder as fluid), so that they can be learned at all, and every case
    differs more from the next: organ intensities shift by up to 25 HU per case, and organs move, scale and turn
    further. A model that has seen two cases meets intensities and shapes at test time that it has not seen; the
    unlabeled cases show them. Measured with 2 labeled cases (ssl_quality_cpu_label_limited_2400.md): at 2,400
    steps all labels give +21 foreground Dice over two; at 1,200 steps the budget still limits (the pancreas is
    learned by about 1,500 steps, the gallbladder and the adrenal not within 2,400).
    """
    enhanced = {"pancreas": 95.0, "gallbladder": 0.0, "adrenal": 100.0}
    organs = tuple(replace(o, hu=enhanced.get(o.label, o.hu), max_tilt_deg=30.0) for o in ORGANS)
    return PhantomConfig(position_jitter=0.06, size_range=(0.7, 1.3), organ_hu_jitter=25.0, organs=organs)


PRESETS: Dict[str, PhantomConfig] = {"default": PhantomConfig(), "label_limited": _label_limited()}


def phantom_config(preset: str = "default", shape: Optional[Tuple[int, int, int]] = None) -> PhantomConfig:
    """A named phantom (:data:`PRESETS`), optionally at another shape."""
    if preset not in PRESETS:
        raise ValueError(f"unknown phantom preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]
    return replace(config, shape=tuple(shape)) if shape else config


def _smooth_noise(rng: np.random.Generator, shape, coarse: int = 5) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, cubic-upsampled to ``shape``."""
    grid = rng.uniform(-1, 1, size=(coarse,) * len(shape))
    zoom = [s / coarse for s in shape]
    out = ndimage.zoom(grid, zoom, order=3, mode="reflect")
    return np.clip(out[tuple(slice(0, s) for s in shape)], -1, 1)


def _rotation_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    # rotation in the axial (y, x) plane; z is left alone
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ellipsoid_mask(coords: np.ndarray, centre_vox: np.ndarray, radii_vox: np.ndarray, rotation: np.ndarray,
                    roughness: np.ndarray) -> np.ndarray:
    rel = coords - centre_vox[:, None, None, None]
    rel = np.tensordot(rotation.T, rel, axes=1)
    r2 = sum((rel[i] / radii_vox[i]) ** 2 for i in range(3))
    return r2 + roughness < 1.0


def make_case(rng: np.random.Generator, config: PhantomConfig = PhantomConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """One phantom: ``(image in HU as float32, label map as uint8)``, both indexed (z, y, x)."""
    shape = np.array(config.shape)
    coords = np.indices(config.shape, dtype=np.float32)
    image = np.full(config.shape, AIR_HU, dtype=np.float32)
    label = np.zeros(config.shape, dtype=np.uint8)

    # body: an elliptic cylinder with a fat rim and a vertebra at the back
    ry, rx = shape[1] * rng.uniform(0.38, 0.44), shape[2] * rng.uniform(0.44, 0.48)
    cy, cx = shape[1] * 0.5, shape[2] * 0.5
    body_r = ((coords[1] - cy) / ry) ** 2 + ((coords[2] - cx) / rx) ** 2
    image[body_r < 1] = FAT_HU
    inner = body_r < (1 - 4.0 / min(ry, rx)) ** 2
    image[inner] = SOFT_TISSUE_HU
    spine = ((coords[1] - shape[1] * 0.80) ** 2 + (coords[2] - cx) ** 2) < (shape[2] * 0.06) ** 2
    image[spine] = BONE_HU

    for organ in config.organs:
        if organ.p_absent > 0 and rng.uniform() < organ.p_absent:
            continue
        centre = (np.array(organ.centre) + rng.uniform(-1, 1, 3) * config.position_jitter) * shape
        radii = np.array(organ.radii) * shape * rng.uniform(*config.size_range, size=3)
        radii = np.maximum(radii, 1.5)
        rotation = _rotation_z(np.deg2rad(rng.uniform(-organ.max_tilt_deg, organ.max_tilt_deg)))
        roughness = config.surface_roughness * _smooth_noise(rng, config.shape)
        mask = _ellipsoid_mask(coords, centre, radii, rotation, roughness) & inner
        hu = organ.hu + (rng.uniform(-1, 1) * config.organ_hu_jitter if config.organ_hu_jitter else 0.0)
        image[mask] = hu
        label[mask] = LABELS[organ.label]

    # aorta: a tube in front of the spine, drawn last so nothing covers it
    z0, z1 = int(shape[0] * 0.08), int(shape[0] * 0.92)
    ay, ax = shape[1] * rng.uniform(0.64, 0.68), cx + shape[2] * rng.uniform(0.0, 0.04)
    ar = shape[2] * rng.uniform(0.028, 0.036)
    tube = (((coords[1] - ay) ** 2 + (coords[2] - ax) ** 2) < ar ** 2) & (coords[0] >= z0) & (coords[0] < z1)
    image[tube] = 180.0
    label[tube] = LABELS["aorta"]

    # scanner effects: a global offset, smooth inhomogeneity, point-spread blur and quantum noise
    body = body_r < 1
    image[body] += rng.uniform(-8, 8) + 6.0 * _smooth_noise(rng, config.shape)[body]
    image = ndimage.gaussian_filter(image, sigma=0.6)
    image += rng.normal(0, config.noise_hu, size=config.shape).astype(np.float32)
    return image.astype(np.float32), label


def class_voxel_counts(label: np.ndarray) -> Dict[str, int]:
    counts = np.bincount(label.ravel(), minlength=len(LABELS))
    return {name: int(counts[value]) for name, value in LABELS.items()}


EXPECTED_SHARE_CASES = 32  # phantoms pooled by expected_class_shares


def expected_class_shares(config: PhantomConfig = PhantomConfig(), n_cases: int = EXPECTED_SHARE_CASES,
                          seed: int = 20260101) -> Dict[str, float]:
    """Each foreground class's share of the foreground voxels, pooled over ``n_cases`` phantoms from a stream of
    its own (not one any benchmark seed draws from).

    A property of the preset rather than of one draw: the benchmarks take their "rarest classes" from it, so that
    every seed reports the mean over the same classes. Ranked by the labeled cases of each draw instead, the third
    rarest class changes between kidney_right and the pancreas from one seed to the next, and a mean over seeds mixes
    different quantities."""
    foreground = {name: 0 for name, value in LABELS.items() if value != 0}
    for _, label in make_cases(n_cases, seed, config):
        for name, count in class_voxel_counts(label).items():
            if name in foreground:
                foreground[name] += count
    total = sum(foreground.values())
    return {name: count / total for name, count in foreground.items()}


def make_cases(n: int, seed: int, config: PhantomConfig = PhantomConfig(),
               rng: Optional[np.random.Generator] = None):
    """Yield ``n`` phantoms from one seeded stream."""
    rng = np.random.default_rng(seed) if rng is None else rng
    for _ in range(n):
        yield make_case(rng, config)
