"""nnUNetTrainerMeanTeacher: the one semi-supervised training step of this package, with its parts.

Every trainer here runs this ``train_step``; they differ only in the parts they plug in (an ablation sets a part
to ``None``). One iteration, as in docs/method.md:

0. **burn-in** (the first ``burn_in_steps``): supervised only, nnU-Net's loss on the labeled batch (mixed among
   labeled samples when there is a mixer); at its end the EMA teacher is re-initialised from the student;
1. ``teacher_pseudo_labels``: the EMA teacher predicts the clean unlabeled batch; the ``pseudo_labeller`` turns
   that into arg-max pseudo-labels and a trust mask (its confidence rule);
2. ``mix``: labeled samples and the student's view of the unlabeled ones (``student_view``: the ``spatial_view``
   moving image and pseudo-labels, the ``region_shift`` of each pseudo-labelled structure's intensity, the
   ``strong_view``, clipped noise) become one :class:`MixBatch` whose voxels
   know whether they carry ground truth or a pseudo-label; the ``mixer`` (PIC, or ``None``) pastes boxes between
   them;
3. ``student_forward`` on the batch, then ``segmentation_losses``: ``L_sup`` (nnU-Net's Dice + CE with deep
   supervision on ground-truth voxels) and ``L_unsup`` (the ``unsup_loss`` on trusted pseudo-labelled voxels,
   class-weighted by ``class_balance`` when set);
4. ``auxiliary_losses``: e.g. FKD (none here);
5. ``L = L_sup + w_u(t) L_unsup + sum(aux)``; optimizer step; EMA update of the teacher.

The student is nnU-Net's network and is what gets saved as ``network_weights`` and used for prediction.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.pic.cutmix import MixBatch, assemble, downsample_nearest
from nnunet_dinomix.ssl.ema import ema_decay, ema_update, make_ema_teacher
from nnunet_dinomix.ssl.losses import deep_supervision_sum, masked_dice_ce, unlabeled_loss
from nnunet_dinomix.ssl.perturb import clipped_gaussian_noise
from nnunet_dinomix.ssl.pseudo import (ClassBalance, PseudoLabeller, PseudoLabels, class_reliability,
                                       pseudo_label_quality, reliable_classes)
from nnunet_dinomix.ssl.region_shift import RegionIntensityShift, RegionShiftSettings
from nnunet_dinomix.ssl.schedules import sigmoid_rampup
from nnunet_dinomix.ssl.strong_view import SpatialView, StrongView
from nnunet_dinomix.training.semi_supervised import as_list, nnUNetTrainerSemiSupervised

QUALITY_KEYS = ("pl_precision", "pl_recall", "pl_confident")


def pretrained_weights_from_command_line(argv: Optional[List[str]] = None) -> Optional[str]:
    """The value of nnUNetv2_train's ``-pretrained_weights``: nnU-Net loads those weights itself (without the
    output layers) and does not hand the path to the trainer."""
    argv = sys.argv if argv is None else argv
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-pretrained_weights", "--pretrained_weights"):
            return value
    return None


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    extra_log_keys = ("train_loss_sup", "train_loss_unsup", "unsup_weight", "confident_fraction")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # the recipe; docs/method.md says which choices follow which paper and what was measured
        self.burn_in_fraction = 0.5  # supervised-only share of all iterations (1: labeled data only)
        self.burn_in_steps: Optional[int] = None  # absolute burn-in length; wins over the fraction
        self.ema_decay = 0.99  # max decay; warm-up min(1 - 1/(t+1), 0.99)
        self.unsup_weight_max = 0.5
        self.unsup_rampup_fraction = 0.25  # of the iterations after burn-in, sigmoid
        self.unsup_loss = "ce"  # ce | dice_ce | batch_dice_ce
        # None weighs background pseudo-labels like every class; DistDW weighs the most frequent class (background)
        # exactly 0, so the unlabeled loss only grows classes and over-segments (benchmarks/results/
        # background_trust_and_confusion_label_limited.md)
        self.unsup_class_weighting: Optional[str] = None  # None | distdw
        self.confidence_rule: Optional[str] = "class_adaptive"  # None | global | class_adaptive
        self.confidence_threshold = 0.9  # global threshold, and the cap of the class-adaptive ones
        self.confidence_quantile = 0.5  # class_adaptive: trust the most confident half of each class
        # True: a pseudo-label outside its class's largest connected component (per sample) is not trusted
        self.pseudo_label_largest_component = False
        # class gate: a class gives pseudo-labels only once the model's Dice for it on labeled data (nnU-Net's
        # online validation, averaged over epochs with class_gate_momentum) reaches class_gate_dice; None: no gate.
        # Without it a teacher reset at burn-in's end confidently calls unlearned organs by a learned one's name
        # (benchmarks/results/pl_diagnostics_label_limited_2400.md)
        self.class_gate_dice: Optional[float] = 0.8
        self.class_gate_momentum = 0.5
        # marginal background: on unlabeled voxels, a background pseudo-label means "background or a class the gate
        # holds closed", so the unlabeled loss never pushes down a class the teacher has not learned yet
        self.unsup_marginal_background = True
        # with a mixer, L_sup's per-sample Dice counts each sample by its share of ground-truth voxels: an unlabeled
        # sample holds ground truth only in a pasted box, where most classes are absent, and a uniform mean over the
        # samples would halve the labeled samples' Dice gradient against plain nnU-Net (ssl/losses.py). On by
        # default since 2026-12-07: +1.7 over three seeds against plain nnU-Net without left-right mirroring
        # (benchmarks/results/README.md, Result 7)
        self.sup_dice_weigh_samples = True
        self.student_noise_std = 0.1  # on nnU-Net's normalised intensities
        # True: the student sees a strong intensity view of the teacher's unlabeled crop (FixMatch's weak-to-strong
        # consistency, ssl/strong_view.py); False: the same crop with the noise above only
        self.student_strong_view = False
        # True: the student's view is also rotated in-plane and zoomed, the pseudo-labels moved along
        # (ssl/strong_view.py: SpatialView); the teacher still sees nnU-Net's crop
        self.student_spatial_view = False
        # a number s: in the student's view, each region the teacher labels with a foreground class is shifted in
        # intensity on its own draw, uniform in [-s, s] normalised units, with probability 0.5 per class
        # (ssl/region_shift.py); None: off
        self.student_region_shift: Optional[float] = None
        # a supervised nnU-Net checkpoint of this dataset to start from (burn-in skipped); None: the
        # -pretrained_weights of nnUNetv2_train's command line, if given
        self.pretrained_weights: Optional[str] = None
        # parts, built in initialize()/on_train_start(); an ablation leaves one at None
        self.ema_teacher: Optional[nn.Module] = None
        self.pseudo_labeller: Optional[PseudoLabeller] = None
        self.class_balance: Optional[ClassBalance] = None
        self.strong_view: Optional[StrongView] = None
        self.spatial_view: Optional[SpatialView] = None
        self.region_shift: Optional[RegionIntensityShift] = None
        self.mixer = None  # e.g. PICMixer: MixBatch, progress -> MixBatch, with state_dict()

    # ------------------------------------------------------------------ the algorithm
    def train_step(self, batch: dict) -> dict:
        x_l, y_l = self.labeled_batch(batch)
        burn_in = self.global_step < self.burn_in_length()
        if self.global_step == self.burn_in_length():
            self.reset_teacher()  # 0. burn-in ends: the teacher starts from the supervised student
        x_u, truth_u = (None, None) if burn_in else self.unlabeled_batch_with_truth()
        with self.autocast():
            pseudo = None if burn_in else self.teacher_pseudo_labels(x_u)  # 1. teacher
            mixed = self.mix(x_l, y_l, x_u, pseudo)  # 2. mixer
            outputs, features = self.student_forward(mixed.image)  # 3. student
            loss_sup, loss_unsup = self.segmentation_losses(outputs, mixed, y_l)
            aux = self.auxiliary_losses(features, mixed)  # 4. auxiliary losses
            w_u = 0.0 if burn_in else self.unsup_weight()
            loss = loss_sup + w_u * loss_unsup + sum(aux.values())  # 5.
        self.optimizer_step(loss)
        if not burn_in:
            self.update_teacher()
        self.step_done()
        return self.step_log(loss, loss_sup, loss_unsup, aux, w_u, pseudo, truth_u)

    @torch.no_grad()
    def teacher_pseudo_labels(self, x_u: torch.Tensor) -> PseudoLabels:
        pseudo = self.pseudo_labeller(as_list(self.ema_teacher(x_u))[0])
        if self.class_balance is not None:
            self.class_balance.update(pseudo.labels, pseudo.mask)
        return pseudo

    def mix(self, x_l: torch.Tensor, y_l, x_u: Optional[torch.Tensor], pseudo: Optional[PseudoLabels]) -> MixBatch:
        """The student's batch: labeled samples, then (after burn-in) the student's view of the unlabeled ones with
        their pseudo-labels; then the mixer's boxes, if any."""
        full_res_target = as_list(y_l)[0]
        if x_u is None:
            empty = x_l[:0]
            batch = assemble(x_l, full_res_target, empty, full_res_target[:0], empty[:, :1],
                             self.label_manager.ignore_label)
        else:
            view, pseudo = self.student_view(x_u, pseudo)
            batch = assemble(x_l, full_res_target, view, pseudo.labels, pseudo.mask, self.label_manager.ignore_label)
        return batch if self.mixer is None else self.mixer(batch, self.progress())

    def student_view(self, x_u: torch.Tensor, pseudo: PseudoLabels) -> Tuple[torch.Tensor, PseudoLabels]:
        """The student's view of the unlabeled crop the teacher saw, and the pseudo-labels where they now lie: the
        spatial view moves both (when there is one), the strong view and the clipped noise only intensities. Drawn
        from the unlabeled stream."""
        with self.unlabeled_random.active():
            if self.spatial_view is not None:
                x_u, *moved = self.spatial_view(x_u, pseudo.labels, pseudo.confidence, pseudo.mask)
                pseudo = PseudoLabels(*moved)
            if self.region_shift is not None:
                x_u = self.region_shift(x_u, pseudo.labels)
            view = x_u if self.strong_view is None else self.strong_view(x_u)
            return clipped_gaussian_noise(view, self.student_noise_std), pseudo

    def student_view_name(self) -> str:
        parts = [name for name, part in (("spatial", self.spatial_view),
                                         (f"region shift {self.student_region_shift}", self.region_shift),
                                         ("strong", self.strong_view)) if part]
        return " + ".join(parts + [f"noise {self.student_noise_std}"])

    def student_forward(self, x: torch.Tensor):
        """The student's outputs at every scale, and the features an auxiliary loss taps (None here)."""
        return as_list(self.network(x)), None

    def segmentation_losses(self, outputs: List[torch.Tensor], mixed: MixBatch, y_l):
        """``(L_sup, L_unsup)``. Without a mixer the labeled samples are untouched, and ``L_sup`` is exactly
        nnU-Net's loss on nnU-Net's own deep-supervision targets; with one, the same Dice + CE on the ground-truth
        voxels of the mixed batch. Pseudo-labels are full resolution, downsampled as nnU-Net downsamples targets."""
        weights = self.deep_supervision_weights()
        scales = self._get_deep_supervision_scales() if self.enable_deep_supervision else None
        b = mixed.num_labeled
        if self.mixer is None:
            student_l = [o[:b] for o in outputs]
            loss_sup = self.loss(student_l if self.enable_deep_supervision else student_l[0], y_l)
        else:
            labels = downsample_nearest(mixed.label, scales)
            loss_sup = deep_supervision_sum(
                lambda o, y, m: masked_dice_ce(o, y, m, self.configuration_manager.batch_dice,
                                               weigh_samples=self.sup_dice_weigh_samples), weights, outputs,
                labels, downsample_nearest(mixed.ground_truth, scales))
        rows = mixed.pseudo_weight.flatten(1).sum(1) > 0  # samples holding pseudo-labelled voxels
        if not bool(rows.any()):
            return loss_sup, outputs[0].sum() * 0.0
        class_weights = self.class_balance.weights if self.class_balance is not None else None
        merged = self.marginal_classes()
        loss_unsup = deep_supervision_sum(
            lambda o, y, m: unlabeled_loss(self.unsup_loss, o, y, m, self.configuration_manager.batch_dice,
                                           class_weights, merged),
            weights, [o[rows] for o in outputs], downsample_nearest(mixed.label[rows], scales),
            downsample_nearest(mixed.pseudo_weight[rows], scales))
        return loss_sup, loss_unsup

    def marginal_classes(self) -> Optional[torch.Tensor]:
        """(K,) bool: the classes a background pseudo-label does not rule out (the gate's closed ones), or None."""
        gate = None if self.pseudo_labeller is None else self.pseudo_labeller.reliable
        if not self.unsup_marginal_background or gate is None:
            return None
        return ~gate

    def auxiliary_losses(self, features, mixed: MixBatch) -> Dict[str, torch.Tensor]:
        """Weighted auxiliary terms by log name (``train_loss_<name>``); none in Mean Teacher."""
        return {}

    # ------------------------------------------------------------------ schedules
    def burn_in_length(self) -> int:
        if self.burn_in_steps is not None:
            return int(self.burn_in_steps)
        return round(self.burn_in_fraction * self.total_steps)

    def progress(self) -> float:
        return self.global_step / max(self.total_steps, 1)

    def unsup_weight(self) -> float:
        after = self.total_steps - self.burn_in_length()
        rampup = round(self.unsup_rampup_fraction * after)
        return self.unsup_weight_max * sigmoid_rampup(self.global_step - self.burn_in_length(), rampup)

    def check_recipe(self) -> None:
        """Refuse settings that cannot run, before anything is built."""
        if self.unsup_marginal_background and self.class_gate_dice is None:
            raise DinoMixError(f"{self.__class__.__name__}: unsup_marginal_background merges the classes the class "
                               f"gate holds closed into background; set class_gate_dice (e.g. 0.8) as well, or switch "
                               f"the marginal background off (unsup_marginal_background = False) when the gate "
                               f"is off.")
        burn_in, total = self.burn_in_length(), self.total_steps
        if not 0 <= burn_in <= total:
            raise DinoMixError(
                f"{self.__class__.__name__}: the burn-in ({burn_in} iterations) is longer than the run "
                f"({self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations = {total}); lower "
                f"burn_in_fraction / burn_in_steps or train longer. (A burn-in as long as the run trains on the "
                f"labeled data only, mixed by the mixer if there is one.)")

    # ------------------------------------------------------------------ teacher life cycle
    def update_teacher(self) -> None:
        ema_update(self.ema_teacher, self.student, ema_decay(self.global_step, self.ema_decay))

    def reset_teacher(self) -> None:
        self.ema_teacher.load_state_dict(self.student.state_dict())

    def update_class_gate(self) -> None:
        """Open or close each class's pseudo-labels from the Dice history nnU-Net logged (which ``--c`` restores, so
        the gate needs no state of its own)."""
        if self.class_gate_dice is None or self.pseudo_labeller is None:
            return
        history = list(self.logger.get_value("dice_per_class_or_region", step=None))[:self.current_epoch]
        reliability = class_reliability(history, self.class_gate_momentum)
        self.pseudo_labeller.reliable = reliable_classes(
            reliability, self.label_manager.num_segmentation_heads, self.class_gate_dice)
        if self.global_step >= self.burn_in_length():
            closed = [n for n, ok in zip(self.class_names(), self.pseudo_labeller.reliable[1:].tolist()) if not ok]
            self.print_to_log_file(f"Class gate (Dice >= {self.class_gate_dice} on labeled data): closed "
                                   f"{', '.join(closed) if closed else 'none'}")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.update_class_gate()

    def initialize(self):
        super().initialize()
        num_classes = self.label_manager.num_segmentation_heads
        self.pseudo_labeller = PseudoLabeller(num_classes, self.confidence_rule, self.confidence_threshold,
                                              self.confidence_quantile,
                                              largest_component=self.pseudo_label_largest_component)
        self.class_balance = ClassBalance(num_classes) if self.unsup_class_weighting == "distdw" else None
        if self.unsup_class_weighting not in (None, "distdw"):
            raise DinoMixError(f"unknown unsup_class_weighting {self.unsup_class_weighting!r}; use None or 'distdw'")
        self.strong_view = StrongView() if self.student_strong_view else None
        self.spatial_view = SpatialView() if self.student_spatial_view else None
        self.region_shift = RegionIntensityShift(num_classes, RegionShiftSettings(self.student_region_shift)) \
            if self.student_region_shift else None
        self.mixer = self.build_mixer()

    def build_mixer(self):
        """The mixing part (None: no mixing). Built in initialize(); PIC trainers return a PICMixer."""
        return None

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, **kwargs):
        """nnU-Net's training pipeline, for the labeled and the unlabeled loader. A mixer takes mirroring over from
        the loaders and applies it after the mix: independently mirrored source and target would put a pasted left
        kidney on the right. The axes are taken here, where the loaders receive them, so that a variant restricting
        them in ``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` (as nnU-Net's
        ``nnUNetTrainer_onlyMirror01`` does for left/right labels) restricts the mixer's too. Test-time mirroring
        stays nnU-Net's (``inference_allowed_mirroring_axes``)."""
        if self.mixer is not None and hasattr(self.mixer, "mirror_axes"):
            self.mixer.mirror_axes = tuple(mirror_axes) if mirror_axes else None
            mirror_axes = None
        return super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                               do_dummy_2d_data_aug, **kwargs)

    def start_from_supervised_model(self) -> Optional[str]:
        """Load the whole network, output layers included, from ``pretrained_weights`` (or nnUNetv2_train's
        ``-pretrained_weights``); returns the path, or None when there is none.

        nnU-Net's ``load_pretrained_weights`` has already copied everything but the ``.seg_layers.`` (it is made for
        transfer to other label sets). Here the model is a supervised model of the same dataset, whose output layers
        the teacher's first pseudo-labels need; a checkpoint of another label set or architecture is refused."""
        path = self.pretrained_weights or pretrained_weights_from_command_line()
        if path is None:
            return None
        if not os.path.isfile(path):
            raise DinoMixError(f"Pretrained weights {path} do not exist.")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        theirs = checkpoint.get("init_args", {}).get("dataset_json", {}).get("labels")
        if theirs is not None and theirs != self.dataset_json["labels"]:
            raise DinoMixError(
                f"{path} was trained for the labels {theirs}, this dataset has {self.dataset_json['labels']}. "
                f"{self.__class__.__name__} starts from a supervised model of the same dataset (output layers "
                f"included). To transfer to another label set, train nnUNetTrainer with -pretrained_weights first.")
        try:
            self.student.load_state_dict(checkpoint["network_weights"])
        except (RuntimeError, KeyError) as e:
            raise DinoMixError(f"{path} does not hold a network of this plans' architecture ({e}). Use a checkpoint "
                               f"trained with the same plans and configuration.") from e
        return path

    def on_train_start(self):
        self.check_recipe()
        self.open_unlabeled_pool()
        if not self.was_initialized:
            self.initialize()
        resumed = self.ema_teacher is not None  # restored by --c
        pretrained = None if resumed else self.start_from_supervised_model()  # refused before anything starts
        super().on_train_start()
        if pretrained is not None:
            self.burn_in_steps = 0  # the supervised model is the burn-in
            self.print_to_log_file(f"Started from the supervised model {pretrained} (output layers included); "
                                   f"burn-in skipped.")
        if not resumed:  # the teacher starts from the (possibly pretrained) student
            self.ema_teacher = make_ema_teacher(self.student)
        self.print_to_log_file(
            f"Recipe: burn-in {self.burn_in_length()} of {self.total_steps} iterations; unlabeled loss "
            f"{self.unsup_loss} x {self.unsup_weight_max} (ramp {self.unsup_rampup_fraction} of the rest), class "
            f"weighting {self.unsup_class_weighting}, confidence rule {self.confidence_rule} "
            f"({self.confidence_threshold}), class gate {self.class_gate_dice}, largest component only "
            f"{self.pseudo_label_largest_component}, marginal background {self.unsup_marginal_background}; student "
            f"view {self.student_view_name()}; mixer {self.mixer_description()}")

    def mixer_description(self) -> str:
        if self.mixer is None:
            return "None"
        settings = getattr(self.mixer, "settings", None)
        return type(self.mixer).__name__ + (f" with {settings}" if settings is not None else "")

    # ------------------------------------------------------------------ logging and pseudo-label diagnostics
    def log_keys(self) -> Tuple[str, ...]:
        keys = super().log_keys() + tuple(f"train_loss_{name}" for name in self.auxiliary_loss_names())
        return keys + tuple(f"{q}_{name}" for q in QUALITY_KEYS for name in self.class_names())

    def mean_log_keys(self) -> Tuple[str, ...]:
        return tuple(k for k in self.log_keys() if not k.startswith(QUALITY_KEYS))

    def auxiliary_loss_names(self) -> Tuple[str, ...]:
        return ()

    def class_names(self) -> List[str]:
        """Names of the foreground classes, in label order."""
        names = {int(v): k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
        return [names.get(int(c), str(c)) for c in self.label_manager.foreground_labels]

    def step_log(self, loss, loss_sup, loss_unsup, aux, w_u, pseudo, truth_u) -> dict:
        def value(t):
            return t.detach().float().cpu().numpy()

        out = {"loss": value(loss), "train_loss_sup": value(loss_sup), "train_loss_unsup": value(loss_unsup),
               "unsup_weight": w_u, "confident_fraction": value(pseudo.mask.mean()) if pseudo is not None else np.nan}
        out.update({f"train_loss_{name}": value(v) for name, v in aux.items()})
        if pseudo is not None and truth_u is not None:
            out["pl_counts"] = pseudo_label_quality(pseudo, truth_u, self.label_manager.num_segmentation_heads
                                                    ).numpy()
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        counts = [o.pop("pl_counts") for o in train_outputs if "pl_counts" in o]
        super().on_train_epoch_end(train_outputs)
        total = np.sum(counts, axis=0) if counts else np.zeros((4, self.label_manager.num_segmentation_heads))
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, total)
            total = np.sum(gathered, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = {"pl_precision": total[0] / total[1], "pl_recall": total[0] / total[2],
                      "pl_confident": total[3] / total[2]}
        for q, r in ratios.items():
            for c, name in zip(self.label_manager.foreground_labels, self.class_names()):
                self.logger.log(f"{q}_{name}", float(r[int(c)]), self.current_epoch)

    # ------------------------------------------------------------------ checkpointing
    def training_state(self) -> dict:
        state = super().training_state()
        state["ema_teacher"] = self.ema_teacher.state_dict() if self.ema_teacher is not None else None
        state["pseudo_labeller"] = self.pseudo_labeller.state_dict() if self.pseudo_labeller is not None else None
        state["class_balance"] = self.class_balance.state_dict() if self.class_balance is not None else None
        state["mixer"] = self.mixer.state_dict() if self.mixer is not None else None
        return state

    def load_training_state(self, state: Optional[dict]) -> None:
        super().load_training_state(state)
        self.ema_teacher = make_ema_teacher(self.student)
        if state is None:
            return
        if state.get("ema_teacher") is not None:
            self.ema_teacher.load_state_dict(state["ema_teacher"])
        for part, key in ((self.pseudo_labeller, "pseudo_labeller"), (self.class_balance, "class_balance"),
                          (self.mixer, "mixer")):
            if part is not None and state.get(key) is not None:
                part.load_state_dict(state[key])
