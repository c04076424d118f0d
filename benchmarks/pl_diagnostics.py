"""Per-epoch pseudo-label diagnostics of a semi-supervised run, as a markdown table, from nnU-Net's training log.

The trainers log, per epoch and class, the recall and precision of the teacher's trusted pseudo-labels against the
unlabeled cases' true labels (diagnostics only) and the share of each class's true voxels the teacher trusts
(``pl_recall_*``, ``pl_precision_*``, ``pl_confident_*``). This turns those lines into one table:

    python benchmarks/pl_diagnostics.py .../fold_all/training_log_*.txt [--every 2] [--title TEXT]
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Dict, List

LINE = re.compile(r"^\S+ \S+ (?P<key>[A-Za-z_]+) (?P<value>[-+0-9.naef]+)\s*$")
EPOCH = re.compile(r"^\S+ \S+ Epoch (?P<epoch>\d+)\s*$")
QUALITY = ("pl_recall", "pl_precision", "pl_confident")


def parse(path: str) -> List[Dict[str, float]]:
    """One dict of logged values per epoch, in order."""
    epochs: List[Dict[str, float]] = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = EPOCH.match(line)
            if m:
                epochs.append({"epoch": int(m.group("epoch"))})
                continue
            m = LINE.match(line)
            if m and epochs:
                try:
                    epochs[-1][m.group("key")] = float(m.group("value"))
                except ValueError:
                    pass
    return [e for e in epochs if any(k.startswith(QUALITY) for k in e)]


def table(epochs: List[Dict[str, float]], every: int = 1) -> str:
    classes = [k[len("pl_recall_"):] for k in epochs[0] if k.startswith("pl_recall_")] if epochs else []

    def cell(e, c):
        values = [e.get(f"{q}_{c}", math.nan) for q in QUALITY]
        return " / ".join("-" if math.isnan(v) else f"{100 * v:.0f}" for v in values)

    lines = ["| epoch | w_u | trusted | " + " | ".join(classes) + " |", "|---:|---:|---:|" + "---:|" * len(classes)]
    for e in epochs[::every]:
        lines.append(f"| {e['epoch']} | {e.get('unsup_weight', math.nan):.2f} | "
                     f"{100 * e.get('confident_fraction', math.nan):.0f} | " +
                     " | ".join(cell(e, c) for c in classes) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log")
    p.add_argument("--every", type=int, default=1, help="every n-th epoch")
    args = p.parse_args(argv)
    epochs = parse(args.log)
    if not epochs:
        print(f"{args.log} holds no pseudo-label diagnostics (no truth for the unlabeled cases, or burn-in only)",
              file=sys.stderr)
        return 1
    print("Cells: recall / precision of the trusted pseudo-labels / share of the class's true voxels that are "
          "trusted (%); w_u: unlabeled weight; trusted: share of all voxels trusted (%).\n")
    print(table(epochs, args.every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
