"""nnUNetTrainerMeanTeacher: nnU-Net's supervised loss plus confidence-masked mean-teacher pseudo-labels.

One iteration (METHOD.md steps 1, 3 and 5 without PIC and FKD):

1. the EMA teacher predicts the unlabeled batch; arg-max pseudo-labels and confidence masks at every
   deep-supervision scale;
2. the student sees the labeled batch and the unlabeled batch (with clipped Gaussian noise) in one forward;
3. ``L = L_sup + w_u(t) * L_unsup``: nnU-Net's Dice+CE with deep supervision, plus the same loss against the
   pseudo-labels on confident voxels, weighted by a sigmoid ramp-up;
4. optimizer step, then the EMA update of the teacher.

The student is nnU-Net's network and is what gets saved as ``network_weights`` and used for prediction.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nnunet_dinomix.ssl.ema import ema_decay, ema_update, make_ema_teacher
from nnunet_dinomix.ssl.losses import pseudo_label_consistency
from nnunet_dinomix.ssl.perturb import clipped_gaussian_noise
from nnunet_dinomix.ssl.schedules import sigmoid_rampup
from nnunet_dinomix.training.semi_supervised import as_list, nnUNetTrainerSemiSupervised


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    extra_log_keys = ("train_loss_sup", "train_loss_unsup", "unsup_weight", "confident_fraction")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_decay = 0.99  # max decay; warm-up min(1 - 1/(t+1), 0.99)
        self.unsup_weight_max = 1.0
        self.unsup_rampup_fraction = 0.4  # of all iterations
        self.confidence_threshold = 0.9
        self.student_noise_std = 0.1  # on nnU-Net's normalised intensities
        self.ema_teacher: Optional[nn.Module] = None

    # ------------------------------------------------------------------ the algorithm
    def train_step(self, batch: dict) -> dict:
        x_l, y_l = self.labeled_batch(batch)
        x_u = self.unlabeled_batch()
        with self.autocast():
            teacher_u = self.teacher_predict(x_u)
            student_l, student_u = self.student_predict(x_l, clipped_gaussian_noise(x_u, self.student_noise_std))
            loss_sup = self.loss(student_l if self.enable_deep_supervision else student_l[0], y_l)
            loss_unsup, confident = pseudo_label_consistency(
                student_u, teacher_u, self.deep_supervision_weights(), self.confidence_threshold,
                self.configuration_manager.batch_dice)
            w_u = self.unsup_weight()
            loss = loss_sup + w_u * loss_unsup
        self.optimizer_step(loss)
        self.update_teacher()
        self.step_done()
        return {"loss": loss.detach().cpu().numpy(), "train_loss_sup": loss_sup.detach().cpu().numpy(),
                "train_loss_unsup": loss_unsup.detach().cpu().numpy(), "unsup_weight": w_u,
                "confident_fraction": confident.detach().cpu().numpy()}

    @torch.no_grad()
    def teacher_predict(self, x_u: torch.Tensor):
        return as_list(self.ema_teacher(x_u))

    def student_predict(self, x_l: torch.Tensor, x_u: torch.Tensor):
        """One forward over both batches (nnU-Net normalises per instance, so this equals two forwards)."""
        b = x_l.shape[0]
        outputs = as_list(self.network(torch.cat((x_l, x_u))))
        return [o[:b] for o in outputs], [o[b:] for o in outputs]

    def unsup_weight(self) -> float:
        rampup = round(self.unsup_rampup_fraction * self.total_steps)
        return self.unsup_weight_max * sigmoid_rampup(self.global_step, rampup)

    def update_teacher(self) -> None:
        ema_update(self.ema_teacher, self.student, ema_decay(self.global_step, self.ema_decay))

    # ------------------------------------------------------------------ teacher life cycle
    def on_train_start(self):
        super().on_train_start()
        if self.ema_teacher is None:  # not restored by --c: start from the (possibly pretrained) student
            self.ema_teacher = make_ema_teacher(self.student)

    def training_state(self) -> dict:
        state = super().training_state()
        state["ema_teacher"] = self.ema_teacher.state_dict() if self.ema_teacher is not None else None
        return state

    def load_training_state(self, state: Optional[dict]) -> None:
        super().load_training_state(state)
        self.ema_teacher = make_ema_teacher(self.student)
        if state is not None and state.get("ema_teacher") is not None:
            self.ema_teacher.load_state_dict(state["ema_teacher"])
