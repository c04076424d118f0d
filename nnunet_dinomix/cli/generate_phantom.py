"""``dinomix_generate_phantom``: write the synthetic abdominal phantom dataset into nnUNet_raw."""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_dinomix.errors import command


@command
def main(argv=None) -> int:
    from nnunet_dinomix.phantom.dataset import PhantomSplit, write_phantom_dataset
    from nnunet_dinomix.phantom.generator import PRESETS, PhantomConfig, phantom_config

    parser = argparse.ArgumentParser(
        prog="dinomix_generate_phantom",
        description="Generate synthetic CT-like abdominal phantoms (8 organs, Synapse-like imbalance) as an nnU-Net "
                    "raw dataset with imagesTr/labelsTr, imagesUnlabeled, imagesTs and labelsTs.")
    parser.add_argument("-d", type=int, default=990, help="dataset ID [default: 990]")
    parser.add_argument("-n", "--name", default="DinoMixPhantom", help="dataset name [default: DinoMixPhantom]")
    parser.add_argument("-o", "--output", default=None, help="nnUNet_raw folder [default: $nnUNet_raw]")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=16)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=list(PhantomConfig.shape), metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="'default': low-contrast rare organs, little variation between cases; 'label_limited': "
                             "enhanced rare organs and more variation between cases, the regime in which a few labels "
                             "are not enough [default: default]")
    args = parser.parse_args(argv)
    raw = args.output or os.environ.get("nnUNet_raw")
    if not raw:
        parser.error("give -o or set nnUNet_raw")
    folder = write_phantom_dataset(raw, args.d, args.name, PhantomSplit(args.labeled, args.unlabeled, args.test),
                                   args.seed, phantom_config(args.preset, tuple(args.shape)))
    print(f"Wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
