"""Write a benchmark's semi-supervised split as an nnU-Net raw dataset with this package's unlabeled folder.

* labeled cases: ``imagesTr`` + ``labelsTr`` (what nnU-Net plans and trains on);
* the other training cases: their images only, in ``imagesUnlabeled`` (their labels are never copied);
* the protocol's test cases: ``imagesTs``, with their labels in ``labelsTs`` for scoring only;
* the protocol's evaluation cases are not written (the benchmark selects models on them; nnU-Net does its own
  cross-validation on the labeled cases). ``dinomix_split.json`` records every list and how it was chosen.

Files are hard-linked when source and destination share a file system, copied otherwise (or always, with
``copy=True``); the input is never moved or modified, and an existing dataset is never overwritten.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from nnunet_dinomix.convert.splits import AMOS, SYNAPSE, choose_labeled
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.paths import UNLABELED_RAW_FOLDER, dataset_folder_name, refuse_used_dataset_id

# label values follow the benchmark's class order, which is also the datasets' own numbering
SYNAPSE_LABELS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4,
                  "esophagus": 5, "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9,
                  "portal_and_splenic_vein": 10, "pancreas": 11, "right_adrenal_gland": 12, "left_adrenal_gland": 13}
AMOS_MR_FIRST_ID = 500


@dataclass
class Case:
    identifier: str  # the benchmark's ID, e.g. '0009'
    image: str
    label: Optional[str]


@dataclass
class Split:
    labeled: List[str]
    unlabeled: List[str]
    test: List[str]
    evaluation: List[str]
    how_labeled: str
    extra: Dict[str, object] = field(default_factory=dict)


def _place(src: str, dst: str, copy: bool) -> None:
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed
            pass
    shutil.copy2(src, dst)


def _check_target(raw_root: str, dataset_id: int) -> None:
    refuse_used_dataset_id(dataset_id, [raw_root], "choose another ID with -d or remove that dataset yourself.")


def _require(cases: Dict[str, Case], ids: Sequence[str], need_label: bool, what: str) -> List[str]:
    problems = []
    for i in ids:
        case = cases.get(i)
        if case is None or not os.path.isfile(case.image):
            problems.append(f"{what} case {i}: image missing" + (f" ({case.image})" if case else ""))
        elif need_label and (case.label is None or not os.path.isfile(case.label)):
            problems.append(f"{what} case {i}: label missing ({case.label})")
    return problems


def write_split(cases: Dict[str, Case], split: Split, raw_root: str, dataset_id: int, name: str, prefix: str,
                labels: Dict[str, int], channel_name: str, copy: bool = False, verbose: bool = True) -> str:
    problems = (_require(cases, split.labeled, True, "labeled") + _require(cases, split.unlabeled, False, "unlabeled")
                + _require(cases, split.test, True, "test"))
    if problems:
        raise DinoMixError(f"The input is incomplete for this split ({len(problems)} problem(s)); nothing was "
                           f"written:\n  " + "\n  ".join(problems[:25]) + ("\n  ..." if len(problems) > 25 else ""))
    _check_target(raw_root, dataset_id)
    folder = os.path.join(raw_root, dataset_folder_name(dataset_id, name))
    sub = {k: os.path.join(folder, k) for k in ("imagesTr", "labelsTr", UNLABELED_RAW_FOLDER, "imagesTs", "labelsTs")}
    for d in sub.values():
        os.makedirs(d)
    ending = ".nii.gz"
    for role, ids, image_dir, label_dir in (("labeled", split.labeled, "imagesTr", "labelsTr"),
                                            ("unlabeled", split.unlabeled, UNLABELED_RAW_FOLDER, None),
                                            ("test", split.test, "imagesTs", "labelsTs")):
        for i in ids:
            case_name = f"{prefix}_{i}"
            _place(cases[i].image, os.path.join(sub[image_dir], f"{case_name}_0000{ending}"), copy)
            if label_dir is not None:
                _place(cases[i].label, os.path.join(sub[label_dir], case_name + ending), copy)
        if verbose:
            print(f"{role}: {len(ids)} cases -> {image_dir}" + (f" + {label_dir}" if label_dir else ""))

    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(folder, channel_names={0: channel_name}, labels=labels, num_training_cases=len(split.labeled),
                          file_ending=ending, dataset_name=dataset_folder_name(dataset_id, name),
                          converted_by="nnunet-dinomix (dinomix_convert)", numUnlabeled=len(split.unlabeled),
                          numTest=len(split.test))
    record = {"labeled": split.labeled, "unlabeled": split.unlabeled, "test": split.test,
              "evaluation_not_written": split.evaluation, "labeled_choice": split.how_labeled,
              "case_prefix": prefix, **split.extra}
    with open(os.path.join(folder, "dinomix_split.json"), "w") as f:
        json.dump(record, f, indent=1)
    return folder


# ----------------------------------------------------------------------------- Synapse / BTCV
def find_synapse_folders(root: str):
    """The ``img``/``label`` folders of the Synapse download (``RawData/Training/{img,label}``)."""
    for base in (root, os.path.join(root, "Training"), os.path.join(root, "RawData", "Training")):
        img, label = os.path.join(base, "img"), os.path.join(base, "label")
        if os.path.isdir(img) and os.path.isdir(label):
            return img, label
    raise DinoMixError(f"{root} is not the Synapse/BTCV download: expected img/ and label/ folders (img0001.nii.gz, "
                       f"label0001.nii.gz) in it, in Training/ or in RawData/Training/.")


def synapse_cases(root: str) -> Dict[str, Case]:
    img, label = find_synapse_folders(root)
    cases = {}
    for f in sorted(os.listdir(img)):
        m = re.fullmatch(r"img(\d{4})\.nii\.gz", f)
        if m:
            i = m.group(1)
            cases[i] = Case(i, os.path.join(img, f), os.path.join(label, f"label{i}.nii.gz"))
    return cases


def synapse_split(ratio: float, seed: int = 0) -> Split:
    labeled, how = choose_labeled(SYNAPSE["train"], ratio, SYNAPSE["labeled"], seed)
    return Split(labeled, sorted(set(SYNAPSE["train"]) - set(labeled)), list(SYNAPSE["test"]), list(SYNAPSE["eval"]),
                 f"{how}; split lists from {SYNAPSE['source']}", {"benchmark": "synapse", "ratio_percent": ratio,
                                                                    "seed": seed})


def convert_synapse(root: str, raw_root: str, dataset_id: int, ratio: float = 20, seed: int = 0, copy: bool = False,
                    name: Optional[str] = None, verbose: bool = True) -> str:
    split = synapse_split(ratio, seed)
    return write_split(synapse_cases(root), split, raw_root, dataset_id, name or f"Synapse{ratio:g}p", "synapse",
                       SYNAPSE_LABELS, "CT", copy, verbose)


# ----------------------------------------------------------------------------- AMOS22
def amos_labels(dataset_json: dict) -> Dict[str, int]:
    """nnU-Net labels from AMOS's own dataset.json (``{"0": "background", "1": "spleen", ...}``)."""
    raw = dataset_json.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DinoMixError("The AMOS dataset.json has no 'labels' mapping.")
    out = {}
    for value, label_name in sorted(raw.items(), key=lambda kv: int(kv[0])):
        clean = re.sub(r"[^0-9a-zA-Z]+", "_", str(label_name)).strip("_").lower() or f"class_{value}"
        out[clean] = int(value)
    return out


def amos_cases(root: str) -> Dict[str, Case]:
    required = ["imagesTr", "labelsTr", "imagesVa", "labelsVa", "dataset.json"]
    missing = [r for r in required if not os.path.exists(os.path.join(root, r))]
    if missing:
        raise DinoMixError(f"{root} is not the AMOS22 download: {', '.join(missing)} missing (expected imagesTr, "
                           f"labelsTr, imagesVa, labelsVa and dataset.json).")
    cases = {}
    for images, labels in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
        for f in sorted(os.listdir(os.path.join(root, images))):
            m = re.fullmatch(r"amos_(\d{4})\.nii\.gz", f)
            if m:
                cases[m.group(1)] = Case(m.group(1), os.path.join(root, images, f), os.path.join(root, labels, f))
    return cases


def amos_split(ratio: float, seed: int = 0, ct_only: bool = False) -> Split:
    keep = (lambda ids: [i for i in ids if int(i) < AMOS_MR_FIRST_ID]) if ct_only else list
    train = keep(AMOS["train"])
    published = {r: keep(ids) for r, ids in AMOS["labeled"].items()}
    if ct_only:  # a published list that lost MR cases is no longer the published choice
        published = {r: ids for r, ids in published.items() if len(ids) == len(AMOS["labeled"][r])}
    labeled, how = choose_labeled(train, ratio, published, seed)
    return Split(labeled, sorted(set(train) - set(labeled)), keep(AMOS["test"]), keep(AMOS["eval"]),
                 f"{how}; split lists from {AMOS['source']}",
                 {"benchmark": "amos", "ratio_percent": ratio, "seed": seed, "ct_only": ct_only})


def convert_amos(root: str, raw_root: str, dataset_id: int, ratio: float = 5, seed: int = 0, ct_only: bool = False,
                 copy: bool = False, name: Optional[str] = None, verbose: bool = True) -> str:
    cases = amos_cases(root)
    with open(os.path.join(root, "dataset.json")) as f:
        labels = amos_labels(json.load(f))
    split = amos_split(ratio, seed, ct_only)
    default_name = f"AMOS{'CT' if ct_only else ''}{ratio:g}p"
    return write_split(cases, split, raw_root, dataset_id, name or default_name, "amos", labels, "CT", copy, verbose)
