"""Trainers for one-off diagnoses, not part of the package: point ``nnUNet_extTrainer`` at this folder.

``nnUNetTrainerBudgetNoLRMirror``: plain nnU-Net (``nnUNetTrainerBudget``) without mirroring along the phantom's
left-right axis (array axis 2 of the preprocessed ``(z, y, x)`` volume; the phantom's plans do not transpose), to
ask whether mirroring is what keeps a model with two labeled cases from telling the kidneys apart. The same as the
Budget trainers' ``only_mirror_axes`` setting at ``(0, 1)``, which benchmarks now use; kept so that the runs named in
``benchmarks/results/pl_diagnostics_label_limited_2400.md`` can be repeated.
"""
import torch

from nnunet_dinomix.training.registry import all_trainers

LEFT_RIGHT_AXIS = 2

nnUNetTrainerBudget = all_trainers()["nnUNetTrainerBudget"]


class nnUNetTrainerBudgetNoLRMirror(nnUNetTrainerBudget):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.only_mirror_axes = tuple(a for a in range(3) if a != LEFT_RIGHT_AXIS)
