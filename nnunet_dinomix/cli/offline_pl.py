"""``dinomix_offline_pl``: offline pseudo-labelling rounds with nnU-Net's own commands.

What each round does: :mod:`nnunet_dinomix.offline_pl`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from nnunet_dinomix import paths
from nnunet_dinomix.commands import stop_commands_on_signal
from nnunet_dinomix.errors import command
from nnunet_dinomix.offline_pl import __doc__ as DESCRIPTION, run_rounds


@command
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dinomix_offline_pl", description=DESCRIPTION.split("\n\n")[0])
    p.add_argument("-d", required=True, help="source dataset (name or ID) with its unlabeled images")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier [default: nnUNetPlans]")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer of the supervised model that labels round 1")
    p.add_argument("-f", default="0", help="fold of that model, also trained in every round [default: 0]")
    p.add_argument("-chk", default="checkpoint_final.pth",
                   help="checkpoint of the -tr model that labels round 1 [default: checkpoint_final.pth]")
    p.add_argument("--train_trainer", default=None, help="trainer of every round [default: -tr]")
    p.add_argument("--target_id", type=int, required=True, help="dataset ID of round 1; round r uses ID + r - 1")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--drop_unstable", type=float, default=0.0,
                   help="from round 2, drop this fraction of cases whose labels changed most [default: 0]")
    p.add_argument("-i", default=None,
                   help=f"unlabeled images [default: nnUNet_raw/DATASET/{paths.UNLABELED_RAW_FOLDER}]")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"))
    p.add_argument("--disable_tta", action="store_true", help="pseudo-label without test-time mirroring")
    p.add_argument("-np", type=int, default=4, help="preprocessing workers")
    p.add_argument("--no_train", action="store_true",
                   help="with --rounds 1: build and preprocess the pseudo-labelled dataset, then stop and print the "
                        "nnUNetv2_train command that trains it (to train it elsewhere, or with other settings)")
    args = p.parse_args(argv)
    stop_commands_on_signal()

    return run_rounds(args)


if __name__ == "__main__":
    sys.exit(main())
