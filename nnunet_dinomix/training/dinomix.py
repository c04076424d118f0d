"""nnUNetTrainerDinoMix: mean-teacher consistency + Progressive Imbalance-aware CutMix + DINOv3 distillation.

It runs the one training step of :class:`nnUNetTrainerMeanTeacher` (docs/method.md) and plugs in two parts:

* the mixer (step 2): :class:`~nnunet_dinomix.pic.mixer.PICMixer` keeps running class counts from ground truth and
  trusted pseudo-labels, draws one box per sample from the curriculum ``pi_c(t) ∝ n_c^-gamma(t)``, pastes image,
  label and provenance across the labeled and unlabeled samples (among labeled samples only during burn-in) and then
  applies nnU-Net's mirroring, which it takes over from the loaders;
* an auxiliary loss (step 4), FKD: the frozen DINOv3 encodes the slices of the mixed batch; a projection head maps
  the student's encoder features to the teacher's channels and grid; normalised MSE, weighted by ``lambda_fkd``.

``network_weights`` stays the plain nnU-Net network. The head, the EMA teacher and the mixer's counts and random
state are saved under the checkpoint's ``dinomix`` key; the DINOv3 teacher is never saved (it is reloaded from the
user's weights) and never imported at inference.

Ablations are subclasses that switch ``use_pic`` / ``use_fkd`` off (bottom of this file); with both off this is
exactly ``nnUNetTrainerMeanTeacher``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fkd.distiller import FKDistiller, default_student_stage, intensity_to_unit
from nnunet_dinomix.fkd.tap import FeatureTap
from nnunet_dinomix.pic.cutmix import MixBatch
from nnunet_dinomix.pic.mixer import PICMixer, PICSettings
from nnunet_dinomix.training.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_dinomix.training.semi_supervised import as_list, unwrap


class nnUNetTrainerDinoMix(nnUNetTrainerMeanTeacher):
    use_pic: bool = True
    use_fkd: bool = True  # distils from DINOv3, so cannot start without its weights (the doctor reads this)
    # which DINOv3 [class attributes, so that dinomix_doctor checks what this trainer would load]
    dinov3_weights: Optional[str] = None  # None: $DINOMIX_DINOV3_WEIGHTS
    dinov3_arch: Optional[str] = None  # e.g. 'vits16' to insist on a size; None: whatever the file holds
    dinov3_depth: Optional[int] = None  # blocks, if the file's depth was changed on purpose; None: as published

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # FKD [ours unless docs/method.md says otherwise]
        self.lambda_fkd = 1.0
        self.fkd_stage: Optional[int] = None  # encoder stage; None: deepest with in-plane stride <= 16
        self.fkd_teacher_scale = 1.0  # teacher input = scale x slice size, rounded to a multiple of 16
        self.fkd_chunk = 512  # slices per teacher forward (bounds memory; fewer, larger forwards keep the GPU busy)
        self.fkd_channel = 0  # input channel shown to the teacher
        self.fkd_uniqueness_weighting = False
        self.pic = PICSettings()  # the PIC curriculum and boxes
        # built in configure_optimizers / on_train_start
        self.distiller: Optional[FKDistiller] = None
        self._feature_tap: Optional[FeatureTap] = None

    # ------------------------------------------------------------------ the parts
    def build_mixer(self) -> Optional[PICMixer]:
        if not self.use_pic:
            return None
        return PICMixer(len(self.label_manager.foreground_labels), self.pic, rank=self.local_rank)

    def student_forward(self, x: torch.Tensor):
        outputs = as_list(self.network(x))
        return outputs, self._feature_tap.pop() if self._feature_tap is not None else None

    def auxiliary_losses(self, features, mixed: MixBatch) -> Dict[str, torch.Tensor]:
        if self.distiller is None or features is None:
            return {"fkd": torch.zeros((), device=self.device)}
        return {"fkd": self.lambda_fkd * self.distiller.loss(features, mixed.image)}

    def auxiliary_loss_names(self) -> Tuple[str, ...]:
        return ("fkd",)

    # ------------------------------------------------------------------ logging
    def log_keys(self) -> Tuple[str, ...]:
        keys = super().log_keys()
        if self.use_pic:
            keys += ("pic_gamma",) + tuple(f"pic_prob_{name}" for name in self.class_names())
        return keys

    def step_log(self, loss, loss_sup, loss_unsup, aux, w_u, pseudo, truth_u) -> dict:
        out = super().step_log(loss, loss_sup, loss_unsup, aux, w_u, pseudo, truth_u)
        if self.mixer is not None:
            out["pic_gamma"] = self.mixer.gamma(self.progress())
            for name, p in zip(self.class_names(), self.mixer.probabilities(self.progress()).tolist()):
                out[f"pic_prob_{name}"] = p
        return out

    # ------------------------------------------------------------------ set-up
    def teacher_weights_path(self) -> str:
        """The DINOv3 weights to load, or a :class:`DinoMixError` that says how to provide them."""
        from nnunet_dinomix.fkd.teacher import resolve_weights
        try:
            return resolve_weights(self.dinov3_weights)
        except DinoMixError as e:
            raise DinoMixError(f"{self.__class__.__name__} needs DINOv3 weights. {e} To train without FKD use "
                               f"nnUNetTrainerDinoMixNoFKD.") from e

    def on_train_start(self):
        if self.use_fkd:
            self.teacher_weights_path()  # fail before anything is built or written
        super().on_train_start()

    def configure_optimizers(self):
        """nnU-Net calls this inside ``initialize()``, after ``torch.compile`` and before the DDP wrapper and before
        any forward: the one place where the feature tap is sure to be in the graph dynamo traces (a hook added
        after a compiled module's first call never fires). The EMA teacher, copied later, drops the hook."""
        optimizer, scheduler = super().configure_optimizers()
        if self.use_fkd:
            self.distiller = self.build_distiller()
            optimizer.add_param_group({"params": list(self.distiller.head.parameters())})
            self.attach_feature_tap()
            if self.is_ddp:  # the head trains beside the network: the same start on every rank, averaged gradients
                self.distiller.head = DDP(self.distiller.head,
                                          device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        return optimizer, scheduler

    def build_distiller(self) -> FKDistiller:
        from nnunet_dinomix.fkd.teacher import build_dinov3
        path = self.teacher_weights_path()
        teacher = build_dinov3(path, self.dinov3_arch, self.dinov3_depth)
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
        """Tap the student's encoder stage for FKD (see :meth:`configure_optimizers` for when)."""
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
        state["fkd_head"] = unwrap(self.distiller.head).state_dict() if self.distiller is not None else None
        return state

    def load_training_state(self, state: Optional[dict]) -> None:
        super().load_training_state(state)
        if state is not None and self.distiller is not None and state.get("fkd_head") is not None:
            unwrap(self.distiller.head).load_state_dict(state["fkd_head"])


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
