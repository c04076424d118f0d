"""benchmarks/confusion.py on small label files: the confusion counts, and false positives split into a moved
boundary and separate fragments."""
import json
import os
import sys

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import confusion  # noqa: E402


def _write(folder, name, array):
    os.makedirs(folder, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), os.path.join(folder, name))


def test_false_positives_split_into_boundary_and_fragments(tmp_path, capsys):
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[4:8, 4:8, 4:8] = 1
    truth[0:2, 0:2, 10:12] = 2
    predicted = truth.copy()
    predicted[3, 4:8, 4:8] = 1  # one face grown outwards by a voxel: 16 false positives at the boundary
    predicted[10:12, 10:12, 0:2] = 1  # a separate fragment of 8 voxels, far from class 1
    predicted[0, 0, 10] = 1  # a class-2 voxel called class 1, far from the class-1 cube
    labels, preds = str(tmp_path / "labelsTs"), str(tmp_path / "pred")
    _write(labels, "a.nii.gz", truth)
    _write(preds, "a.nii.gz", predicted)
    counts = confusion.confusion(labels, preds, 3, ".nii.gz")
    assert counts[0, 1] == 16 + 8 and counts[2, 1] == 1 and counts[2, 2] == 7 and counts[1, 1] == 64
    fp = confusion.false_positives(labels, preds, 3, ".nii.gz", near=2)
    assert fp[1].tolist() == [16, 9, 3]  # boundary, farther, components (cube, fragment, lone voxel)
    assert fp[2].tolist() == [0, 0, 1]
    with open(tmp_path / "dataset.json", "w") as f:
        json.dump({"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}, f)
    assert confusion.main([labels, preds, "--false-positives", "2"]) == 0
    out = capsys.readouterr().out
    assert "| a | 25 | 16 | 9 | 3 |" in out and "pred / true" in out


def test_largest_component_removes_fragments_and_skips_absent_cases(tmp_path, capsys):
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[4:8, 4:8, 4:8] = 1  # 64 voxels
    predicted = truth.copy()
    predicted[10:12, 10:12, 0:2] = 1  # a stray fragment of 8 voxels
    predicted[0:2, 0:2, 10:12] = 2  # class 2 predicted where no case has it
    labels, preds = str(tmp_path / "labelsTs"), str(tmp_path / "pred")
    _write(labels, "a.nii.gz", truth)
    _write(preds, "a.nii.gz", predicted)
    _write(labels, "b.nii.gz", np.zeros_like(truth))  # neither class in reference or prediction: left out
    _write(preds, "b.nii.gz", np.zeros_like(truth))
    scores = confusion.largest_component_dice(labels, preds, 3, ".nii.gz")
    assert np.isclose(scores[1, 0], 2 * 64 / (64 + 72))  # case b (NaN) pulls the mean neither to 0 nor to 1
    assert scores[1, 1] == 1.0  # the fragment is gone, the cube stays
    assert scores[2].tolist() == [0.0, 0.0]  # a false class stays false: its largest component is itself
    with open(tmp_path / "dataset.json", "w") as f:
        json.dump({"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}, f)
    assert confusion.main([labels, preds, "--largest-component"]) == 0
    out = capsys.readouterr().out
    assert "| a | 94.1 | 100.0 |" in out and "| mean (foreground) | 47.1 | 50.0 |" in out
