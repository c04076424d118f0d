"""``dinomix_evaluate``: the benchmark report for any nnU-Net dataset and any set of trained trainers.

    dinomix_evaluate -ref nnUNet_raw/Dataset123_X/labelsTs -djfile nnUNet_raw/Dataset123_X/dataset.json \\
        -pred nnUNet=pred_plain DINO-Mix=pred_dinomix -train_labels nnUNet_raw/Dataset123_X/labelsTr \\
        --published synapse_20 -o report

What it computes and how the tail is defined: :mod:`nnunet_dinomix.evaluation.report`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from nnunet_dinomix.errors import DinoMixError, command
from nnunet_dinomix.evaluation.published import published_columns
from nnunet_dinomix.evaluation.report import TAIL_SIZE, class_voxel_shares, collect, read_labels, write_report


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dinomix_evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("-ref", required=True, help="folder with the reference segmentations (e.g. labelsTs)")
    parser.add_argument("-pred", required=True, nargs="+", metavar="NAME=FOLDER",
                        help="prediction folders, each named (e.g. nnUNetTrainer=pred_plain)")
    parser.add_argument("-djfile", required=True, help="the dataset's dataset.json (labels, file ending)")
    parser.add_argument("-train_labels", default=None,
                        help="labelsTr: the tail is the --tail classes with the fewest voxels there")
    parser.add_argument("--tail", type=int, default=TAIL_SIZE,
                        help=f"number of tail (rarest) classes [default: {TAIL_SIZE}]")
    parser.add_argument("--published", default=None, help="show published numbers of a setting, e.g. synapse_20, "
                                                          "amos_5 (marked as another protocol)")
    parser.add_argument("-o", default="evaluation", help="output folder [default: ./evaluation]")
    parser.add_argument("-np", type=int, default=1, help="worker processes [default: 1]")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        predictions = {}
        for item in args.pred:
            name, sep, folder = item.partition("=")
            if not sep or not name or not os.path.isdir(folder):
                raise DinoMixError(f"-pred {item}: expected NAME=FOLDER with an existing folder.")
            predictions[name] = folder
        with open(args.djfile) as f:
            dataset_json = json.load(f)
        labels = read_labels(dataset_json)
        ending = dataset_json["file_ending"]
        rows = collect(args.ref, predictions, labels, ending, args.np)
        shares = None
        if args.train_labels:
            files = [os.path.join(args.train_labels, f) for f in sorted(os.listdir(args.train_labels))
                     if f.endswith(ending)]
            shares = class_voxel_shares(files, labels)
        published = published_columns(args.published, list(labels.values()))
        title = args.title or f"Per-class evaluation of {len(rows) // max(len(labels) * len(predictions), 1)} " \
                              f"test cases"
        paths = write_report(rows, labels, shares, published, args.o, title, args.tail)
    except ValueError as e:  # bad --published / label values
        raise DinoMixError(str(e)) from e
    print(open(paths["md"]).read())
    print("Wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
