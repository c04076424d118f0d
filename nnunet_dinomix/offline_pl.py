"""Offline pseudo-labelling rounds (``dinomix_offline_pl``) with nnU-Net's own commands (the FLARE22 winners' recipe,
and what nnU-Net's maintainers advise for unlabeled data).

Round r (1..N), each step a command a user could type:

1. ``nnUNetv2_predict`` labels the unlabeled images with the current model: in round 1 a supervised model you
   trained (``-tr``, ``-f``), later the previous round's model;
2. from round 2 on, optionally drop the unstable cases: those whose pseudo-labels changed most since the previous
   round (lowest foreground Dice between the two rounds' labels), ``--drop_unstable`` of them;
3. a new dataset ``--target_id + r - 1`` gets the labeled cases and the pseudo-labelled ones (files hard-linked
   where possible). The original dataset is never written;
4. the source plans move to it (``nnUNetv2_move_plans_between_datasets``), ``nnUNetv2_preprocess`` preprocesses it;
5. ``nnUNetv2_train`` trains ``--train_trainer`` on it (``--no_train``: one round stops before this step).

The last round's model predicts like any nnU-Net model (``nnUNetv2_predict -d TARGET ...``).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional

import numpy as np

from nnunet_dinomix import paths
from nnunet_dinomix.commands import executable, run
from nnunet_dinomix.errors import DinoMixError


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def case_agreement(labels_a: np.ndarray, labels_b: np.ndarray, classes: List[int]) -> float:
    """Mean Dice over the foreground classes present in either label map (1.0 if none is)."""
    scores = []
    for c in classes:
        a, b = labels_a == c, labels_b == c
        total = a.sum() + b.sum()
        if total:
            scores.append(2.0 * np.logical_and(a, b).sum() / total)
    return float(np.mean(scores)) if scores else 1.0


def unstable_cases(current: str, previous: str, identifiers: List[str], file_ending: str, reader,
                   classes: List[int], fraction: float) -> List[str]:
    """The ``fraction`` of cases whose pseudo-labels agree least with the previous round's."""
    if fraction <= 0 or not identifiers:
        return []
    agreement = {}
    for k in identifiers:
        a, _ = reader.read_seg(os.path.join(current, k + file_ending))
        b, _ = reader.read_seg(os.path.join(previous, k + file_ending))
        agreement[k] = case_agreement(a, b, classes)
    n = int(round(fraction * len(identifiers)))
    return sorted(identifiers, key=lambda k: agreement[k])[:n]


def build_dataset(source_raw: str, target_raw: str, pseudo_folder: str, unlabeled: Dict[str, List[str]],
                  drop: List[str], dataset_json: dict, description: str) -> int:
    """Labeled cases + kept pseudo-labelled cases as a new nnU-Net raw dataset; returns the number of cases."""
    ending = dataset_json["file_ending"]
    images, labels = os.path.join(target_raw, "imagesTr"), os.path.join(target_raw, "labelsTr")
    os.makedirs(images)
    os.makedirs(labels)
    for folder, out in (("imagesTr", images), ("labelsTr", labels)):
        for f in sorted(os.listdir(os.path.join(source_raw, folder))):
            if f.endswith(ending):
                link_or_copy(os.path.join(source_raw, folder, f), os.path.join(out, f))
    labeled = {f[:-len(ending)] for f in os.listdir(labels)}
    clash = sorted(set(unlabeled) & labeled)
    if clash:
        raise DinoMixError(f"Unlabeled case names clash with labeled ones ({', '.join(clash[:5])}); rename them.")
    kept = [k for k in sorted(unlabeled) if k not in set(drop)]
    for k in kept:
        for f in unlabeled[k]:
            link_or_copy(f, os.path.join(images, os.path.basename(f)))
        link_or_copy(os.path.join(pseudo_folder, k + ending), os.path.join(labels, k + ending))
    new_json = dict(dataset_json, numTraining=len(labeled) + len(kept), description=description)
    with open(os.path.join(target_raw, "dataset.json"), "w") as f:
        json.dump(new_json, f, indent=4)
    return len(labeled) + len(kept)


def run_command(cmd: List[str]) -> None:
    """One nnU-Net command of a round, its output on the console; a failure stops the rounds."""
    run([executable(cmd[0])] + cmd[1:], on_failure="The rounds stop here; the datasets written so far are kept.")


def run_rounds(args) -> int:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_dinomix.unlabeled.preprocess import find_cases
    raw_root, pre_root = paths.require_env("nnUNet_raw"), paths.require_env("nnUNet_preprocessed")
    results_root = paths.require_env("nnUNet_results")
    if not 0.0 <= args.drop_unstable < 1.0:
        raise DinoMixError(f"--drop_unstable must lie in [0, 1), got {args.drop_unstable}")
    if args.rounds < 1:
        raise DinoMixError(f"--rounds must be at least 1, got {args.rounds}")
    if args.no_train and args.rounds != 1:
        raise DinoMixError(f"--no_train stops before the first training, so only one round can be built; a round "
                           f"after the first needs the previous round's model. Use --rounds 1 (got {args.rounds}).")
    source = paths.resolve_dataset(args.d)
    source_raw = os.path.join(raw_root, source)
    dataset_json = load_json(os.path.join(source_raw, "dataset.json"))
    ending = dataset_json["file_ending"]
    plans_file = os.path.join(pre_root, source, args.p + ".json")
    if not os.path.isfile(plans_file):
        raise DinoMixError(f"{plans_file} does not exist: plan and preprocess {source} first.")
    unlabeled_folder = args.i or paths.default_unlabeled_raw_folder(source_raw)
    unlabeled = {c.identifier: list(c.files) for c in find_cases(unlabeled_folder, ending,
                                                                 len(dataset_json["channel_names"]))}
    if not unlabeled:
        raise DinoMixError(f"No unlabeled images in {unlabeled_folder}.")
    base_name = source.split("_", 1)[1] if "_" in source else source
    targets = [(args.target_id + r, paths.dataset_folder_name(args.target_id + r, f"{base_name}PL{r + 1}"))
               for r in range(args.rounds)]
    for tid, name in targets:  # refuse before anything is written
        paths.refuse_used_dataset_id(tid, (raw_root, pre_root, results_root), "choose another --target_id.")
    model = (source, args.tr)
    train_trainer = args.train_trainer or args.tr
    classes = [int(v) for k, v in dataset_json["labels"].items() if isinstance(v, int) and v > 0]
    previous: Optional[str] = None
    for r, (tid, name) in enumerate(targets, start=1):
        target_raw = os.path.join(raw_root, name)
        pseudo = os.path.join(target_raw, "pseudoLabels")
        print(f"Round {r}/{args.rounds}: {model[1]} on {model[0]} labels {len(unlabeled)} cases -> {name}", flush=True)
        predict = ["nnUNetv2_predict", "-i", unlabeled_folder, "-o", pseudo, "-d", model[0], "-c", args.c, "-f",
                   args.f, "-tr", model[1], "-p", args.p, "-device", args.device]
        if r == 1 and args.chk != "checkpoint_final.pth":
            predict += ["-chk", args.chk]
        run_command(predict + (["--disable_tta"] if args.disable_tta else []))
        reader = determine_reader_writer_from_dataset_json(dataset_json, unlabeled[next(iter(unlabeled))][0])()
        drop = unstable_cases(pseudo, previous, sorted(unlabeled), ending, reader, classes,
                              args.drop_unstable) if previous else []
        if drop:
            print(f"  dropping {len(drop)} unstable cases: {', '.join(drop)}", flush=True)
        n = build_dataset(source_raw, target_raw, pseudo, unlabeled, drop, dataset_json,
                          f"{source} + pseudo-labels of round {r} by {model[1]} on {model[0]} (dinomix_offline_pl)")
        target_pre = os.path.join(pre_root, name)
        os.makedirs(target_pre)
        for f in ("dataset.json", "dataset_fingerprint.json"):
            src = os.path.join(target_raw if f == "dataset.json" else os.path.join(pre_root, source), f)
            if os.path.isfile(src):
                shutil.copy2(src, os.path.join(target_pre, f))
        run_command(["nnUNetv2_move_plans_between_datasets", "-s", source, "-t", name, "-sp", args.p, "-tp", args.p])
        run_command(["nnUNetv2_preprocess", "-d", str(tid), "-plans_name", args.p, "-c", args.c, "-np", str(args.np)])
        train = ["nnUNetv2_train", str(tid), args.c, args.f, "-tr", train_trainer, "-p", args.p, "-device",
                 args.device]
        if args.no_train:
            print(f"  {n} training cases; not trained (--no_train). Train it with: {' '.join(train)}", flush=True)
            return 0
        print(f"  {n} training cases; training {train_trainer}", flush=True)
        run_command(train)
        model, previous = (name, train_trainer), pseudo
    print(f"Done. The last round's model: nnUNetv2_predict -d {targets[-1][0]} -c {args.c} -f {args.f} -tr "
          f"{train_trainer} -p {args.p} -i ... -o ...")
    return 0

