"""Does the unlabeled loss slow the supervised learning of a class? Gradients of one semi-supervised step, measured.

For a checkpoint of a benchmark run (e.g. the reference's snapshot where the semi-supervised phase starts), this
builds the semi-supervised trainer on that seed's data, draws a few labeled + unlabeled batches exactly as
``train_step`` would, and measures per batch, over the network's parameters:

* ``|g_sup|`` and ``|g_unsup|``: the norms of the gradients of ``L_sup`` and of ``L_unsup``;
* ``clip``: the factor nnU-Net's clipping to norm 12 applies to the whole step, ``min(1, 12 / |g_sup + w g_unsup|)``,
  against ``min(1, 12 / |g_sup|)`` for plain nnU-Net at the same state (is the supervised step shrunk?);
* ``cos(g_c, g_unsup)``: the cosine between the unlabeled gradient and the gradient of the cross-entropy on the
  labeled voxels of class ``c`` (negative: a step on the unlabeled loss un-learns ``c`` on the labeled data).

Diagnostics only; nothing is trained or written. Run on a seed folder of ``ssl_quality.py``::

    python benchmarks/gradient_probe.py benchmarks/work/RUN/seed_1 CHECKPOINT.pth \
        --trainer nnUNetTrainerMeanTeacherBudget --settings '{"class_gate_dice": 0.8}' --batches 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from checkpoint_probe import add_arguments, trainer_at_checkpoint  # noqa: E402  (benchmarks/, the script's folder)


def gradient(loss, params) -> "torch.Tensor":
    """d loss / d params as one vector (zeros for parameters the loss does not reach)."""
    import torch
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def probe(trainer, batches: int, weight: float) -> List[Dict[str, float]]:
    import torch
    import torch.nn.functional as F

    from nnunet_dinomix.training.semi_supervised import as_list

    params = [p for p in trainer.trainable_parameters() if p.requires_grad]
    names = trainer.class_names()
    rows = []
    for _ in range(batches):
        x_l, y_l = trainer.labeled_batch(next(trainer.dataloader_train))
        x_u, _ = trainer.unlabeled_batch_with_truth()
        pseudo = trainer.teacher_pseudo_labels(x_u)
        mixed = trainer.mix(x_l, y_l, x_u, pseudo)
        outputs, _ = trainer.student_forward(mixed.image)
        loss_sup, loss_unsup = trainer.segmentation_losses(outputs, mixed, y_l)
        g_sup = gradient(loss_sup, params)
        g_un = gradient(loss_unsup, params)
        total = torch.linalg.vector_norm(g_sup + weight * g_un)
        row = {"g_sup": float(g_sup.norm()), "g_unsup": float(g_un.norm()),
               "cos(sup,unsup)": float(F.cosine_similarity(g_sup, g_un, dim=0)),
               "clip_plain": min(1.0, 12 / float(g_sup.norm())), "clip_ssl": min(1.0, 12 / float(total))}
        # the labeled samples' full-resolution logits and labels (without a mixer they are untouched)
        logits = outputs[0][:mixed.num_labeled]
        target = as_list(y_l)[0][:, 0].long()
        ce = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")
        for c, name in zip(trainer.label_manager.foreground_labels, names):
            voxels = target == int(c)
            if int(voxels.sum()) == 0:
                row[f"cos_{name}"] = math.nan
                continue
            g_c = gradient(ce[voxels].mean(), params)
            row[f"cos_{name}"] = float(F.cosine_similarity(g_c, g_un, dim=0))
        rows.append(row)
    return rows


def summary(rows: List[Dict[str, float]]) -> str:
    import numpy as np
    keys = list(rows[0])
    lines = ["| quantity | mean | min | max | batches |", "|---|---:|---:|---:|---:|"]
    for k in keys:
        v = np.array([r[k] for r in rows], dtype=float)
        v = v[~np.isnan(v)]
        if len(v):
            lines.append(f"| {k} | {v.mean():.3f} | {v.min():.3f} | {v.max():.3f} | {len(v)} |")
        else:
            lines.append(f"| {k} | - | - | - | 0 |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p, trainer="nnUNetTrainerMeanTeacherBudget", settings="{}", batches=8)
    p.add_argument("--weight", type=float, default=None,
                   help="the unlabeled weight w of the step [default: the trainer's unsup_weight_max]")
    args = p.parse_args(argv)
    with trainer_at_checkpoint(args, "gradient_probe") as trainer:
        trainer.network.train()
        weight = trainer.unsup_weight_max if args.weight is None else args.weight
        rows = probe(trainer, args.batches, weight)
    print(f"checkpoint: {args.checkpoint} (epoch {trainer.current_epoch}); trainer {args.trainer} {args.settings}; "
          f"w = {weight}")
    print(summary(rows))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
