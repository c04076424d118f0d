"""Trainers whose training length comes from environment variables, for demos, tests and benchmarks.

nnU-Net fixes the schedule in ``__init__`` (1000 epochs of 250 iterations) and its trainers take no extra
arguments, so short runs are trainer variants (``nnUNetTrainer_5epochs`` and friends). These variants read:

* ``DINOMIX_NUM_EPOCHS`` (nnU-Net default 1000)
* ``DINOMIX_ITERATIONS_PER_EPOCH`` (250)
* ``DINOMIX_VAL_ITERATIONS_PER_EPOCH`` (50)

and are otherwise identical to their parent, so ``nnUNetTrainerBudget`` is the plain nnU-Net baseline. For recipe
ablations in benchmarks, ``DINOMIX_TRAINER_SETTINGS`` may hold a JSON object of trainer attributes to override
(e.g. ``{"unsup_loss": "dice_ce", "burn_in_fraction": 0}``); only attributes the trainer has are accepted.

``DINOMIX_SEED`` (an integer) seeds Python's, NumPy's and torch's generators twice: before the network is built
and after ``on_train_start`` (before the first batch is drawn). Trainers given the same seed then start from the
same weights and draw the same labeled batches and augmentations; with one thread on the CPU, a semi-supervised
trainer's burn-in repeats plain nnU-Net's training step for step. After burn-in, Mean Teacher still draws plain
nnU-Net's labeled batches: its unlabeled batches and perturbations come from a private stream, seeded from
``DINOMIX_SEED + 2`` (PIC trainers mirror after the mix, so their labeled loader draws differently). Benchmarks use
this to pair runs (common random numbers), so that a difference between trainers is not the luck of the
initialisation or of the batches. Under DDP each rank draws its own batches (the rank is mixed into the second
seed).

``random_stream`` (settable through ``DINOMIX_TRAINER_SETTINGS``; default 0) keeps the initial weights but draws
another stream of batches from ``on_train_start`` on: runs that differ only in it measure how much a trainer's
result moves with the luck of the batches alone, the noise floor of a paired difference at one seed.

``only_mirror_axes`` (settable through ``DINOMIX_TRAINER_SETTINGS``; default None, nnU-Net's axes) keeps only the
given spatial axes of nnU-Net's mirroring, in training and at test time, as nnU-Net's ``nnUNetTrainer_onlyMirror01``
does with ``[0, 1]`` for datasets with left and right labels; a benchmark can then pair every trainer under it.

``labeled_region_shift`` (settable through ``DINOMIX_TRAINER_SETTINGS``; default None, off) shifts, before each
training step, the intensity of every ground-truth structure of the labeled samples by an offset of its own, uniform
in ``[-s, s]`` normalised units (:mod:`nnunet_dinomix.ssl.region_shift`), drawn from a private stream so that the
batches stay those of ``DINOMIX_SEED``. A benchmark setting: plain nnU-Net takes it as well, which separates what the
augmentation gives from what the unlabeled images give.

``snapshot_epochs`` (settable through ``DINOMIX_TRAINER_SETTINGS``) keeps ``checkpoint_epoch_<E>.pth`` after epoch
``E``, resumable with ``--c`` like nnU-Net's own ``checkpoint_latest.pth``.

Prediction does not read the variables (the trainer is never instantiated by ``nnUNetv2_predict``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.random_stream import RandomStream
from nnunet_dinomix.ssl.region_shift import RegionIntensityShift, RegionShiftSettings
from nnunet_dinomix.training.registry import TRAINERS

_ENV = {
    "num_epochs": "DINOMIX_NUM_EPOCHS",
    "num_iterations_per_epoch": "DINOMIX_ITERATIONS_PER_EPOCH",
    "num_val_iterations_per_epoch": "DINOMIX_VAL_ITERATIONS_PER_EPOCH",
}


SETTINGS_ENV = "DINOMIX_TRAINER_SETTINGS"
SEED_ENV = "DINOMIX_SEED"


def seed_from_env() -> Optional[int]:
    value = os.environ.get(SEED_ENV)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise ValueError(f"{SEED_ENV} must be a non-negative integer, got {value!r}")
    return int(value)


def stream_seed(seed: int, stream: int = 0) -> int:
    """One integer seed for ``(seed, stream)``; ``seed`` itself for stream 0."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]) if stream else seed


def seed_everything(seed: int, stream: int = 0) -> None:
    """Seed Python's, NumPy's and torch's global generators from ``(seed, stream)`` (stream: e.g. the DDP rank)."""
    value = stream_seed(seed, stream)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _setting(current, value):
    """A JSON value as the attribute it replaces: lists become tuples, and an object updates the fields of a
    dataclass setting (e.g. ``{"pic": {"donors": "labeled"}}``)."""
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        return dataclasses.replace(current, **{k: _setting(getattr(current, k, None), v) for k, v in value.items()})
    return tuple(value) if isinstance(value, list) else value


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
            setattr(trainer, attribute, _setting(getattr(trainer, attribute), value))
        trainer.print_to_log_file(f"Settings from {SETTINGS_ENV}: {settings}")
    trainer.print_to_log_file(f"Training length: {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} "
                              f"iterations ({trainer.num_val_iterations_per_epoch} validation iterations per epoch)")


def stream_index(trainer) -> int:
    """Which stream of random numbers ``trainer`` draws from: one per DDP rank, and per ``random_stream`` a
    disjoint set of them (ranks stay below 1000)."""
    return trainer.local_rank + 1000 * int(trainer.random_stream)


def labeled_region_shift(trainer) -> Tuple[RegionIntensityShift, RandomStream]:
    """The shift of ``trainer.labeled_region_shift`` and its private stream (seeded like the batches: from
    ``DINOMIX_SEED``, the DDP rank and ``random_stream``)."""
    if trainer.label_manager.has_regions:
        raise DinoMixError(f"labeled_region_shift shifts the structures of a label map; {type(trainer).__name__} "
                           f"trains on regions here. Leave labeled_region_shift unset for region-based datasets.")
    shift = RegionIntensityShift(trainer.label_manager.num_segmentation_heads,
                                 RegionShiftSettings(float(trainer.labeled_region_shift)))
    return shift, RandomStream(stream_seed((trainer.budget_seed or 0) + 3, stream_index(trainer)))


def shift_labeled_batch(batch: dict, shift: RegionIntensityShift, stream: RandomStream) -> dict:
    """``batch`` with its images shifted by their full-resolution ground truth (nnU-Net's first target)."""
    target = batch["target"]
    labels = target[0] if isinstance(target, (list, tuple)) else target
    with stream.active():
        return dict(batch, data=shift(batch["data"], labels))


def _with_budget(parent: type) -> type:
    """``<parent>Budget``: ``parent`` with the training length from the environment. Defined at module level under
    its own name, so it pickles and nnU-Net finds it by name like any other trainer."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        parent.__init__(self, plans, configuration, fold, dataset_json, device)
        # epochs after which a copy of the checkpoint is kept as checkpoint_epoch_<E>.pth (benchmarks start
        # semi-supervised runs from the reference's snapshot instead of repeating its burn-in)
        self.snapshot_epochs: tuple = ()
        # 0: the batches of DINOMIX_SEED; k > 0: the same initial weights, but the k-th other stream of batches and
        # augmentations from on_train_start on (benchmarks measure the run-to-run noise of a paired comparison)
        self.random_stream = 0
        # None: nnU-Net's mirror axes; a tuple: only those of them, in training and at test time
        self.only_mirror_axes: Optional[tuple] = None
        # None: off; a float: the labeled samples' ground-truth structures shifted in intensity (see the docstring)
        self.labeled_region_shift: Optional[float] = None
        self.labeled_shift: Optional[Tuple[RegionIntensityShift, RandomStream]] = None
        apply_budget_from_env(self)
        self.budget_seed = seed_from_env()
        if self.budget_seed is not None:
            self.print_to_log_file(f"Seed from {SEED_ENV}: {self.budget_seed}")

    def initialize(self):
        if self.budget_seed is not None and not self.was_initialized:
            seed_everything(self.budget_seed)  # the same initial weights for every trainer of this seed
        parent.initialize(self)

    def on_train_start(self):
        parent.on_train_start(self)
        if self.budget_seed is not None:  # the same batches, whatever the set-up drew before; per DDP rank its own
            stream = stream_index(self)
            seed_everything(self.budget_seed + 1, stream=stream)
            unlabeled = getattr(self, "unlabeled_random", None)  # semi-supervised trainers: their unlabeled stream
            if unlabeled is not None:
                unlabeled.reseed(stream_seed(self.budget_seed + 2, stream))
        if self.labeled_region_shift:
            self.labeled_shift = labeled_region_shift(self)
            self.print_to_log_file(f"Labeled region shift: each ground-truth structure's intensity shifted by up to "
                                   f"{self.labeled_region_shift} (p {self.labeled_shift[0].settings.p_per_class} "
                                   f"per class)")

    def train_step(self, batch: dict) -> dict:
        if self.labeled_shift is not None:
            batch = shift_labeled_batch(batch, *self.labeled_shift)
        return parent.train_step(self, batch)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            parent.configure_rotation_dummyDA_mirroring_and_inital_patch_size(self)
        if self.only_mirror_axes is not None:
            mirror_axes = tuple(a for a in (mirror_axes or ()) if a in self.only_mirror_axes) or None
            self.inference_allowed_mirroring_axes = mirror_axes
            self.print_to_log_file(f"Mirror axes (only_mirror_axes {tuple(self.only_mirror_axes)}): {mirror_axes}, "
                                   f"in training and at test time")
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def on_epoch_end(self):
        finished = self.current_epoch + 1
        parent.on_epoch_end(self)
        if finished in self.snapshot_epochs and self.local_rank == 0:
            # nnU-Net's save_checkpoint records current_epoch + 1, and on_epoch_end has already counted this
            # epoch: step back one so that --c from the snapshot resumes at epoch `finished`, as from its own
            # checkpoint_latest.pth
            self.current_epoch -= 1
            try:
                self.save_checkpoint(os.path.join(self.output_folder, f"checkpoint_epoch_{finished}.pth"))
            finally:
                self.current_epoch += 1

    name = parent.__name__ + "Budget"
    return type(name, (parent,), {"__init__": __init__, "initialize": initialize, "on_train_start": on_train_start,
                                  "train_step": train_step,
                                  "configure_rotation_dummyDA_mirroring_and_inital_patch_size":
                                      configure_rotation_dummyDA_mirroring_and_inital_patch_size,
                                  "on_epoch_end": on_epoch_end,
                                  "__module__": __name__, "__qualname__": name,
                                  "__doc__": f"{parent.__name__} with the training length from DINOMIX_* variables."})


# Defined in this module's namespace under their own names (for pickling and nnU-Net's finder): plain nnU-Net's
# nnUNetTrainerBudget, then one twin per trainer of the registry, e.g. nnUNetTrainerMeanTeacherBudget.
BUDGET_TRAINERS: Dict[str, type] = {}
for _parent in (nnUNetTrainer,) + TRAINERS:
    _twin = _with_budget(_parent)
    BUDGET_TRAINERS[_twin.__name__] = globals()[_twin.__name__] = _twin
del _parent, _twin
