"""Integration tests: nnU-Net's own commands and trainers on one tiny phantom dataset, planned and preprocessed by
nnU-Net per test session.

nnU-Net reads its path variables when it is first imported, so they are set here, when this file is collected and
before any test imports nnunetv2; the unit tests (tests/unit) need none of them.
"""
import itertools
import os
import shutil
import tempfile

_SESSION_ROOT = tempfile.mkdtemp(prefix="dinomix_tests_")
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_name] = os.path.join(_SESSION_ROOT, _name)
    os.makedirs(os.environ[_name], exist_ok=True)
os.environ.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="0", OMP_NUM_THREADS="2")

import pytest  # noqa: E402

from nnunet_dinomix import discovery  # noqa: E402
from support import DATASET_ID, DATASET_NAME, TINY_PLANS, TINY_SHAPE, run_cli  # noqa: E402

discovery.register_in_environment()


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
