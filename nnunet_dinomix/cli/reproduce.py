"""``dinomix_reproduce``: the benchmark protocol on one GPU, from a converted dataset to the report.

Given a dataset written by ``dinomix_convert`` (or any nnU-Net raw dataset with imagesUnlabeled, imagesTs and
labelsTs), runs in order, skipping what is already done:

1. ``nnUNetv2_plan_and_preprocess`` (labeled cases only, as nnU-Net always does);
2. ``dinomix_preprocess_unlabeled`` (incremental);
3. ``nnUNetv2_train`` for every trainer (``--c`` when an unfinished run exists; skipped when finished);
4. ``nnUNetv2_predict`` of imagesTs with each trainer;
5. ``dinomix_evaluate``: per-class Dice/ASD/HD95, head and tail classes, published numbers of the protocol beside
   ours.

The full ``nnUNetTrainerDinoMix`` needs ``DINOMIX_DINOV3_WEIGHTS``; it is checked before anything runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import List, Optional

from nnunet_dinomix import commands as runner, discovery, paths
from nnunet_dinomix.errors import DinoMixError, command

DEFAULT_TRAINERS = ["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerDinoMixNoFKD", "nnUNetTrainerDinoMix"]


def published_setting(raw_folder: str) -> Optional[str]:
    """``synapse_20`` etc. from the converter's record, when the split is the protocol's."""
    record_file = os.path.join(raw_folder, "dinomix_split.json")
    if not os.path.isfile(record_file):
        return None
    with open(record_file) as f:
        record = json.load(f)
    if record.get("ct_only"):
        return None  # the published numbers include MR scans
    return f"{record.get('benchmark')}_{record.get('ratio_percent'):g}"


def plan(dataset: str, configuration: str, fold: str, trainers: List[str], output: str, device: str,
         published: Optional[str], force_plan: bool = False) -> List[List[str]]:
    """The commands still to run, in order."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    name = paths.resolve_dataset(dataset)
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    for sub in ("imagesTs", "labelsTs", "imagesUnlabeled"):
        if not os.path.isdir(os.path.join(raw, sub)):
            raise DinoMixError(f"{raw} has no {sub}/: convert the benchmark with dinomix_convert first.")
    commands = []
    if force_plan or not os.path.isfile(os.path.join(pre, "nnUNetPlans.json")):
        commands.append(["nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", configuration,
                         "--verify_dataset_integrity"])
    commands.append(["dinomix_preprocess_unlabeled", "-d", dataset, "-c", configuration])
    predictions = []
    for trainer in trainers:
        fold_dir = get_output_folder(name, trainer, "nnUNetPlans", configuration, fold)  # nnU-Net's own layout
        if not os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth")):
            train = ["nnUNetv2_train", dataset, configuration, fold, "-tr", trainer, "-device", device]
            if os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth")):
                train.append("--c")
            commands.append(train)
        prediction = os.path.join(output, "predictions", trainer)
        commands.append(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", prediction, "-d", dataset,
                         "-c", configuration, "-f", fold, "-tr", trainer, "-device", device])
        predictions.append(f"{trainer}={prediction}")
    evaluate = ["dinomix_evaluate", "-ref", os.path.join(raw, "labelsTs"), "-djfile", os.path.join(raw, "dataset.json"),
                "-train_labels", os.path.join(raw, "labelsTr"), "-o", os.path.join(output, "report"), "-np", "4",
                "-pred", *predictions]
    if published:
        evaluate += ["--published", published]
    commands.append(evaluate)
    return commands


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dinomix_reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset ID or name (e.g. from dinomix_convert)")
    parser.add_argument("-c", default="3d_fullres", help="configuration [default: 3d_fullres]")
    parser.add_argument("-f", default="all", help="fold; 'all' trains on every labeled case [default: all]")
    parser.add_argument("-tr", nargs="+", default=DEFAULT_TRAINERS, help="trainers [default: %(default)s]")
    parser.add_argument("-o", default=None,
                        help="folder for predictions and the report [default: nnUNet_results/<dataset>/benchmark]")
    parser.add_argument("-device", default="cuda")
    parser.add_argument("--published", default="auto", help="published setting to show (auto: from the converter's "
                                                             "record; none: no published columns)")
    parser.add_argument("--force_plan", action="store_true", help="plan and preprocess even if plans exist")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    try:
        name = paths.resolve_dataset(args.d)
        raw_folder = os.path.join(os.environ["nnUNet_raw"], name)
        published = published_setting(raw_folder) if args.published == "auto" else \
            (None if args.published == "none" else args.published)
        discovery.check_dinov3_weights(args.tr)
        output = args.o or os.path.join(os.environ["nnUNet_results"], name, "benchmark")
        commands = plan(args.d, args.c, args.f, args.tr, output, args.device, published, args.force_plan)
    except KeyError as e:  # an nnU-Net path variable is not set
        raise DinoMixError(f"{e.args[0]} is not set; nnU-Net and nnunet-dinomix need nnUNet_raw, "
                           f"nnUNet_preprocessed and nnUNet_results.") from e
    discovery.register_in_environment()
    runner.stop_commands_on_signal()  # a killed dinomix_reproduce (SIGTERM, SIGHUP) stops its training too
    for i, cmd in enumerate(commands, 1):
        if args.dry_run:
            print(f"[{i}/{len(commands)}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
            continue
        print(f"[{i}/{len(commands)}]", end=" ", flush=True)  # runner.run prints the command itself
        runner.run([runner.executable(cmd[0]), *cmd[1:]],
                   on_failure=f"Step {i} of {len(commands)} failed; fix the cause and run dinomix_reproduce again "
                              f"(finished steps are skipped, unfinished training resumes).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
