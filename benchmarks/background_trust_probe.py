"""Where does the teacher call a not-yet-learned organ "background", and which rule would stop trusting it there?

With the class gate on, a class the model does not yet segment on labeled data gives no pseudo-labels; but the
background the teacher predicts on that organ's voxels is still trusted, and where background carries weight in the
unlabeled loss (not under DistDW, which weighs it 0) it teaches the student to erase the organ
(benchmarks/results/background_trust_and_confusion_label_limited.md). This probe draws
unlabeled batches exactly as training does (the pool's diagnostics truth comes along), runs the checkpoint's teacher,
and for candidate rules that withhold background trust near closed classes reports:

* ``leak``: per foreground class, closed or open, the share of its true voxels still trusted as background (lower
  is better);
* ``bg lost``: the share of true-background voxels the rule stops trusting (the supervision it costs);
* ``open lost``: the share of true voxels of open classes it stops trusting (whatever the teacher calls them).

Rules: ``recipe`` is the checkpoint's own pseudo-labeller (its confidence rule and class gate, as in training);
``recipe+bg>=t`` also withholds background where the teacher's background probability is below ``t`` (for an
*open* class the teacher is unsure of: a confident-enough background on its voxels passes the confidence cap);
``gate`` is today's gate (background untrusted where a closed class is the runner-up); ``mass>=t``
additionally withholds background where the teacher's summed probability of the closed classes reaches ``t``;
``margin r`` withholds background within ``r`` voxels of any voxel the teacher labels with a closed class.
Diagnostics only; nothing is trained or written::

    python benchmarks/background_trust_probe.py benchmarks/work/RUN/seed_1 CHECKPOINT.pth \
        --trainer nnUNetTrainerDinoMixNoFKDBudget --settings '{"class_gate_dice": 0.8}' --batches 16
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from checkpoint_probe import add_arguments, trainer_at_checkpoint  # noqa: E402  (benchmarks/, the script's folder)

MASS_THRESHOLDS = (0.01, 0.03, 0.1)
MARGINS = (1, 2, 4)
BACKGROUND_THRESHOLDS = (0.95, 0.99, 0.999)


def rule_masks(probs, labels, reliable, recipe) -> Dict[str, "torch.Tensor"]:
    """Name -> (B, 1, *spatial) bool: where each rule trusts the teacher's label (background rules only; a closed
    class's own voxels are untrusted under every rule, as under the gate). ``recipe``: the trainer's own mask."""
    import torch.nn.functional as F

    from nnunet_dinomix.ssl.pseudo import gate_mask

    rules = {"recipe": recipe}
    background = labels == 0
    for t in BACKGROUND_THRESHOLDS:
        rules[f"recipe+bg>={t}"] = recipe & ~(background & (probs[:, :1] < t))
    gate = gate_mask(probs, labels, reliable) > 0
    closed = ~reliable
    closed_mass = (probs * closed.to(probs.dtype).view(1, -1, *([1] * (probs.dim() - 2)))).sum(1, keepdim=True)
    rules["gate"] = gate
    for t in MASS_THRESHOLDS:
        rules[f"mass>={t}"] = gate & ~(background & (closed_mass >= t))
    closed_voxels = closed[labels].float()
    for r in MARGINS:
        near = F.max_pool3d(closed_voxels, 2 * r + 1, stride=1, padding=r) > 0
        rules[f"margin {r}"] = gate & ~(background & near)
    return rules


def probe(trainer, batches: int) -> Tuple[List[str], Dict[str, Dict[str, float]]]:
    import torch

    from nnunet_dinomix.training.semi_supervised import as_list

    k = trainer.label_manager.num_segmentation_heads
    reliable = trainer.pseudo_labeller.reliable
    if reliable is None:
        raise SystemExit("the trainer has no class gate: set class_gate_dice in --settings")
    closed = [c for c in range(1, k) if not bool(reliable[c])]
    names = ["background"] + trainer.class_names()
    counts: Dict[str, Dict[str, float]] = {}
    totals = torch.zeros(k, dtype=torch.float64)
    for _ in range(batches):
        x_u, truth = trainer.unlabeled_batch_with_truth()
        if truth is None:
            raise SystemExit("the unlabeled pool has no diagnostics truth (labelsUnlabeled)")
        with torch.no_grad():
            logits = as_list(trainer.ema_teacher(x_u))[0].float()
            recipe = trainer.pseudo_labeller(logits).mask > 0
        probs = torch.softmax(logits, 1)
        labels = probs.argmax(1, keepdim=True)
        truth = truth.reshape(labels.shape).long()
        totals += torch.bincount(truth[truth >= 0].reshape(-1), minlength=k)[:k].double()
        for name, trusted in rule_masks(probs, labels, reliable.to(labels.device), recipe).items():
            row = counts.setdefault(name, {})
            for c in range(k):
                on_c = truth == c
                if c > 0:  # leak: true voxels of c trusted as background
                    row[names[c]] = row.get(names[c], 0.0) + float((trusted & on_c & (labels == 0)).sum())
                if c not in closed:  # supervision lost on a class the rule should keep
                    key = "bg lost" if c == 0 else "open lost"
                    row[key] = row.get(key, 0.0) + float((~trusted & on_c).sum())
    denominators = {names[c]: float(totals[c]) for c in range(1, k)}
    denominators["bg lost"] = float(totals[0])
    denominators["open lost"] = float(sum(totals[c] for c in range(1, k) if c not in closed))
    table = {name: {key: value / max(1.0, denominators[key]) for key, value in row.items()}
             for name, row in counts.items()}
    return names[1:], [names[c] for c in closed], table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p, trainer="nnUNetTrainerDinoMixNoFKDBudget", settings='{"class_gate_dice": 0.8}', batches=16)
    args = p.parse_args(argv)
    with trainer_at_checkpoint(args, "background_trust_probe") as trainer:
        classes, closed, table = probe(trainer, args.batches)
    print(f"checkpoint: {args.checkpoint} (epoch {trainer.current_epoch}); {args.batches} unlabeled batches; "
          f"closed: {', '.join(closed) or 'none'}")
    keys = classes + ["bg lost", "open lost"]
    print("| rule | " + " | ".join(f"{k} %" for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{100 * row.get(k, 0.0):.1f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
