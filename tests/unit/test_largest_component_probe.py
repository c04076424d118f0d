"""benchmarks/largest_component_probe.py on small label files: Dice per class as nnU-Net computes it, before and
after keeping each class's largest component."""
import json
import math
import os
import sys

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import largest_component_probe as probe  # noqa: E402


def _write(folder, name, array):
    os.makedirs(folder, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), os.path.join(folder, name))


def test_fragments_removed_and_absent_classes_left_out(tmp_path, capsys):
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[4:8, 4:8, 4:8] = 1  # 64 voxels
    predicted = truth.copy()
    predicted[10:12, 10:12, 0:2] = 1  # a stray fragment of 8 voxels
    predicted[0:2, 0:2, 10:12] = 2  # class 2 predicted where neither case has it in the reference
    labels, preds = str(tmp_path / "labelsTs"), str(tmp_path / "pred")
    _write(labels, "a.nii.gz", truth)
    _write(preds, "a.nii.gz", predicted)
    _write(labels, "b.nii.gz", np.zeros_like(truth))  # neither class in reference nor prediction: left out
    _write(preds, "b.nii.gz", np.zeros_like(truth))

    raw = probe.per_class_dice(labels, preds, [1, 2], ".nii.gz", largest_only=False)
    kept = probe.per_class_dice(labels, preds, [1, 2], ".nii.gz", largest_only=True)
    assert math.isclose(raw[1], 2 * 64 / (64 + 72))  # case b (nan) does not pull the mean to 0 or 1
    assert kept[1] == 1.0  # the fragment is gone, the cube stays
    assert raw[2] == 0.0 and kept[2] == 0.0  # a false class stays false: its largest component is itself

    with open(tmp_path / "pred" / "dataset.json", "w") as f:
        json.dump({"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}, f)
    assert probe.main([labels, preds]) == 0
    out = capsys.readouterr().out
    assert "| a | 94.1 | 100.0 |" in out and "| mean (foreground) | 47.1 | 50.0 |" in out
