"""The common part of the diagnostics probes: a semi-supervised trainer on one seed folder of ``ssl_quality.py``, at
a benchmark checkpoint, ready to draw batches as ``train_step`` does; nothing is trained or written.

``add_arguments`` declares the probes' shared command line; ``trainer_at_checkpoint`` builds the trainer with
nnU-Net's ``get_trainer_from_args`` on that seed's folders (nnU-Net's log in a temporary folder, removed after),
loads the checkpoint (its EMA teacher, or for a plain nnU-Net checkpoint the student, as after burn-in) and opens
the epoch, so that the class gate reads the loaded Dice history.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from contextlib import contextmanager


def add_arguments(p: argparse.ArgumentParser, trainer: str, settings: str, batches: int) -> None:
    p.add_argument("seed_folder", help="a seed folder of ssl_quality.py (holds nnUNet_raw and nnUNet_preprocessed)")
    p.add_argument("checkpoint", help="the checkpoint probed (its EMA teacher; a plain one: its network)")
    p.add_argument("--trainer", default=trainer)
    p.add_argument("--plans", default="nnUNetPlansTinyCPU")
    p.add_argument("--dataset", default="990")
    p.add_argument("--settings", default=settings, help="JSON trainer attributes, as DINOMIX_TRAINER_SETTINGS")
    p.add_argument("--batches", type=int, default=batches)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=48, help="the run's length, for the recipe's schedules")
    p.add_argument("--iterations", type=int, default=50)


@contextmanager
def trainer_at_checkpoint(args: argparse.Namespace, name: str):
    from nnunet_dinomix.commands import nnunet_env
    os.environ.update(nnunet_env(os.path.abspath(args.seed_folder), "cpu"))  # that seed's folders, no compile
    log_folder = tempfile.mkdtemp(prefix=f"{name}_")  # nnU-Net's log; nothing else is written
    os.environ.update(nnUNet_results=log_folder, nnUNet_n_proc_DA="0", DINOMIX_SEED=str(args.seed),
                      DINOMIX_TRAINER_SETTINGS=args.settings, DINOMIX_NUM_EPOCHS=str(args.epochs),
                      DINOMIX_ITERATIONS_PER_EPOCH=str(args.iterations))
    try:
        import torch
        from nnunetv2.run.run_training import get_trainer_from_args

        trainer = get_trainer_from_args(args.dataset, "3d_fullres", "all", args.trainer, args.plans,
                                        device=torch.device("cpu"))
        trainer.disable_checkpointing = True
        trainer.on_train_start()
        trainer.load_checkpoint(args.checkpoint)
        trainer.on_train_epoch_start()  # the class gate from the loaded Dice history
        yield trainer
        trainer.on_train_end()
    finally:
        shutil.rmtree(log_folder, ignore_errors=True)
