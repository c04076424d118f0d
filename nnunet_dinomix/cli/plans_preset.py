"""``dinomix_plans_preset``: write a derived plans file (e.g. a CPU-sized network) next to a dataset's plans."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from nnunet_dinomix.errors import command
from nnunet_dinomix.plans_preset import write_derived_plans


@command
def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dinomix_plans_preset",
        description="Write a derived plans file (e.g. a network small enough for a CPU) next to a dataset's plans. "
                    "Train with nnUNetv2_train ... -p <new plans name>. Preprocessed data is shared with the source "
                    "plans.")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("--preset", default="tiny_cpu", help="shipped preset name or path to a preset JSON "
                                                               "[default: tiny_cpu]")
    parser.add_argument("-p", "--source_plans", default="nnUNetPlans",
                        help="plans to derive from [default: nnUNetPlans]")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing derived plans file")
    args = parser.parse_args(argv)
    target = write_derived_plans(args.d, args.preset, args.source_plans, args.overwrite)
    plans = json.load(open(target))
    for name, conf in plans["configurations"].items():
        if "patch_size" in conf and "architecture" in conf:
            print(f"{name}: patch {conf['patch_size']}, batch {conf['batch_size']}, features "
                  f"{conf['architecture']['arch_kwargs']['features_per_stage']}")
    print(f"Wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
