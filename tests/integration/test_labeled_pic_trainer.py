"""nnUNetTrainerLabeledPIC in-process on the tiny phantom: nnU-Net's loader runs the labeled PIC transform first,
with this fold's training cases as donors, and the trainer trains like nnU-Net without an unlabeled pool."""
import pytest
import torch

from support import DATASET_ID, TINY_PLANS, parameters_of, started_trainer
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.pic.paste import LabeledPICTransform


def test_loader_pastes_from_training_cases_only(phantom_dataset):
    import numpy as np
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(DATASET_ID), "3d_fullres", "all", "nnUNetTrainerLabeledPIC", TINY_PLANS,
                              device=torch.device("cpu"))
    cases = sorted(t.get_tr_and_val_datasets()[0].identifiers)
    t.do_split = lambda: (cases[:-1], cases[-1:])  # a fold that holds a case out (the tiny phantom has 3)
    training, validation = t.get_tr_and_val_datasets()
    assert set(validation.identifiers) == {cases[-1]}
    np.random.seed(0)
    args = (t.configuration_manager.patch_size, *t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[:1],
            t._get_deep_supervision_scales(), None, False)
    pipeline = t.get_training_transforms(*args, foreground_labels=t.label_manager.foreground_labels)
    paste = pipeline.transforms[0]
    assert isinstance(paste, LabeledPICTransform)
    assert set(paste.identifiers) == set(training.identifiers)
    assert not set(paste.identifiers) & set(validation.identifiers)
    assert paste.probabilities.argmax() == paste.classes.index(min(paste.classes, key=lambda c: sum(
        len(training.load_case(i)[3]["class_locations"].get(c, [])) for i in training.identifiers)))
    assert not paste.class_only
    t.labeled_pic_paste = "class"  # the trainer attribute reaches the loader's transform
    assert t.get_training_transforms(*args).transforms[0].class_only
    t.labeled_pic_paste = "mask"
    with pytest.raises(DinoMixError, match="labeled_pic_paste must be 'box' or 'class'"):
        t.get_training_transforms(*args)


def test_a_training_step_runs_through_the_real_loader(phantom_dataset):
    with started_trainer("nnUNetTrainerLabeledPIC") as t:
        loader = t.dataloader_train.data_loader  # nnUNet_n_proc_DA=0: a SingleThreadedAugmenter
        assert isinstance(loader.transforms.transforms[0], LabeledPICTransform)
        before = parameters_of(t.network)
        out = t.train_step(next(t.dataloader_train))
        assert torch.isfinite(torch.as_tensor(out["loss"]))
        assert any(not torch.equal(a, b) for a, b in zip(before, parameters_of(t.network)))
