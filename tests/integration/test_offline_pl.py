"""dinomix_offline_pl: the agreement measure, and two real rounds on the tiny phantom with nnU-Net's commands."""
import os

import numpy as np
import pytest

from support import DATASET_ID, TINY_PLANS, run_cli
from nnunet_dinomix.offline_pl import case_agreement


def test_case_agreement_is_the_mean_dice_over_present_classes():
    a = np.array([0, 1, 1, 2, 2, 0])
    assert case_agreement(a, a, [1, 2, 3]) == 1.0
    b = np.array([0, 1, 0, 2, 2, 2])
    assert case_agreement(a, b, [1, 2, 3]) == pytest.approx(np.mean([2 * 1 / 3, 2 * 2 / 5]))
    assert case_agreement(np.zeros(4), np.zeros(4), [1, 2]) == 1.0


def _snapshot(folder):
    return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns for r, _, fs in os.walk(folder) for f in fs}


@pytest.mark.e2e
def test_two_rounds_build_new_datasets_and_never_touch_the_source(phantom_dataset):
    budget = {"DINOMIX_NUM_EPOCHS": "1", "DINOMIX_ITERATIONS_PER_EPOCH": "2", "DINOMIX_VAL_ITERATIONS_PER_EPOCH": "1"}
    ds = str(DATASET_ID)
    run_cli("nnUNetv2_train", ds, "3d_fullres", "all", "-tr", "nnUNetTrainerBudget", "-p", TINY_PLANS, "-device",
            "cpu", env_extra=budget)
    raw_before = _snapshot(phantom_dataset["raw"])
    pre_before = _snapshot(phantom_dataset["preprocessed"])
    cmd = ["dinomix_offline_pl", "-d", ds, "-p", TINY_PLANS, "-tr", "nnUNetTrainerBudget", "-f", "all",
           "--target_id", "960", "--rounds", "2", "--drop_unstable", "0.25", "-device", "cpu", "--disable_tta",
           "-np", "1"]
    result = run_cli(*cmd, env_extra=budget)
    assert "Round 2/2" in result.stdout and "dropping 1 unstable cases" in result.stdout
    raw = os.environ["nnUNet_raw"]
    first, second = (os.path.join(raw, f"Dataset{i}_TestPhantomPL{r}") for i, r in ((960, 1), (961, 2)))
    assert len(os.listdir(os.path.join(first, "labelsTr"))) == 3 + 4  # labeled + every pseudo-labelled case
    assert len(os.listdir(os.path.join(second, "labelsTr"))) == 3 + 3  # one unstable case dropped
    assert len(os.listdir(os.path.join(second, "imagesTr"))) == 6
    results = os.environ["nnUNet_results"]
    assert os.path.isfile(os.path.join(results, "Dataset961_TestPhantomPL2",
                                       f"nnUNetTrainerBudget__{TINY_PLANS}__3d_fullres", "fold_all",
                                       "checkpoint_final.pth"))
    assert _snapshot(phantom_dataset["raw"]) == raw_before  # the source dataset is never written
    assert _snapshot(phantom_dataset["preprocessed"]) == pre_before

    again = run_cli(*cmd, env_extra=budget, check=False)  # the targets exist now: refused, nothing written
    assert again.returncode == 1 and "Dataset ID 960 is already used" in again.stderr

    one = cmd[:cmd.index("--target_id")] + ["--target_id", "970", "-device", "cpu", "--disable_tta", "-np", "1"]
    refused = run_cli(*one, "--rounds", "2", "--no_train", env_extra=budget, check=False)
    assert refused.returncode == 1 and "Use --rounds 1" in refused.stderr
    built = run_cli(*one, "--no_train", env_extra=budget)  # the dataset is built and preprocessed, not trained
    assert "Train it with: nnUNetv2_train 970 3d_fullres all -tr nnUNetTrainerBudget" in built.stdout
    assert len(os.listdir(os.path.join(raw, "Dataset970_TestPhantomPL1", "labelsTr"))) == 3 + 4
    assert os.path.isdir(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset970_TestPhantomPL1"))
    assert not os.path.exists(os.path.join(results, "Dataset970_TestPhantomPL1"))
