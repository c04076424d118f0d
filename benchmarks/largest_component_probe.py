"""Is a class's Dice lost to stray fragments? Test Dice per class before and after keeping each class's largest
connected component (nnU-Net's own ``remove_all_but_largest_component_from_segmentation``, the step that
``nnUNetv2_determine_postprocessing`` may choose per class).

A trainer whose loss to its pair disappears after this step has lost it to fragments, which nnU-Net's
postprocessing would remove if cross-validation chose it; a loss that stays is in the organ's body or boundary::

    python benchmarks/largest_component_probe.py benchmarks/work/RUN/seed_3/nnUNet_raw/Dataset990_DinoMixPhantom/labelsTs \
        benchmarks/work/RUN/seed_3/predictions/LABEL [more prediction folders]

Dice per case as nnU-Net's evaluation computes it (a case where the class is absent from both reference and
prediction is left out of that class's mean), then the mean over cases. Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    denominator = truth.sum() + predicted.sum()
    return float("nan") if denominator == 0 else 2.0 * np.logical_and(truth, predicted).sum() / denominator


def per_class_dice(labels_folder: str, predictions_folder: str, classes: List[int], file_ending: str,
                   largest_only: bool) -> Dict[int, float]:
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
    from nnunet_dinomix.evaluation.report import read_image

    cases = sorted(f for f in os.listdir(labels_folder) if f.endswith(file_ending))
    if not cases:
        raise SystemExit(f"no {file_ending} labels in {labels_folder}")
    scores: Dict[int, List[float]] = {c: [] for c in classes}
    for case in cases:
        prediction_file = os.path.join(predictions_folder, case)
        if not os.path.isfile(prediction_file):
            raise SystemExit(f"{prediction_file} is missing: predict every case of {labels_folder} first")
        truth = read_image(os.path.join(labels_folder, case))[0].astype(np.int64)
        predicted = read_image(prediction_file)[0].astype(np.int64)
        if largest_only:
            for c in classes:
                predicted = remove_all_but_largest_component_from_segmentation(predicted, c)
        for c in classes:
            scores[c].append(dice(truth == c, predicted == c))
    return {c: float(np.nanmean(v)) if not all(np.isnan(v)) else float("nan") for c, v in scores.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", help="folder of reference label files (e.g. the raw dataset's labelsTs)")
    p.add_argument("predictions", nargs="+", help="prediction folders with the same file names")
    p.add_argument("--dataset-json", default=None,
                   help="dataset.json with the class names [default: the first prediction folder's]")
    args = p.parse_args(argv)
    dataset_json = args.dataset_json or os.path.join(args.predictions[0], "dataset.json")
    with open(dataset_json) as f:
        dataset = json.load(f)
    names = {int(v): k for k, v in dataset["labels"].items() if int(v) > 0}
    classes = sorted(names)
    ending = dataset.get("file_ending", ".nii.gz")

    header = "| class |" + "".join(f" {os.path.basename(os.path.normpath(f))} | largest component |"
                                    for f in args.predictions)
    print(header)
    print("|---|" + "---:|---:|" * len(args.predictions))
    columns = []
    for folder in args.predictions:
        columns.append((per_class_dice(args.labels, folder, classes, ending, False),
                        per_class_dice(args.labels, folder, classes, ending, True)))
    for c in classes:
        cells = "".join(f" {100 * raw[c]:.1f} | {100 * kept[c]:.1f} |" for raw, kept in columns)
        print(f"| {names[c]} |{cells}")
    means = "".join(f" {100 * np.nanmean(list(raw.values())):.1f} | {100 * np.nanmean(list(kept.values())):.1f} |"
                    for raw, kept in columns)
    print(f"| mean (foreground) |{means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
