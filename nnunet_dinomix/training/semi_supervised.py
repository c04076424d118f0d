"""The base of every trainer in this package: nnU-Net's trainer plus an unlabeled stream and train-only state.

What it adds to ``nnUNetTrainer`` and nothing more:

* ``dataloader_unlabeled``: batches of ``batch_size`` patches from the preprocessed unlabeled pool, cropped at
  random and augmented with the trainer's own training transforms (no deep-supervision targets), in its own
  background augmenter that is shut down with nnU-Net's;
* ``unlabeled_random``: the random numbers of everything unlabeled (its batches, when drawn in this process, and
  the perturbations of its samples) come from a private stream, so the labeled batches are exactly the ones plain
  nnU-Net draws with the same seed (see :mod:`nnunet_dinomix.random_stream`);
* train-only state (EMA teacher, heads, curricula) saved under ``checkpoint[CHECKPOINT_KEY]`` next to nnU-Net's
  keys, restored by ``--c``. ``network_weights`` stays the plain nnU-Net network, so ``nnUNetv2_predict`` works
  exactly as for ``nnUNetTrainer``;
* per-epoch means of extra ``train_step`` outputs (``extra_log_keys``) in the training log and progress.png;
* the pieces of nnU-Net's ``train_step`` a subclass needs to write its own: device transfer, autocast, and the
  scaled, clipped optimizer step.

Subclasses define ``train_step`` and, if they hold state, ``training_state``/``load_training_state``.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fileio import replace_atomically
from nnunet_dinomix.random_stream import RandomStream
from nnunet_dinomix.training.progress import SemiSupervisedLocalLogger
from nnunet_dinomix.training.unlabeled_loader import make_augmenter, nnUNetUnlabeledDataLoader
from nnunet_dinomix.unlabeled.pool import (UnlabeledPool, acquire_lease, open_pool, plans_identifier_of,
                                           release_lease)

CHECKPOINT_KEY = "dinomix"
STATE_FORMAT = 1


def as_list(output: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """Network outputs and targets as a list over deep-supervision scales (one entry without DS)."""
    return list(output) if isinstance(output, (list, tuple)) else [output]


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


class nnUNetTrainerSemiSupervised(nnUNetTrainer):
    extra_log_keys: Tuple[str, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_pool: Optional[UnlabeledPool] = None
        self.dataloader_unlabeled = None
        # background workers for the unlabeled stream; None: as many as nnU-Net gives its training stream
        self.num_processes_unlabeled: Optional[int] = None
        # seeded from torch's seed (without drawing from it) and the DDP rank; nnUNetTrainerBudget reseeds it with
        # DINOMIX_SEED
        self.unlabeled_random = RandomStream((torch.initial_seed() + self.local_rank) % 2 ** 63)
        self._iteration_in_epoch = 0
        self.logger.local_logger = SemiSupervisedLocalLogger(self.log_keys())

    def log_keys(self) -> Tuple[str, ...]:
        """Every extra per-epoch value of the log and progress.png."""
        return tuple(self.extra_log_keys)

    def mean_log_keys(self) -> Tuple[str, ...]:
        """The log keys that are per-epoch means of ``train_step`` outputs (the rest a subclass logs itself)."""
        return self.log_keys()

    # ------------------------------------------------------------------ set-up
    def check_supported(self) -> None:
        """Refuse, with the reason, what the semi-supervised losses are not defined for."""
        name = self.__class__.__name__
        if self.label_manager.has_regions:
            raise DinoMixError(f"{name} does not support region-based training (dataset.json defines regions): its "
                               f"pseudo-labels are per-voxel arg-max classes. Use a label-based dataset.json.")
        if self.is_cascaded:
            raise DinoMixError(f"{name} does not support cascade configurations: unlabeled cases have no "
                               f"previous-stage segmentation. Use 3d_fullres, 3d_lowres or 2d.")

    def open_unlabeled_pool(self) -> None:
        """Check what the trainer supports and open the pool (or fail with the command that makes it), before
        anything is built."""
        if self.unlabeled_pool is None:
            self.check_supported()
            folder = self.preprocessed_dataset_folder_base
            plans = self.plans_manager.plans
            self.unlabeled_pool = open_pool(folder, plans, self.configuration_name, self.dataset_json,
                                            plans_identifier_of(folder, plans))

    def on_train_start(self):
        self.open_unlabeled_pool()
        acquire_lease(self.unlabeled_pool.folder)  # preprocessing may add cases now, not replace or remove them
        super().on_train_start()
        self.print_to_log_file(f"Unlabeled pool: {len(self.unlabeled_pool.identifiers)} cases from "
                               f"{self.unlabeled_pool.folder}")

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        return train, val

    def get_unlabeled_dataloader(self):
        if self.unlabeled_pool is None:
            raise RuntimeError("get_unlabeled_dataloader needs the unlabeled pool; it is opened in on_train_start")
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None, ignore_label=None)
        loader = nnUNetUnlabeledDataLoader(self.unlabeled_pool.dataset(), self.batch_size, initial_patch_size,
                                           patch_size, self.label_manager, transforms=transforms)
        n = get_allowed_n_proc_DA() if self.num_processes_unlabeled is None else self.num_processes_unlabeled
        with self.unlabeled_random.active():  # make_augmenter draws a first batch
            return make_augmenter(loader, n, pin_memory=self.device.type == "cuda")

    def on_train_end(self):
        super().on_train_end()
        if self.dataloader_unlabeled is not None and hasattr(self.dataloader_unlabeled, "_finish"):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None
        if self.unlabeled_pool is not None:
            release_lease(self.unlabeled_pool.folder)

    # ------------------------------------------------------------------ pieces of a train step
    @property
    def student(self) -> nn.Module:
        return unwrap(self.network)

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far; derived from the epoch, so it resumes with ``--c`` by itself."""
        return self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def autocast(self):
        """nnU-Net's mixed precision policy: autocast on CUDA only."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else nullcontext()

    def labeled_batch(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        return data, target

    def unlabeled_batch(self) -> torch.Tensor:
        return self.unlabeled_batch_with_truth()[0]

    def unlabeled_batch_with_truth(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The next unlabeled images and, for diagnostics only, their true labels (-1 for samples whose case has
        none; ``None`` if no sampled case has one). No loss may read the truth."""
        with self.unlabeled_random.active():
            batch = next(self.dataloader_unlabeled)
        x = batch["data"].to(self.device, non_blocking=True)
        known = self.unlabeled_pool.truth_identifiers if self.unlabeled_pool is not None else frozenset()
        has_truth = torch.tensor([k in known for k in batch.get("keys", ())], dtype=torch.bool)
        if not bool(has_truth.any()):
            return x, None
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        target = torch.as_tensor(target)
        truth = torch.where(has_truth.view(-1, *([1] * (target.ndim - 1))), target, torch.full_like(target, -1))
        return x, truth.to(self.device, non_blocking=True)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, clip to 12 and step, with nnU-Net's grad scaler when it has one (CUDA)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
            self.optimizer.step()

    def trainable_parameters(self):
        """Everything the optimizer updates (the network; subclasses add their heads)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def deep_supervision_weights(self) -> Sequence[float]:
        return getattr(self.loss, "weight_factors", None) or (1.0,)

    # ------------------------------------------------------------------ epoch bookkeeping and logging
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        for key in self.mean_log_keys():
            values = np.array([float(o[key]) for o in train_outputs if key in o], dtype=float)
            value = float(np.nanmean(values)) if len(values) else float("nan")
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.nanmean(gathered))
            self.logger.log(key, value, self.current_epoch)

    def on_epoch_end(self):
        for key in self.log_keys():
            self.print_to_log_file(key, np.round(self.logger.get_value(key, step=-1), decimals=4))
        super().on_epoch_end()

    def train_step(self, batch: dict) -> dict:
        raise NotImplementedError(f"{self.__class__.__name__} must define train_step")

    def step_done(self) -> None:
        """Called by ``train_step`` after its optimizer step; advances ``global_step``."""
        self._iteration_in_epoch += 1

    # ------------------------------------------------------------------ checkpointing
    def training_state(self) -> dict:
        """Train-only state saved under ``checkpoint[CHECKPOINT_KEY]``. Subclasses extend the dict."""
        return {"format": STATE_FORMAT, "trainer": self.__class__.__name__}

    def load_training_state(self, state: Optional[dict]) -> None:
        """Restore what ``training_state`` saved; ``None`` for checkpoints without it (plain nnU-Net)."""
        if state is not None and state.get("format") != STATE_FORMAT:
            raise DinoMixError(f"Checkpoint state format {state.get('format')} is not {STATE_FORMAT}; it was written "
                               f"by another nnunet-dinomix version.")

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing or not os.path.isfile(filename):
            return
        # nnU-Net builds the checkpoint dict inside save_checkpoint; add our key to what it wrote, atomically
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY] = self.training_state()
        replace_atomically(filename, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            self.print_to_log_file(f"The checkpoint has no '{CHECKPOINT_KEY}' state (a plain nnU-Net checkpoint?): "
                                   f"train-only state starts fresh from the loaded network.")
        self.load_training_state(state)
