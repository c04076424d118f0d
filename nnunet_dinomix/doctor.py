"""``dinomix_doctor``: check an installation and, optionally, one dataset's readiness for semi-supervised training."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import sys
from dataclasses import dataclass
from typing import List, Optional

from nnunet_dinomix import discovery
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
    """Discovery, picklability and the trainer's own ``setup_checks``. A trainer the user did not ask for
    (``required=False``) only warns about what its own checks miss, e.g. DINOv3 weights."""
    if not discovery.is_registered():
        return Check(FAIL, f"{name}: nnU-Net cannot find it",
                     f"{discovery.ENV} does not contain {discovery.trainer_dir()}. Run:\n"
                     f"    export {discovery.ENV}=$(dinomix_trainer_dir)")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            cls = recursive_find_trainer_class_by_name(name)
    except Exception as e:  # nnU-Net raises RuntimeError, imports may raise anything
        return Check(FAIL, f"{name}: discovery failed", f"{type(e).__name__}: {e}")
    if not cls.__module__.startswith("nnunet_dinomix."):
        return Check(FAIL, f"{name}: resolved to {cls.__module__}",
                     "another trainer of that name shadows this package's; rename or remove it")
    try:
        pickle.dumps(cls)
    except Exception as e:
        return Check(FAIL, f"{name}: not picklable ({e})",
                     "the ext-trainer folder must hold shims only; reinstall nnunet-dinomix")
    checks = getattr(cls, "setup_checks", None)
    extra = [] if checks is None else checks()
    failed = [c for c in extra if c.status == FAIL]
    if failed:
        return Check(FAIL if required else WARN, f"{name}: found, but {failed[0].what}", failed[0].detail)
    return Check(OK, f"{name} -> {cls.__module__}")


def check_teacher_weights(required: bool = False) -> Check:
    """The DINOv3 weights named by the environment, read and identified without building the model. Unset is
    fine unless ``required`` (a trainer that distils from DINOv3 asks)."""
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV, WHERE_TO_GET, infer_arch, read_weights
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        if required:
            return Check(FAIL, f"{WEIGHTS_ENV} is not set", WHERE_TO_GET)
        return Check(OK, f"{WEIGHTS_ENV} not set (only the DINO-Mix/FKD trainers need DINOv3 weights)")
    try:
        arch, depth, _ = infer_arch(read_weights(path))
    except DinoMixError as e:
        return Check(FAIL, f"{WEIGHTS_ENV}={path} is not usable", str(e))
    return Check(OK, f"{WEIGHTS_ENV}={path}: DINOv3 {arch.key} ({depth} blocks, width {arch.embed_dim})")


def check_dataset(dataset: str, configuration: str, plans_identifier: str) -> List[Check]:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_dinomix.unlabeled.pool import open_pool

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        return [Check(FAIL, f"dataset {dataset} not found", "check the ID and nnUNet_raw/nnUNet_preprocessed")]
    folder = os.path.join(os.environ["nnUNet_preprocessed"], name)
    plans_file = os.path.join(folder, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        return [Check(FAIL, f"{plans_file} missing", f"nnUNetv2_plan_and_preprocess -d {dataset}")]
    plans = load_json(plans_file)
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
        checks += [check_trainer(t, required=False) for t in discovery.TRAINERS]
    checks.append(check_teacher_weights())
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
