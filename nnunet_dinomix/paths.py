"""Where nnunet-dinomix keeps things, next to nnU-Net's own folders (which it never writes into).

* raw unlabeled images: ``nnUNet_raw/DatasetXXX_Name/imagesUnlabeled/`` (or any folder given on the command
  line), named like ``imagesTr``: ``{case}_{channel:04d}{file_ending}``; beside them, optionally,
  ``labelsUnlabeled/{case}{file_ending}`` with their true labels, for pseudo-label diagnostics only;
* the preprocessed pool: ``nnUNet_preprocessed/DatasetXXX_Name/{data_identifier}_unlabeled/``, a sibling of
  nnU-Net's ``{data_identifier}/`` (which ``nnUNetv2_preprocess`` deletes and rewrites, so the pool must not
  live inside it), plus a manifest ``{data_identifier}_unlabeled.json`` beside it. The manifest is outside the
  pool folder because nnU-Net's ``infer_dataset_class`` insists on one data file ending per folder.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from nnunet_dinomix.errors import DinoMixError

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
# true labels of unlabeled cases, where known (the phantom): diagnostics only, never trained on
DIAGNOSTIC_LABELS_FOLDER = "labelsUnlabeled"
POOL_SUFFIX = "_unlabeled"
MANIFEST_NAME_SUFFIX = POOL_SUFFIX + ".json"


def pool_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    return os.path.join(preprocessed_dataset_folder, data_identifier + POOL_SUFFIX)


def manifest_file(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    return os.path.join(preprocessed_dataset_folder, data_identifier + MANIFEST_NAME_SUFFIX)


def default_unlabeled_raw_folder(raw_dataset_folder: str) -> str:
    return os.path.join(raw_dataset_folder, UNLABELED_RAW_FOLDER)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name of a dataset: ``Dataset{ID:03d}_{Name}``."""
    return f"Dataset{dataset_id:03d}_{name}"


def refuse_used_dataset_id(dataset_id: int, roots: Sequence[str], advice: str) -> None:
    """Refuse a dataset ID that a folder in any of ``roots`` already has: nnU-Net finds datasets by ID, so a
    second ``DatasetXXX_*`` would make both ambiguous (and writing into the first would overwrite it)."""
    for root in roots:
        if os.path.isdir(root):
            clashes = sorted(d for d in os.listdir(root) if d.startswith(f"Dataset{dataset_id:03d}_"))
            if clashes:
                raise DinoMixError(f"Dataset ID {dataset_id} is already used: {clashes[0]} in {root}. Nothing was "
                                   f"written; {advice}")


def resolve_dataset(dataset) -> str:
    """``DatasetXXX_Name`` for a dataset name or ID, as nnU-Net resolves it, or a :class:`DinoMixError`."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise DinoMixError(
            f"Dataset {dataset} was not found in nnUNet_raw ({os.environ.get('nnUNet_raw')}), nnUNet_preprocessed "
            f"({os.environ.get('nnUNet_preprocessed')}) or nnUNet_results. Check the ID and your environment "
            f"variables.") from e


def require_env(name: str) -> str:
    """Return an nnU-Net path variable or fail with the fix, as nnU-Net users expect."""
    value = os.environ.get(name)
    if not value:
        raise EnvironmentError(
            f"{name} is not set. nnU-Net and nnunet-dinomix need nnUNet_raw, nnUNet_preprocessed and nnUNet_results; "
            f"see nnU-Net's documentation/set_environment_variables.md.")
    return value


def load_plans(plans_file: str, dataset) -> dict:
    """An nnU-Net plans file, or a :class:`DinoMixError` that says how to write it again when it is not one (cut
    off mid-write, another JSON file under the plans' name)."""
    try:
        with open(plans_file) as f:
            plans = json.load(f)
        list(plans["configurations"])
    except (ValueError, KeyError, TypeError) as e:  # ValueError: not JSON; KeyError, TypeError: not plans
        raise DinoMixError(f"{plans_file} is not an nnU-Net plans file ({type(e).__name__}: {e}). Write it again "
                           f"with nnUNetv2_plan_and_preprocess -d {dataset} (or nnUNetv2_plan_experiment) and "
                           f"rerun.") from e
    return plans
