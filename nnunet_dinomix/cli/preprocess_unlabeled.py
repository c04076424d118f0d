"""``dinomix_preprocess_unlabeled``: the unlabeled counterpart of ``nnUNetv2_preprocess``."""
from __future__ import annotations

import argparse
import sys

from nnunet_dinomix.errors import command


@command
def main(argv=None) -> int:
    from nnunetv2.configuration import default_num_processes

    parser = argparse.ArgumentParser(
        prog="dinomix_preprocess_unlabeled",
        description="Preprocess unlabeled images with a dataset's existing nnU-Net plans into "
                    "nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/. Run nnUNetv2_plan_and_preprocess "
                    "for the labeled data first. nnU-Net's own files are never modified; re-running continues an "
                    "interrupted run and rebuilds the pool if the plans changed.")
    parser.add_argument("-d", nargs="+", required=True, help="dataset name(s) or ID(s)")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"], help="configuration(s) [default: 3d_fullres]")
    parser.add_argument("-p", "--plans", dest="plans", default="nnUNetPlans",
                        help="plans identifier [default: nnUNetPlans]")
    parser.add_argument("-i", "--input", default=None,
                        help="folder with the unlabeled images [default: nnUNet_raw/DatasetXXX/imagesUnlabeled]")
    parser.add_argument("-np", type=int, default=default_num_processes,
                        help=f"worker processes [default: {default_num_processes}, from nnUNet_def_n_proc]")
    parser.add_argument("--allow_spacing_outliers", action="store_true",
                        help="preprocess images whose spacing is far outside the labeled cases' range")
    parser.add_argument("--remove_missing", action="store_true",
                        help="remove the pool's cases that are not in the input folder (by default another input "
                             "folder adds its cases to the pool); done after the new cases are in, and refused "
                             "while a training reads the pool")
    parser.add_argument("--verbose", action="store_true", help="print details (progress is always shown)")
    args = parser.parse_args(argv)
    if args.input is not None and len(args.d) > 1:
        parser.error("-i/--input can only be used with a single dataset")

    from nnunet_dinomix.unlabeled.preprocess import preprocess_unlabeled
    for d in args.d:
        for c in args.c:
            r = preprocess_unlabeled(d, c, args.plans, args.input, args.np, args.allow_spacing_outliers,
                                     remove_missing=args.remove_missing)
            print(f"Done: {len(r.processed)} preprocessed, {len(r.skipped)} already up to date"
                  + (f", {len(r.removed)} removed" if r.removed else "") + f" -> {r.pool_folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
