"""nnUNetTrainerMeanTeacher in-process: one real train step on the phantom, the EMA, the checkpoint, refusals."""
import copy
import math
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from support import (DATASET_ID, TINY_PLANS, checkpoint_with_plain_network, make_trainer, parameters_of,
                      started_trainer)
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.ssl.ema import ema_decay
from nnunet_dinomix.training.semi_supervised import CHECKPOINT_KEY

CPU = torch.device("cpu")


def _trainer(dataset, name="nnUNetTrainerMeanTeacher"):
    return make_trainer(name, dataset)


@pytest.fixture
def started(phantom_with_pool):
    with started_trainer("nnUNetTrainerMeanTeacher") as t:
        t.burn_in_steps = 0  # these tests look at the semi-supervised step itself
        yield t


def test_train_steps_update_student_and_ema_teacher(started):
    t = started
    assert t.ema_teacher is not None and not t.ema_teacher.training
    optimised = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in t.ema_teacher.parameters())

    student_0 = parameters_of(t.student)
    out_1 = t.train_step(next(t.dataloader_train))
    assert set(out_1) == {"loss", "train_loss_sup", "train_loss_unsup", "unsup_weight", "confident_fraction",
                          "pl_counts"}  # the phantom's pool knows the truth of its unlabeled cases
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out_1.values())
    assert any(not torch.equal(a, b) for a, b in zip(student_0, parameters_of(t.student)))
    # step 0 uses decay 0: the teacher equals the student; afterwards a true moving average
    for a, b in zip(parameters_of(t.ema_teacher), parameters_of(t.student)):
        torch.testing.assert_close(a, b)
    teacher_1 = parameters_of(t.ema_teacher)
    out_2 = t.train_step(next(t.dataloader_train))
    d = ema_decay(1, t.ema_decay)
    assert d == pytest.approx(0.5)
    for after, before, s in zip(parameters_of(t.ema_teacher), teacher_1, parameters_of(t.student)):
        torch.testing.assert_close(after, d * before + (1 - d) * s)
    assert all(p.grad is None for p in t.ema_teacher.parameters())
    assert t.global_step == 2
    assert 0 < out_2["unsup_weight"] <= t.unsup_weight_max

    u = next(t.dataloader_unlabeled)["data"]
    assert tuple(u.shape) == (t.batch_size, 1, *t.configuration_manager.patch_size)

    counts = out_1["pl_counts"] + out_2["pl_counts"]
    t.on_train_epoch_end([out_1, out_2])
    expected = (float(out_1["train_loss_unsup"]) + float(out_2["train_loss_unsup"])) / 2
    assert t.logger.get_value("train_loss_unsup", step=-1) == pytest.approx(expected)
    # pseudo-label diagnostics: per class, summed over the epoch's batches, then the ratios
    assert counts[2, 1] > 0  # liver voxels were sampled
    assert t.logger.get_value("pl_recall_liver", step=-1) == pytest.approx(counts[0, 1] / counts[2, 1])
    assert t.logger.get_value("pl_confident_liver", step=-1) == pytest.approx(counts[3, 1] / counts[2, 1])


def test_burn_in_is_supervised_only_then_resets_the_teacher(phantom_with_pool):
    with started_trainer("nnUNetTrainerMeanTeacher") as t:
        t.burn_in_steps = 2
        teacher_0 = parameters_of(t.ema_teacher)
        consumed = []
        original = t.unlabeled_batch_with_truth
        t.unlabeled_batch_with_truth = lambda: consumed.append(1) or original()
        burn = [t.train_step(next(t.dataloader_train)) for _ in range(2)]
        assert not consumed  # no unlabeled batch, no teacher forward during burn-in
        assert all(o["unsup_weight"] == 0.0 and float(o["train_loss_unsup"]) == 0.0 for o in burn)
        assert all(torch.equal(a, b) for a, b in zip(teacher_0, parameters_of(t.ema_teacher)))
        student = parameters_of(t.student)
        t.unsup_rampup_fraction = 0.0  # full weight at once after burn-in
        out = t.train_step(next(t.dataloader_train))
        assert consumed and out["unsup_weight"] == t.unsup_weight_max
        # the teacher was re-initialised from the burnt-in student, then moved by one EMA step towards it
        d = ema_decay(2, t.ema_decay)  # the update of step 2
        for teacher, before, after in zip(parameters_of(t.ema_teacher), student, parameters_of(t.student)):
            torch.testing.assert_close(teacher, d * before + (1 - d) * after)


def test_a_burn_in_longer_than_the_run_is_refused(phantom_with_pool):
    t = _trainer(DATASET_ID)
    t.num_epochs, t.num_iterations_per_epoch = 2, 5
    t.burn_in_steps = 11
    with pytest.raises(DinoMixError, match=r"burn-in \(11 iterations\) is longer than the run \(2 epochs x 5"):
        t.on_train_start()
    assert t.network is None


def test_a_marginal_background_without_the_class_gate_is_refused(phantom_with_pool):
    t = _trainer(DATASET_ID)
    assert t.unsup_marginal_background and t.class_gate_dice is not None  # the default recipe: both on
    t.class_gate_dice = None  # an ablation of the gate that forgets the marginal background
    with pytest.raises(DinoMixError, match="set class_gate_dice.*unsup_marginal_background = False"):
        t.on_train_start()
    assert t.network is None


def test_the_student_views_perturb_only_the_students_unlabeled_samples(phantom_with_pool):
    from nnunet_dinomix.ssl.region_shift import RegionIntensityShift
    from nnunet_dinomix.ssl.strong_view import SpatialView, StrongView
    with started_trainer("nnUNetTrainerMeanTeacher", student_noise_std=0.0, burn_in_steps=0) as t:
        x_u = t.unlabeled_batch()
        pseudo = t.teacher_pseudo_labels(x_u)
        view, moved = t.student_view(x_u, pseudo)  # the default: the same crop (and the noise, here 0)
        assert t.strong_view is None and t.spatial_view is None and t.region_shift is None
        assert torch.equal(view, x_u) and moved is pseudo
    with started_trainer("nnUNetTrainerMeanTeacher", student_noise_std=0.0, student_strong_view=True,
                         student_region_shift=1.0, burn_in_steps=0) as t:
        assert isinstance(t.strong_view, StrongView) and t.spatial_view is None
        assert isinstance(t.region_shift, RegionIntensityShift) and "region shift 1.0" in t.student_view_name()
        x_u = t.unlabeled_batch()
        everywhere = torch.ones_like(x_u[:, :1], dtype=torch.long)  # one foreground class on every voxel
        t.region_shift.settings.p_per_class = 1.0
        shift = t.region_shift(x_u, everywhere) - x_u  # one offset per sample and channel, on every voxel
        assert float(shift.abs().amin()) > 0 and float(shift.abs().max()) <= 1.0 + 1e-6
        assert float((shift - shift.flatten(2)[..., :1, None, None]).abs().max()) < 1e-5
        x_l, y_l = t.labeled_batch(next(t.dataloader_train))
        x_u = t.unlabeled_batch()
        pseudo = t.teacher_pseudo_labels(x_u)  # the teacher sees the crop as the loader made it
        mixed = t.mix(x_l, y_l, x_u, pseudo)
        b = x_l.shape[0]
        assert torch.equal(mixed.image[:b], x_l) and not torch.equal(mixed.image[b:], x_u)
        assert torch.equal(mixed.label[b:], pseudo.labels)  # no voxel moved: the pseudo-labels hold as they are
        t.spatial_view = SpatialView()  # as student_spatial_view builds it
        mixed = t.mix(x_l, y_l, x_u, pseudo)
        assert torch.equal(mixed.image[:b], x_l) and not torch.equal(mixed.image[b:], x_u)
        assert not torch.equal(mixed.label[b:], pseudo.labels)  # moved with the student's crop
        assert set(mixed.label[b:].unique().tolist()) <= set(pseudo.labels.unique().tolist())  # nearest: no new class
        out = t.train_step(next(t.dataloader_train))
        assert torch.isfinite(torch.as_tensor(out["train_loss_unsup"])) and out["unsup_weight"] >= 0


def _confident_everywhere(t, cls: int) -> None:
    """Make the teacher call every voxel ``cls`` with a softmax of ~1 (its output layers: zero weights, one large
    bias), so that what the gate lets through does not depend on an untrained network and a random crop. The
    student gets the same layers, since a teacher reset or EMA update copies it."""
    with torch.no_grad():
        for network in (t.ema_teacher, t.student):
            for layer in network.decoder.seg_layers:
                layer.weight.zero_()
                layer.bias.zero_()
                layer.bias[cls] = 20.0


def test_class_gate_follows_nnunet_logged_dice_and_masks_closed_classes(started):
    """The gate reads the Dice nnU-Net's validation logged (through its real logger) at each epoch start: a class
    below ``class_gate_dice`` gives no trusted pseudo-label, an open class does."""
    t = started
    names = t.class_names()
    assert t.class_gate_dice == 0.8  # the default
    liver_only = [0.95] + [0.1] * (len(names) - 1)
    t.logger.log("dice_per_class_or_region", liver_only, 0)
    t.current_epoch = 1
    t.on_train_epoch_start()
    assert t.pseudo_labeller.reliable.tolist() == [True, True] + [False] * (len(names) - 1)

    def trusted_per_class(cls: int):
        _confident_everywhere(t, cls)
        return t.train_step(next(t.dataloader_train))["pl_counts"][1]  # trusted pseudo-labels per class

    liver = trusted_per_class(1)
    assert liver[1] > 0 and liver.sum() == liver[1]  # open: trusted
    assert trusted_per_class(2).sum() == 0  # the spleen is closed: a confident spleen is not trusted
    # on by default: background pseudo-labels stand for "background or a closed class"
    assert t.marginal_classes().tolist() == [False, False] + [True] * (len(names) - 1)
    t.unsup_marginal_background = False
    assert t.marginal_classes() is None
    t.unsup_marginal_background = True
    assert torch.isfinite(torch.as_tensor(t.train_step(next(t.dataloader_train))["train_loss_unsup"]))
    t.logger.log("dice_per_class_or_region", [0.0] * len(names), 1)
    t.current_epoch = 2
    t.on_train_epoch_start()  # liver's average falls to 0.475: closed as well
    assert not t.pseudo_labeller.reliable[1:].any()
    assert trusted_per_class(1).sum() == 0


def test_checkpoint_keeps_network_weights_plain_and_restores_teacher(started, tmp_path):
    t = started
    t.train_step(next(t.dataloader_train))
    t.train_step(next(t.dataloader_train))
    path = str(tmp_path / "checkpoint.pth")
    ckpt = checkpoint_with_plain_network(t, path)
    assert ckpt["trainer_name"] == "nnUNetTrainerMeanTeacher"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable by the group, like nnU-Net's own files
    assert set(ckpt[CHECKPOINT_KEY]["ema_teacher"]) == set(ckpt["network_weights"])

    fresh = _trainer(DATASET_ID)
    fresh.load_checkpoint(path)
    for a, b in zip(parameters_of(fresh.ema_teacher), parameters_of(t.ema_teacher)):
        assert torch.equal(a, b)
    # the restored teacher is the averaged one, not a copy of the restored student
    assert not all(torch.equal(a, b) for a, b in zip(parameters_of(fresh.ema_teacher), parameters_of(fresh.student)))

    # a plain nnU-Net checkpoint (no train-only state) still loads; the teacher starts from the student
    del ckpt[CHECKPOINT_KEY]
    torch.save(ckpt, path)
    plain_resume = _trainer(DATASET_ID)
    plain_resume.load_checkpoint(path)
    for a, b in zip(parameters_of(plain_resume.ema_teacher), parameters_of(plain_resume.student)):
        assert torch.equal(a, b)


def test_training_refuses_to_start_without_a_fresh_pool(scratch):
    t = _trainer(scratch["id"])
    with pytest.raises(DinoMixError, match=f"dinomix_preprocess_unlabeled -d {scratch['id']} -c 3d_fullres -p "
                                           f"{TINY_PLANS}"):
        t.on_train_start()
    assert t.network is None  # it failed before building anything

    from nnunet_dinomix.unlabeled.preprocess import preprocess_unlabeled
    preprocess_unlabeled(scratch["id"], plans_identifier=TINY_PLANS, num_processes=1, verbose=False)
    manifest = os.path.join(scratch["pre"], "nnUNetPlans_3d_fullres_unlabeled.json")
    content = load_json(manifest)
    content["preprocessing_fingerprint"] = "0" * 16
    from batchgenerators.utilities.file_and_folder_operations import save_json
    save_json(content, manifest)
    with pytest.raises(DinoMixError, match="stale"):
        _trainer(scratch["id"]).on_train_start()


def test_region_based_datasets_are_refused_with_a_reason(phantom_with_pool):
    from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher
    pre = os.path.join(os.environ["nnUNet_preprocessed"], phantom_with_pool["name"])
    plans = load_json(os.path.join(pre, TINY_PLANS + ".json"))
    plans["continue_training"] = False
    dataset_json = copy.deepcopy(load_json(os.path.join(pre, "dataset.json")))
    dataset_json["labels"] = {"background": 0, "kidneys": [3, 4], "left_kidney": 3}
    dataset_json["regions_class_order"] = [1, 2]
    t = nnUNetTrainerMeanTeacher(plans, "3d_fullres", "all", dataset_json, CPU)
    with pytest.raises(DinoMixError, match="region-based training"):
        t.on_train_start()


def test_pretrained_weights_path_is_read_from_nnunet_train_command_line():
    from nnunet_dinomix.training.mean_teacher import pretrained_weights_from_command_line
    argv = ["nnUNetv2_train", "971", "3d_fullres", "0", "-tr", "X", "-pretrained_weights", "/m/checkpoint_final.pth"]
    assert pretrained_weights_from_command_line(argv) == "/m/checkpoint_final.pth"
    assert pretrained_weights_from_command_line(argv[:5]) is None


def test_start_from_a_supervised_model_loads_output_layers_and_skips_burn_in(phantom_with_pool, tmp_path):
    from nnunetv2.run.run_training import maybe_load_checkpoint
    with started_trainer("nnUNetTrainer") as supervised:
        with torch.no_grad():
            for p in supervised.network.parameters():
                p.add_(0.01)  # something other than a fresh initialisation, output layers included
        path = str(tmp_path / "checkpoint_final.pth")
        checkpoint = checkpoint_with_plain_network(supervised, path)

    t = _trainer(DATASET_ID)
    t.pretrained_weights = path
    maybe_load_checkpoint(t, False, False, path)  # what nnUNetv2_train -pretrained_weights does: no .seg_layers.
    seg = [k for k in checkpoint["network_weights"] if ".seg_layers." in k]
    assert seg and not torch.equal(t.student.state_dict()[seg[0]], checkpoint["network_weights"][seg[0]])
    t.on_train_start()
    try:
        for k, v in checkpoint["network_weights"].items():  # the whole network, output layers included
            assert torch.equal(t.student.state_dict()[k], v), k
            assert torch.equal(t.ema_teacher.state_dict()[k], v), k
        assert t.burn_in_length() == 0
    finally:
        t.on_train_end()

    checkpoint["init_args"]["dataset_json"]["labels"] = {"background": 0, "liver": 1}
    other = str(tmp_path / "other_labels.pth")
    torch.save(checkpoint, other)
    t = _trainer(DATASET_ID)
    t.pretrained_weights = other
    with pytest.raises(DinoMixError, match="trained for the labels.*same dataset"):
        t.on_train_start()
    assert t.dataloader_train is None  # refused before any loader started


def _seeded_steps(name: str, steps: int = 2):
    """``steps`` train steps of a freshly started trainer: its initial weights, losses, final weights and the
    labeled batches it drew."""
    with started_trainer(name) as t:
        weights, losses, batches = parameters_of(t.network), [], []
        for _ in range(steps):
            batch = next(t.dataloader_train)
            batches.append(batch["data"].clone())
            losses.append(float(t.train_step(batch)["loss"]))
        return weights, losses, parameters_of(t.network), batches


def test_a_shared_seed_makes_burn_in_repeat_plain_nnunet_step_for_step(phantom_with_pool, monkeypatch):
    """DINOMIX_SEED pairs benchmark runs: the same initial weights and labeled batches, so Mean Teacher's burn-in
    is nnU-Net's own training, loss for loss and weight for weight."""
    monkeypatch.setenv("DINOMIX_SEED", "3")
    w_plain, loss_plain, end_plain, _ = _seeded_steps("nnUNetTrainerBudget")
    w_mt, loss_mt, end_mt, _ = _seeded_steps("nnUNetTrainerMeanTeacherBudget")  # burn-in: half of 1000 x 250 steps
    assert all(torch.equal(a, b) for a, b in zip(w_plain, w_mt))
    assert loss_plain == loss_mt
    assert all(torch.equal(a, b) for a, b in zip(end_plain, end_mt))
    monkeypatch.setenv("DINOMIX_SEED", "4")
    w_other, loss_other, _, _ = _seeded_steps("nnUNetTrainerBudget", steps=1)
    assert not all(torch.equal(a, b) for a, b in zip(w_plain, w_other)) and loss_other[0] != loss_plain[0]


def test_after_burn_in_a_shared_seed_still_draws_plain_nnunets_labeled_batches(phantom_with_pool, monkeypatch):
    """The unlabeled batches and perturbations come from their own stream, so Mean Teacher is paired with plain
    nnU-Net batch for batch after burn-in too (with nnUNet_n_proc_DA=0 both loaders share one process). PIC
    trainers cannot be: they mirror after the mix, so their labeled loader makes no mirroring draws. The labeled
    region shift draws from a stream of its own too."""
    monkeypatch.setenv("DINOMIX_SEED", "3")
    plain = _seeded_steps("nnUNetTrainerBudget", steps=3)[3]
    # unlabeled batches from step 0 on
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"burn_in_fraction": 0, "labeled_region_shift": 1.0}')
    mean_teacher = _seeded_steps("nnUNetTrainerMeanTeacherBudget", steps=3)[3]
    assert all(torch.equal(a, b) for a, b in zip(plain, mean_teacher))
    assert not torch.equal(plain[0], plain[1])  # the comparison can fail: the batches differ step to step


def test_another_random_stream_keeps_the_weights_and_changes_the_batches(phantom_with_pool, monkeypatch):
    monkeypatch.setenv("DINOMIX_SEED", "3")
    w_first, loss_first, _, _ = _seeded_steps("nnUNetTrainerBudget", steps=1)
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"random_stream": 1}')
    w_other, loss_other, _, _ = _seeded_steps("nnUNetTrainerBudget", steps=1)
    assert all(torch.equal(a, b) for a, b in zip(w_first, w_other))
    assert loss_other[0] != loss_first[0]


def test_settings_reach_nested_dataclasses_and_unknown_attributes_are_refused(phantom_with_pool, monkeypatch):
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"pic": {"donors": "labeled", "box_fraction": [0.3, 0.4]}}')
    t = make_trainer("nnUNetTrainerDinoMixNoFKDBudget")
    assert t.pic.donors == "labeled" and t.pic.box_fraction == (0.3, 0.4) and t.pic.gamma_start == 1.0
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"pic": {"donors": "unlabeled"}}')
    with pytest.raises(ValueError, match="donors must be"):
        make_trainer("nnUNetTrainerDinoMixNoFKDBudget")
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"no_such_setting": 1}')
    with pytest.raises(ValueError, match="has no attribute 'no_such_setting'"):
        make_trainer("nnUNetTrainerDinoMixNoFKDBudget")


def test_a_bad_seed_is_refused(phantom_with_pool, monkeypatch):
    monkeypatch.setenv("DINOMIX_SEED", "-1")
    with pytest.raises(ValueError, match="DINOMIX_SEED"):
        make_trainer("nnUNetTrainerBudget")


def _mirror_axes_of(augmenter):
    """The axes of every MirrorTransform in a loader's training pipeline (nnUNet_n_proc_DA=0: one process)."""
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    def walk(transform):
        if isinstance(transform, MirrorTransform):
            yield tuple(transform.allowed_axes)
        for child in getattr(transform, "transforms", None) or []:
            yield from walk(child)
        if getattr(transform, "transform", None) is not None:
            yield from walk(transform.transform)

    return list(walk(augmenter.data_loader.transforms))


def test_only_mirror_axes_restricts_the_loaders_the_mixer_and_test_time_mirroring(phantom_with_pool, monkeypatch):
    """As nnU-Net's nnUNetTrainer_onlyMirror01 does for left/right labels, and for a mixing trainer too: its
    mixer, which takes mirroring over from the loaders, gets the restricted axes, not nnU-Net's. The plain trainer
    also checks the labeled region shift: it reaches plain nnU-Net's train_step."""
    with started_trainer("nnUNetTrainerBudget") as t:
        assert _mirror_axes_of(t.dataloader_train) == [(0, 1, 2)]  # the check can fail: nnU-Net's default
        assert t.labeled_shift is None
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"only_mirror_axes": [0, 1], "labeled_region_shift": 0.5}')
    with started_trainer("nnUNetTrainerBudget") as t:
        assert _mirror_axes_of(t.dataloader_train) == [(0, 1)]
        assert t.inference_allowed_mirroring_axes == (0, 1)
        assert t.labeled_shift[0].settings.shift == 0.5 and t.labeled_shift[0].num_classes == 9
        assert math.isfinite(float(t.train_step(next(t.dataloader_train))["loss"]))
    monkeypatch.setenv("DINOMIX_TRAINER_SETTINGS", '{"only_mirror_axes": [0, 1]}')
    with started_trainer("nnUNetTrainerDinoMixNoFKDBudget") as t:
        assert t.mixer.mirror_axes == (0, 1)
        assert _mirror_axes_of(t.dataloader_train) == [] and _mirror_axes_of(t.dataloader_unlabeled) == []
        assert t.inference_allowed_mirroring_axes == (0, 1)
