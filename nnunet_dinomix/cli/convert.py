"""``dinomix_convert``: the Synapse and AMOS semi-supervised benchmark splits as nnU-Net raw datasets."""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_dinomix.errors import command


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="dinomix_convert",
        description="Convert a benchmark download into an nnU-Net raw dataset for semi-supervised training: labeled "
                    "cases in imagesTr/labelsTr, the other training images in imagesUnlabeled (no labels), the "
                    "protocol's test cases in imagesTs with labelsTs kept aside for scoring. Files are hard-linked "
                    "or copied, never moved; dinomix_split.json records the split.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-i", "--input", required=True, help="the downloaded dataset's folder")
    common.add_argument("-d", type=int, required=True, help="nnU-Net dataset ID to create")
    common.add_argument("-o", "--output", default=None, help="nnUNet_raw folder [default: $nnUNet_raw]")
    common.add_argument("--name", default=None, help="dataset name [default: Synapse20p, AMOS5p, ...]")
    common.add_argument("--seed", type=int, default=0, help="seed of the labeled choice where no list is published")
    common.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    s = sub.add_parser("synapse", parents=[common],
                       help="Synapse/BTCV abdomen (RawData/Training/img/img0001.nii.gz, label/label0001.nii.gz)")
    s.add_argument("--ratio", type=float, default=20, help="labeled percent of the 20 training cases: 10, 20 "
                                                           "(published list), 40 [default: 20]")
    a = sub.add_parser("amos", parents=[common],
                       help="AMOS22 (imagesTr, labelsTr, imagesVa, labelsVa, dataset.json)")
    a.add_argument("--ratio", type=float, default=5, help="labeled percent of the 216 training cases: 2, 5, 10 "
                                                          "(published lists) or any other [default: 5]")
    a.add_argument("--ct_only", action="store_true",
                   help="keep CT scans only (IDs below 500). Without it, MR cases are included with the channel "
                        "named CT, as in the benchmark, which applies its CT window to every scan")
    args = parser.parse_args(argv)
    raw = args.output or os.environ.get("nnUNet_raw")
    if not raw:
        parser.error("give -o or set nnUNet_raw")

    from nnunet_dinomix.convert.benchmark import convert_amos, convert_synapse
    if args.benchmark == "synapse":
        folder = convert_synapse(args.input, raw, args.d, args.ratio, args.seed, args.copy, args.name)
    else:
        folder = convert_amos(args.input, raw, args.d, args.ratio, args.seed, args.ct_only, args.copy, args.name)
    print(f"Wrote {folder}. Next: nnUNetv2_plan_and_preprocess -d {args.d} -c 3d_fullres, then "
          f"dinomix_preprocess_unlabeled -d {args.d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
