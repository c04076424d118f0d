"""Preprocess unlabeled images with a dataset's existing plans, exactly as nnU-Net preprocesses its training data.

Each case goes through the configuration's own preprocessor (``DefaultPreprocessor.run_case_npy`` with no
segmentation: transpose, crop to nonzero, normalise with the labeled fingerprint's intensity statistics,
resample to the target spacing) and is saved in nnU-Net's blosc2 format with an empty ``class_locations``.
Nothing of nnU-Net's (plans, fingerprint, splits, preprocessed folders) is modified.

Resumable: a case is written to ``<pool>/.staging/`` first, moved into the pool data file last, and only then
recorded in the manifest. A re-run skips cases whose source files are unchanged. Another input folder adds its
cases to the pool; removing the cases it lacks takes ``remove_missing`` and happens only after all new cases are
in. While a training reads the pool (see :data:`pool.IN_USE_FOLDER`), cases may be added but none replaced or
removed. Files cut short (a truncated ``.nii.gz`` reads as zeros) are refused by name.

Diagnostics only: where a folder ``labelsUnlabeled/`` beside the unlabeled images holds a case's true label (the
phantom writes them), it is preprocessed with the image, as nnU-Net preprocesses a training label, into the case's
segmentation file. Trainers use it for nothing but logging how good their pseudo-labels are; without it the
segmentation file holds nnU-Net's 0 / -1 crop mask as before.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np

from nnunet_dinomix import paths
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.unlabeled.integrity import check_complete, check_scalar
from nnunet_dinomix.unlabeled.pool import (CASE_FILE_SUFFIXES, IN_USE_FOLDER, Manifest, active_leases, case_file_sizes,
                                           case_problem, plans_files, preprocessing_fingerprint)

STAGING = ".staging"
# an unlabeled case whose spacing lies beyond [min / f, max * f] of the labeled cases along an axis is refused
SPACING_TOLERANCE_FACTOR = 2.0


@dataclass(frozen=True)
class Case:
    identifier: str
    files: Tuple[str, ...]
    truth: Optional[str] = None  # diagnostics-only true label, never trained on

    def signature(self) -> List[List[int]]:
        """Size and modification time of each file: enough to notice a replaced image (or label)."""
        return [[os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in self.files + ((self.truth,) if self.truth
                                                                                      else ())]


def attach_truth(cases: List[Case], input_folder: str, file_ending: str) -> List[Case]:
    """Pair each case with ``labelsUnlabeled/CASE{file_ending}`` beside ``input_folder``, where it exists."""
    folder = os.path.join(os.path.dirname(os.path.abspath(input_folder)), paths.DIAGNOSTIC_LABELS_FOLDER)
    if not os.path.isdir(folder):
        return cases
    out, missing = [], []
    for case in cases:
        truth = os.path.join(folder, case.identifier + file_ending)
        if os.path.isfile(truth):
            out.append(replace(case, truth=truth))
        else:
            out.append(case)
            missing.append(case.identifier)
    if missing:
        print(f"WARNING: {folder} has no label for {len(missing)} of {len(cases)} unlabeled cases "
              f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}). The pseudo-label diagnostics use the "
              f"others; training is not affected.")
    return out


def find_cases(folder: str, file_ending: str, num_channels: int) -> List[Case]:
    """Group ``{case}_{XXXX}{file_ending}`` files into cases; every problem found is reported at once."""
    if not os.path.isdir(folder):
        raise DinoMixError(f"Unlabeled image folder {folder} does not exist. Create it and put the unlabeled images "
                           f"there, named like imagesTr: CASE_0000{file_ending}" +
                           (", CASE_0001 ..." if num_channels > 1 else "") + ".")
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    problems, channels = [], {}
    for entry in entries:
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            problems.append(f"{entry}: is a folder; only image files belong here")
            continue
        m = pattern.match(entry)
        if m is None:
            reason = (f"does not end with the dataset's file ending {file_ending}" if not entry.endswith(file_ending)
                      else "lacks the _XXXX channel suffix (CASE_0000" + file_ending + ")")
            problems.append(f"{entry}: {reason}")
            continue
        channels.setdefault(m.group(1), {})[int(m.group(2))] = path
    cases = []
    for identifier, by_channel in sorted(channels.items()):
        if sorted(by_channel) != list(range(num_channels)):
            expected = ", ".join(f"{identifier}_{c:04d}{file_ending}" for c in range(num_channels))
            found = ", ".join(os.path.basename(by_channel[c]) for c in sorted(by_channel))
            problems.append(f"case {identifier}: the dataset has {num_channels} channel(s), expected {expected}; "
                            f"found {found}")
            continue
        cases.append(Case(identifier, tuple(by_channel[c] for c in range(num_channels))))
    if problems:
        raise DinoMixError(f"{len(problems)} problem(s) in {folder}:\n  " + "\n  ".join(problems) +
                           "\nRename or remove these files and run again.")
    if not cases:
        raise DinoMixError(f"{folder} holds no unlabeled images. Put images named CASE_0000{file_ending} there "
                           f"(same channels and file ending as imagesTr) and run again.")
    return cases


def spacing_bounds(fingerprint: dict) -> Optional[np.ndarray]:
    """Per-axis [min, max] of the labeled cases' spacings, in the reader's axis order (as the fingerprint
    stores them and as ``read_images`` returns them, i.e. before ``transpose_forward``)."""
    spacings = fingerprint.get("spacings")
    if not spacings:
        return None
    s = np.array(spacings, dtype=float)
    return np.stack([s.min(0), s.max(0)])


def is_2d_spacing(spacing) -> bool:
    """nnU-Net's readers give a 2D image the spacing (999 x largest, sy, sx)."""
    spacing = np.asarray(spacing, dtype=float)
    return len(spacing) == 3 and spacing[0] >= 998 * spacing[1:].max()


def check_image(case: Case, data: np.ndarray, properties: dict, num_channels: int,
                bounds: Optional[np.ndarray], dataset_is_2d: Optional[bool] = None) -> None:
    if data.shape[0] != num_channels:
        raise DinoMixError(f"case {case.identifier} ({case.files[0]}): read {data.shape[0]} channels, the dataset has "
                           f"{num_channels}. Unlabeled images must have the channels of imagesTr.")
    if dataset_is_2d is not None and is_2d_spacing(properties["spacing"]) != dataset_is_2d:
        # refused even with --allow_spacing_outliers: resampled, a 2D image would become a stack of copies
        raise DinoMixError(f"case {case.identifier} ({case.files[0]}): a {'2D' if not dataset_is_2d else '3D'} image "
                           f"in a {'2D' if dataset_is_2d else '3D'} dataset. Remove it or convert it.")
    if bounds is None:
        return
    spacing = np.asarray(properties["spacing"], dtype=float)
    if spacing.shape != bounds[0].shape:
        raise DinoMixError(f"case {case.identifier}: spacing {spacing.tolist()} has another dimensionality than the "
                           f"labeled data ({bounds[0].tolist()}).")
    low, high = bounds[0] / SPACING_TOLERANCE_FACTOR, bounds[1] * SPACING_TOLERANCE_FACTOR
    if np.any(spacing < low) or np.any(spacing > high):
        raise DinoMixError(
            f"case {case.identifier} ({case.files[0]}): spacing {np.round(spacing, 3).tolist()} mm is far outside "
            f"the labeled cases' range (per axis {np.round(bounds[0], 3).tolist()} to {np.round(bounds[1], 3).tolist()}"
            f" mm). It is probably another protocol, a 2D image or a header error. Fix or remove it, or pass "
            f"--allow_spacing_outliers to preprocess it anyway (it is resampled to the plans' spacing).")


def _process_case(case: Case, pool_dir: str, plans: dict, configuration: str, dataset_json: dict,
                  bounds: Optional[np.ndarray], dataset_is_2d: Optional[bool]) -> Tuple[str, List[List[int]]]:
    """Worker: read, check, preprocess and save one case; returns its identifier and source signature."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    signature = case.signature()
    for f in case.files + ((case.truth,) if case.truth else ()):
        check_complete(f)  # a cut-off .nii.gz reads as an image padded with zeros
    for f in case.files:
        check_scalar(f)  # a vector image would be read with its components as an axis
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    try:
        data, properties = pm.image_reader_writer_class().read_images(list(case.files))
    except Exception as e:  # readers raise bare RuntimeErrors with the details printed, or library errors
        raise DinoMixError(f"case {case.identifier}: could not read {', '.join(case.files)} ({type(e).__name__}: "
                           f"{e}). Check that the files are valid images of the dataset's format.") from e
    check_image(case, data, properties, len(dataset_json["channel_names"]), bounds, dataset_is_2d)

    truth = None
    if case.truth is not None:
        truth, _ = pm.image_reader_writer_class().read_seg(case.truth)
        if truth.shape[1:] != data.shape[1:]:
            raise DinoMixError(f"case {case.identifier}: the diagnostic label {case.truth} has shape "
                               f"{truth.shape[1:]}, the image {data.shape[1:]}. Fix or remove the label.")
    data, seg, properties = cm.preprocessor_class(verbose=False).run_case_npy(data, truth, properties, pm, cm,
                                                                              dataset_json)
    properties["class_locations"] = {}  # nnUNetDataLoader reads it unconditionally
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    patch = tuple(cm.patch_size)
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)

    staging = os.path.join(pool_dir, STAGING)
    nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(staging, case.identifier),
                                  chunks=chunks, blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    # the data file is what makes a case visible to nnU-Net's get_identifiers, so it moves last
    for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):
        os.replace(os.path.join(staging, case.identifier + suffix), os.path.join(pool_dir, case.identifier + suffix))
    return case.identifier, signature


def _fingerprint_or_none(plans: dict, configuration: str, dataset_json: dict) -> Optional[str]:
    try:
        return preprocessing_fingerprint(plans, configuration, dataset_json)
    except Exception:  # plans of another layout: they cannot be this pool's
        return None


def _remove_case_files(pool_dir: str, identifier: str) -> None:
    for suffix in CASE_FILE_SUFFIXES:
        p = os.path.join(pool_dir, identifier + suffix)
        if os.path.isfile(p):
            os.remove(p)


@dataclass
class PreprocessResult:
    pool_folder: str
    manifest_file: str
    processed: List[str]
    skipped: List[str]
    removed: List[str]


def preprocess_unlabeled(dataset: str, configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans",
                         input_folder: Optional[str] = None, num_processes: int = 8,
                         allow_spacing_outliers: bool = False, verbose: bool = True,
                         remove_missing: bool = False) -> PreprocessResult:
    """Preprocess the unlabeled images of ``dataset`` (name or ID) into its pool. See the module docstring.

    Cases of the pool that are not in ``input_folder`` (e.g. from another folder given earlier) are kept unless
    ``remove_missing``; they are removed only after every new case has been preprocessed."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    raw_root = paths.require_env("nnUNet_raw")
    preprocessed_root = paths.require_env("nnUNet_preprocessed")
    dataset_name = paths.resolve_dataset(dataset)
    pre_folder = os.path.join(preprocessed_root, dataset_name)
    plans_file = os.path.join(pre_folder, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise DinoMixError(f"{plans_file} does not exist: {dataset_name} has not been planned with "
                           f"'{plans_identifier}'. Run nnUNetv2_plan_and_preprocess -d {dataset} first (unlabeled "
                           f"images are preprocessed with the labeled dataset's plans).")
    plans = paths.load_plans(plans_file, dataset)
    available = list(plans["configurations"])
    if configuration not in available:
        raise DinoMixError(f"Configuration '{configuration}' is not in {plans_file}. Available: "
                           f"{', '.join(available)}.")
    dataset_json_file = os.path.join(pre_folder, "dataset.json")
    fingerprint_file = os.path.join(pre_folder, "dataset_fingerprint.json")
    for f in (dataset_json_file, fingerprint_file):
        if not os.path.isfile(f):
            raise DinoMixError(f"{f} is missing. Run nnUNetv2_plan_and_preprocess -d {dataset} first.")
    dataset_json = load_json(dataset_json_file)
    cm = PlansManager(plans).get_configuration(configuration)

    input_folder = input_folder or paths.default_unlabeled_raw_folder(os.path.join(raw_root, dataset_name))
    cases = attach_truth(find_cases(input_folder, dataset_json["file_ending"], len(dataset_json["channel_names"])),
                         input_folder, dataset_json["file_ending"])
    labeled_fingerprint = load_json(fingerprint_file)
    bounds = None if allow_spacing_outliers else spacing_bounds(labeled_fingerprint)
    spacings = labeled_fingerprint.get("spacings") or []
    dataset_is_2d = is_2d_spacing(spacings[0]) if spacings else None

    pool_dir = paths.pool_folder(pre_folder, cm.data_identifier)
    manifest_path = paths.manifest_file(pre_folder, cm.data_identifier)
    fingerprint = preprocessing_fingerprint(plans, configuration, dataset_json)
    manifest = Manifest.load(manifest_path)
    by_id = {c.identifier: c for c in cases}
    rebuild = manifest is not None and manifest.preprocessing_fingerprint != fingerprint
    known = {} if manifest is None else manifest.cases
    missing = sorted(set(known) - set(by_id))  # in the pool, not in this input: kept unless asked
    removed = missing if remove_missing or rebuild else []
    skipped = [] if rebuild else [
        c.identifier for c in cases if c.identifier in known and known[c.identifier]["signature"] == c.signature()
        and case_problem(pool_dir, c.identifier, known[c.identifier]) is None]  # damaged files are redone
    todo = [c for c in cases if c.identifier not in set(skipped)]
    replaced = [c.identifier for c in todo if c.identifier in known]
    users = active_leases(pool_dir) if os.path.isdir(pool_dir) else []
    if users and (replaced or removed):
        raise DinoMixError(
            f"The pool {pool_dir} is being read by a training ({', '.join(users)}; host_pid). This run would "
            + (f"preprocess {len(replaced)} of its cases again" if replaced else "")
            + (" and " if replaced and removed else "") + (f"remove {len(removed)} of its cases" if removed else "")
            + ", which would crash that training or mix two preprocessings in it. Nothing was changed. Run again "
              f"when the training has ended (new cases alone may be added at any time). If no such training runs, "
              f"delete {os.path.join(pool_dir, IN_USE_FOLDER)}.")

    try:
        os.makedirs(pool_dir, exist_ok=True)
        shutil.rmtree(os.path.join(pool_dir, STAGING), ignore_errors=True)  # leftovers of an interrupted run
        os.makedirs(os.path.join(pool_dir, STAGING))
    except PermissionError as e:
        raise DinoMixError(f"Cannot write the unlabeled pool into {pre_folder} ({e.strerror}: {e.filename}). The pool "
                           f"lives beside nnU-Net's preprocessed data; run as a user who may write there.") from e
    if rebuild:
        if verbose:
            print(f"The plans changed since the pool was made ({manifest.preprocessing_fingerprint} -> "
                  f"{fingerprint}): all {len(cases)} cases are preprocessed again.")
            sharing = [k for k, v in plans_files(pre_folder).items() if k != plans_identifier
                       and configuration in v.get("configurations", {})
                       and _fingerprint_or_none(v, configuration, dataset_json) == manifest.preprocessing_fingerprint]
            if sharing:
                print(f"Note: the pool was made for {', '.join(sharing)}, which share(s) the data identifier "
                      f"{cm.data_identifier}. Trainings with those plans will find the rebuilt pool stale.")
            others = sorted({known[k].get("folder", manifest.source_folder) for k in missing})
            if others:
                print(f"{len(missing)} stale case(s) from other input folders leave the pool; add them again with "
                      + " and ".join(f"-i {f}" for f in others) + ".")
        manifest = None
    if manifest is None:
        manifest = Manifest(dataset=dataset_name, configuration=configuration, plans_identifier=plans_identifier,
                            data_identifier=cm.data_identifier, preprocessing_fingerprint=fingerprint,
                            source_folder="")
    manifest.source_folder = os.path.abspath(input_folder)
    for c in todo:  # whatever happens below, a case being redone is not listed as complete
        manifest.cases.pop(c.identifier, None)
    manifest.save(manifest_path)
    if verbose:
        print(f"{dataset_name} {configuration} ({plans_identifier}): {len(cases)} unlabeled cases in {input_folder}; "
              f"{len(skipped)} up to date, {len(todo)} to preprocess.\nPool: {pool_dir}")
        if missing and not removed:
            print(f"{len(missing)} case(s) of the pool are not in {input_folder} ({', '.join(missing[:5])}"
                  f"{', ...' if len(missing) > 5 else ''}); they are kept. Pass --remove_missing to remove them.")

    processed: List[str] = []
    jobs = [(c, pool_dir, plans, configuration, dataset_json, bounds, dataset_is_2d) for c in todo]
    try:
        for identifier, signature in _run_jobs(jobs, num_processes, verbose):
            case = by_id[identifier]
            manifest.cases[identifier] = {"folder": os.path.dirname(os.path.abspath(case.files[0])),
                                          "files": [os.path.basename(f) for f in case.files],
                                          "signature": signature, "truth": case.truth is not None,
                                          "sizes": case_file_sizes(pool_dir, identifier)}
            manifest.save(manifest_path)
            processed.append(identifier)
    finally:
        shutil.rmtree(os.path.join(pool_dir, STAGING), ignore_errors=True)
        if len(processed) < len(todo) and verbose:
            print(f"Stopped after {len(processed)} of {len(todo)} cases; those are kept and a re-run continues.")
    # only once every new case is in: a failed run never leaves the pool smaller than it found it
    for identifier in removed:
        manifest.cases.pop(identifier, None)
        manifest.save(manifest_path)  # out of the manifest first: training never lists a case without files
        _remove_case_files(pool_dir, identifier)
    if removed and verbose:
        print(f"Removed {len(removed)} case(s) that are not in {input_folder}.")
    return PreprocessResult(pool_dir, manifest_path, processed, skipped, removed)


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the command that started it is gone (killed, even with SIGKILL).
    Otherwise spawned workers wait forever on a task queue whose write end they hold themselves."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_jobs(jobs, num_processes: int, verbose: bool):
    """Yield ``_process_case`` results as cases finish, with a progress bar."""
    from tqdm import tqdm
    if not jobs:
        return
    with tqdm(total=len(jobs), desc="Preprocessing unlabeled cases", disable=not verbose) as progress:
        if num_processes <= 1 or len(jobs) == 1:
            for job in jobs:
                yield _process_case(*job)
                progress.update()
            return
        # spawn, like nnU-Net's preprocessing (forked workers inherit the parent's threads and locks). Unlike a
        # multiprocessing.Pool, the executor notices a worker killed by the OS instead of waiting forever.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs)), mp_context=context,
                                 initializer=_exit_with_parent, initargs=(os.getpid(),)) as executor:
            futures = [executor.submit(_process_case, *job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    progress.update()
            except BrokenProcessPool as e:
                raise DinoMixError("A preprocessing worker died, probably killed for lack of memory. The cases "
                                   "finished so far are kept; run again with fewer workers (-np).") from e
            finally:
                for future in futures:
                    future.cancel()
