"""Shared fixtures: one tiny phantom dataset, planned and preprocessed by nnU-Net's own command, per test session.

nnU-Net reads some variables at import time, so they are set here, before anything imports nnunetv2.
"""
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile

_SESSION_ROOT = tempfile.mkdtemp(prefix="dinomix_tests_")
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_name] = os.path.join(_SESSION_ROOT, _name)
    os.makedirs(os.environ[_name], exist_ok=True)
os.environ.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="0", OMP_NUM_THREADS="2")

import pytest  # noqa: E402

from nnunet_dinomix import discovery  # noqa: E402

discovery.register_in_environment()

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


@pytest.fixture(scope="session")
def phantom_dataset():
    """Tiny phantom (3 labeled, 4 unlabeled, 1 test) planned + preprocessed by nnU-Net, with tiny plans.

    Returns a dict of useful paths. Tests must not modify these files; copy what they change.
    """
    from nnunet_dinomix.phantom.dataset import PhantomSplit, write_phantom_dataset
    from nnunet_dinomix.phantom.generator import PhantomConfig
    from nnunet_dinomix.plans_preset import write_derived_plans

    raw = write_phantom_dataset(os.environ["nnUNet_raw"], DATASET_ID, DATASET_NAME, PhantomSplit(3, 4, 1), seed=7,
                                config=PhantomConfig(shape=TINY_SHAPE), verbose=False)
    # nnU-Net 2.8.1's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
    run_cli("nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1",
            env_extra={"nnUNet_n_proc_DA": "1"})
    write_derived_plans(str(DATASET_ID), "tiny_cpu")
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    return {"raw": raw, "preprocessed": pre, "id": DATASET_ID, "name": os.path.basename(raw),
            "plans": TINY_PLANS}


@pytest.fixture(scope="session")
def phantom_with_pool(phantom_dataset):
    from nnunet_dinomix.unlabeled.preprocess import preprocess_unlabeled
    preprocess_unlabeled(str(DATASET_ID), "3d_fullres", TINY_PLANS, num_processes=1, verbose=False)
    return phantom_dataset


def make_trainer(name: str, dataset=DATASET_ID, plans: str = TINY_PLANS):
    """A trainer as ``nnUNetv2_train`` builds it (on the CPU)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(dataset), "3d_fullres", "all", name, plans, device=torch.device("cpu"))


@contextlib.contextmanager
def started_trainer(name: str, dataset=DATASET_ID):
    """A trainer after ``on_train_start`` and ``on_train_epoch_start``; shut down and its output removed after."""
    t = make_trainer(name, dataset)
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


@pytest.fixture(scope="session")
def dinov3_meta_file():
    """A randomly initialised DINOv3 ViT-S/16 (all 12 blocks: a shallower file is refused as damaged) saved as
    Meta's released .pth."""
    import pathlib

    from nnunet_dinomix.fkd.random_teacher import random_dinov3, write_meta_checkpoint
    folder = pathlib.Path(_SESSION_ROOT) / "dinov3"
    folder.mkdir(exist_ok=True)
    return write_meta_checkpoint(random_dinov3(), folder)


_scratch_ids = itertools.count(900)


@pytest.fixture
def scratch(phantom_dataset):
    """A private copy of the session phantom (raw + nnU-Net preprocessed, no pool) under a fresh dataset ID."""
    dataset_id = next(_scratch_ids)
    name = f"Dataset{dataset_id}_Scratch"
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    shutil.copytree(phantom_dataset["raw"], raw)
    shutil.copytree(phantom_dataset["preprocessed"], pre, ignore=shutil.ignore_patterns("*_unlabeled*"))
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    for plans_file in ("nnUNetPlans.json", TINY_PLANS + ".json"):  # plans name their dataset
        plans = load_json(os.path.join(pre, plans_file))
        plans["dataset_name"] = name
        save_json(plans, os.path.join(pre, plans_file), sort_keys=False)
    yield {"id": str(dataset_id), "raw": raw, "pre": pre, "unlabeled": os.path.join(raw, "imagesUnlabeled"),
           "pool": os.path.join(pre, "nnUNetPlans_3d_fullres_unlabeled")}
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(pre, ignore_errors=True)



def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)
