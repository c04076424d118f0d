"""What the teacher's trusted pseudo-labels say against the truth, class by class, at a benchmark checkpoint.

``pl_diagnostics.py`` reads per-class recall and precision from the training log; this probe says *where* the
errors lie. It draws unlabeled batches exactly as training does (the pool's diagnostics truth comes along), runs the
checkpoint's teacher through the trainer's own pseudo-labeller (confidence rule and class gate as configured), and
prints two row-normalised tables over the trusted voxels:

* **by pseudo-label**: of the voxels trusted as class c, the share of each true class (the diagonal is precision);
* **by truth**: of the true voxels of class c, the share trusted as each class, and the share not trusted.

Diagnostics only; nothing is trained or written::

    python benchmarks/pseudo_label_confusion.py benchmarks/work/RUN/seed_1 CHECKPOINT.pth \
        --trainer nnUNetTrainerDinoMixNoFKDBudget --settings '{"class_gate_dice": 0.8}' --batches 16
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from checkpoint_probe import add_arguments, trainer_at_checkpoint  # noqa: E402  (benchmarks/, the script's folder)


def border_band(shape, width: int):
    """(1, 1, *spatial) bool: the voxels within ``width`` of the patch's faces."""
    import torch
    band = torch.zeros(shape[2:], dtype=torch.bool)
    for axis, size in enumerate(shape[2:]):
        w = min(width, size // 2)
        index = [slice(None)] * len(shape[2:])
        index[axis] = slice(0, w)
        band[tuple(index)] = True
        index[axis] = slice(size - w, size)
        band[tuple(index)] = True
    return band[None, None]


def use_weak_view(trainer) -> None:
    """Rebuild the trainer's unlabeled stream without nnU-Net's intensity augmentations (noise, blur, brightness,
    contrast, low resolution, gamma: the transforms nnU-Net wraps in ``RandomTransform``), keeping the crop, rotation,
    scaling and mirroring: the view a FixMatch-style teacher would label."""
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    build = trainer.get_training_transforms

    def spatial_only(*args, **kwargs):
        composed = build(*args, **kwargs)
        composed.transforms = [t for t in composed.transforms if not isinstance(t, RandomTransform)]
        return composed

    trainer.get_training_transforms = spatial_only
    try:
        trainer.dataloader_unlabeled = trainer.get_unlabeled_dataloader()
    finally:
        del trainer.get_training_transforms


def trusted_confusion(trainer, batches: int, border: int = 0):
    """Region name -> (K, 2K) float64 voxel counts: rows the truth; columns 0..K-1 the trusted pseudo-label,
    columns K..2K-1 the teacher's label on untrusted voxels. Regions: ``all``, and with ``border`` > 0 also
    ``border`` (within that many voxels of the patch's faces, where the teacher sees the least context) and
    ``interior``."""
    import torch

    k = trainer.label_manager.num_segmentation_heads
    counts = {}
    for _ in range(batches):
        x_u, truth = trainer.unlabeled_batch_with_truth()
        if truth is None:
            raise SystemExit("the unlabeled pool has no diagnostics truth (labelsUnlabeled)")
        pseudo = trainer.teacher_pseudo_labels(x_u)
        truth = truth.reshape(pseudo.labels.shape).long()
        column = torch.where(pseudo.mask > 0, pseudo.labels, pseudo.labels + k)
        regions = {"all": truth >= 0}
        if border > 0:
            band = border_band(truth.shape, border).to(truth.device)
            regions.update(border=regions["all"] & band, interior=regions["all"] & ~band)
        for name, where in regions.items():
            pairs = truth[where] * (2 * k) + column[where]
            found = torch.bincount(pairs, minlength=2 * k * k)[:2 * k * k].double().reshape(k, 2 * k).cpu()
            counts[name] = counts.get(name, 0) + found
    return counts


def table(counts, names: List[str], kind: str) -> List[str]:
    """Markdown rows, per cent of each row; zero-count rows left out. ``kind``: ``pseudo`` (rows the trusted label,
    columns the truth), ``truth`` (rows the truth, columns the trusted label and untrusted) or ``untrusted`` (rows the
    truth, columns the teacher's label where it is not trusted)."""
    import torch

    k = len(names)
    if kind == "pseudo":
        matrix, columns, head = counts[:, :k].T, names, "trusted as \\ true"
    elif kind == "truth":
        matrix = torch.cat([counts[:, :k], counts[:, k:].sum(1, keepdim=True)], 1)
        columns, head = names + ["untrusted"], "true \\ trusted as"
    else:
        matrix, columns, head = counts[:, k:], names, "true \\ untrusted, teacher says"
    lines = [f"| {head} | " + " | ".join(columns) + " | voxels |", "|---|" + "---:|" * (len(columns) + 1)]
    for i, name in enumerate(names):
        row = matrix[i]
        total = float(row.sum())
        if total == 0:
            continue
        lines.append(f"| {name} | " + " | ".join(f"{100 * float(v) / total:.0f}" for v in row) + f" | {total:.0f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p, trainer="nnUNetTrainerDinoMixNoFKDBudget", settings='{"class_gate_dice": 0.8}', batches=16)
    p.add_argument("--border", type=int, default=0, metavar="W",
                   help="also tabulate the band within W voxels of the patch faces and the interior apart")
    p.add_argument("--view", choices=("strong", "weak"), default="strong",
                   help="strong: the unlabeled batches as training draws them (nnU-Net's full augmentation); weak: "
                        "without nnU-Net's intensity augmentations")
    args = p.parse_args(argv)
    with trainer_at_checkpoint(args, "pseudo_label_confusion") as trainer:
        if args.view == "weak":
            use_weak_view(trainer)
        counts = trusted_confusion(trainer, args.batches, args.border)
        reliable = trainer.pseudo_labeller.reliable
    names = ["background"] + trainer.class_names()
    closed = [] if reliable is None else [names[c] for c in range(1, len(names)) if not bool(reliable[c])]
    print(f"checkpoint: {args.checkpoint} (epoch {trainer.current_epoch}); {args.batches} unlabeled batches, "
          f"{args.view} view; closed by the gate: {', '.join(closed) or 'none'}\n")
    for region, found in counts.items():
        where = "" if region == "all" else (f", {args.border}-voxel band at the patch faces" if region == "border"
                                            else ", patch interior")
        print(f"By pseudo-label{where} (% of the voxels trusted as the row's class; the diagonal is precision):\n")
        print("\n".join(table(found, names, "pseudo")))
        print(f"\nBy truth{where} (% of the row's true voxels, trusted as each class or not trusted):\n")
        print("\n".join(table(found, names, "truth")))
        print(f"\nBy truth{where}, untrusted voxels only (% of the row's untrusted voxels by the teacher's label):\n")
        print("\n".join(table(found, names, "untrusted")) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
