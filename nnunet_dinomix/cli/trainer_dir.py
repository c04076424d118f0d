"""``dinomix_trainer_dir``: the folder nnU-Net must scan for this package's trainers.

    export nnUNet_extTrainer=$(dinomix_trainer_dir)
"""
from __future__ import annotations

import sys

from nnunet_dinomix.discovery import trainer_dir


def main(argv=None) -> int:
    print(trainer_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
