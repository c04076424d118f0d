# nnU-Net external-trainer shim: the classes live in the installed nnunet_dinomix package.
from nnunet_dinomix.training.budget import (nnUNetTrainerBudget, nnUNetTrainerDinoMixBudget,  # noqa: F401
                                            nnUNetTrainerDinoMixNoFKDBudget, nnUNetTrainerDinoMixNoPICBudget,
                                            nnUNetTrainerMeanTeacherBudget)
from nnunet_dinomix.training.dinomix import (nnUNetTrainerDinoMix, nnUNetTrainerDinoMixNoFKD,  # noqa: F401
                                             nnUNetTrainerDinoMixNoPIC, nnUNetTrainerDinoMixUniqueness)
from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
