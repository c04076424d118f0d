"""Trainers for one-off diagnoses, not part of the package: point ``nnUNet_extTrainer`` at this folder.

``nnUNetTrainerBudgetNoLRMirror``: plain nnU-Net (``nnUNetTrainerBudget``) without mirroring along the phantom's
left-right axis (array axis 2 of the preprocessed ``(z, y, x)`` volume; the phantom's plans do not transpose), to
ask whether mirroring is what keeps a model with two labeled cases from telling the kidneys apart.
"""
from nnunet_dinomix.training.registry import all_trainers

LEFT_RIGHT_AXIS = 2

nnUNetTrainerBudget = all_trainers()["nnUNetTrainerBudget"]


class nnUNetTrainerBudgetNoLRMirror(nnUNetTrainerBudget):
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, patch_size, axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if axes:
            axes = tuple(a for a in axes if a != LEFT_RIGHT_AXIS)
        self.inference_allowed_mirroring_axes = axes
        self.print_to_log_file(f"mirror axes without left-right: {axes}")
        return rotation, dummy_2d, patch_size, axes
