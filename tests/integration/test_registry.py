"""One trainer list (every trainer has its Budget twin, and nnU-Net's own finder resolves each name to it), and what
the doctor says about each trainer's needs."""
import contextlib
import io
import pickle

from nnunet_dinomix import discovery
from nnunet_dinomix.training.registry import TRAINERS, all_trainers


def test_every_trainer_has_a_budget_twin_and_nnunet_finds_each_by_name(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    trainers = all_trainers()
    for cls in TRAINERS + (nnUNetTrainer,):
        twin = trainers[cls.__name__ + "Budget"]
        assert twin.__bases__ == (cls,)
    assert len(trainers) == 2 * len(TRAINERS) + 1 and set(discovery.trainer_names()) == set(trainers)

    monkeypatch.setenv(discovery.ENV, discovery.trainer_dir())
    for name, cls in trainers.items():
        with contextlib.redirect_stdout(io.StringIO()):
            found = recursive_find_trainer_class_by_name(name)
        assert found is cls, name
        assert pickle.loads(pickle.dumps(found)) is cls  # nnU-Net's DDP and DA workers pickle trainers


def test_doctor_on_trainers_names_what_each_needs(monkeypatch):
    from nnunet_dinomix.cli.doctor import FAIL, OK, WARN, check_trainer, run_checks
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
    monkeypatch.setenv(discovery.ENV, discovery.trainer_dir())
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    plain = check_trainer("nnUNetTrainer")
    assert plain.status == OK and "nnunetv2" in plain.what and "shadow" not in plain.what + plain.detail
    assert check_trainer("nnUNetTrainerDinoMixNoFKD").status == OK
    needs = check_trainer("nnUNetTrainerDinoMix")
    assert needs.status == FAIL and "DINOMIX_DINOV3_WEIGHTS is not set" in needs.detail
    assert check_trainer("nnUNetTrainerDinoMix", required=False).status == WARN
    lines = [c.what for c in run_checks(["nnUNetTrainerDinoMix"], None, "3d_fullres", "nnUNetPlans")]
    assert not any("not set" in line and "only the" in line for line in lines)  # no OK beside the FAIL


def test_doctor_calls_weights_ok_only_if_the_trainer_would_load_them(tmp_path, monkeypatch):
    import torch
    from dinov3_files import DEPTH, hf_folder
    from nnunet_dinomix.fkd.random_teacher import meta_state_dict, random_dinov3
    reference = random_dinov3(depth=DEPTH)  # shallow: a published ViT-S has 12 blocks
    files = {"hf": hf_folder(reference, tmp_path / "hf"), "meta": str(tmp_path / "meta.pth")}
    torch.save(meta_state_dict(reference), files["meta"])
    from nnunet_dinomix.cli.doctor import FAIL, OK, check_teacher_weights
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
    from nnunet_dinomix.training.dinomix import nnUNetTrainerDinoMix

    class Pruned(nnUNetTrainerDinoMix):  # names its depth on purpose
        dinov3_depth = DEPTH

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    check = check_teacher_weights(Pruned)
    assert check.status == FAIL and "is not set" in check.detail
    monkeypatch.setenv(WEIGHTS_ENV, files["hf"])
    check = check_teacher_weights(Pruned)
    assert check.status == OK and f"{DEPTH} blocks, width 384" in check.what
    check = check_teacher_weights(nnUNetTrainerDinoMix)  # the same file is short of a published ViT-S
    assert check.status == FAIL and "vits16 has 12" in check.detail

    class OwnFile(Pruned):
        dinov3_weights = files["meta"]

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    assert check_teacher_weights(OwnFile).status == OK  # the trainer's own attribute wins over the environment
    check = check_teacher_weights(Pruned)
    assert check.status == FAIL and "licence-gated" in check.detail
