# nnU-Net external-trainer shim: the classes live in the installed nnunet_dinomix package.
from nnunet_dinomix.training.budget import nnUNetTrainerBudget, nnUNetTrainerMeanTeacherBudget  # noqa: F401
from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
