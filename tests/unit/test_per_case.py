"""benchmarks/per_case.py on a tiny dataset: per test case, a class's mean intensity and each model's Dice with its
difference to the pair; a class absent from truth and prediction is left out, not scored 0."""
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import per_case  # noqa: E402


def _write(folder, name, array, dtype=np.uint8):
    os.makedirs(folder, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(dtype)), os.path.join(folder, name))


def test_per_case_dice_intensity_and_difference_to_the_pair(tmp_path, capsys):
    root = tmp_path / "Dataset001_T"
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:3, 1:3, 1:3] = 1  # 8 voxels
    image = np.full(truth.shape, 10.0, np.float32)
    image[truth == 1] = 70.0
    for split in ("Tr", "Ts"):
        _write(str(root / f"labels{split}"), "c0.nii.gz", truth)
        _write(str(root / f"images{split}"), "c0_0000.nii.gz", image, np.float32)
    empty = np.zeros_like(truth)  # case c1 has no class 1: left out unless a model predicts it
    _write(str(root / "labelsTs"), "c1.nii.gz", empty)
    _write(str(root / "imagesTs"), "c1_0000.nii.gz", image, np.float32)
    with open(root / "dataset.json", "w") as f:
        json.dump({"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}, f)
    pair, model = str(tmp_path / "pair"), str(tmp_path / "model")
    _write(pair, "c0.nii.gz", truth)
    _write(pair, "c1.nii.gz", empty)
    half = truth.copy()
    half[1:3, 1:3, 2] = 0  # 4 of 8 voxels found: Dice 2 * 4 / (4 + 8)
    _write(model, "c0.nii.gz", half)
    stray = empty.copy()
    stray[5, 5, 5] = 1  # a false positive where the class is absent scores 0
    _write(model, "c1.nii.gz", stray)
    assert per_case.main([str(root), pair, model, "--classes", "organ"]) == 0
    out = capsys.readouterr().out
    assert "labeled cases' mean intensity: 70" in out
    assert "| c0 | 70 | 100.0 | 66.7 (-33.3) |" in out
    assert "| c1 | - | - | 0.0 |" in out
    with pytest.raises(SystemExit):
        per_case.main([str(root), pair, "--classes", "kidney"])
    os.remove(os.path.join(model, "c1.nii.gz"))  # a folder without every test case's prediction: named, not a crash
    with pytest.raises(SystemExit):
        per_case.main([str(root), pair, model, "--classes", "organ"])
    assert "model lacks the predictions of 1 of the 2 test cases (e.g. c1.nii.gz)" in capsys.readouterr().err
