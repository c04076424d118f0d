"""Which test cases make a class's mean Dice? Per case: the class's mean intensity and each model's Dice.

With six test cases, one case can move a class's mean by five points. Before a class's loss or gain is read as
the recipe's, this says whether it is spread over the cases or one case's, and whether that case is one whose
organ looks unlike the labeled cases' (its mean intensity, here on the raw image, against theirs)::

    python benchmarks/per_case.py benchmarks/work/RUN/seed_1/nnUNet_raw/Dataset990_DinoMixPhantom \
        benchmarks/work/RUN/seed_1/predictions/PAIR benchmarks/work/RUN/seed_1/predictions/LABEL \
        --classes spleen pancreas

The first prediction folder is the pair; the others get their difference to it. Prints one Markdown table per
class; the labeled cases' intensities of the class head each table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Iterator, List, Optional, Tuple

import numpy as np


def read(path: str) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def dice(prediction: np.ndarray, truth: np.ndarray, value: int) -> float:
    """Dice (%) of one class; NaN where the class is in neither (nnU-Net's evaluation leaves such cases out)."""
    p, t = prediction == value, truth == value
    total = int(p.sum() + t.sum())
    return float("nan") if total == 0 else 200.0 * float((p & t).sum()) / total


def case_names(dataset: str, labels: str, ending: str) -> List[str]:
    """The cases of a split: its label files' names, sorted."""
    return sorted(os.path.basename(f)[:-len(ending)] for f in glob.glob(os.path.join(dataset, labels, f"*{ending}")))


def cases(dataset: str, images: str, labels: str, ending: str) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(case, channel 0 image, label map) for every label file of a split, each file read once."""
    for case in case_names(dataset, labels, ending):
        yield (case, read(os.path.join(dataset, images, f"{case}_0000{ending}")),
               read(os.path.join(dataset, labels, case + ending)))


def mean_intensity(image: np.ndarray, truth: np.ndarray, value: int) -> Optional[float]:
    """The image's mean over the class's voxels; None where the case has none."""
    mask = truth == value
    return float(image[mask].mean()) if mask.any() else None


def cell(score: float, pair: Optional[float] = None) -> str:
    if np.isnan(score):
        return "-"  # the class is in neither the truth nor the prediction
    if pair is None or np.isnan(pair):
        return f"{score:.1f}"
    return f"{score:.1f} ({score - pair:+.1f})"


def table(dataset: str, predictions: List[str], name: str, value: int, ending: str) -> str:
    labeled = [mean_intensity(image, truth, value)
               for _, image, truth in cases(dataset, "imagesTr", "labelsTr", ending)]
    shown = ", ".join(f"{v:.0f}" for v in labeled if v is not None) or "absent"
    models = [os.path.basename(os.path.normpath(p)) for p in predictions]
    lines = [f"{name} (labeled cases' mean intensity: {shown})", "",
             "| test case | intensity | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for case, image, truth in cases(dataset, "imagesTs", "labelsTs", ending):
        intensity = mean_intensity(image, truth, value)
        scores = [dice(read(os.path.join(p, case + ending)), truth, value) for p in predictions]
        cells = [cell(scores[0])] + [cell(s, scores[0]) for s in scores[1:]]
        lines.append(f"| {case} | {'-' if intensity is None else f'{intensity:.0f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="nnU-Net raw dataset folder (imagesTr/labelsTr/imagesTs/labelsTs, dataset.json)")
    p.add_argument("predictions", nargs="+", help="prediction folders of the test cases; the first is the pair")
    p.add_argument("--classes", nargs="+", required=True, help="label names from dataset.json")
    args = p.parse_args(argv)
    with open(os.path.join(args.dataset, "dataset.json")) as f:
        dataset_json = json.load(f)
    unknown = [c for c in args.classes if c not in dataset_json["labels"]]
    if unknown:
        p.error(f"not in dataset.json's labels: {', '.join(unknown)}; it has {', '.join(dataset_json['labels'])}")
    ending = dataset_json["file_ending"]
    tests = case_names(args.dataset, "labelsTs", ending)
    for folder in args.predictions:
        missing = [c for c in tests if not os.path.isfile(os.path.join(folder, c + ending))]
        if missing:
            p.error(f"{folder} lacks the predictions of {len(missing)} of the {len(tests)} test cases (e.g. "
                    f"{missing[0]}{ending}): give the folder nnUNetv2_predict wrote them to")
    for c in args.classes:
        print(table(args.dataset, args.predictions, c, int(dataset_json["labels"][c]), ending))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
