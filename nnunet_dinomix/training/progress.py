"""nnU-Net's per-epoch logger, extended with the semi-supervised curves.

nnU-Net's ``LocalLogger`` accepts only its predefined keys and draws a fixed ``progress.png``. This subclass
registers extra per-epoch keys and draws nnU-Net's three panels plus one for the semi-supervised terms, one for
the PIC curriculum and, where the unlabeled cases' truth is known (diagnostics), two for the per-class recall and
precision of the teacher's pseudo-labels.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np

from nnunetv2.training.logging.nnunet_logger import LocalLogger


class SemiSupervisedLocalLogger(LocalLogger):
    def __init__(self, extra_keys: Sequence[str], verbose: bool = False):
        super().__init__(verbose)
        self.extra_keys = tuple(extra_keys)
        for k in self.extra_keys:
            self.my_fantastic_logging[k] = []

    def load_checkpoint(self, checkpoint: dict):
        # a checkpoint from before a key existed gets that key back-filled, so the plot keeps working
        n = len(checkpoint.get("train_losses", []))
        for k in self.extra_keys:
            checkpoint.setdefault(k, [float("nan")] * n)
        super().load_checkpoint(checkpoint)

    def plot_progress_png(self, output_folder):
        import matplotlib
        matplotlib.use("agg")
        import matplotlib.pyplot as plt
        import seaborn as sns

        log: Dict[str, list] = self.my_fantastic_logging
        epochs = min(len(v) for v in log.values())
        x = list(range(epochs))
        sns.set(font_scale=2.5)
        pic_keys = [k for k in self.extra_keys if k.startswith("pic_prob_")]
        quality = {q: [k for k in self.extra_keys if k.startswith(q + "_")] for q in ("pl_recall", "pl_precision")}
        has_quality = any(np.isfinite(log[k][:epochs]).any() for keys in quality.values() for k in keys)
        n_panels = 4 + bool(pic_keys) + 2 * has_quality
        fig, axes = plt.subplots(n_panels, 1, figsize=(30, 18 * n_panels))

        ax = axes[0]
        ax2 = ax.twinx()
        ax.plot(x, log["train_losses"][:epochs], color="b", ls="-", label="loss_tr (total)", linewidth=4)
        ax.plot(x, log["val_losses"][:epochs], color="r", ls="-", label="loss_val", linewidth=4)
        if "train_loss_sup" in log:
            ax.plot(x, log["train_loss_sup"][:epochs], color="b", ls="--", label="loss_tr supervised", linewidth=3)
        ax2.plot(x, log["mean_fg_dice"][:epochs], color="g", ls="dotted", label="pseudo dice", linewidth=3)
        ax2.plot(x, log["ema_fg_dice"][:epochs], color="g", ls="-", label="pseudo dice (mov. avg.)", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.2, 1))

        ax = axes[1]
        starts, ends = log["epoch_start_timestamps"][:epochs], log["epoch_end_timestamps"][:epochs]
        durations = [e - s for s, e in zip(starts, ends)]
        ax.plot(x, durations, color="b", ls="-", label="epoch duration", linewidth=4)
        ax.set(ylim=[0, ax.get_ylim()[1]])
        ax.set_xlabel("epoch")
        ax.set_ylabel("time [s]")
        ax.legend(loc=(0, 1))

        ax = axes[2]
        ax.plot(x, log["lrs"][:epochs], color="b", ls="-", label="learning rate", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.legend(loc=(0, 1))

        ax = axes[3]
        ax2 = ax.twinx()
        styles = {"train_loss_unsup": ("m", "-", ax), "train_loss_fkd": ("y", "-", ax),
                  "unsup_weight": ("k", "--", ax2), "confident_fraction": ("c", "dotted", ax2)}
        for key in self.extra_keys:
            if key in styles:
                color, ls, target = styles[key]
                target.plot(x, log[key][:epochs], color=color, ls=ls, label=key, linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("unsupervised / distillation loss")
        ax2.set_ylabel("weight / fraction")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.3, 1))

        if pic_keys:  # the PIC curriculum: class sampling probabilities and gamma
            ax = axes[4]
            ax2 = ax.twinx()
            for key in pic_keys:
                ax.plot(x, log[key][:epochs], ls="-", label=key[len("pic_prob_"):], linewidth=3)
            if "pic_gamma" in log:
                ax2.plot(x, log["pic_gamma"][:epochs], color="k", ls="--", label="gamma", linewidth=3)
            ax.set_xlabel("epoch")
            ax.set_ylabel("PIC class sampling probability")
            ax2.set_ylabel("gamma")
            ax.legend(loc=(0, 1), ncol=min(len(pic_keys), 6))
            ax2.legend(loc=(0.9, 1))

        if has_quality:  # how good the teacher's pseudo-labels are, per class, against the diagnostic truth
            colors = sns.color_palette("husl", len(quality["pl_recall"]))
            for ax, q, ylabel in ((axes[-2], "pl_recall", "recall (of true voxels)"),
                                  (axes[-1], "pl_precision", "precision (of trusted pseudo-labels)")):
                for color, key in zip(colors, quality[q]):
                    name = key[len(q) + 1:]
                    ax.plot(x, log[key][:epochs], color=color, ls="-", label=name, linewidth=3)
                    if q == "pl_recall" and f"pl_confident_{name}" in log:
                        ax.plot(x, log[f"pl_confident_{name}"][:epochs], color=color, ls="dotted", linewidth=2)
                ax.set_xlabel("epoch")
                ax.set_ylabel("pseudo-label " + ylabel + (" / trusted (dotted)" if q == "pl_recall" else ""))
                ax.set(ylim=[0, 1.02])
                ax.legend(loc=(0, 1), ncol=min(len(quality[q]), 8))

        plt.tight_layout()
        fig.savefig(os.path.join(output_folder, "progress.png"))
        plt.close(fig)
