"""The preprocessed unlabeled pool: its manifest, its freshness against the plans, and access for training.

The manifest is the only record of which cases are complete. A case enters it after all three of its files
(``.b2nd``, ``_seg.b2nd``, ``.pkl``) are in place, and training reads only the cases it lists, so an
interrupted preprocessing run can never feed a half-written case to the trainer.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from typing import Dict, List, Optional

from nnunet_dinomix import paths
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fileio import replace_atomically

MANIFEST_FORMAT = 1

# Everything in the plans that changes what DefaultPreprocessor.run_case produces. Network topology, patch and
# batch size are left out on purpose: plans that only change the architecture share the preprocessed data.
_CONFIGURATION_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes",
                       "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs",
                       "resampling_fn_seg", "resampling_fn_seg_kwargs")
_PLANS_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel", "image_reader_writer")


def preprocessing_fingerprint(plans: dict, configuration: str, dataset_json: dict) -> str:
    """A hash of the plans content that determines the preprocessed images of ``configuration``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    resolved = PlansManager(plans).get_configuration(configuration).configuration  # follows inherits_from
    relevant = {k: resolved.get(k) for k in _CONFIGURATION_KEYS}
    relevant.update({k: plans.get(k) for k in _PLANS_KEYS})
    relevant["channel_names"] = dataset_json.get("channel_names", dataset_json.get("modality"))
    relevant["file_ending"] = dataset_json.get("file_ending")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    dataset: str
    configuration: str
    plans_identifier: str
    data_identifier: str
    preprocessing_fingerprint: str
    source_folder: str
    cases: Dict[str, dict] = field(default_factory=dict)
    updated: str = ""
    format: int = MANIFEST_FORMAT

    @classmethod
    def load(cls, path: str) -> Optional["Manifest"]:
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            content = json.load(f)
        if content.get("format") != MANIFEST_FORMAT:
            raise DinoMixError(f"{path} was written by an incompatible nnunet-dinomix version (format "
                               f"{content.get('format')}, expected {MANIFEST_FORMAT}). Re-run "
                               f"dinomix_preprocess_unlabeled for this dataset.")
        return cls(**content)

    def save(self, path: str) -> None:
        """Write atomically: a crash leaves the previous manifest, never a truncated one."""
        self.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(self.__dict__, f, indent=1, sort_keys=True)

        replace_atomically(path, write)


@dataclass(frozen=True)
class UnlabeledPool:
    folder: str
    identifiers: List[str]
    manifest: Manifest

    @cached_property  # read for every unlabeled batch; the pool does not change during a training
    def truth_identifiers(self) -> frozenset:
        """Cases whose segmentation file holds their true label (diagnostics only)."""
        return frozenset(k for k in self.identifiers if self.manifest.cases[k].get("truth"))

    def dataset(self):
        """The pool as nnU-Net's own dataset class (the files are in nnU-Net's blosc2 format)."""
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
        return nnUNetDatasetBlosc2(self.folder, list(self.identifiers))


CASE_FILE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")


def case_file_sizes(folder: str, identifier: str) -> Dict[str, int]:
    return {suffix: os.path.getsize(os.path.join(folder, identifier + suffix)) for suffix in CASE_FILE_SUFFIXES}


def case_problem(folder: str, identifier: str, entry: dict) -> Optional[str]:
    """Why a listed case cannot be trained on (missing, resized or unreadable files), or None. Cheap: sizes
    against the manifest and blosc2's header of each array, not the voxels."""
    import blosc2
    for suffix in CASE_FILE_SUFFIXES:
        path = os.path.join(folder, identifier + suffix)
        if not os.path.isfile(path):
            return f"{identifier + suffix} is missing"
        expected = entry.get("sizes", {}).get(suffix)
        if expected is not None and os.path.getsize(path) != expected:
            return f"{identifier + suffix} has {os.path.getsize(path)} bytes, {expected} were written"
        if suffix.endswith(".b2nd"):
            try:
                blosc2.open(urlpath=path, mode="r")
            except Exception as e:  # blosc2 raises plain RuntimeErrors / ValueErrors for damaged headers
                return f"{identifier + suffix} is not a readable blosc2 array ({type(e).__name__}: {e})"
    return None


# A training that reads a pool leaves a file here (``{host}_{pid}``) until it ends. Preprocessing may add cases to
# a pool in use, but it neither replaces nor removes any: that would crash the training (a vanished file) or mix
# two preprocessings in it.
IN_USE_FOLDER = ".in_use"


def _lease_file(pool_folder: str) -> str:
    return os.path.join(pool_folder, IN_USE_FOLDER, f"{socket.gethostname()}_{os.getpid()}")


def acquire_lease(pool_folder: str) -> str:
    path = _lease_file(pool_folder)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(datetime.now(timezone.utc).isoformat(timespec="seconds") + "\n")
    return path


def release_lease(pool_folder: str) -> None:
    try:
        os.remove(_lease_file(pool_folder))
    except FileNotFoundError:
        pass


def active_leases(pool_folder: str) -> List[str]:
    """The trainings reading the pool, as ``host_pid``. A lease of a dead process on this host (a crashed
    training) is removed; one from another host counts until its owner removes it."""
    folder = os.path.join(pool_folder, IN_USE_FOLDER)
    if not os.path.isdir(folder):
        return []
    host, live = socket.gethostname(), []
    for name in sorted(os.listdir(folder)):
        owner, _, pid = name.rpartition("_")
        if owner == host and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os.remove(os.path.join(folder, name))
                continue
            except PermissionError:  # alive, another user's
                pass
        live.append(name)
    return live


def plans_files(preprocessed_dataset_folder: str) -> Dict[str, dict]:
    """Identifier (file stem) -> content of every plans file in a preprocessed dataset folder."""
    out = {}
    for name in sorted(os.listdir(preprocessed_dataset_folder)):
        if not name.endswith(".json") or name in ("dataset.json", "dataset_fingerprint.json", "splits_final.json") \
                or name.endswith(paths.MANIFEST_NAME_SUFFIX):
            continue
        try:
            with open(os.path.join(preprocessed_dataset_folder, name)) as f:
                content = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and "configurations" in content:
            out[name[:-len(".json")]] = content
    return out


def plans_identifier_of(preprocessed_dataset_folder: str, plans: dict) -> str:
    """The ``-p`` under which ``plans`` were loaded: the file holding exactly them. The ``plans_name`` inside may
    differ (a copied plans file keeps its source's), so a hint built from it would name the wrong plans."""
    wanted = {k: v for k, v in plans.items() if k != "continue_training"}  # nnU-Net adds and pops this key
    matches = [k for k, v in plans_files(preprocessed_dataset_folder).items()
               if {a: b for a, b in v.items() if a != "continue_training"} == wanted]
    return matches[0] if len(matches) == 1 else plans.get("plans_name", "nnUNetPlans")


def _preprocess_hint(dataset_name: str, configuration: str, plans_identifier: str) -> str:
    dataset_id = dataset_name[len("Dataset"):len("Dataset") + 3] if dataset_name.startswith("Dataset") else dataset_name
    plans = "" if plans_identifier == "nnUNetPlans" else f" -p {plans_identifier}"
    return f"dinomix_preprocess_unlabeled -d {dataset_id} -c {configuration}{plans}"


def open_pool(preprocessed_dataset_folder: str, plans: dict, configuration: str, dataset_json: dict,
              plans_identifier: str) -> UnlabeledPool:
    """The pool for a trainer's plans and configuration, or a :class:`DinoMixError` saying how to make it."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    dataset_name = os.path.basename(os.path.normpath(preprocessed_dataset_folder))
    hint = _preprocess_hint(dataset_name, configuration, plans_identifier)
    manifest_path = paths.manifest_file(preprocessed_dataset_folder, data_identifier)
    manifest = Manifest.load(manifest_path)
    if manifest is None:
        raise DinoMixError(
            f"No unlabeled pool for {dataset_name} ({configuration}, data identifier {data_identifier}): "
            f"{manifest_path} does not exist. Put unlabeled images in nnUNet_raw/{dataset_name}/"
            f"{paths.UNLABELED_RAW_FOLDER}/ and run:\n    {hint}")
    expected = preprocessing_fingerprint(plans, configuration, dataset_json)
    if manifest.preprocessing_fingerprint != expected:
        raise DinoMixError(
            f"The unlabeled pool {paths.pool_folder(preprocessed_dataset_folder, data_identifier)} is stale: it was "
            f"preprocessed with other plans (fingerprint {manifest.preprocessing_fingerprint}, plans now give "
            f"{expected}; spacing, normalisation or intensity statistics changed, e.g. after re-running "
            f"nnUNetv2_plan_and_preprocess). Training on it would mix two preprocessings. Rebuild it with:\n"
            f"    {hint}")
    folder = paths.pool_folder(preprocessed_dataset_folder, data_identifier)
    identifiers = sorted(k for k in manifest.cases if os.path.isfile(os.path.join(folder, k + ".b2nd")))
    if not identifiers:
        raise DinoMixError(f"The unlabeled pool {folder} has no complete case. Run:\n    {hint}")
    problems = [p for p in (case_problem(folder, k, manifest.cases[k]) for k in identifiers) if p]
    if problems:
        raise DinoMixError(f"{len(problems)} case(s) of the unlabeled pool {folder} are damaged:\n  "
                           + "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
                           + f"\nPreprocess them again (the intact cases are kept):\n    {hint}")
    return UnlabeledPool(folder, identifiers, manifest)
