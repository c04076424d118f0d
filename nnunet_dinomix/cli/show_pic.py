"""``dinomix_show_pic``: look at what PIC feeds the student, for any preprocessed dataset.

Draws one labeled and one unlabeled batch exactly as the trainer does (nnU-Net's loader and augmentation, the
unlabeled pool), makes the EMA teacher's pseudo-labels, mixes with the current curriculum and writes

* ``pic_samples.png``: per mixed sample a slice through its pasted box: the image, the label map it is trained
  on (ground truth or pseudo-label) with the box outlined, and the provenance of every voxel (ground truth,
  confident pseudo-label, or no loss);
* ``pic_probabilities.png``: the class sampling distribution ``pi_c(t)`` at the checkpoint's training progress
  (or at the start of training without a checkpoint), next to the running class voxel counts.

Without ``-chk`` the teacher is untrained, so pseudo-labels are noise; pass a checkpoint of a PIC trainer to
see its pseudo-labels, class counts and curriculum position. Nothing is written into nnUNet_results.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

from nnunet_dinomix.errors import DinoMixError, command

PROVENANCE_COLOURS = np.array([[0.1, 0.1, 0.1], [0.2, 0.75, 0.3], [1.0, 0.6, 0.1]])  # none, ground truth, pseudo


def _slice_through(box, slice_axis: int, shape) -> int:
    if box is None:
        return shape[slice_axis] // 2
    s = box.slices[slice_axis]
    return (s.start + s.stop - 1) // 2


def _take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


def plot_samples(mixed, class_names, slice_axis: int, path: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = mixed.image.shape[0]
    boxes = {b.target: b for b in mixed.boxes}
    cmap = plt.get_cmap("tab10", max(len(class_names) + 1, 2))
    fig, axes = plt.subplots(n, 3, figsize=(12, 3.6 * n), squeeze=False)
    for i in range(n):
        box = boxes.get(i)
        spatial = mixed.image.shape[2:]
        k = _slice_through(box, slice_axis, spatial)
        image = _take(mixed.image[i, 0].float().cpu().numpy(), slice_axis, k)
        label = _take(mixed.label[i, 0].cpu().numpy(), slice_axis, k)
        gt = _take(mixed.ground_truth[i, 0].cpu().numpy(), slice_axis, k)
        pseudo = _take((mixed.pseudo_weight[i, 0] > 0).cpu().numpy(), slice_axis, k)
        provenance = np.where(gt, 1, np.where(pseudo, 2, 0))
        origin = "labeled" if i < mixed.num_labeled else "unlabeled"
        title = f"sample {i} ({origin})"
        if box is not None:
            src = "labeled" if box.source < mixed.num_labeled else "unlabeled"
            title += f" <- box of '{class_names[box.cls - 1]}' from sample {box.source} ({src})"
        axes[i, 0].imshow(image, cmap="gray")
        axes[i, 0].set_title(title, fontsize=8, loc="left")
        axes[i, 1].imshow(image, cmap="gray")
        axes[i, 1].imshow(np.ma.masked_where(label == 0, label), cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.6,
                          interpolation="nearest")
        axes[i, 1].set_title("label (ground truth or pseudo-label)", fontsize=8)
        axes[i, 2].imshow(PROVENANCE_COLOURS[provenance], interpolation="nearest")
        axes[i, 2].set_title("provenance: green GT, orange confident pseudo, dark no loss", fontsize=8)
        if box is not None:
            in_plane = [a for a in range(3) if a != slice_axis]
            rows, cols = box.slices[in_plane[0]], box.slices[in_plane[1]]
            for ax in axes[i, 1:]:
                ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), cols.stop - cols.start,
                                       rows.stop - rows.start, fill=False, edgecolor="red", linewidth=1.5))
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_probabilities(probabilities, counts, class_names, gamma: float, progress: float, path: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(class_names))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.bar(x, probabilities)
    a.set_xticks(x)
    a.set_xticklabels(class_names, rotation=30, ha="right")
    a.set_ylabel("sampling probability")
    a.set_title(f"PIC class distribution at {100 * progress:.0f}% of training (gamma {gamma:.2f})")
    b.bar(x, np.maximum(counts, 1e-3))
    b.set_yscale("log")
    b.set_xticks(x)
    b.set_xticklabels(class_names, rotation=30, ha="right")
    b.set_ylabel("running voxel count per batch")
    b.set_title("class counts (ground truth + confident pseudo-labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dinomix_show_pic", description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", default="3d_fullres", help="configuration [default: 3d_fullres]")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier [default: nnUNetPlans]")
    parser.add_argument("-tr", default="nnUNetTrainerDinoMixNoFKD",
                        help="a PIC trainer [default: nnUNetTrainerDinoMixNoFKD, which needs no DINOv3 weights]")
    parser.add_argument("-chk", default=None, help="checkpoint of that trainer (its teacher, counts, progress)")
    parser.add_argument("-o", default="pic_images", help="output folder [default: ./pic_images]")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from nnunet_dinomix import discovery
    discovery.register_in_environment()
    scratch = tempfile.mkdtemp(prefix="dinomix_show_pic_")
    os.environ["nnUNet_results"] = scratch  # the trainer writes its log somewhere harmless
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    trainer = None
    try:
        from nnunetv2.run.run_training import get_trainer_from_args
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = get_trainer_from_args(args.d, args.c, "all", args.tr, args.p, device=torch.device(args.device))
        if not getattr(trainer, "use_pic", False):
            raise DinoMixError(f"{args.tr} does not use PIC; pass a DINO-Mix trainer with PIC (e.g. "
                               f"nnUNetTrainerDinoMixNoFKD).")
        with contextlib.redirect_stdout(io.StringIO()):
            if args.chk:
                trainer.load_checkpoint(args.chk)
            trainer.on_train_start()
        with torch.no_grad():
            x_l, y_l = trainer.labeled_batch(next(trainer.dataloader_train))
            x_u = trainer.unlabeled_batch()
            mixed = trainer.mix(x_l, y_l, x_u, trainer.teacher_pseudo_labels(x_u))
        names = trainer.class_names()
        spacing = trainer.configuration_manager.spacing
        slice_axis = int(np.argmax(spacing)) if len(spacing) == 3 else 0
        if len(spacing) != 3:
            raise DinoMixError("dinomix_show_pic draws 3D configurations only")
        os.makedirs(args.o, exist_ok=True)
        samples = os.path.join(args.o, "pic_samples.png")
        probabilities = os.path.join(args.o, "pic_probabilities.png")
        plot_samples(mixed, names, slice_axis, samples)
        mixer, progress = trainer.mixer, trainer.progress()
        class_probs, gamma = mixer.probabilities(progress), mixer.gamma(progress)
        plot_probabilities(class_probs.numpy(), mixer.counts.value.numpy(), names, gamma, progress, probabilities)
        print(f"{len(mixed.boxes)} boxes in {mixed.image.shape[0]} samples; gamma {gamma:.2f}")
        for name, p in zip(names, class_probs.tolist()):
            print(f"  {name:20s} p = {p:.3f}")
        print(f"Wrote {samples} and {probabilities}")
    finally:
        if trainer is not None and trainer.dataloader_train is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.on_train_end()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
