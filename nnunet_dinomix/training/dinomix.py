"""nnUNetTrainerDinoMix: mean-teacher consistency + Progressive Imbalance-aware CutMix + DINOv3 distillation.

One iteration, as METHOD.md's algorithm box (each step is a method of its own, built on functions that are
tested without nnU-Net):

1. ``teacher_pseudo_labels``: the EMA teacher predicts the clean unlabeled batch -> arg-max pseudo-labels and
   confidence masks (full resolution);
2. ``pic_mix``: update the running class counts from ground truth and confident pseudo-labels, draw one box per
   sample from the curriculum ``pi_c(t) ∝ n_c^-gamma(t)``, paste image, label and provenance across the labeled
   and unlabeled samples;
3. ``student_forward`` on the mixed batch, then ``segmentation_losses``: nnU-Net's Dice+CE with deep supervision
   on ground-truth voxels (``L_sup``) and on confident pseudo-labelled voxels (``L_unsup``);
4. ``fkd_loss``: the frozen DINOv3 encodes the slices of the mixed batch; a projection head maps the student's
   encoder features to the teacher's channels and grid; normalised MSE;
5. ``L = L_sup + w_u(t) L_unsup + lambda_fkd L_fkd``; one optimizer step for the student and the head; EMA update.

``network_weights`` stays the plain nnU-Net network. The head, the EMA teacher, the class counts and the box
sampler's random state are saved under the checkpoint's ``dinomix`` key; the DINOv3 teacher is never saved (it is
reloaded from the user's weights) and never imported at inference.

Ablations are subclasses that switch ``use_pic`` / ``use_fkd`` off (bottom of this file).
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fkd.distiller import FKDistiller, default_student_stage, intensity_to_unit
from nnunet_dinomix.fkd.tap import FeatureTap
from nnunet_dinomix.pic.curriculum import ClassCounts, class_probabilities, gamma_at, voxel_counts
from nnunet_dinomix.pic.cutmix import MixBatch, apply_boxes, assemble, downsample_nearest, draw_boxes, mirror
from nnunet_dinomix.ssl.losses import deep_supervision_sum, masked_dice_ce, pseudo_labels
from nnunet_dinomix.ssl.perturb import clipped_gaussian_noise
from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_dinomix.training.semi_supervised import as_list


class nnUNetTrainerDinoMix(nnUNetTrainerMeanTeacher):
    use_pic: bool = True
    use_fkd: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # FKD [ours unless METHOD.md says otherwise]
        self.lambda_fkd = 1.0
        self.dinov3_weights: Optional[str] = None  # None: $DINOMIX_DINOV3_WEIGHTS
        self.dinov3_arch: Optional[str] = None  # e.g. 'vits16' to insist on a size; None: whatever the file holds
        self.fkd_stage: Optional[int] = None  # encoder stage; None: deepest with in-plane stride <= 16
        self.fkd_teacher_scale = 1.0  # teacher input = scale x slice size, rounded to a multiple of 16
        self.fkd_chunk = 512  # slices per teacher forward (bounds memory; fewer, larger forwards keep the GPU busy)
        self.fkd_channel = 0  # input channel shown to the teacher
        self.fkd_uniqueness_weighting = False
        # PIC
        self.pic_gamma_start, self.pic_gamma_end = 1.0, 0.0
        self.pic_gamma_schedule = "linear"  # linear | cosine | constant
        self.pic_box_fraction: Tuple[float, float] = (0.25, 0.5)  # box side as a fraction of the patch
        self.pic_count_momentum = 0.99
        self.pic_seed = 12345
        # built in configure_optimizers / on_train_start
        self.distiller: Optional[FKDistiller] = None
        self._feature_tap: Optional[FeatureTap] = None
        self.class_counts: Optional[ClassCounts] = None
        self.pic_generator: Optional[torch.Generator] = None
        self.pic_mirror_axes: Optional[Tuple[int, ...]] = None  # taken over from the loaders' transforms

    # ------------------------------------------------------------------ the algorithm
    def train_step(self, batch: dict) -> dict:
        x_l, y_l = self.labeled_batch(batch)
        x_u = self.unlabeled_batch()
        with self.autocast():
            pseudo = self.teacher_pseudo_labels(x_u)  # 1. consistency teacher
            mixed = self.pic_mix(x_l, y_l, clipped_gaussian_noise(x_u, self.student_noise_std), pseudo)  # 2. PIC
            mixed = mirror(mixed, self.pic_mirror_axes, self.pic_generator)  # nnU-Net's mirroring, after the mix
            outputs, features = self.student_forward(mixed.image)  # 3. student
            loss_sup, loss_unsup = self.segmentation_losses(outputs, mixed)
            loss_fkd = self.fkd_loss(features, mixed.image)  # 4. FKD
            w_u = self.unsup_weight()
            loss = loss_sup + w_u * loss_unsup + self.lambda_fkd * loss_fkd  # 5.
        self.optimizer_step(loss)
        self.update_teacher()
        self.step_done()
        return self.step_log(loss, loss_sup, loss_unsup, loss_fkd, w_u, pseudo)

    @torch.no_grad()
    def teacher_pseudo_labels(self, x_u: torch.Tensor):
        return pseudo_labels(as_list(self.ema_teacher(x_u))[0], self.confidence_threshold)

    def pic_mix(self, x_l: torch.Tensor, y_l, x_u: torch.Tensor, pseudo) -> MixBatch:
        full_res_target = as_list(y_l)[0]
        batch = assemble(x_l, full_res_target, x_u, pseudo.labels, pseudo.mask, self.label_manager.ignore_label)
        if not self.use_pic:
            return batch
        num_classes = self.label_manager.num_segmentation_heads
        self.class_counts.update(voxel_counts(batch.label, batch.usable, num_classes)[1:])
        boxes = draw_boxes(batch, self.class_probabilities(), self.pic_box_fraction, self.pic_generator)
        return apply_boxes(batch, boxes)

    def student_forward(self, x: torch.Tensor):
        outputs = as_list(self.network(x))
        return outputs, self._feature_tap.pop() if self._feature_tap is not None else None

    def segmentation_losses(self, outputs: List[torch.Tensor], mixed: MixBatch):
        scales = self._get_deep_supervision_scales() if self.enable_deep_supervision else None
        labels = downsample_nearest(mixed.label, scales)
        weights = self.deep_supervision_weights()
        batch_dice = self.configuration_manager.batch_dice

        def loss(masks):
            return deep_supervision_sum(lambda o, y, m: masked_dice_ce(o, y, m, batch_dice), weights, outputs, labels,
                                        masks)

        return loss(downsample_nearest(mixed.ground_truth, scales)), loss(downsample_nearest(mixed.pseudo_weight,
                                                                                             scales))

    def fkd_loss(self, student_features: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.distiller is None or student_features is None:
            return torch.zeros((), device=self.device)
        return self.distiller.loss(student_features, x)

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, *args, **kwargs):
        """nnU-Net's training transforms; with PIC, mirroring moves from the loaders to after the mix (see
        :func:`nnunet_dinomix.pic.cutmix.mirror`). nnU-Net declares this a staticmethod; here it is bound to the
        trainer to record the axes. Inference mirroring (TTA) is unaffected."""
        if self.use_pic and mirror_axes:
            self.pic_mirror_axes = tuple(mirror_axes)
            mirror_axes = None
        return super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                               do_dummy_2d_data_aug, *args, **kwargs)

    # ------------------------------------------------------------------ PIC curriculum
    def curriculum_gamma(self) -> float:
        return gamma_at(self.global_step / max(self.total_steps, 1), self.pic_gamma_start, self.pic_gamma_end,
                        self.pic_gamma_schedule)

    def class_probabilities(self) -> torch.Tensor:
        """The current sampling distribution over the foreground classes."""
        return class_probabilities(self.class_counts.value, self.curriculum_gamma())

    # ------------------------------------------------------------------ logging
    def log_keys(self) -> Tuple[str, ...]:
        keys = super().log_keys() + ("train_loss_fkd",)
        if self.use_pic:
            keys += ("pic_gamma",) + tuple(f"pic_prob_{name}" for name in self._foreground_class_names())
        return keys

    def _foreground_class_names(self) -> List[str]:
        names = {int(v): k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
        return [names.get(int(c), str(c)) for c in self.label_manager.foreground_labels]

    def step_log(self, loss, loss_sup, loss_unsup, loss_fkd, w_u, pseudo) -> dict:
        out = {"loss": loss.detach().cpu().numpy(), "train_loss_sup": loss_sup.detach().cpu().numpy(),
               "train_loss_unsup": loss_unsup.detach().cpu().numpy(), "unsup_weight": w_u,
               "confident_fraction": pseudo.mask.mean().detach().cpu().numpy(),
               "train_loss_fkd": loss_fkd.detach().cpu().numpy()}
        if self.use_pic:
            out["pic_gamma"] = self.curriculum_gamma()
            for name, p in zip(self._foreground_class_names(), self.class_probabilities().tolist()):
                out[f"pic_prob_{name}"] = p
        return out

    # ------------------------------------------------------------------ set-up
    def teacher_weights_path(self) -> str:
        """The DINOv3 weights to load, or a :class:`DinoMixError` that says how to provide them."""
        from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV, WHERE_TO_GET, weights_path_from_env
        path = self.dinov3_weights or weights_path_from_env()
        if not os.path.exists(path):
            raise DinoMixError(f"{self.__class__.__name__} needs DINOv3 weights, but {path} (from "
                               f"{'dinov3_weights' if self.dinov3_weights else WEIGHTS_ENV}) does not exist. "
                               f"{WHERE_TO_GET} To train without FKD use nnUNetTrainerDinoMixNoFKD.")
        return path

    @classmethod
    def setup_checks(cls) -> list:
        """Used by dinomix_doctor: FKD trainers need readable DINOv3 weights."""
        from nnunet_dinomix.doctor import Check, OK, check_teacher_weights
        if not cls.use_fkd:
            return [Check(OK, "needs no DINOv3 weights")]
        return [check_teacher_weights(required=True)]

    def on_train_start(self):
        if self.use_fkd:
            self.teacher_weights_path()  # fail before anything is built or written
        super().on_train_start()
        self.attach_feature_tap()

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        if self.use_fkd:
            self.distiller = self.build_distiller()
            optimizer.add_param_group({"params": list(self.distiller.head.parameters())})
        if self.use_pic:
            self.class_counts = ClassCounts(len(self.label_manager.foreground_labels), self.pic_count_momentum)
            self.pic_generator = torch.Generator().manual_seed(self.pic_seed + self.local_rank)
        return optimizer, scheduler

    def build_distiller(self) -> FKDistiller:
        from nnunet_dinomix.fkd.teacher import build_dinov3
        path = self.teacher_weights_path()
        teacher = build_dinov3(path, self.dinov3_arch)
        encoder = self.student.encoder
        spacing = self.configuration_manager.spacing
        slice_axis = int(np.argmax(spacing)) if len(spacing) == 3 else 0  # through-plane = the coarsest axis
        stage = self.fkd_stage if self.fkd_stage is not None else default_student_stage(encoder.strides, slice_axis)
        channel_key = str(self.fkd_channel)
        scheme = self.configuration_manager.normalization_schemes[self.fkd_channel]
        properties = self.plans_manager.foreground_intensity_properties_per_channel.get(channel_key)
        distiller = FKDistiller(
            teacher, encoder.output_channels[stage], intensity_to_unit(scheme, properties), slice_axis=slice_axis,
            channel=self.fkd_channel, teacher_scale=self.fkd_teacher_scale, chunk=self.fkd_chunk,
            uniqueness_weighting=self.fkd_uniqueness_weighting,
            autocast_dtype=torch.bfloat16 if self.device.type == "cuda" else None,
            spatial_dims=len(spacing)).to(self.device)
        self.fkd_stage = stage
        self.print_to_log_file(
            f"FKD: DINOv3 from {path} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M parameters, width "
            f"{teacher.embed_dim}, frozen); student encoder stage {stage} ({encoder.output_channels[stage]} "
            f"channels); slice axis {slice_axis}; intensities via {scheme}; lambda_fkd {self.lambda_fkd}")
        return distiller

    def attach_feature_tap(self) -> None:
        """Tap the student's encoder stage for FKD. Attached after the EMA teacher is copied from the student."""
        if self.distiller is not None and self._feature_tap is None:
            self._feature_tap = FeatureTap(self.student.encoder.stages[self.fkd_stage])

    def on_train_end(self):
        super().on_train_end()
        if self._feature_tap is not None:
            self._feature_tap.remove()
            self._feature_tap = None

    # ------------------------------------------------------------------ checkpointing
    def training_state(self) -> dict:
        state = super().training_state()
        state["fkd_head"] = self.distiller.head.state_dict() if self.distiller is not None else None
        state["pic_counts"] = self.class_counts.state_dict() if self.class_counts is not None else None
        state["pic_generator"] = self.pic_generator.get_state() if self.pic_generator is not None else None
        return state

    def load_training_state(self, state: Optional[dict]) -> None:
        super().load_training_state(state)
        if state is None:
            return
        if self.distiller is not None and state.get("fkd_head") is not None:
            self.distiller.head.load_state_dict(state["fkd_head"])
        if self.class_counts is not None:
            self.class_counts.load_state_dict(state.get("pic_counts"))
        if self.pic_generator is not None and state.get("pic_generator") is not None:
            self.pic_generator.set_state(state["pic_generator"])


class nnUNetTrainerDinoMixNoFKD(nnUNetTrainerDinoMix):
    """Mean Teacher + PIC; needs no DINOv3 weights."""
    use_fkd = False


class nnUNetTrainerDinoMixNoPIC(nnUNetTrainerDinoMix):
    """Mean Teacher + FKD (the FKD trainer)."""
    use_pic = False


class nnUNetTrainerDinoMixUniqueness(nnUNetTrainerDinoMix):
    """DINO-Mix with FKD tokens weighted by their semantic uniqueness (METHOD.md's optional variant)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.fkd_uniqueness_weighting = True
