"""Held-out quality of semi-supervised trainers against plain nnU-Net, over several phantom seeds, paired.

For every seed: a fresh phantom draw (its own labeled, unlabeled and test cases, with the unlabeled cases' true
labels kept aside for diagnostics), nnU-Net's planning and preprocessing, the tier's plans (the tiny CPU plans,
another plans preset's with ``--preset``, or with ``--device cuda`` nnU-Net's own), the unlabeled pool. Then every
trainer is trained with the same labeled cases for the same number of optimizer steps (burn-in counted), predicts
the held-out test cases with ``nnUNetv2_predict --disable_tta`` and is scored with ``nnUNetv2_evaluate_folder``.
``--upper-bound`` adds plain nnU-Net trained on every training case with its true label (the labeled and the
unlabeled ones), the bound semi-supervised learning is reported between.

The report (benchmarks/results/NAME.md) has per-seed per-class Dice, mean ± std over seeds, the paired
difference of every trainer to plain nnU-Net, the share of the gap between plain nnU-Net and the upper bound that
each closes, and each run's wall-clock time.

Pairing. The runs of one seed share ``DINOMIX_SEED``: the same initial weights and labeled batches. With
``--shared-burn-in`` the semi-supervised runs start from the reference's snapshot at half the steps, and a run
resumed with nnU-Net's ``--c`` is reseeded, so its second half draws other labeled batches than the uninterrupted
reference did. The harness therefore also trains ``nnU-Net (resumed)``: plain nnU-Net resumed from the same
snapshot, which draws the same second-half batches as every resumed trainer whose labeled loader is nnU-Net's own
(Mean Teacher; PIC trainers mirror after the mix, so they share the snapshot but not the batches). Paired
differences are taken to it; the uninterrupted reference's difference to it is a free sample of the batch noise.

A trainer is given as ``TRAINER`` or ``LABEL=TRAINER+{JSON}`` (attribute overrides, through the Budget variants'
``DINOMIX_TRAINER_SETTINGS``), e.g. ``MT-dice=nnUNetTrainerMeanTeacherBudget+{"unsup_loss":"dice_ce"}``.

    python benchmarks/ssl_quality.py --seeds 0 1 2 --steps 600 --upper-bound --jobs 2 --name ssl_quality_cpu
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_dinomix.cli import demo
from nnunet_dinomix.commands import executable as exe, nnunet_env, run as run_command, stop_commands_on_signal
from nnunet_dinomix.phantom.generator import PRESETS

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TRAINERS = ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacherBudget", "nnUNetTrainerDinoMixNoFKDBudget"]
UPPER = "upper bound (all labels)"
ANALYSIS = "## What it shows"  # a result file's hand-written analysis starts here; --report-only keeps it
# the offline-PL anchor resumed from the reference's snapshot ("offline PL (anchor)" in earlier records trained
# from scratch for the second half only: another definition, so another label)
ANCHOR = "offline PL (resumed)"
RESUMED = "nnU-Net (resumed)"  # --shared-burn-in: the reference resumed from its own snapshot, the exact pair
DATASET, FULL_DATASET, ANCHOR_DATASET = 990, 991, 992
ANCHOR_DATASET_NAME = demo.DATASET_NAME + "PL1"  # dinomix_offline_pl's name for the first round's dataset
# nnU-Net sizes torch's thread pool from multiprocessing.cpu_count(); runs side by side get a share of the cores
TRAIN_LAUNCHER = ("import multiprocessing, sys; multiprocessing.cpu_count = lambda: {threads}; "
                  "from nnunetv2.run.run_training import run_training_entry; sys.argv[0] = 'nnUNetv2_train'; "
                  "run_training_entry()")


@dataclass(frozen=True)
class Tier:
    """Where the runs train: the CPU tier (nnU-Net's plans cut down by a plans preset, tiny_cpu unless --preset
    names another, no loader workers) or the GPU tier (nnU-Net's own plans, or any plans name given, and nnU-Net's
    loader workers)."""
    device: str = "cpu"
    plans: str = demo.PLANS
    data_workers: int = 0
    preset: Optional[str] = demo.PRESET  # the dinomix_plans_preset that derives `plans`; None: plans used as planned


@dataclass
class Run:
    label: str
    trainer: str
    settings: Optional[str]
    dataset: int
    seed: int
    # shared burn-in: the reference keeps a snapshot at this epoch; a run with `start_from` starts from it
    snapshot_epoch: Optional[int] = None
    start_from: Optional["Run"] = None
    # --reference-from: the finished run's record, nothing is retrained ({}: reused for its snapshot, no record)
    reused: Optional[dict] = None
    done: threading.Event = field(default_factory=threading.Event)
    started_at: float = 0.0


def fold_folder(results: str, trainer: str, tier: Tier, dataset_folder: Optional[str] = None) -> str:
    """nnU-Net's fold 'all' folder of ``trainer`` in ``results`` (of the phantom dataset unless ``dataset_folder``)."""
    from nnunet_dinomix.phantom.dataset import dataset_folder_name
    return os.path.join(results, dataset_folder or dataset_folder_name(DATASET, demo.DATASET_NAME),
                        f"{trainer}__{tier.plans}__{demo.CONFIGURATION}", "fold_all")


def results_folder(work: str, run: Run) -> str:
    return os.path.join(work, "results", run.label.replace(" ", "_").replace("(", "").replace(")", ""))


def wait_for_snapshot(run: Run, work: str, tier: Tier) -> str:
    """The reference's snapshot at the end of the shared burn-in (waits while the reference trains)."""
    ref = run.start_from
    path = os.path.join(fold_folder(results_folder(work, ref), ref.trainer, tier),
                        f"checkpoint_epoch_{ref.snapshot_epoch}.pth")
    while not os.path.isfile(path):
        if ref.done.is_set():
            raise RuntimeError(f"{ref.label} ended without the snapshot {path}")
        time.sleep(10)
    time.sleep(5)  # let torch.save finish the file
    return path


def parse_trainer(spec: str) -> tuple:
    if "=" not in spec:
        return spec, spec, None
    label, rest = spec.split("=", 1)
    trainer, _, settings = rest.partition("+")
    if settings:
        json.loads(settings)  # fail now, not after an hour
    return label, trainer, settings or None


def prepare_seed(work: str, seed: int, upper_bound: bool, config, split, tier: Tier) -> Dict[str, str]:
    """Phantom, nnU-Net plan + preprocess, the tier's plans and the unlabeled pool; the all-labels twin if asked."""
    from nnunet_dinomix.phantom.dataset import write_phantom_dataset
    env = nnunet_env(work, tier.device)
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        os.makedirs(env[k], exist_ok=True)
    raw = write_phantom_dataset(env["nnUNet_raw"], DATASET, demo.DATASET_NAME, split, seed=seed,
                                config=config, verbose=False)
    plan(work, env, DATASET, tier)
    run_command([exe("dinomix_preprocess_unlabeled"), "-d", str(DATASET), "-p", tier.plans, "-np", "2"], env,
                os.path.join(work, "pool.log"))
    if upper_bound:
        prepare_upper_bound(work, env, raw, tier)
    return env


def plan(work: str, env: Dict[str, str], dataset: int, tier: Tier) -> None:
    plan_env = dict(env, nnUNet_n_proc_DA="2")  # nnU-Net 2.8.1's planner fails with 0
    run_command([exe("nnUNetv2_plan_and_preprocess"), "-d", str(dataset), "-c", demo.CONFIGURATION, "-np", "2"],
                plan_env, os.path.join(work, f"plan_{dataset}.log"))
    if tier.preset is None:
        return
    run_command([exe("dinomix_plans_preset"), "-d", str(dataset), "--preset", tier.preset], env,
                os.path.join(work, f"preset_{dataset}.log"))


def prepare_upper_bound(work: str, env: Dict[str, str], raw: str, tier: Tier) -> None:
    """The all-labels twin: the same training images, every one with its true label."""
    from nnunet_dinomix.paths import DIAGNOSTIC_LABELS_FOLDER, UNLABELED_RAW_FOLDER
    from nnunet_dinomix.phantom.dataset import dataset_folder_name
    full = os.path.join(env["nnUNet_raw"], dataset_folder_name(FULL_DATASET, demo.DATASET_NAME + "Full"))
    shutil.copytree(raw, full, ignore=shutil.ignore_patterns(UNLABELED_RAW_FOLDER, DIAGNOSTIC_LABELS_FOLDER))
    for src, dst in ((UNLABELED_RAW_FOLDER, "imagesTr"), (DIAGNOSTIC_LABELS_FOLDER, "labelsTr")):
        for f in os.listdir(os.path.join(raw, src)):
            shutil.copy2(os.path.join(raw, src, f), os.path.join(full, dst, f))
    with open(os.path.join(full, "dataset.json")) as f:
        dataset_json = json.load(f)
    dataset_json["numTraining"] = len(os.listdir(os.path.join(full, "labelsTr")))
    with open(os.path.join(full, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=1)
    plan(work, env, FULL_DATASET, tier)


def reuse_seed(source: str, work: str, reference: Run, upper_bound: bool, tier: Tier) -> Dict[str, str]:
    """``--reference-from``: the seed's phantom, plans, pool and the reference's results from a finished work
    folder (copied, never moved), and the reference's record, so that new recipes are paired against the same
    reference without retraining it. The all-labels twin is made here if asked and not there."""
    from nnunet_dinomix.phantom.dataset import dataset_folder_name
    old = os.path.join(source, f"seed_{reference.seed}")
    record = reused_record(source, reference.label, reference.seed)
    if record is None:  # e.g. stopped after its snapshot: its model is not needed, its snapshot and pair are
        if reused_record(source, RESUMED, reference.seed) is None:
            raise SystemExit(f"{source}/records.json has no record of '{reference.label}' or '{RESUMED}' for seed "
                             f"{reference.seed}: there is nothing to pair new recipes against")
        print(f"seed {reference.seed}: {source} has no record of '{reference.label}' (stopped early?): its "
              f"snapshot and '{RESUMED}' are reused, its own row is n/a here (add it with --report-only --merge)",
              flush=True)
        record = {}
    env = nnunet_env(work, tier.device)
    anchor = shutil.ignore_patterns(f"Dataset{ANCHOR_DATASET}_*")  # an anchor here is made anew, never reused
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(os.path.join(old, name), env[name], symlinks=True, ignore=anchor)
    shutil.copytree(results_folder(old, reference), results_folder(work, reference), ignore=anchor)
    reference.reused = record
    # the reference's start, for the wall-clock of the runs that share its burn-in: nnU-Net's log is named by it
    folder = fold_folder(results_folder(work, reference), reference.trainer, tier)
    log = sorted(f for f in os.listdir(folder) if f.startswith("training_log_"))[0]
    started = time.strptime(log[len("training_log_"):-len(".txt")], "%Y_%m_%d_%H_%M_%S")
    reference.started_at = time.mktime(started)
    full = os.path.join(env["nnUNet_raw"], dataset_folder_name(FULL_DATASET, demo.DATASET_NAME + "Full"))
    if upper_bound and not os.path.isdir(full):
        prepare_upper_bound(work, env, os.path.join(env["nnUNet_raw"], dataset_folder_name(DATASET,
                                                                                           demo.DATASET_NAME)), tier)
    return env


def train_and_score(run: Run, work: str, env: Dict[str, str], epochs: int, iterations: int, threads: int,
                    tier: Tier) -> dict:
    try:
        if run.reused is not None:
            return run.reused
        return _train_and_score(run, work, env, epochs, iterations, threads, tier)
    finally:
        run.done.set()


def _train_and_score(run: Run, work: str, env: Dict[str, str], epochs: int, iterations: int, threads: int,
                     tier: Tier) -> dict:
    from nnunet_dinomix.phantom.dataset import dataset_folder_name
    results = results_folder(work, run)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    run_env = dict(env, nnUNet_results=results, nnUNet_n_proc_DA=str(tier.data_workers), DINOMIX_NUM_EPOCHS=str(epochs),
                   DINOMIX_ITERATIONS_PER_EPOCH=str(iterations), DINOMIX_VAL_ITERATIONS_PER_EPOCH="2",
                   OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
                   # common random numbers: every trainer of a seed starts from the same weights and batches
                   DINOMIX_SEED=str(run.seed))
    settings = json.loads(run.settings) if run.settings else {}
    if run.snapshot_epoch is not None:
        settings["snapshot_epochs"] = [run.snapshot_epoch]
    if settings:
        run_env["DINOMIX_TRAINER_SETTINGS"] = json.dumps(settings)
    else:
        run_env.pop("DINOMIX_TRAINER_SETTINGS", None)
    tag = run.label.replace(" ", "_").replace("(", "").replace(")", "")
    if run.label == ANCHOR:
        return _offline_pl_anchor(run, work, env, run_env, logs, tag, threads, tier)
    resume = []
    if run.start_from is not None:  # the burn-in is the reference's: start from its snapshot, with nnU-Net's --c
        snapshot = wait_for_snapshot(run, work, tier)
        os.makedirs(fold_folder(results, run.trainer, tier), exist_ok=True)
        shutil.copy2(snapshot, os.path.join(fold_folder(results, run.trainer, tier), "checkpoint_latest.pth"))
        resume = ["--c"]
    start = run.started_at = time.time()
    run_command(train_command(run.dataset, run.trainer, threads, tier) + resume, run_env,
                os.path.join(logs, f"train_{tag}.log"))
    train_s = time.time() - start
    if run.start_from is not None:  # the wall-clock of the burn-in it shares counts too
        train_s += os.path.getmtime(snapshot) - run.start_from.started_at
    return score(run, work, env, run_env, logs, tag, run.dataset, train_s, tier)


def train_command(dataset: int, trainer: str, threads: int, tier: Tier) -> List[str]:
    """nnUNetv2_train on fold 'all' with ``threads`` torch threads (on the CPU nnU-Net would take one per core)."""
    return [sys.executable, "-c", TRAIN_LAUNCHER.format(threads=threads), str(dataset), demo.CONFIGURATION, "all",
            "-tr", trainer, "-p", tier.plans, "-device", tier.device]


def anchor_run(reference: Run) -> Run:
    """The offline-PL anchor of a reference: its trainer with its settings (a reference without left-right
    mirroring gets an anchor without it), resumed from its snapshot on the pseudo-labelled dataset."""
    return Run(ANCHOR, reference.trainer, reference.settings, ANCHOR_DATASET, reference.seed, start_from=reference)


def _offline_pl_anchor(run: Run, work: str, env: Dict[str, str], run_env: Dict[str, str], logs: str,
                       tag: str, threads: int, tier: Tier) -> dict:
    """FLARE22-style offline pseudo-labelling at the same total steps, paired as the semi-supervised runs are: the
    reference's snapshot at half the steps labels the unlabeled cases (dinomix_offline_pl --no_train), and plain
    nnU-Net resumes from that snapshot (nnU-Net's --c: weights, optimizer, learning-rate schedule) on the labeled +
    pseudo-labelled cases for the other half. It differs from 'nnU-Net (resumed)' only in its second half's data.
    (Retraining from scratch for half the steps, as offline pseudo-labelling does with a full budget per round, is
    no reference at a fixed budget: at 1,200 steps even every true label scored 10.1 on the label-limited phantom.)
    Launched as every other run: nnUNetv2_train on the CPU would take a thread per core."""
    from nnunet_dinomix.phantom.dataset import dataset_folder_name
    snapshot = wait_for_snapshot(run, work, tier)
    ref = run.start_from
    ref_results = results_folder(work, ref)
    # the anchor's own results (dataset ANCHOR_DATASET) sit beside the reference's model
    anchor_env = dict(run_env, nnUNet_results=ref_results)  # the reference's settings too (anchor_run)
    start = time.time()
    run_command([exe("dinomix_offline_pl"), "-d", str(DATASET), "-p", tier.plans, "-c", demo.CONFIGURATION,
                "-tr", ref.trainer, "-f", "all", "-chk", os.path.basename(snapshot), "--target_id",
                str(ANCHOR_DATASET), "-device", tier.device, "--disable_tta", "-np", "1", "--no_train"], anchor_env,
                os.path.join(logs, f"pseudo_label_{tag}.log"))
    fold = fold_folder(ref_results, ref.trainer, tier, dataset_folder_name(ANCHOR_DATASET, ANCHOR_DATASET_NAME))
    os.makedirs(fold, exist_ok=True)
    shutil.copy2(snapshot, os.path.join(fold, "checkpoint_latest.pth"))
    run.started_at = time.time()
    run_command(train_command(ANCHOR_DATASET, ref.trainer, threads, tier) + ["--c"], anchor_env,
                os.path.join(logs, f"train_{tag}.log"))
    train_s = time.time() - start + os.path.getmtime(snapshot) - ref.started_at
    return score(run, work, env, anchor_env, logs, tag, ANCHOR_DATASET, train_s, tier)


def score(run: Run, work: str, env: Dict[str, str], run_env: Dict[str, str], logs: str, tag: str, dataset: int,
          train_s: float, tier: Tier) -> dict:
    """Predict the held-out cases with the run's model (of ``dataset``) and score them against the truth."""
    from nnunet_dinomix.phantom.dataset import dataset_folder_name
    raw = os.path.join(env["nnUNet_raw"], dataset_folder_name(DATASET, demo.DATASET_NAME))
    prediction = os.path.join(work, "predictions", tag)
    run_command([exe("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", prediction, "-d",
                str(dataset), "-c", demo.CONFIGURATION, "-f", "all", "-tr", run.trainer, "-p", tier.plans,
                "-device", tier.device, "--disable_tta", "-npp", "1", "-nps", "1"], run_env,
                os.path.join(logs, f"predict_{tag}.log"))
    plans_file = os.path.join(env["nnUNet_preprocessed"], dataset_folder_name(DATASET, demo.DATASET_NAME),
                              tier.plans + ".json")
    run_command([exe("nnUNetv2_evaluate_folder"), os.path.join(raw, "labelsTs"), prediction, "-djfile",
                os.path.join(prediction, "dataset.json"), "-pfile", plans_file, "-np", "1"], run_env,
                os.path.join(logs, f"evaluate_{tag}.log"))
    from nnunet_dinomix.phantom.generator import LABELS
    from nnunet_dinomix.evaluation.report import load_summary, per_class_dice
    summary = load_summary(os.path.join(prediction, "summary.json"))
    return {"label": run.label, "seed": run.seed, "dice": per_class_dice(summary, LABELS),
            "foreground_mean": float(summary["foreground_mean"]["Dice"]), "train_s": train_s}


def fmt(values: List[float], std: bool = True) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "n/a"
    return f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" if std and len(v) > 1 else f"{100 * np.mean(v):.1f}"


def report(records: List[dict], labels: List[str], tail: List[str], header: List[str],
           pair: Optional[str] = None, pair_of: Optional[Dict[str, str]] = None) -> str:
    """The report's text; ``pair`` is the label the paired differences and gap shares are taken to (default: the
    first label, the reference); ``pair_of`` maps a label to a pair of its own (a run on a second batch stream to
    plain nnU-Net on that stream), named in its column's head."""
    from nnunet_dinomix.phantom.generator import EXPECTED_SHARE_CASES, LABELS
    classes = [c for c in LABELS if c != "background"]
    seeds = sorted({r["seed"] for r in records})
    by = {(r["label"], r["seed"]): r for r in records}
    # a run stopped before it scored has no record, and gets no column; the reference keeps its column regardless
    labels = [labels[0]] + [l for l in labels[1:] if any(l == r["label"] for r in records)]

    def metric(r, name):
        if name == "mean (foreground)":
            return r["foreground_mean"]
        if name == "mean (3 rarest)":
            return float(np.nanmean([r["dice"][c] for c in tail]))
        return r["dice"][name]

    rows = classes + ["mean (foreground)", "mean (3 rarest)"]
    ref = pair or labels[0]
    if ref not in labels:
        raise SystemExit(f"--pair-with {ref!r}: no such run in the records (labels: {', '.join(labels)})")
    others = [l for l in labels if l != ref]
    pair_of = dict(pair_of or {})
    unknown = sorted(v for k, v in pair_of.items() if k in labels and v not in labels)
    if unknown:
        raise SystemExit(f"--pair-of: no run labelled {', '.join(map(repr, unknown))} in the records")
    pair_of = {l: pair_of.get(l, ref) for l in others}
    heads = [l if pair_of[l] == ref else f"{l} (vs {pair_of[l]})" for l in others]
    out = header + ["", f"Rarest three classes, the same for every seed: {', '.join(tail)} (the fewest voxels in "
                    f"{EXPECTED_SHARE_CASES} phantoms of the preset, drawn apart from the seeds).", "",
                    "## Test Dice (%), mean ± std over seeds", "",
                    "| class | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in rows:
        out.append(f"| {name} | " + " | ".join(fmt([metric(by[(l, s)], name) for s in seeds if (l, s) in by])
                                               for l in labels) + " |")
    if others:  # a run of the reference alone (e.g. a new pair for later recipes) has nothing to pair
        out += ["", f"## Paired difference to {ref} (Dice points, mean ± std over seeds; per seed in brackets)", "",
                "| class | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(others)]
        for name in rows:
            cells = []
            for l in others:
                p = pair_of[l]
                d = [metric(by[(l, s)], name) - metric(by[(p, s)], name)
                     for s in seeds if (l, s) in by and (p, s) in by]
                cells.append(f"{fmt(d)} [{', '.join(f'{100 * x:+.1f}' for x in d)}]")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(l == UPPER for l in others) and len(others) > 1:  # some trainer between the two bounds
        out += ["", f"## Share of the gap between {ref} and the upper bound that each trainer closes "
                    "(seeds with a bound)", "",
                "| metric | " + " | ".join(h for l, h in zip(others, heads) if l != UPPER) + " |",
                "|---|" + "---:|" * (len(others) - 1)]
        for name in ("mean (foreground)", "mean (3 rarest)"):
            cells = []
            for l in others:
                if l == UPPER:
                    continue
                p = pair_of[l]
                both = [s for s in seeds if (l, s) in by and (p, s) in by and (UPPER, s) in by]
                gains = [metric(by[(l, s)], name) - metric(by[(p, s)], name) for s in both]
                gaps = [metric(by[(UPPER, s)], name) - metric(by[(p, s)], name) for s in both]
                below = [s for s, g in zip(both, gaps) if g <= 0]  # the "bound" does not bound there
                cells.append(f"n/a (bound not above on seed {', '.join(map(str, below))})" if below else
                             f"{np.sum(gains) / np.sum(gaps):.2f}" if both else "n/a")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "## Per seed: foreground mean / 3 rarest (%) and training wall-clock (min)", "",
            "| seed | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for s in seeds:
        cells = []
        for l in labels:
            r = by.get((l, s))
            cells.append("n/a" if r is None else f"{100 * r['foreground_mean']:.1f} / "
                         f"{100 * metric(r, 'mean (3 rarest)'):.1f} ({r['train_s'] / 60:.1f})")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out += ["", "## Per seed, per class (%)", ""]
    for s in seeds:
        out += [f"Seed {s}:", "", "| class | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for name in rows:
            out.append(f"| {name} | " + " | ".join(
                "n/a" if (l, s) not in by else f"{100 * metric(by[(l, s)], name):.1f}" for l in labels) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per run (burn-in counted)")
    p.add_argument("--iterations", type=int, default=50, help="iterations per nnU-Net epoch")
    p.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS, help="first is the reference")
    p.add_argument("--upper-bound", action="store_true", help="add nnUNetTrainer on all training cases' labels")
    p.add_argument("--first-seed-only", nargs="*", default=[], metavar="LABEL",
                   help=f"trainers run on the first seed only (diagnostic recipes; '{UPPER}' for the bound)")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs side by side; each gets cores // jobs torch threads (with --shared-burn-in, references "
                        "fewer than this train alone first, sharing all the cores), so when several harnesses run at "
                        "once, give each the total number of runs (two harnesses of one run each on 2 cores with "
                        "--jobs 1 oversubscribe the cores and train at half speed)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--phantom", default="default", choices=sorted(PRESETS),
                   help="phantom preset (nnunet_dinomix.phantom.generator.PRESETS) [default: default]")
    p.add_argument("--labeled", type=int, default=4, help="labeled cases per seed (16 unlabeled, 6 test), drawn "
                                                          "to show every class together")
    p.add_argument("--anchor", action="store_true",
                   help=f"add '{ANCHOR}': the reference's snapshot at half the steps pseudo-labels the unlabeled "
                        f"cases, plain nnU-Net resumes from the snapshot on all of them for the other half (needs "
                        f"--shared-burn-in)")
    p.add_argument("--shared-burn-in", action="store_true",
                   help="the semi-supervised runs start from the reference's checkpoint at half the steps (their "
                        "burn-in, which with DINOMIX_SEED is the reference's first half anyway) instead of "
                        "repeating it; their burn_in_fraction must stay 0.5")
    p.add_argument("--reference-from", metavar="WORK", default=None,
                   help="pair new recipes against a finished run's reference instead of retraining it: copy each "
                        "seed's phantom, plans, pool and the reference's model and burn-in snapshot from that work "
                        "folder (needs --shared-burn-in, the same first trainer, --steps and --iterations)")
    p.add_argument("--pair-with", metavar="LABEL", default=None,
                   help=f"the run paired differences are taken to [default: '{RESUMED}' with --shared-burn-in, "
                        f"else the first trainer]")
    p.add_argument("--pair-of", nargs="+", default=[], metavar="LABEL=PAIR",
                   help="take LABEL's paired differences to PAIR instead (e.g. a recipe on a second batch stream "
                        "to plain nnU-Net resumed on that stream)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: the CPU tier on nnU-Net's plans cut down by a plans preset (--preset); cuda: the GPU "
                        "tier, runs side by side on one GPU")
    p.add_argument("--preset", default=None, metavar="NAME_OR_JSON",
                   help="plans preset (dinomix_plans_preset) that derives the runs' plans from nnU-Net's; its "
                        "plans_name is the plans trained [default: tiny_cpu on cpu, none on cuda]")
    p.add_argument("--plans", default=None, help=f"plans name [default: {demo.PLANS} on cpu, nnUNetPlans on cuda]")
    p.add_argument("--data-workers", type=int, default=None,
                   help="nnUNet_n_proc_DA per run [default: 0 on cpu, cores / jobs on cuda]")
    p.add_argument("--name", default="ssl_quality_cpu")
    p.add_argument("--work", default=None, help="work folder [default: benchmarks/work/NAME]")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the work folder's records (those of --seeds only)")
    p.add_argument("--merge", nargs="+", default=[], metavar="WORK",
                   help="with --report-only: add these work folders' records (or records files, "
                        "benchmarks/results/records/NAME.json, which outlive the work folders, or result files, "
                        "benchmarks/results/NAME.md, read back to 0.1 points), for one report over "
                        "recipes or seeds that ran at different times (a label and seed found in two sources must "
                        "have one score)")
    p.add_argument("--alias", nargs="+", default=[], metavar="OLD=NEW",
                   help="with --merge: report runs labelled OLD as NEW (one run definition under two names, e.g. "
                        f"'nnU-Net-resumed-s0={RESUMED}')")
    args = p.parse_args(argv)
    if args.alias and not args.merge:
        p.error("--alias renames merged records: it needs --merge")
    if any("=" not in a for a in args.alias):
        p.error("--alias takes OLD=NEW")
    if any("=" not in a for a in args.pair_of):
        p.error("--pair-of takes LABEL=PAIR")
    if args.preset and args.plans:
        p.error("--preset names the plans it derives (its plans_name): give --preset or --plans, not both")
    if args.steps % args.iterations:
        p.error("--steps must be a multiple of --iterations")
    work = os.path.abspath(args.work or os.path.join(HERE, "work", args.name))
    if args.merge and not args.report_only:
        p.error("--merge rebuilds a report: it needs --report-only")
    if args.report_only:
        sources = [os.path.abspath(m) for m in args.merge]
        if os.path.isdir(work) or not sources:  # merging only records files needs no work folder
            sources.insert(0, work)
        aliases = dict(a.split("=", 1) for a in args.alias)
        records = merged_records(sources, aliases)
        left_out = sorted({r["seed"] for r in records} - set(args.seeds))
        if left_out:  # a rebuild reports --seeds only; say so rather than drop records silently
            print(f"--report-only: leaving out the records of seed(s) {left_out} (not in --seeds {args.seeds})",
                  flush=True)
        records = [r for r in records if r["seed"] in args.seeds]
        return write_result(args, argv, work, records, time.time())
    if os.path.isdir(work) and os.listdir(work):
        raise SystemExit(f"{work} exists; remove it or pass --work")
    config, split = phantom(args)
    specs = [parse_trainer(t) for t in args.trainers]
    tier = tier_of(args)
    epochs = args.steps // args.iterations
    if args.shared_burn_in and epochs % 2:
        p.error("--shared-burn-in needs an even number of epochs (--steps / --iterations)")
    if args.anchor and not args.shared_burn_in:
        p.error("--anchor needs --shared-burn-in (it starts from the reference's snapshot)")
    if args.reference_from and not args.shared_burn_in:
        p.error("--reference-from needs --shared-burn-in (the new runs start from the reference's snapshot)")
    stop_commands_on_signal()  # a killed harness stops its trainings, which would otherwise run on for hours
    start = time.time()
    envs, runs = {}, []
    for seed in args.seeds:
        seed_work = os.path.join(work, f"seed_{seed}")
        seed_runs = [Run(label, trainer, settings, DATASET, seed) for label, trainer, settings in specs
                     if seed == args.seeds[0] or label not in args.first_seed_only]
        upper = args.upper_bound and (seed == args.seeds[0] or UPPER not in args.first_seed_only)
        if args.reference_from:
            print(f"seed {seed}: reusing {args.reference_from}'s phantom, pool and {seed_runs[0].label}", flush=True)
            envs[seed] = reuse_seed(os.path.abspath(args.reference_from), seed_work, seed_runs[0], upper, tier)
        else:
            print(f"seed {seed}: preparing the phantom, plans and pool", flush=True)
            envs[seed] = prepare_seed(seed_work, seed, upper, config, split, tier)
        if args.shared_burn_in:
            ref = seed_runs[0]
            ref.snapshot_epoch = epochs // 2
            if len(specs) > 1 or args.anchor:  # runs to pair: the reference resumed from its snapshot is their pair
                seed_runs.insert(1, Run(RESUMED, ref.trainer, ref.settings, DATASET, seed))
                if args.reference_from:
                    seed_runs[1].reused = reused_record(os.path.abspath(args.reference_from), RESUMED, seed)
            for r in seed_runs[1:]:
                r.start_from = ref
            if args.anchor:
                seed_runs.append(anchor_run(seed_runs[0]))
        runs += seed_runs
        if upper:
            runs.append(Run(UPPER, "nnUNetTrainerBudget", None, FULL_DATASET, seed))
    records = []
    for stage, stage_jobs in stages(runs, args.jobs):
        stage_threads = max(1, (os.cpu_count() or 1) // stage_jobs)
        run_stage(records, stage, stage_jobs, stage_threads, work, envs, epochs, args.iterations, tier)
    return write_result(args, argv, work, records, start)


def stages(runs: List[Run], jobs: int) -> List[Tuple[List[Run], int]]:
    """The runs in the order they train, as ``(runs, side by side)`` stages. A run that starts from a reference's
    snapshot holds its worker idle until the snapshot exists, so where the references that train are fewer than
    the workers, they first train alone, sharing all the cores between them, and the rest follow."""
    runs = sorted(runs, key=lambda r: r.start_from is not None)  # references first: a waiting run never blocks
    first = [r for r in runs if r.start_from is None]
    later = [r for r in runs if r.start_from is not None]
    training = [r for r in first if r.reused is None]
    if later and training and len(training) < jobs:
        return [(first, len(training)), (later, jobs)]
    return [(runs, jobs)]


def run_stage(records: List[dict], runs: List[Run], jobs: int, threads: int, work: str,
              envs: Dict[int, Dict[str, str]], epochs: int, iterations: int, tier: Tier) -> None:
    """Train, predict and score ``runs``, ``jobs`` side by side with ``threads`` torch threads each, adding each
    record to ``records`` (and to the work folder's records.json) as it comes."""
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(train_and_score, r, os.path.join(work, f"seed_{r.seed}"), envs[r.seed], epochs,
                               iterations, threads, tier): r for r in runs}
        for future in concurrent.futures.as_completed(futures):
            try:
                r = future.result()
            except (Exception, SystemExit) as e:  # one failed run must not lose the others' results
                failed = futures[future]
                print(f"  seed {failed.seed} {failed.label}: FAILED ({e}); see its log in the work folder", flush=True)
                continue
            if futures[future].reused is not None:
                if r:
                    records.append(r)
                continue
            records.append(r)
            print(f"  seed {r['seed']} {r['label']}: foreground mean {100 * r['foreground_mean']:.1f}, "
                  f"{r['train_s'] / 60:.1f} min", flush=True)
            with open(os.path.join(work, "records.json"), "w") as f:
                json.dump(records, f, indent=1)


def reused_record(source: str, label: str, seed: int) -> Optional[dict]:
    """``label``'s record for ``seed`` in a finished work folder, if it has one (it is then not retrained)."""
    with open(os.path.join(source, "records.json")) as f:
        return next((r for r in json.load(f) if r["label"] == label and r["seed"] == seed), None)


def merged_records(works: List[str], aliases: Optional[Dict[str, str]] = None) -> List[dict]:
    """The records of several work folders, records files or result files (``.md``, see
    :func:`records_from_report`), one per (label, seed); ``aliases`` renames labels first (one run definition
    reported under two names). A reused reference appears in every folder that paired against it; the copies must
    agree (to the 0.05 points a result file rounds to, where one is), or two different runs carry one label. Where
    both are there, the exact record wins over the rounded one."""
    merged: Dict[tuple, dict] = {}
    for work in works:
        if work.endswith(".md"):
            found = records_from_report(work)
        else:
            path = work if work.endswith(".json") else os.path.join(work, "records.json")
            if not os.path.isfile(path):
                raise SystemExit(f"{path} does not exist: {work} is neither a finished ssl_quality work folder nor a "
                                 f"records file")
            with open(path) as f:
                found = json.load(f)
        for r in found:
            r = dict(r, label=(aliases or {}).get(r["label"], r["label"]))
            key = (r["label"], r["seed"])
            if key in merged:
                old = merged[key]
                tol = 5e-4 if old.get("rounded") or r.get("rounded") else 1e-9
                if not math.isclose(old["foreground_mean"], r["foreground_mean"], abs_tol=tol):
                    raise SystemExit(f"seed {r['seed']} '{r['label']}' scores {old['foreground_mean']:.4f} in one "
                                     f"source and {r['foreground_mean']:.4f} in {work}: two different runs carry one "
                                     f"label; give them distinct labels before merging")
                if old.get("rounded") and not r.get("rounded"):
                    merged[key] = r
                continue
            merged[key] = r
    return list(merged.values())


def records_from_report(path: str) -> List[dict]:
    """The records a result file shows, read back from its "Per seed" tables: for runs whose work folder and
    records file are gone (records files exist since 2026-11-25). Dice values are rounded to 0.1 points there, so
    these records carry ``rounded``; a run's wall-clock is the per-seed table's."""
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f]

    def table(start: int) -> tuple:
        header = [c.strip() for c in lines[start].strip("|").split("|")]
        rows, i = [], start + 2
        while i < len(lines) and lines[i].startswith("|"):
            rows.append([c.strip() for c in lines[i].strip("|").split("|")])
            i += 1
        return header, rows

    def number(cell: str) -> float:
        return float("nan") if cell == "n/a" else float(cell) / 100

    minutes: Dict[tuple, float] = {}
    section = lines.index("## Per seed: foreground mean / 3 rarest (%) and training wall-clock (min)")
    header, rows = table(section + 2)
    for row in rows:
        for label, cell in zip(header[1:], row[1:]):
            if cell != "n/a":
                minutes[(label, int(row[0]))] = float(cell.rsplit("(", 1)[1].rstrip(")"))
    records = []
    for i in range(lines.index("## Per seed, per class (%)"), len(lines)):
        if not (lines[i].startswith("Seed ") and lines[i].endswith(":")):
            continue
        seed = int(lines[i][len("Seed "):-1])
        header, rows = table(i + 2)
        values = {row[0]: row[1:] for row in rows}
        for j, label in enumerate(header[1:]):
            if values["mean (foreground)"][j] == "n/a":
                continue
            dice = {name: number(cells[j]) for name, cells in values.items() if not name.startswith("mean (")}
            records.append({"label": label, "seed": seed, "dice": dice,
                            "foreground_mean": number(values["mean (foreground)"][j]),
                            "train_s": 60 * minutes[(label, seed)], "rounded": True})
    return records


def tier_of(args) -> Tier:
    cuda = args.device == "cuda"
    workers = args.data_workers if args.data_workers is not None else (
        max(1, (os.cpu_count() or 1) // args.jobs) if cuda else 0)
    if args.preset:
        from nnunet_dinomix.plans_preset import load_preset
        preset = os.path.abspath(args.preset) if os.path.isfile(args.preset) else args.preset
        return Tier(args.device, load_preset(preset)["plans_name"], workers, preset)
    plans = args.plans or ("nnUNetPlans" if cuda else demo.PLANS)
    return Tier(args.device, plans, workers, demo.PRESET if plans == demo.PLANS else None)


def phantom(args):
    """The phantom preset and split the arguments ask for."""
    from nnunet_dinomix.phantom.dataset import PhantomSplit
    from nnunet_dinomix.phantom.generator import phantom_config
    split = PhantomSplit(n_labeled=args.labeled, labeled_cover_all_classes=True)
    return phantom_config(args.phantom, args.shape), split


def machine_accelerator(tier: Tier) -> str:
    if tier.device == "cpu":
        return "CPU only"
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (not visible to this process)"


def rebuilt_header(header: List[str], previous: str) -> List[str]:
    """The header of a report rebuilt with --report-only: the command, machine and wall-clock of the run that
    trained (read from the report it replaces) stay, and the rebuilding command is added as ``- rebuilt with:``."""
    kept = {}
    for line in previous.splitlines():
        for key in ("- command: ", "- machine: ", "- total wall-clock: "):
            if line.startswith(key) and key not in kept:
                kept[key] = line
    trained = kept.get("- command: ", "")
    if not trained or "--report-only" in trained:  # nothing trained under this name: the rebuild is the command
        return header
    out = []
    for line in header:
        key = line[:line.find(": ") + 2]
        if key == "- command: ":
            out += [trained, "- rebuilt with: " + line[len(key):]]
        elif key in ("- machine: ", "- total wall-clock: ") and key in kept:  # the run's, not the rebuild's
            out.append(kept[key])
        else:
            out.append(line)
    return out


def write_result(args, argv, work: str, records: List[dict], start: float) -> int:
    from nnunet_dinomix.evaluation.report import tail_classes
    from nnunet_dinomix.phantom.generator import expected_class_shares
    config, split = phantom(args)
    tier = tier_of(args)
    specs = [parse_trainer(t) for t in args.trainers]
    resumed = any(r["label"] == RESUMED for r in records)  # main() trains it when there are trainers to pair
    labels = ([specs[0][0]] + ([RESUMED] if resumed else []) + [s[0] for s in specs[1:]]
              + ([ANCHOR] if args.anchor else []) + ([UPPER] if args.upper_bound else []))
    pair = args.pair_with or (RESUMED if resumed else specs[0][0])
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    epochs = args.steps // args.iterations
    tail = tail_classes(expected_class_shares(config))  # one set for every seed: see expected_class_shares
    command = "python benchmarks/ssl_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"# Semi-supervised quality on held-out phantom cases: {args.name}", "",
              f"- date: {date.today().isoformat()}",
              f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {machine_accelerator(tier)}; "
              f"{args.jobs} runs side by side with {threads} thread(s) each"
              + ("; references fewer than that train first, alone, on all the cores"
                 if args.shared_burn_in and not args.reference_from else ""),
              f"- command: `{command}`",
              f"- data: per seed a fresh '{args.phantom}' phantom ({split.n_labeled} labeled that show every class "
              f"together, {split.n_unlabeled} unlabeled, {split.n_test} test cases, shape {config.shape}); "
              f"plans {tier.plans}" + (f" (preset {os.path.relpath(tier.preset)})"
                                       if tier.preset and os.path.isfile(tier.preset) else "") + "; fold 'all'",
              f"- training: {args.steps} optimizer steps for every run ({epochs} epochs x {args.iterations}), burn-in "
              f"counted; nnUNet_n_proc_DA={tier.data_workers}; the runs of one seed share DINOMIX_SEED (the same "
              f"initial weights and labeled batches, so a semi-supervised trainer's burn-in repeats the reference's "
              f"first steps)"
              + ("; shared burn-in: the other runs start from the reference's checkpoint at half the steps "
                 "(nnU-Net's --c), and their wall-clock includes the reference's time to that point"
                 if args.shared_burn_in else ""),
              "- evaluation: nnUNetv2_predict --disable_tta on the 6 test cases, nnUNetv2_evaluate_folder",
              f"- paired to: {pair}" + (" (plain nnU-Net resumed from the same snapshot: the exact pair of resumed "
                                        "runs whose labeled loader is nnU-Net's own, see the module docstring)"
                                        if pair != specs[0][0] else "")
              + "".join(f"; {a.split('=', 1)[0]} to {a.split('=', 1)[1]}" for a in args.pair_of),
              "- trainers: " + "; ".join(f"{l} = {t}" + (f" with {s}" if s else "") for l, t, s in specs),
              f"- total wall-clock: {(time.time() - start) / 60:.0f} min" if not args.report_only else
              "- total wall-clock: see the first run of this report"]
    out = os.path.join(HERE, "results", args.name + ".md")
    previous = ""
    if os.path.isfile(out):
        with open(out) as f:
            previous = f.read()
    if args.report_only:
        header = rebuilt_header(header, previous)
    text = report(records, labels, tail, header, pair, dict(a.split("=", 1) for a in args.pair_of))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if ANALYSIS in previous:  # a rebuilt report keeps the analysis written by hand below ANALYSIS
        text = text.rstrip("\n") + "\n\n" + previous[previous.index(ANALYSIS):]
    with open(out, "w") as f:
        f.write(text)
    # the work folders (models, snapshots) are not kept; the records are, so a later report can --merge them
    records_file = os.path.join(HERE, "results", "records", args.name + ".json")
    os.makedirs(os.path.dirname(records_file), exist_ok=True)
    with open(records_file, "w") as f:
        json.dump(sorted(records, key=lambda r: (r["seed"], r["label"])), f, indent=1)
    print(text)
    print(f"Wrote {out} and {records_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
