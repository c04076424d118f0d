"""nnUNetTrainerDinoMix and its ablations in-process on the tiny phantom, with a random DINOv3 in Meta's format."""
import pytest
import torch

from support import DATASET_ID, checkpoint_with_plain_network, make_trainer, parameters_of, started_trainer
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
from nnunet_dinomix.training.semi_supervised import CHECKPOINT_KEY


def _trainer(name, dataset=DATASET_ID):
    return make_trainer(name, dataset)


@pytest.fixture
def teacher_env(dinov3_meta_file, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, dinov3_meta_file)
    return dinov3_meta_file


@pytest.fixture
def dinomix(phantom_with_pool, teacher_env):
    with started_trainer("nnUNetTrainerDinoMix") as t:
        t.burn_in_steps = 0
        yield t


def test_train_step_trains_student_and_head_never_the_teacher(dinomix):
    t = dinomix
    teacher = t.distiller.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimised = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in teacher.parameters())
    assert all(id(p) in optimised for p in t.distiller.head.parameters())
    assert not any(k.startswith("teacher") for k in t.distiller.state_dict())

    teacher_0, head_0, student_0 = parameters_of(teacher), parameters_of(t.distiller.head), parameters_of(t.student)
    t.network.train()  # nnU-Net switches the network to train mode every epoch; the teacher must stay in eval
    outputs = [t.train_step(next(t.dataloader_train)) for _ in range(2)]
    out = outputs[-1]
    assert {"train_loss_fkd", "pic_gamma", "train_loss_sup", "train_loss_unsup"} <= set(out)
    assert all(torch.isfinite(torch.as_tensor(out[k])).all() for k in out)
    assert 0.0 < float(out["train_loss_fkd"]) <= 4.0  # normalised MSE = 2 - 2 cos
    probs = [out[k] for k in out if k.startswith("pic_prob_")]
    assert len(probs) == 8 and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert not teacher.training
    assert all(torch.equal(a, b) for a, b in zip(teacher_0, parameters_of(teacher)))
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(head_0, parameters_of(t.distiller.head)))
    assert any(not torch.equal(a, b) for a, b in zip(student_0, parameters_of(t.student)))
    assert t.mixer.counts.updates == 2 and t.mixer.counts.value.sum() > 0
    assert t.mixer.mirror_axes == (0, 1, 2)  # mirroring moved from the loaders to after the mix
    assert t.inference_allowed_mirroring_axes == (0, 1, 2)  # test-time mirroring is nnU-Net's, untouched

    t.on_train_epoch_end(outputs)
    assert t.logger.get_value("train_loss_fkd", step=-1) == pytest.approx(
        sum(float(o["train_loss_fkd"]) for o in outputs) / 2)


def test_checkpoint_holds_plain_network_and_resumes_head_counts_and_sampler(phantom_with_pool, teacher_env,
                                                                            tmp_path):
    # DistDW is not the default; it is switched on here so that its histogram's resumption is checked too
    with started_trainer("nnUNetTrainerDinoMix", burn_in_steps=0, unsup_class_weighting="distdw") as t:
        t.num_iterations_per_epoch = 2  # nnU-Net checkpoints at the end of an epoch: a 2-iteration epoch
        for _ in range(2):
            t.train_step(next(t.dataloader_train))
        path = str(tmp_path / "checkpoint.pth")
        state = checkpoint_with_plain_network(t, path)[CHECKPOINT_KEY]
        assert set(state["fkd_head"]) == set(t.distiller.head.state_dict())
        assert not any("blocks." in k or "cls_token" in k for k in state["fkd_head"])  # no DINOv3 weights saved

        fresh = _trainer("nnUNetTrainerDinoMix")
        fresh.num_iterations_per_epoch, fresh.unsup_class_weighting = 2, "distdw"
        fresh.load_checkpoint(path)
        assert fresh.global_step == t.global_step == 2
        head, fresh_head = parameters_of(t.distiller.head), parameters_of(fresh.distiller.head)
        assert all(torch.equal(a, b) for a, b in zip(fresh_head, head))
        # the curriculum resumes exactly: same counts, same position, same next box draws
        assert fresh.mixer.counts.updates == t.mixer.counts.updates
        torch.testing.assert_close(fresh.mixer.probabilities(fresh.progress()), t.mixer.probabilities(t.progress()),
                                   rtol=0, atol=0)
        assert torch.equal(torch.rand(4, generator=fresh.mixer.generator), torch.rand(4, generator=t.mixer.generator))
        torch.testing.assert_close(fresh.pseudo_labeller.class_thresholds, t.pseudo_labeller.class_thresholds)
        assert t.class_balance.counts.updates == 2  # the histogram saw both steps, so its resumption is a real check
        torch.testing.assert_close(fresh.class_balance.weights, t.class_balance.weights)


def test_full_trainer_refuses_to_start_without_weights(phantom_with_pool, monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    t = _trainer("nnUNetTrainerDinoMix")
    with pytest.raises(DinoMixError, match=f"{WEIGHTS_ENV} is not set.*licence-gated"):
        t.on_train_start()
    assert t.network is None
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    missing = "(?s)needs DINOv3 weights.*not found at .*nowhere.pth.*nnUNetTrainerDinoMixNoFKD"
    with pytest.raises(DinoMixError, match=missing):
        _trainer("nnUNetTrainerDinoMix").on_train_start()


def test_ablation_without_fkd_runs_without_any_weights(phantom_with_pool, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with started_trainer("nnUNetTrainerDinoMixNoFKD") as t:
        t.burn_in_steps = 0
        out = t.train_step(next(t.dataloader_train))
        assert t.distiller is None and float(out["train_loss_fkd"]) == 0.0
        assert "pic_gamma" in out


def test_weighing_samples_changes_the_supervised_loss_of_mixed_batches_only(phantom_with_pool, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with started_trainer("nnUNetTrainerDinoMixNoFKD") as t:
        assert t.sup_dice_weigh_samples is True  # the default since the three-seed benchmark
        x_l, y_l = t.labeled_batch(next(t.dataloader_train))
        x_u = t.unlabeled_batch()
        with torch.no_grad():
            for mixed in (t.mix(x_l, y_l, None, None), t.mix(x_l, y_l, x_u, t.teacher_pseudo_labels(x_u))):
                outputs = list(t.network(mixed.image))
                losses = []
                for weigh in (False, True):
                    t.sup_dice_weigh_samples = weigh
                    losses.append(float(t.segmentation_losses(outputs, mixed, y_l)[0]))
                if mixed.num_labeled == mixed.image.shape[0]:  # burn-in: every voxel ground truth
                    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
                else:  # unlabeled samples whose ground truth is a box count by its share
                    assert mixed.boxes and abs(losses[0] - losses[1]) > 1e-4


def test_ablation_without_pic_does_not_mix(phantom_with_pool, teacher_env):
    with started_trainer("nnUNetTrainerDinoMixNoPIC") as t:
        x_l, y_l = t.labeled_batch(next(t.dataloader_train))
        x_u = t.unlabeled_batch()
        t.student_noise_std = 0.0
        mixed = t.mix(x_l, y_l, x_u, t.teacher_pseudo_labels(x_u))
        assert mixed.boxes == [] and torch.equal(mixed.image, torch.cat((x_l, x_u)))
        assert t.mixer is None and "pic_gamma" not in t.log_keys()
        out = t.train_step(next(t.dataloader_train))
        assert float(out["train_loss_fkd"]) > 0


def test_uniqueness_variant_weights_the_distillation(phantom_with_pool, teacher_env):
    with started_trainer("nnUNetTrainerDinoMixUniqueness") as t:
        t.burn_in_steps = 0
        assert t.distiller.uniqueness_weighting
        out = t.train_step(next(t.dataloader_train))
        assert 0.0 < float(out["train_loss_fkd"]) <= 4.0


def test_mean_teacher_is_dinomix_with_pic_and_fkd_off(phantom_with_pool):
    """One step skeleton: with both parts off, DINO-Mix computes exactly Mean Teacher's step."""
    import shutil
    from nnunet_dinomix.training.dinomix import nnUNetTrainerDinoMix

    class DinoMixBothOff(nnUNetTrainerDinoMix):
        use_pic = False
        use_fkd = False

    with started_trainer("nnUNetTrainerMeanTeacher") as mt:
        plans = dict(mt.plans_manager.plans, continue_training=False)  # nnU-Net pops this key in __init__
        off = DinoMixBothOff(plans, "3d_fullres", "all", mt.dataset_json, torch.device("cpu"))
        off.on_train_start()
        try:
            off.on_train_epoch_start()
            for t in (mt, off):
                t.burn_in_steps = 0
            off.network.load_state_dict(mt.network.state_dict())
            off.ema_teacher.load_state_dict(mt.ema_teacher.state_dict())
            batch, x_u = next(mt.dataloader_train), mt.unlabeled_batch()
            outputs = []
            for t in (mt, off):
                t.unlabeled_batch_with_truth = lambda: (x_u, None)
                t.unlabeled_random.reseed(0)  # the student's input noise comes from the unlabeled stream
                outputs.append(t.train_step(batch))
            for key in ("loss", "train_loss_sup", "train_loss_unsup", "confident_fraction"):
                assert float(outputs[0][key]) == pytest.approx(float(outputs[1][key]), rel=1e-6), key
            for a, b in zip(parameters_of(mt.student), parameters_of(off.student)):
                torch.testing.assert_close(a, b)
        finally:
            off.on_train_end()
            shutil.rmtree(off.output_folder_base, ignore_errors=True)
