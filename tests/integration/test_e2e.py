"""The user's workflow with the real nnU-Net commands, on the tiny phantom (a few minutes on 2 CPU cores)."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import DATASET_ID, TINY_PLANS, run_cli
from nnunet_dinomix.training.semi_supervised import CHECKPOINT_KEY

TRAINER = "nnUNetTrainerMeanTeacherBudget"

pytestmark = pytest.mark.e2e


def _budget(epochs):
    return {"DINOMIX_NUM_EPOCHS": str(epochs), "DINOMIX_ITERATIONS_PER_EPOCH": "3",
            "DINOMIX_VAL_ITERATIONS_PER_EPOCH": "1"}


def test_preprocess_train_resume_predict(phantom_dataset, tmp_path):
    ds = str(DATASET_ID)
    run_cli("dinomix_preprocess_unlabeled", "-d", ds, "-p", TINY_PLANS, "-np", "2")
    doctor = run_cli("dinomix_doctor", "-d", ds, "-p", TINY_PLANS)
    assert "0 failed" in doctor.stdout and "unlabeled pool" in doctor.stdout

    train = ["nnUNetv2_train", ds, "3d_fullres", "all", "-tr", TRAINER, "-p", TINY_PLANS, "-device", "cpu"]
    run_cli(*train, env_extra=_budget(1))
    fold = os.path.join(os.environ["nnUNet_results"], phantom_dataset["name"],
                        f"{TRAINER}__{TINY_PLANS}__3d_fullres", "fold_all")
    first = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert first["current_epoch"] == 1 and first["trainer_name"] == TRAINER
    assert first[CHECKPOINT_KEY]["ema_teacher"].keys() == first["network_weights"].keys()
    logs = [f for f in os.listdir(fold) if f.startswith("training_log")]
    log = open(os.path.join(fold, logs[0])).read()
    assert "train_loss_unsup" in log and "Unlabeled pool: 4 cases" in log
    assert os.path.isfile(os.path.join(fold, "progress.png"))
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))  # nnU-Net's final validation ran

    resumed = run_cli(*train, "--c", env_extra=_budget(2))
    second = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert second["current_epoch"] == 2
    assert "has no 'dinomix' state" not in resumed.stdout
    assert "Epoch 1" in resumed.stdout and "Epoch 0\n" not in resumed.stdout
    changed = [not torch.equal(second[CHECKPOINT_KEY]["ema_teacher"][k], first[CHECKPOINT_KEY]["ema_teacher"][k])
               for k in first[CHECKPOINT_KEY]["ema_teacher"]]
    assert any(changed)
    assert len(second["logging"]["train_loss_unsup"]) == 2

    out = tmp_path / "predictions"
    images = os.path.join(phantom_dataset["raw"], "imagesTs")
    run_cli("nnUNetv2_predict", "-i", images, "-o", out, "-d", ds, "-c", "3d_fullres", "-f", "all", "-tr", TRAINER,
            "-p", TINY_PLANS, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1")
    reference = sitk.ReadImage(os.path.join(phantom_dataset["raw"], "labelsTs", "case_0200.nii.gz"))
    predicted = sitk.ReadImage(str(out / "case_0200.nii.gz"))
    assert predicted.GetSize() == reference.GetSize() and predicted.GetSpacing() == reference.GetSpacing()
    values = np.unique(sitk.GetArrayFromImage(predicted))
    assert values.min() >= 0 and values.max() <= 8


def test_predict_does_not_need_the_unlabeled_pool(phantom_dataset, tmp_path):
    """Inference only rebuilds the plain network: a results folder alone is enough."""
    fold = os.path.join(os.environ["nnUNet_results"], phantom_dataset["name"],
                        f"{TRAINER}__{TINY_PLANS}__3d_fullres", "fold_all")
    if not os.path.isfile(os.path.join(fold, "checkpoint_final.pth")):
        pytest.skip("needs the model trained by test_preprocess_train_resume_predict")
    pre = phantom_dataset["preprocessed"]
    hidden = str(tmp_path / "preprocessed_elsewhere")
    os.rename(pre, hidden)  # nnUNet_preprocessed no longer has the dataset (nor its pool)
    try:
        run_cli("nnUNetv2_predict", "-i", os.path.join(phantom_dataset["raw"], "imagesTs"), "-o", tmp_path / "p",
                "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "all", "-tr", TRAINER, "-p", TINY_PLANS,
                "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1")
    finally:
        os.rename(hidden, pre)
    assert (tmp_path / "p" / "case_0200.nii.gz").is_file()


DINOMIX = "nnUNetTrainerDinoMixBudget"


def test_dinomix_train_resume_predict_without_weights_and_show_pic(phantom_dataset, dinov3_meta_file, tmp_path):
    """The full trainer with a random DINOv3 in Meta's .pth layout; prediction on a machine without any weights."""
    ds = str(DATASET_ID)
    run_cli("dinomix_preprocess_unlabeled", "-d", ds, "-p", TINY_PLANS, "-np", "1")
    weights = {"DINOMIX_DINOV3_WEIGHTS": dinov3_meta_file}
    doctor = run_cli("dinomix_doctor", "-d", ds, "-p", TINY_PLANS, "-tr", "nnUNetTrainerDinoMix",
                     env_extra=weights)
    assert "0 failed" in doctor.stdout and "12 blocks, width 384" in doctor.stdout
    no_weights = run_cli("dinomix_doctor", "-tr", "nnUNetTrainerDinoMix", check=False,
                         env_extra={"DINOMIX_DINOV3_WEIGHTS": ""})
    assert no_weights.returncode == 1 and "licence-gated" in no_weights.stdout

    train = ["nnUNetv2_train", ds, "3d_fullres", "all", "-tr", DINOMIX, "-p", TINY_PLANS, "-device", "cpu"]
    run_cli(*train, env_extra={**weights, **_budget(1)})
    fold = os.path.join(os.environ["nnUNet_results"], phantom_dataset["name"],
                        f"{DINOMIX}__{TINY_PLANS}__3d_fullres", "fold_all")
    first = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    state = first[CHECKPOINT_KEY]
    assert state["fkd_head"] and state["mixer"]["counts"]["updates"] == 3
    log = open(os.path.join(fold, [f for f in os.listdir(fold) if f.startswith("training_log")][0])).read()
    assert "FKD: DINOv3 from" in log and "train_loss_fkd" in log and "pic_prob_adrenal" in log
    assert "Recipe: burn-in 2 of 3 iterations" in log and "pl_recall_liver" in log  # the phantom's truth is known

    run_cli(*train, "--c", env_extra={**weights, **_budget(2)})
    second = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    # resumed into its burn-in (3 of 6 iterations): the teacher is re-initialised at step 3, the mixer goes on
    assert second["current_epoch"] == 2 and second[CHECKPOINT_KEY]["mixer"]["counts"]["updates"] == 6
    assert len(second["logging"]["pic_gamma"]) == 2
    assert second["logging"]["pic_gamma"][1] < second["logging"]["pic_gamma"][0] <= 1.0  # the curriculum moved on

    out = tmp_path / "predictions"
    run_cli("nnUNetv2_predict", "-i", os.path.join(phantom_dataset["raw"], "imagesTs"), "-o", out, "-d", ds, "-c",
            "3d_fullres", "-f", "all", "-tr", DINOMIX, "-p", TINY_PLANS, "-device", "cpu", "--disable_tta",
            "-npp", "1", "-nps", "1", env_extra={"DINOMIX_DINOV3_WEIGHTS": ""})
    assert (out / "case_0200.nii.gz").is_file()

    pictures = tmp_path / "pic"
    shown = run_cli("dinomix_show_pic", "-d", ds, "-p", TINY_PLANS, "-tr", DINOMIX, "-chk",
                    os.path.join(fold, "checkpoint_final.pth"), "-o", pictures, env_extra=weights)
    assert "adrenal" in shown.stdout and "boxes in 4 samples" in shown.stdout
    assert (pictures / "pic_samples.png").stat().st_size > 10000
    assert (pictures / "pic_probabilities.png").stat().st_size > 5000
