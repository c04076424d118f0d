"""Where does the teacher call a not-yet-learned organ "background", and which rule would stop trusting it there?

With the class gate on, a class the model does not yet segment on labeled data gives no pseudo-labels; but the
background the teacher predicts on that organ's voxels is still trusted, and where background carries weight in the
unlabeled loss (not under DistDW, which weighs it 0) it teaches the student to erase the organ
(benchmarks/results/background_trust_and_confusion_label_limited.md). This probe draws
unlabeled batches exactly as training does (the pool's diagnostics truth comes along), runs the checkpoint's teacher,
and for candidate rules that withhold background trust near closed classes reports:

* ``leak``: per closed class, the share of its true voxels still trusted as background (lower is better);
* ``bg lost``: the share of true-background voxels the rule stops trusting (the supervision it costs);
* ``open lost``: the share of true voxels of open classes it stops trusting.

Rules: ``gate`` is today's gate (background untrusted where a closed class is the runner-up); ``mass>=t``
additionally withholds background where the teacher's summed probability of the closed classes reaches ``t``;
``margin r`` withholds background within ``r`` voxels of any voxel the teacher labels with a closed class.
Diagnostics only; nothing is trained or written::

    python benchmarks/background_trust_probe.py benchmarks/work/RUN/seed_1 CHECKPOINT.pth \
        --trainer nnUNetTrainerDinoMixNoFKDBudget --settings '{"class_gate_dice": 0.8}' --batches 16
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MASS_THRESHOLDS = (0.01, 0.03, 0.1)
MARGINS = (1, 2, 4)


def rule_masks(probs, labels, reliable) -> Dict[str, "torch.Tensor"]:
    """Name -> (B, 1, *spatial) bool: where each rule trusts the teacher's label (background rules only; a closed
    class's own voxels are untrusted under every rule, as under the gate)."""
    import torch.nn.functional as F

    from nnunet_dinomix.ssl.pseudo import gate_mask

    gate = gate_mask(probs, labels, reliable) > 0
    closed = ~reliable
    closed_mass = (probs * closed.to(probs.dtype).view(1, -1, *([1] * (probs.dim() - 2)))).sum(1, keepdim=True)
    background = labels == 0
    rules = {"gate": gate}
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
            probs = torch.softmax(as_list(trainer.ema_teacher(x_u))[0].float(), 1)
        labels = probs.argmax(1, keepdim=True)
        truth = truth.reshape(labels.shape).long()
        totals += torch.bincount(truth[truth >= 0].reshape(-1), minlength=k)[:k].double()
        for name, trusted in rule_masks(probs, labels, reliable.to(labels.device)).items():
            row = counts.setdefault(name, {})
            for c in range(k):
                on_c = truth == c
                if c in closed:  # leak: true voxels of c trusted as background
                    key, hit = names[c], trusted & on_c & (labels == 0)
                else:  # supervision lost on a class the rule should keep
                    key, hit = ("bg lost" if c == 0 else "open lost"), ~trusted & on_c
                row[key] = row.get(key, 0.0) + float(hit.sum())
    table = {}
    open_total = float(sum(totals[c] for c in range(1, k) if c not in closed))
    for name, row in counts.items():
        table[name] = {key: value / max(1.0, float(totals[names.index(key)]) if key in names else
                                        (float(totals[0]) if key == "bg lost" else open_total))
                       for key, value in row.items()}
    return [names[c] for c in closed], table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seed_folder", help="a seed folder of ssl_quality.py (holds nnUNet_raw and nnUNet_preprocessed)")
    p.add_argument("checkpoint", help="the checkpoint whose teacher is probed (a plain one: its network)")
    p.add_argument("--trainer", default="nnUNetTrainerDinoMixNoFKDBudget")
    p.add_argument("--plans", default="nnUNetPlansTinyCPU")
    p.add_argument("--dataset", default="990")
    p.add_argument("--settings", default='{"class_gate_dice": 0.8}', help="JSON trainer attributes")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=48)
    p.add_argument("--iterations", type=int, default=50)
    args = p.parse_args(argv)

    from nnunet_dinomix.commands import nnunet_env
    os.environ.update(nnunet_env(os.path.abspath(args.seed_folder), "cpu"))
    log_folder = tempfile.mkdtemp(prefix="background_trust_probe_")
    os.environ.update(nnUNet_results=log_folder, nnUNet_n_proc_DA="0", DINOMIX_SEED=str(args.seed),
                      DINOMIX_TRAINER_SETTINGS=args.settings, DINOMIX_NUM_EPOCHS=str(args.epochs),
                      DINOMIX_ITERATIONS_PER_EPOCH=str(args.iterations))
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(args.dataset, "3d_fullres", "all", args.trainer, args.plans,
                                    device=torch.device("cpu"))
    trainer.disable_checkpointing = True
    trainer.on_train_start()
    trainer.load_checkpoint(args.checkpoint)  # the EMA teacher, or for a plain checkpoint the student
    trainer.on_train_epoch_start()  # the class gate from the loaded Dice history
    closed, table = probe(trainer, args.batches)
    trainer.on_train_end()
    shutil.rmtree(log_folder, ignore_errors=True)
    print(f"checkpoint: {args.checkpoint} (epoch {trainer.current_epoch}); {args.batches} unlabeled batches; "
          f"closed: {', '.join(closed) or 'none'}")
    keys = closed + ["bg lost", "open lost"]
    print("| rule | " + " | ".join(f"{k} %" for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{100 * row.get(k, 0.0):.1f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
