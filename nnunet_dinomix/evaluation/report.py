"""The package's one evaluation report (``dinomix_evaluate``, ``dinomix_demo`` and the benchmarks).

For the test cases: per-class Dice, ASD and HD95 in millimetres (spacing-aware), and Dice and ASD in voxels as the
DHC/DINO-Mix benchmark scores them; a markdown and CSV table, a per-case CSV, and two charts (per-class Dice per
trainer; Dice against class frequency). Published numbers of another protocol can be shown beside ours, marked as
such.

**The tail**, everywhere in this package: the :data:`TAIL_SIZE` foreground classes with the fewest voxels in the
labeled training cases (:func:`tail_classes`); the head is the rest. ``benchmarks/ssl_quality.py`` ranks the
phantom's classes by the preset's expected voxel shares instead (one set for every seed), with the same function.
nnU-Net's own ``summary.json`` is read by :func:`per_class_dice`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.evaluation.metrics import case_scores

METRICS = ("dice", "asd_mm", "hd95_mm", "dice_benchmark", "asd_voxels")
TAIL_SIZE = 3


def read_labels(dataset_json: Mapping) -> Dict[str, int]:
    """Foreground classes of a label-based dataset.json (name -> value)."""
    labels = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise DinoMixError("dinomix_evaluate scores label-based datasets; this dataset.json defines regions.")
        if int(value) != 0 and name != "ignore":
            labels[name] = int(value)
    return labels


def read_image(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Array in (z, y, x) order and the spacing in the same order."""
    import SimpleITK as sitk
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def class_voxel_shares(label_files: Sequence[str], labels: Mapping[str, int]) -> Dict[str, float]:
    counts = {name: 0 for name in labels}
    for f in label_files:
        values = np.bincount(read_image(f)[0].ravel().astype(np.int64), minlength=max(labels.values()) + 1)
        for name, v in labels.items():
            counts[name] += int(values[v])
    total = sum(counts.values())
    return {name: (c / total if total else float("nan")) for name, c in counts.items()}


def tail_classes(amounts: Mapping[str, float], n: int = TAIL_SIZE) -> List[str]:
    """The ``n`` foreground classes with the smallest ``amounts`` (voxel counts or shares of the labeled training
    cases), rarest first; ``background`` is never one of them."""
    foreground = {k: v for k, v in amounts.items() if k != "background"}
    return sorted(foreground, key=lambda k: foreground[k])[:n]


def head_and_tail(shares: Mapping[str, float], n: int = TAIL_SIZE) -> Tuple[List[str], List[str]]:
    """``(head, tail)``: the tail by :func:`tail_classes`, the head the others, each in label order."""
    tail = set(tail_classes(shares, n))
    return [k for k in shares if k not in tail], [k for k in shares if k in tail]


def load_summary(path: str) -> dict:
    """nnU-Net's ``summary.json`` (``nnUNetv2_evaluate_folder``)."""
    with open(path) as f:
        return json.load(f)


def per_class_dice(summary: dict, labels: Mapping[str, int]) -> Dict[str, float]:
    """Mean Dice per class name from nnU-Net's ``summary.json`` (keys are label values as strings); NaN where the
    class is absent from prediction and reference in every case."""
    means = summary["mean"]
    out = {}
    for name, value in labels.items():
        if name == "background" or isinstance(value, (list, tuple)):
            continue
        entry = means.get(str(value), means.get(value))
        out[name] = float("nan") if entry is None else float(entry["Dice"])
    return out


def _score_case(args) -> List[dict]:
    trainer, case, prediction_file, reference_file, labels = args
    reference, spacing = read_image(reference_file)
    prediction, prediction_spacing = read_image(prediction_file)
    if prediction.shape != reference.shape:
        raise DinoMixError(f"{prediction_file}: shape {prediction.shape} differs from the reference's "
                           f"{reference.shape} ({reference_file}).")
    if not np.allclose(prediction_spacing, spacing, rtol=1e-3):
        raise DinoMixError(f"{prediction_file}: spacing {prediction_spacing} differs from the reference's {spacing}.")
    return [{"trainer": trainer, "case": case, "class": name, **case_scores(prediction, reference, value, spacing)}
            for name, value in labels.items()]


def collect(reference_folder: str, predictions: Mapping[str, str], labels: Mapping[str, int], file_ending: str,
            num_processes: int = 1) -> List[dict]:
    """Per case and class scores of every trainer; refuses incomplete prediction folders."""
    cases = sorted(f[:-len(file_ending)] for f in os.listdir(reference_folder) if f.endswith(file_ending))
    if not cases:
        raise DinoMixError(f"{reference_folder} holds no reference segmentations ending in {file_ending}.")
    jobs = []
    for trainer, folder in predictions.items():
        missing = [c for c in cases if not os.path.isfile(os.path.join(folder, c + file_ending))]
        if missing:
            raise DinoMixError(f"{folder} ({trainer}) lacks predictions for {len(missing)} of {len(cases)} reference "
                               f"cases: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Predict "
                               f"all of imagesTs with nnUNetv2_predict first.")
        jobs += [(trainer, c, os.path.join(folder, c + file_ending), os.path.join(reference_folder, c + file_ending),
                  dict(labels)) for c in cases]
    if num_processes <= 1:
        results = map(_score_case, jobs)
        return [row for rows in results for row in rows]
    with ProcessPoolExecutor(num_processes) as pool:
        return [row for rows in pool.map(_score_case, jobs) for row in rows]


def summarise(rows: Sequence[dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{trainer: {class: {metric: mean over cases}}}``; NaN (undefined) cases are left out of each mean."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for row in rows:
        out.setdefault(row["trainer"], {}).setdefault(row["class"], {m: [] for m in METRICS})
        for m in METRICS:
            out[row["trainer"]][row["class"]][m].append(row[m])
    for per_class in out.values():
        for name, values in per_class.items():
            per_class[name] = {m: (float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan"))
                               for m, v in values.items()}
    return out


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _f(v: float, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{scale * v:.{digits}f}"


def markdown(summary, labels: Mapping[str, int], shares: Optional[Mapping[str, float]], tail: Sequence[str],
             published: Mapping[str, Mapping[int, float]], title: str) -> str:
    trainers = list(summary)
    lines = [f"# {title}", ""]
    if shares and tail:
        lines += [f"Tail: the {len(tail)} classes with the fewest voxels in the labeled training cases "
                  f"({', '.join(tail)}).", ""]
    for metric, header, scale in (("dice", "Dice (%)", 100), ("asd_mm", "ASD (mm)", 1), ("hd95_mm", "HD95 (mm)", 1),
                                  ("dice_benchmark", "Dice (%), benchmark convention", 100),
                                  ("asd_voxels", "ASD (voxels), benchmark convention", 1)):
        extra = list(published) if metric in ("dice", "dice_benchmark") else []
        lines += [f"## {header}", "",
                  "| class | share of training voxels | group | " + " | ".join(trainers + extra) + " |",
                  "|---|---:|---|" + "---:|" * (len(trainers) + len(extra))]
        for name, value in labels.items():
            share = _f(shares[name], 100, 2) + " %" if shares else "n/a"
            group = ("tail" if name in tail else "head") if shares else ""
            cells = [_f(summary[t][name][metric], scale) for t in trainers]
            cells += [_f(published[m].get(value, float("nan"))) for m in extra]
            lines.append(f"| {name} | {share} | {group} | " + " | ".join(cells) + " |")
        groups = [("mean (all classes)", list(labels))]
        if shares:
            groups += [("mean (head)", [k for k in labels if k not in tail]), ("mean (tail)", list(tail))]
        for label, members in groups:
            cells = [_f(_mean([summary[t][k][metric] for k in members]), scale) for t in trainers]
            cells += [_f(published[m].get(0, float("nan"))) if label == "mean (all classes)" else "" for m in extra]
            lines.append(f"| **{label}** | | | " + " | ".join(cells) + " |")
        lines.append("")
    if published:
        lines += ["Published columns are copied from their papers and repositories and were obtained under the DHC "
                  "protocol (their own networks, preprocessing and splits of training data), not in this nnU-Net "
                  "pipeline: they are context, not a like-for-like comparison.", ""]
    return "\n".join(lines)


def plot_bars(rows: Sequence[dict], trainers: Sequence[str], path: str, title: str = "") -> None:
    """Grouped bars: one group per row (``{'class': name, trainer: dice}``), one bar per trainer."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    classes = [r["class"] for r in rows]
    x = np.arange(len(classes))
    width = 0.8 / len(trainers)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(classes)), 4.5))
    for i, t in enumerate(trainers):
        values = [0 if math.isnan(r[t]) else 100 * r[t] for r in rows]
        ax.bar(x + (i - (len(trainers) - 1) / 2) * width, values, width, label=t)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(summary, labels, shares, path_bars: str, path_frequency: Optional[str]) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    trainers, classes = list(summary), list(labels)
    plot_bars([{"class": c, **{t: summary[t][c]["dice"] for t in trainers}} for c in classes], trainers, path_bars,
              "Per-class Dice on the test cases")
    if path_frequency and shares:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for t in trainers:
            ax.scatter([100 * shares[c] for c in classes], [100 * summary[t][c]["dice"] for c in classes], label=t)
        for c in classes:
            ax.annotate(c, (100 * shares[c], 100 * summary[trainers[0]][c]["dice"]), fontsize=7, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("share of the training labels' foreground voxels (%)")
        ax.set_ylabel("Dice (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path_frequency, dpi=100)
        plt.close(fig)


def write_report(rows, labels, shares, published, output: str, title: str,
                 tail_size: int = TAIL_SIZE) -> Dict[str, str]:
    """Write ``report.md``, ``per_class.csv``, ``per_case.csv``, ``dice.png`` and, with ``shares`` (of the training
    labels' voxels, which define the tail), ``dice_vs_frequency.png``; return the paths."""
    os.makedirs(output, exist_ok=True)
    summary = summarise(rows)
    tail = head_and_tail(shares, tail_size)[1] if shares else []
    paths = {k: os.path.join(output, f) for k, f in (("md", "report.md"), ("csv", "per_class.csv"),
                                                      ("cases", "per_case.csv"), ("bars", "dice.png"),
                                                      ("frequency", "dice_vs_frequency.png"))}
    with open(paths["md"], "w") as f:
        f.write(markdown(summary, labels, shares, tail, published, title))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trainer", "class", "label", "share_of_training_voxels", "group", *METRICS])
        for t, per_class in summary.items():
            for name, value in labels.items():
                share = shares.get(name, float("nan")) if shares else float("nan")
                w.writerow([t, name, value, share, ("tail" if name in tail else "head") if shares else "",
                            *(per_class[name][m] for m in METRICS)])
    with open(paths["cases"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["trainer", "case", "class", *METRICS])
        w.writeheader()
        w.writerows(rows)
    plot(summary, labels, shares, paths["bars"], paths["frequency"] if shares else None)
    if not shares:
        del paths["frequency"]
    return paths
