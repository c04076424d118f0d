"""Per-class Dice tables and charts from nnU-Net's evaluation output (``summary.json``)."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, List, Mapping, Sequence


def load_summary(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def per_class_dice(summary: dict, labels: Mapping[str, int]) -> Dict[str, float]:
    """Mean Dice per class name, as nnU-Net's ``compute_metrics_on_folder`` reports it (NaN where the class is
    absent from both prediction and reference in every case)."""
    means = summary["mean"]
    out = {}
    for name, value in labels.items():
        if name == "background" or isinstance(value, (list, tuple)):
            continue
        entry = means.get(str(value), means.get(value))
        out[name] = float("nan") if entry is None else float(entry["Dice"])
    return out


def rarest_classes(voxel_counts: Mapping[str, int], n: int = 3) -> List[str]:
    """The ``n`` foreground classes with the fewest voxels (e.g. in the labeled training cases)."""
    foreground = {k: v for k, v in voxel_counts.items() if k != "background"}
    return sorted(foreground, key=lambda k: foreground[k])[:n]


def dice_rows(summaries: Mapping[str, dict], labels: Mapping[str, int],
              tail_classes: Sequence[str] = ()) -> List[dict]:
    """One row per class, the foreground mean, and with ``tail_classes`` the mean over those (NaN-aware):
    ``{'class': name, trainer: dice, ...}``."""
    per_trainer = {t: per_class_dice(s, labels) for t, s in summaries.items()}
    classes = list(next(iter(per_trainer.values())).keys())
    rows = [{"class": c, **{t: per_trainer[t][c] for t in per_trainer}} for c in classes]
    rows.append({"class": "mean (foreground)", **{t: float(s["foreground_mean"]["Dice"]) for t, s in summaries.items()}})
    if tail_classes:
        def tail_mean(t):
            values = [per_trainer[t][c] for c in tail_classes if not math.isnan(per_trainer[t][c])]
            return sum(values) / len(values) if values else float("nan")
        rows.append({"class": f"mean ({len(tail_classes)} rarest: {', '.join(tail_classes)})",
                     **{t: tail_mean(t) for t in per_trainer}})
    return rows


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def to_markdown(rows: Sequence[dict], trainers: Sequence[str], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| class | " + " | ".join(trainers) + " |")
    lines.append("|---|" + "---:|" * len(trainers))
    for r in rows:
        lines.append(f"| {r['class']} | " + " | ".join(_fmt(r[t]) for t in trainers) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict], trainers: Sequence[str], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *trainers])
        for r in rows:
            writer.writerow([r["class"], *(f"{100 * r[t]:.2f}" for t in trainers)])


def plot_bars(rows: Sequence[dict], trainers: Sequence[str], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def write_report(summaries: Mapping[str, dict], labels: Mapping[str, int], folder: str, name: str = "dice",
                 title: str = "", tail_classes: Sequence[str] = ()) -> Dict[str, str]:
    """Write ``{name}.md``, ``{name}.csv`` and ``{name}.png``; return the paths and print nothing."""
    os.makedirs(folder, exist_ok=True)
    trainers = list(summaries)
    rows = dice_rows(summaries, labels, tail_classes)
    paths = {ext: os.path.join(folder, f"{name}.{ext}") for ext in ("md", "csv", "png")}
    with open(paths["md"], "w") as f:
        f.write(to_markdown(rows, trainers, title))
    write_csv(rows, trainers, paths["csv"])
    plot_bars(rows, trainers, paths["png"], title)
    return paths
