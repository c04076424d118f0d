"""Published numbers to show beside ours, each under its own protocol (never ours; see the report's legend).

Per-class Dice (%) in label-value order, copied from the DHC repository's result tables (xmed-lab/DHC README)
and, for DINO-Mix, the mean reported for arXiv 2602.07819 (per-class values were not available). These models
were trained and scored under the DHC protocol (V-Nets, fixed-grid resampling, ASD in voxels), not nnU-Net's.
"""
from __future__ import annotations

from typing import Dict, List, Optional

# setting -> method -> {"mean": float, "per_class": [Dice per label value 1..K] or None}
PUBLISHED: Dict[str, Dict[str, dict]] = {
    "synapse_20": {
        "DHC (published, DHC protocol)": {
            "mean": 48.61,
            "per_class": [62.8, 69.5, 59.2, 66.0, 13.2, 85.2, 36.9, 67.9, 61.5, 37.0, 30.9, 31.4, 10.6]},
        "DINO-Mix (published, mean only)": {"mean": 66.45, "per_class": None},
    },
    "synapse_40": {
        "DHC (published, DHC protocol)": {
            "mean": 57.13,
            "per_class": [82.5, 72.8, 73.5, 69.8, 10.7, 71.9, 41.2, 83.7, 66.1, 53.8, 47.4, 36.8, 32.7]},
    },
    "synapse_10": {
        "DHC (published, DHC protocol)": {
            "mean": 31.64,
            "per_class": [45.1, 47.4, 33.1, 36.6, 7.1, 71.4, 17.8, 58.9, 34.4, 16.5, 9.3, 21.8, 12.0]},
    },
    "amos_2": {
        "DHC (published, DHC protocol)": {
            "mean": 38.28,
            "per_class": [62.1, 59.5, 57.8, 25.0, 20.5, 66.0, 38.2, 51.3, 47.9, 26.8, 26.4, 7.0, 17.8, 43.2, 24.8]},
    },
    "amos_5": {
        "DHC (published, DHC protocol)": {
            "mean": 49.53,
            "per_class": [68.1, 69.6, 71.1, 42.3, 37.0, 76.8, 43.8, 70.8, 57.4, 43.2, 27.0, 28.7, 29.1, 41.4, 36.7]},
        "DINO-Mix (published, mean only)": {"mean": 62.73, "per_class": None},
    },
    "amos_10": {
        "DHC (published, DHC protocol)": {
            "mean": 64.16,
            "per_class": [87.4, 86.6, 87.1, 45.8, 57.0, 89.8, 64.7, 86.0, 75.0, 62.5, 39.8, 36.8, 44.0, 56.5, 43.6]},
    },
}


def published_columns(setting: Optional[str], label_values: List[int]) -> Dict[str, Dict[int, float]]:
    """``{method: {label value: Dice %, 0: mean}}`` for a setting (label value 0 holds the mean)."""
    if setting is None:
        return {}
    if setting not in PUBLISHED:
        raise ValueError(f"no published numbers for '{setting}'; known: {', '.join(sorted(PUBLISHED))}")
    columns = {}
    for method, entry in PUBLISHED[setting].items():
        values = {0: entry["mean"]}
        if entry["per_class"] is not None:
            values.update({v: entry["per_class"][v - 1] for v in label_values if 1 <= v <= len(entry["per_class"])})
        columns[method] = values
    return columns
