"""Helpers shared by the integration tests (imported as ``from support import ...``): the test dataset's ID and
plans, nnU-Net commands run from the project's venv, trainers built as ``nnUNetv2_train`` builds them."""
import contextlib
import os
import shutil
import subprocess
import sys

DATASET_ID = 971
DATASET_NAME = "TestPhantom"
TINY_SHAPE = (24, 48, 48)
TINY_PLANS = "nnUNetPlansTinyCPU"


def bin_path(name: str) -> str:
    """A console script of the interpreter running the tests (the project's venv)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.isfile(path), f"{name} is not installed next to {sys.executable}; run `make setup`"
    return path


def run_cli(*cmd, env_extra=None, check=True, timeout=900):
    env = dict(os.environ, **(env_extra or {}))
    result = subprocess.run([bin_path(cmd[0]), *map(str, cmd[1:])], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def make_trainer(name: str, dataset=DATASET_ID, plans: str = TINY_PLANS):
    """A trainer as ``nnUNetv2_train`` builds it (on the CPU)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(dataset), "3d_fullres", "all", name, plans, device=torch.device("cpu"))


@contextlib.contextmanager
def started_trainer(name: str, dataset=DATASET_ID, **settings):
    """A trainer after ``on_train_start`` and ``on_train_epoch_start``, with ``settings`` (trainer attributes) set
    before it starts; shut down and its output removed after."""
    t = make_trainer(name, dataset)
    for key, value in settings.items():
        setattr(t, key, value)
    t.on_train_start()
    try:
        t.on_train_epoch_start()
        yield t
    finally:
        t.on_train_end()
        shutil.rmtree(t.output_folder_base, ignore_errors=True)


def checkpoint_with_plain_network(t, path: str) -> dict:
    """Save ``t``'s checkpoint and check what nnUNetv2_predict relies on: ``network_weights`` load strictly into
    the plain network that nnU-Net's static builder returns (no train-only module in it)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    t.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    plain = nnUNetTrainer.build_network_architecture(t.plans_manager, t.configuration_manager, 1,
                                                     t.label_manager.num_segmentation_heads, False)
    assert set(checkpoint["network_weights"]) == set(plain.state_dict())
    plain.load_state_dict(checkpoint["network_weights"])  # strict, as nnUNetv2_predict does
    return checkpoint


def parameters_of(module):
    return [p.detach().clone() for p in module.parameters()]
