"""``dinomix_doctor``: check an installation and, optionally, one dataset's readiness for semi-supervised training."""
from __future__ import annotations

import argparse
import functools
import os
import pickle
import sys
from dataclasses import dataclass
from typing import List, Optional

from nnunet_dinomix import discovery, paths
from nnunet_dinomix.errors import DinoMixError

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    status: str
    what: str
    detail: str = ""


def check_nnunet_version() -> Check:
    from importlib.metadata import version
    v = version("nnunetv2")
    major_minor = tuple(int(x) for x in v.split(".")[:2])
    if major_minor != (2, 8):
        return Check(WARN, f"nnunetv2 {v}", "nnunet-dinomix is verified against nnunetv2 2.8.x; other versions may "
                                           "change the trainer hooks it relies on")
    return Check(OK, f"nnunetv2 {v}")


def check_paths() -> List[Check]:
    checks = []
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(name)
        if not value:
            checks.append(Check(FAIL, f"{name} is not set", f"export {name}=/path/to/{name}"))
        elif not os.path.isdir(value):
            checks.append(Check(FAIL, f"{name}={value} does not exist", f"mkdir -p {value}"))
        else:
            checks.append(Check(OK, f"{name}={value}"))
    return checks


def check_trainer(name: str, required: bool = True) -> Check:
    """Discovery, picklability and what the trainer needs (DINOv3 weights that it would load). A trainer the user
    did not ask for (``required=False``) only warns about what it misses."""
    if not discovery.is_registered():
        return Check(FAIL, f"{name}: nnU-Net cannot find it",
                     f"{discovery.ENV} does not contain {discovery.trainer_dir()}. Run:\n"
                     f"    export {discovery.ENV}=$(dinomix_trainer_dir)")
    try:
        cls = discovery.trainer_class(name)
    except Exception as e:  # nnU-Net raises RuntimeError, imports may raise anything
        return Check(FAIL, f"{name}: discovery failed", f"{type(e).__name__}: {e}")
    if not cls.__module__.startswith("nnunet_dinomix."):
        if name in discovery.trainer_names():
            return Check(FAIL, f"{name}: resolved to {cls.__module__}",
                         "another trainer of that name shadows this package's; rename or remove it")
        return Check(OK, f"{name} -> {cls.__module__} (not a trainer of this package)")
    try:
        pickle.dumps(cls)
    except Exception as e:
        return Check(FAIL, f"{name}: not picklable ({e})",
                     "the ext-trainer folder must hold shims only; reinstall nnunet-dinomix")
    if getattr(cls, "use_fkd", False):
        weights = check_teacher_weights(cls)
        if weights.status == FAIL:
            return Check(FAIL if required else WARN, f"{name}: found, but {weights.what}", weights.detail)
        return Check(OK, f"{name} -> {cls.__module__}; {weights.what}")
    return Check(OK, f"{name} -> {cls.__module__}")


@functools.lru_cache(maxsize=None)
def _describe(weights: Optional[str], arch: Optional[str], depth: Optional[int], env: Optional[str]) -> str:
    from nnunet_dinomix.fkd.teacher import describe_weights
    return describe_weights(weights, arch, depth)  # env is part of the key only


def check_teacher_weights(trainer: type) -> Check:
    """Load the DINOv3 weights as ``trainer`` would (its ``dinov3_weights`` / ``dinov3_arch`` / ``dinov3_depth``,
    else the environment): OK only if that load succeeds."""
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
    weights, arch, depth = (getattr(trainer, k, None) for k in ("dinov3_weights", "dinov3_arch", "dinov3_depth"))
    try:
        return Check(OK, "DINOv3 " + _describe(weights, arch, depth, os.environ.get(WEIGHTS_ENV)))
    except DinoMixError as e:
        source = "its dinov3_weights" if weights else WEIGHTS_ENV
        return Check(FAIL, f"the DINOv3 weights ({source}) are not usable", str(e))


def check_dataset(dataset: str, configuration: str, plans_identifier: str) -> List[Check]:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_dinomix.unlabeled.pool import open_pool

    try:
        name = paths.resolve_dataset(dataset)
    except DinoMixError as e:
        return [Check(FAIL, f"dataset {dataset} not found", str(e))]
    folder = os.path.join(os.environ["nnUNet_preprocessed"], name)
    plans_file = os.path.join(folder, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        return [Check(FAIL, f"{plans_file} missing", f"nnUNetv2_plan_and_preprocess -d {dataset}")]
    try:
        plans = paths.load_plans(plans_file, dataset)
    except DinoMixError as e:
        return [Check(FAIL, f"{plans_file} is not a plans file", str(e))]
    if configuration not in plans["configurations"]:
        return [Check(FAIL, f"configuration {configuration} not in {plans_identifier}",
                      f"available: {', '.join(plans['configurations'])}")]
    checks = [Check(OK, f"{name}: plans {plans_identifier}, configuration {configuration}")]
    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    labeled = os.path.join(folder, data_identifier)
    if not os.path.isdir(labeled) or not os.listdir(labeled):
        checks.append(Check(FAIL, f"labeled data {labeled} missing",
                            f"nnUNetv2_preprocess -d {dataset} -c {configuration} -plans_name {plans_identifier}"))
    else:
        checks.append(Check(OK, f"labeled data {labeled}"))
    try:
        pool = open_pool(folder, plans, configuration, load_json(os.path.join(folder, "dataset.json")),
                         plans_identifier)
        checks.append(Check(OK, f"unlabeled pool {pool.folder}: {len(pool.identifiers)} cases, up to date"))
    except DinoMixError as e:
        checks.append(Check(FAIL, "unlabeled pool", str(e)))
    return checks


def run_checks(trainers: Optional[List[str]], dataset: Optional[str], configuration: str, plans: str) -> List[Check]:
    checks = [check_nnunet_version()] + check_paths()
    if trainers:
        checks += [check_trainer(t) for t in trainers]
    else:
        checks += [check_trainer(t, required=False) for t in discovery.trainer_names()]
    if dataset is not None:
        if any(c.status == FAIL for c in checks if c.what.startswith("nnUNet_")):
            checks.append(Check(FAIL, "dataset checks skipped", "fix the nnU-Net paths first"))
        else:
            checks += check_dataset(dataset, configuration, plans)
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dinomix_doctor",
                                     description="Check that nnU-Net finds this package's trainers and, with -d, "
                                                 "that a dataset is ready for semi-supervised training.")
    parser.add_argument("-d", default=None, help="dataset name or ID to check")
    parser.add_argument("-c", default="3d_fullres", help="configuration [default: 3d_fullres]")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier [default: nnUNetPlans]")
    parser.add_argument("-tr", nargs="+", default=None,
                        help="the trainers you will use (their requirements must be met) [default: all of this "
                             "package's, whose unmet requirements only warn]")
    args = parser.parse_args(argv)
    checks = run_checks(args.tr, args.d, args.c, args.p)
    for c in checks:
        print(f"[{c.status:4s}] {c.what}")
        if c.detail and c.status != OK:
            print("       " + c.detail.replace("\n", "\n       "))
    failed = sum(c.status == FAIL for c in checks)
    print(f"{len(checks)} checks, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
