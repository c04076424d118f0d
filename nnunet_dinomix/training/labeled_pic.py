"""nnUNetTrainerLabeledPIC: plain nnU-Net plus labeled-only PIC in the loader, and no unlabeled data.

The ablation that separates what PIC's class-aware pasting gives from what the unlabeled images give: the same
network, loss and schedule as ``nnUNetTrainer``; one transform (:class:`~nnunet_dinomix.pic.paste.
LabeledPICTransform`) is put in front of nnU-Net's training pipeline, pasting boxes from other training cases
centred on rare-class voxels. It needs no unlabeled pool and predicts like nnU-Net.
"""
from __future__ import annotations

from typing import List, Tuple, Union

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.pic.cutmix import PASTE_MODE_CHOICES, PASTE_MODES
from nnunet_dinomix.pic.paste import LabeledPICTransform


class nnUNetTrainerLabeledPIC(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.labeled_pic_gamma = 1.0  # pi_c ∝ n_c^-gamma, constant in the loader (see pic/paste.py)
        self.labeled_pic_probability = 0.5  # share of training samples that receive a box
        self.labeled_pic_box_fraction: Tuple[float, float] = (0.25, 0.5)  # box side / patch side
        self.labeled_pic_paste = "box"  # box: the whole box (CutMix); class: the drawn class's voxels (ClassMix)

    def get_training_transforms(self, patch_size: Union[np.ndarray, Tuple[int]], rotation_for_DA,
                                deep_supervision_scales: Union[List, Tuple, None], mirror_axes: Tuple[int, ...],
                                do_dummy_2d_data_aug: bool, use_mask_for_norm: List[bool] = None,
                                is_cascaded: bool = False, foreground_labels=None, regions=None,
                                ignore_label: int = None):
        """nnU-Net's pipeline with the labeled PIC transform in front. nnU-Net calls this through the trainer, so an
        override (bound, to reach this fold's training cases) is the supported hook."""
        if is_cascaded:
            raise DinoMixError(f"{self.__class__.__name__} does not support cascade configurations (the donor's "
                               f"previous-stage segmentation is not pasted). Use 3d_fullres, 3d_lowres or 2d.")
        if self.labeled_pic_paste not in PASTE_MODES:
            raise DinoMixError(f"{self.__class__.__name__}.labeled_pic_paste must be {PASTE_MODE_CHOICES}, not "
                               f"{self.labeled_pic_paste!r}")
        pipeline = nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label)
        donors, _ = self.get_tr_and_val_datasets()  # this fold's training cases only, never validation cases
        paste = LabeledPICTransform(donors, patch_size, self.labeled_pic_gamma, self.labeled_pic_box_fraction,
                                    self.labeled_pic_probability, class_only=self.labeled_pic_paste == "class")
        pipeline.transforms.insert(0, paste)
        self.print_to_log_file(
            f"Labeled PIC: p {paste.p}, gamma {paste.gamma}, box {paste.box_fraction} of the patch, paste "
            f"{self.labeled_pic_paste}; classes "
            + ", ".join(f"{c}: {p:.2f}" for c, p in zip(paste.classes, paste.probabilities)))
        return pipeline
