"""Write phantoms as an nnU-Net raw dataset with this package's unlabeled folder.

Layout (``nnUNet_raw/DatasetXXX_Name/``)::

    dataset.json
    imagesTr/  case_0000_0000.nii.gz   labeled training images
    labelsTr/  case_0000.nii.gz
    imagesUnlabeled/ case_0100_0000.nii.gz   unlabeled images (training never sees their labels)
    labelsUnlabeled/ case_0100.nii.gz        their true labels, for pseudo-label diagnostics only
    imagesTs/  case_0200_0000.nii.gz   test images
    labelsTs/  case_0200.nii.gz        test labels, kept aside for scoring
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.paths import (DIAGNOSTIC_LABELS_FOLDER, UNLABELED_RAW_FOLDER, dataset_folder_name,  # noqa: F401
                                  refuse_used_dataset_id)
from nnunet_dinomix.phantom.generator import LABELS, PhantomConfig, class_voxel_counts, make_case

FILE_ENDING = ".nii.gz"
MAX_REDRAWS = 100


@dataclass(frozen=True)
class PhantomSplit:
    n_labeled: int = 4
    n_unlabeled: int = 16
    n_test: int = 6
    # the labeled cases together show every class: where a class is missing from all of them, the last labeled case
    # is drawn again. Without it, two labeled cases lack the gallbladder (absent in 30% of cases) about one seed in
    # ten, a class no trainer can then learn while the upper bound can
    labeled_cover_all_classes: bool = False


def _write(array: np.ndarray, spacing_zyx, path: str, dtype) -> None:
    img = sitk.GetImageFromArray(array.astype(dtype))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))  # SimpleITK wants x, y, z
    sitk.WriteImage(img, path, useCompression=True)


def write_phantom_dataset(raw_root: str, dataset_id: int = 990, name: str = "DinoMixPhantom",
                          split: PhantomSplit = PhantomSplit(), seed: int = 0,
                          config: PhantomConfig = PhantomConfig(), verbose: bool = True) -> str:
    """Generate the dataset below ``raw_root`` and return its folder. Refuses to touch an existing dataset."""
    folder = os.path.join(raw_root, dataset_folder_name(dataset_id, name))
    refuse_used_dataset_id(dataset_id, [raw_root], "delete it yourself if it is an old phantom, or pick another ID "
                                                   "with -d.")
    sub = {k: os.path.join(folder, k) for k in ("imagesTr", "labelsTr", UNLABELED_RAW_FOLDER, DIAGNOSTIC_LABELS_FOLDER,
                                                "imagesTs", "labelsTs")}
    for d in sub.values():
        os.makedirs(d)

    rng = np.random.default_rng(seed)
    totals = np.zeros(len(LABELS), dtype=np.int64)
    groups = [("imagesTr", split.n_labeled, 0), (UNLABELED_RAW_FOLDER, split.n_unlabeled, 100),
              ("imagesTs", split.n_test, 200)]
    seen = np.zeros(len(LABELS), dtype=bool)
    for group, n, first_index in groups:
        for i in range(n):
            case = f"case_{first_index + i:04d}"
            image, label = make_case(rng, config)
            if group == "imagesTr" and split.labeled_cover_all_classes and i == n - 1:
                for _ in range(MAX_REDRAWS):
                    if (seen | (np.bincount(label.ravel(), minlength=len(LABELS)) > 0)).all():
                        break
                    image, label = make_case(rng, config)
                else:
                    raise DinoMixError(f"{MAX_REDRAWS} draws of the last labeled case did not complete the classes "
                                       f"of the labeled cases at shape {config.shape}; the smallest organs vanish "
                                       "at this size: use a larger --shape or more labeled cases.")
            if group == "imagesTr":
                seen |= np.bincount(label.ravel(), minlength=len(LABELS)) > 0
            _write(image, config.spacing, os.path.join(sub[group], f"{case}_0000{FILE_ENDING}"), np.int16)
            if group == "imagesTr":
                _write(label, config.spacing, os.path.join(sub["labelsTr"], case + FILE_ENDING), np.uint8)
                totals += np.bincount(label.ravel(), minlength=len(LABELS))
            elif group == UNLABELED_RAW_FOLDER:
                _write(label, config.spacing, os.path.join(sub[DIAGNOSTIC_LABELS_FOLDER], case + FILE_ENDING),
                       np.uint8)
            elif group == "imagesTs":
                _write(label, config.spacing, os.path.join(sub["labelsTs"], case + FILE_ENDING), np.uint8)
        if verbose:
            print(f"{group}: {n} cases")

    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(
        folder, channel_names={0: "CT"}, labels=dict(LABELS), num_training_cases=split.n_labeled,
        file_ending=FILE_ENDING, dataset_name=dataset_folder_name(dataset_id, name),
        description="Synthetic CT-like abdominal phantoms generated by nnunet-dinomix "
                    f"(seed {seed}, {split.n_labeled} labeled, {split.n_unlabeled} unlabeled, {split.n_test} test).",
        license="CC0: synthetic data", converted_by="nnunet-dinomix",
        numUnlabeled=split.n_unlabeled, numTest=split.n_test)
    if verbose:
        fg = totals[1:]
        present = fg[fg > 0]
        print("labeled voxels per class: " + ", ".join(f"{k} {totals[v]}" for k, v in LABELS.items() if v))
        if len(present):
            print(f"largest/smallest foreground class: {present.max() / present.min():.0f}x")
    return folder


def summarise_labels(label_files: List[str]) -> Dict[str, int]:
    """Voxel counts per class over label files (used by tests and the demo report)."""
    totals: Dict[str, int] = {k: 0 for k in LABELS}
    for f in label_files:
        for k, v in class_voxel_counts(sitk.GetArrayFromImage(sitk.ReadImage(f))).items():
            totals[k] += v
    return totals
