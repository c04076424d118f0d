"""The one evaluation report: nnU-Net's summary.json reader, the one tail definition, and the files it writes."""
import csv
import math

import numpy as np
import SimpleITK as sitk

from nnunet_dinomix.evaluation.report import (TAIL_SIZE, class_voxel_shares, collect, head_and_tail, per_class_dice,
                                              read_labels, tail_classes, write_report)

LABELS = {"background": 0, "liver": 1, "adrenal": 2}


def _summary(liver, adrenal):
    # the layout nnunetv2.evaluation.evaluate_predictions.save_summary_json writes
    return {"foreground_mean": {"Dice": (liver + adrenal) / 2},
            "mean": {"1": {"Dice": liver, "IoU": 0.0}, "2": {"Dice": adrenal, "IoU": 0.0}},
            "metric_per_case": []}


def test_nnunet_summary_rows_follow_label_values_not_order():
    s = _summary(0.9, 0.1)
    assert per_class_dice(s, LABELS) == {"liver": 0.9, "adrenal": 0.1}
    assert per_class_dice(s, {"background": 0, "adrenal": 2, "liver": 1}) == {"adrenal": 0.1, "liver": 0.9}
    missing = per_class_dice({"mean": {"1": {"Dice": 0.5}}, "foreground_mean": {"Dice": 0.5}}, LABELS)
    assert math.isnan(missing["adrenal"])


def test_the_tail_is_the_rarest_classes_by_training_voxels_everywhere():
    counts = {"background": 10 ** 6, "liver": 5000, "spleen": 900, "adrenal": 20, "gallbladder": 300}
    assert TAIL_SIZE == 3
    assert tail_classes(counts) == ["adrenal", "gallbladder", "spleen"]  # rarest first, background never
    assert tail_classes(counts, 2) == ["adrenal", "gallbladder"]
    shares = {"liver": 0.8, "spleen": 0.15, "adrenal": 0.01, "gallbladder": 0.04}
    # head and tail keep label order; a class above 1/K can be in the tail when it is among the 3 rarest
    assert head_and_tail(shares) == (["liver"], ["spleen", "adrenal", "gallbladder"])
    assert head_and_tail(shares, 1) == (["liver", "spleen", "gallbladder"], ["adrenal"])


def _write(path, array, spacing=(1.0, 1.0, 2.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_report_from_prediction_folders_writes_tables_charts_and_the_tail_mean(tmp_path):
    """Two cases, two trainers: A is perfect, B misses the adrenal; the tail (1 class: adrenal) mean shows it."""
    ref, pred_a, pred_b, train = (tmp_path / n for n in ("ref", "a", "b", "train"))
    for folder in (ref, pred_a, pred_b, train):
        folder.mkdir()
    for case in ("c1", "c2"):
        seg = np.zeros((6, 12, 12), dtype=np.uint8)
        seg[1:5, 2:9, 2:9] = 1
        seg[2:4, 10:12, 10:12] = 2
        _write(ref / f"{case}.nii.gz", seg)
        _write(pred_a / f"{case}.nii.gz", seg)
        _write(pred_b / f"{case}.nii.gz", np.where(seg == 2, 0, seg))
        _write(train / f"{case}.nii.gz", seg)
    labels = read_labels({"labels": LABELS})
    assert labels == {"liver": 1, "adrenal": 2}
    rows = collect(str(ref), {"A": str(pred_a), "B": str(pred_b)}, labels, ".nii.gz", 1)
    shares = class_voxel_shares([str(train / "c1.nii.gz"), str(train / "c2.nii.gz")], labels)
    assert shares["adrenal"] < shares["liver"]
    paths = write_report(rows, labels, shares, {}, str(tmp_path / "out"), "t", tail_size=1)
    md = open(paths["md"]).read()
    assert "Tail: the 1 classes with the fewest voxels in the labeled training cases (adrenal)." in md
    assert "| liver | " in md and "| tail | 100.0 | 0.0 |" in md  # adrenal: A perfect, B missed
    assert "| **mean (tail)** | | | 100.0 | 0.0 |" in md
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert {(r["trainer"], r["class"], r["group"]) for r in table} >= {("B", "adrenal", "tail"), ("A", "liver", "head")}
    assert (tmp_path / "out" / "dice.png").stat().st_size > 1000
    assert (tmp_path / "out" / "dice_vs_frequency.png").stat().st_size > 1000
