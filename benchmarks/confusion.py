"""What does a model call each class's voxels? The row-normalised confusion matrix of predictions against labels.

A Dice of 0 can mean "never found" (the row's mass on background) or "found and named wrongly" (mass on another
class: a left kidney called right). Run on a prediction folder of ``ssl_quality.py`` and its reference labels::

    python benchmarks/confusion.py benchmarks/work/RUN/seed_1/nnUNet_raw/Dataset990_DinoMixPhantom/labelsTs \
        benchmarks/work/RUN/seed_1/predictions/LABEL [more prediction folders]

Prints one Markdown table per prediction folder: rows are true classes, columns predicted ones, in % of the row;
``pred / true`` is the predicted volume of the class over its true volume (above 1: the class grows into others).
``--false-positives K`` adds where each class's false positives lie: within K voxels of that class's true voxels
(its boundary has moved outwards) or farther (separate fragments). ``--largest-component`` adds each class's test
Dice before and after keeping only its largest connected component (nnU-Net's
``remove_all_but_largest_component_from_segmentation``, the step ``nnUNetv2_determine_postprocessing`` may choose
per class): a loss that disappears with it is stray fragments, which nnU-Net's postprocessing could take back.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def confusion(labels_folder: str, predictions_folder: str, num_classes: int, file_ending: str) -> np.ndarray:
    from nnunet_dinomix.evaluation.report import read_image

    cases = sorted(f for f in os.listdir(labels_folder) if f.endswith(file_ending))
    if not cases:
        raise SystemExit(f"no {file_ending} labels in {labels_folder}")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for case in cases:
        prediction = os.path.join(predictions_folder, case)
        if not os.path.isfile(prediction):
            raise SystemExit(f"{prediction} is missing: predict every case of {labels_folder} first")
        truth = read_image(os.path.join(labels_folder, case))[0].astype(np.int64).ravel()
        predicted = read_image(prediction)[0].astype(np.int64).ravel()
        counts += np.bincount(truth * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, -1)
    return counts


def false_positives(labels_folder: str, predictions_folder: str, num_classes: int, file_ending: str,
                    near: int) -> np.ndarray:
    """(num_classes, 3) voxel counts per class: false positives within ``near`` voxels (Euclidean, in voxels) of the
    class's true voxels, false positives farther away, and the connected components of the prediction (summed over
    cases)."""
    from scipy import ndimage

    from nnunet_dinomix.evaluation.report import read_image

    out = np.zeros((num_classes, 3), dtype=np.int64)
    for case in sorted(f for f in os.listdir(labels_folder) if f.endswith(file_ending)):
        truth = read_image(os.path.join(labels_folder, case))[0]
        predicted = read_image(os.path.join(predictions_folder, case))[0]
        for c in range(1, num_classes):
            wrong = (predicted == c) & (truth != c)
            if (truth == c).any():
                close = ndimage.distance_transform_edt(truth != c) <= near
            else:  # the class is absent from this case: every false positive is far from it
                close = np.zeros_like(wrong)
            out[c] += [(wrong & close).sum(), (wrong & ~close).sum(), ndimage.label(predicted == c)[1]]
    return out


def false_positive_table(fp: np.ndarray, names: List[str], near: int) -> str:
    lines = [f"| class | false positives | within {near} voxels of the class | farther | predicted components |",
             "|---|---:|---:|---:|---:|"]
    for c, name in enumerate(names):
        if c:
            lines.append(f"| {name} | {fp[c, 0] + fp[c, 1]} | {fp[c, 0]} | {fp[c, 1]} | {fp[c, 2]} |")
    return "\n".join(lines)


def largest_component_dice(labels_folder: str, predictions_folder: str, num_classes: int,
                           file_ending: str) -> np.ndarray:
    """(num_classes, 2): per foreground class, the mean over cases of the test Dice as predicted and after keeping
    only the class's largest connected component (row 0, background, stays NaN). A case where the class is absent
    from both reference and prediction is left out of its mean, as nnU-Net's evaluation does."""
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    from nnunet_dinomix.evaluation.metrics import dice
    from nnunet_dinomix.evaluation.report import read_image

    scores = [[[], []] for _ in range(num_classes)]
    for case in sorted(f for f in os.listdir(labels_folder) if f.endswith(file_ending)):
        truth = read_image(os.path.join(labels_folder, case))[0]
        predicted = read_image(os.path.join(predictions_folder, case))[0]
        for c in range(1, num_classes):
            kept = remove_all_but_largest_component_from_segmentation(predicted, c)
            scores[c][0].append(dice(predicted == c, truth == c))
            scores[c][1].append(dice(kept == c, truth == c))
    out = np.full((num_classes, 2), np.nan)
    for c in range(1, num_classes):
        for j in range(2):
            if not all(np.isnan(scores[c][j])):
                out[c, j] = np.nanmean(scores[c][j])
    return out


def largest_component_table(scores: np.ndarray, names: List[str]) -> str:
    lines = ["| class | Dice (%) | largest component only |", "|---|---:|---:|"]
    for c, name in enumerate(names):
        if c:
            lines.append(f"| {name} | {100 * scores[c, 0]:.1f} | {100 * scores[c, 1]:.1f} |")
    mean = np.nanmean(scores[1:], axis=0) * 100
    lines.append(f"| mean (foreground) | {mean[0]:.1f} | {mean[1]:.1f} |")
    return "\n".join(lines)


def table(counts: np.ndarray, names: List[str]) -> str:
    lines = ["| true \\ predicted | " + " | ".join(names) + " | voxels | pred / true |",
             "|---|" + "---:|" * (len(names) + 2)]
    for c, name in enumerate(names):
        total = counts[c].sum()
        row = counts[c] / max(total, 1) * 100
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in row) +
                     f" | {total} | {counts[:, c].sum() / max(total, 1):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", help="folder of reference label files (e.g. the raw dataset's labelsTs)")
    p.add_argument("predictions", nargs="+", help="prediction folders with the same file names")
    p.add_argument("--dataset-json", default=None,
                   help="the dataset.json with the label names [default: the one next to the labels folder]")
    p.add_argument("--false-positives", type=int, default=None, metavar="K",
                   help="also split each class's false positives into those within K voxels of its true voxels "
                        "and those farther away")
    p.add_argument("--largest-component", action="store_true",
                   help="also print each class's test Dice before and after keeping its largest component")
    args = p.parse_args(argv)
    dataset_json = args.dataset_json or os.path.join(os.path.dirname(os.path.abspath(args.labels)), "dataset.json")
    with open(dataset_json) as f:
        dataset = json.load(f)
    labels = sorted(dataset["labels"].items(), key=lambda kv: int(kv[1]))
    names = [name for name, _ in labels]
    for folder in args.predictions:
        counts = confusion(args.labels, folder, len(names), dataset.get("file_ending", ".nii.gz"))
        print(f"{folder}\n\n{table(counts, names)}\n")
        if args.false_positives is not None:
            fp = false_positives(args.labels, folder, len(names), dataset.get("file_ending", ".nii.gz"),
                                 args.false_positives)
            print(f"{false_positive_table(fp, names, args.false_positives)}\n")
        if args.largest_component:
            scores = largest_component_dice(args.labels, folder, len(names), dataset.get("file_ending", ".nii.gz"))
            print(f"{largest_component_table(scores, names)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
