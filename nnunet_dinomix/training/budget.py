"""Trainers whose training length comes from environment variables, for demos, tests and benchmarks.

nnU-Net fixes the schedule in ``__init__`` (1000 epochs of 250 iterations) and its trainers take no extra
arguments, so short runs are trainer variants (``nnUNetTrainer_5epochs`` and friends). These variants read:

* ``DINOMIX_NUM_EPOCHS`` (nnU-Net default 1000)
* ``DINOMIX_ITERATIONS_PER_EPOCH`` (250)
* ``DINOMIX_VAL_ITERATIONS_PER_EPOCH`` (50)

and are otherwise identical to their parent, so ``nnUNetTrainerBudget`` is the plain nnU-Net baseline. For recipe
ablations in benchmarks, ``DINOMIX_TRAINER_SETTINGS`` may hold a JSON object of trainer attributes to override
(e.g. ``{"unsup_loss": "dice_ce", "burn_in_fraction": 0}``); only attributes the trainer has are accepted.
Prediction does not read the variables (the trainer is never instantiated by ``nnUNetv2_predict``).
"""
from __future__ import annotations

import json
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_dinomix.training.dinomix import nnUNetTrainerDinoMix, nnUNetTrainerDinoMixNoFKD, nnUNetTrainerDinoMixNoPIC
from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher

_ENV = {
    "num_epochs": "DINOMIX_NUM_EPOCHS",
    "num_iterations_per_epoch": "DINOMIX_ITERATIONS_PER_EPOCH",
    "num_val_iterations_per_epoch": "DINOMIX_VAL_ITERATIONS_PER_EPOCH",
}


SETTINGS_ENV = "DINOMIX_TRAINER_SETTINGS"


def apply_budget_from_env(trainer) -> None:
    for attribute, variable in _ENV.items():
        value = os.environ.get(variable)
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{variable} must be a positive integer, got {value!r}")
        setattr(trainer, attribute, int(value))
    settings = os.environ.get(SETTINGS_ENV)
    if settings:
        for attribute, value in json.loads(settings).items():
            if not hasattr(trainer, attribute):
                raise ValueError(f"{SETTINGS_ENV}: {type(trainer).__name__} has no attribute {attribute!r}")
            setattr(trainer, attribute, tuple(value) if isinstance(value, list) else value)
        trainer.print_to_log_file(f"Settings from {SETTINGS_ENV}: {settings}")
    trainer.print_to_log_file(f"Training length: {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} "
                              f"iterations ({trainer.num_val_iterations_per_epoch} validation iterations per epoch)")


def _with_budget(parent: type) -> type:
    """``<parent>Budget``: ``parent`` with the training length from the environment. Defined at module level under
    its own name, so it pickles and nnU-Net finds it by name like any other trainer."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        parent.__init__(self, plans, configuration, fold, dataset_json, device)
        apply_budget_from_env(self)

    name = parent.__name__ + "Budget"
    return type(name, (parent,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                  "__doc__": f"{parent.__name__} with the training length from DINOMIX_* variables."})


nnUNetTrainerBudget = _with_budget(nnUNetTrainer)
nnUNetTrainerMeanTeacherBudget = _with_budget(nnUNetTrainerMeanTeacher)
nnUNetTrainerDinoMixBudget = _with_budget(nnUNetTrainerDinoMix)
nnUNetTrainerDinoMixNoFKDBudget = _with_budget(nnUNetTrainerDinoMixNoFKD)
nnUNetTrainerDinoMixNoPICBudget = _with_budget(nnUNetTrainerDinoMixNoPIC)
