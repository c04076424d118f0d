"""The package's trainers, listed once.

Everything else derives from :data:`TRAINERS`: the ``Budget`` twin of each (:mod:`.budget`, plus plain nnU-Net's
``nnUNetTrainerBudget``), the classes the ``nnUNet_extTrainer`` shim exposes to nnU-Net's finder, and the trainers
``dinomix_doctor`` checks. A new trainer is added here and nowhere else.
"""
from __future__ import annotations

from typing import Dict

from nnunet_dinomix.training.dinomix import (nnUNetTrainerDinoMix, nnUNetTrainerDinoMixNoFKD,
                                             nnUNetTrainerDinoMixNoPIC, nnUNetTrainerDinoMixUniqueness)
from nnunet_dinomix.training.labeled_pic import nnUNetTrainerLabeledPIC
from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher

TRAINERS = (nnUNetTrainerMeanTeacher, nnUNetTrainerDinoMix, nnUNetTrainerDinoMixNoFKD, nnUNetTrainerDinoMixNoPIC,
            nnUNetTrainerDinoMixUniqueness, nnUNetTrainerLabeledPIC)


def all_trainers() -> Dict[str, type]:
    """Name -> class for every trainer this package gives nnU-Net: :data:`TRAINERS` and their Budget twins."""
    from nnunet_dinomix.training.budget import BUDGET_TRAINERS
    return {**{cls.__name__: cls for cls in TRAINERS}, **BUDGET_TRAINERS}
