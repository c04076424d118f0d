"""``dinomix_demo``: the whole nnU-Net workflow on the synthetic phantom, plain nnU-Net against semi-supervised.

Steps, each a real command a user would run:
generate phantom -> nnUNetv2_plan_and_preprocess -> dinomix_plans_preset (tiny CPU network) ->
dinomix_preprocess_unlabeled -> nnUNetv2_train (by default nnUNetTrainer, nnUNetTrainerMeanTeacher and
nnUNetTrainerDinoMixNoFKD as their Budget variants; the same labeled cases, the same iterations) ->
nnUNetv2_predict on the test images -> nnUNetv2_evaluate_folder -> per-class report (markdown, CSV, PNG).
While a trainer trains, one line per epoch shows its losses, pseudo Dice and the time left.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from typing import Dict, List, Optional

from nnunet_dinomix.commands import TrainingProgress, executable, nnunet_env, run, stop_commands_on_signal
from nnunet_dinomix.errors import command
from nnunet_dinomix.phantom.dataset import PhantomSplit, dataset_folder_name, write_phantom_dataset

DATASET_ID = 990
DATASET_NAME = "DinoMixPhantom"
PRESET = "tiny_cpu"  # the shipped plans preset (plans/tiny_cpu.json) that derives PLANS
PLANS = "nnUNetPlansTinyCPU"
CONFIGURATION = "3d_fullres"
TRAINERS = ("nnUNetTrainerBudget", "nnUNetTrainerMeanTeacherBudget", "nnUNetTrainerDinoMixNoFKDBudget")
# default budget: 6 epochs x 20 iterations (about 15 min on 2 CPU cores for the three trainers); --long: 40 x 50
DEFAULT_BUDGET = (6, 20)
LONG_BUDGET = (40, 50)


def train_predict_evaluate(trainer: str, workdir: str, env: Dict[str, str], device: str, plans: str = PLANS,
                           fold: str = "all") -> str:
    """Train, predict the test images, and score them with nnU-Net's evaluation; returns the prediction folder."""
    raw = os.path.join(env["nnUNet_raw"], dataset_folder_name(DATASET_ID, DATASET_NAME))
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    train_env = dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", "0"))
    epochs = int(env.get("DINOMIX_NUM_EPOCHS", 1000))  # the Budget trainers' length; nnU-Net's own is 1000
    run([executable("nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, fold, "-tr", trainer, "-p", plans,
         "-device", device], train_env, os.path.join(logs, f"train_{trainer}.log"), TrainingProgress(trainer, epochs))
    prediction = os.path.join(workdir, "predictions", trainer)
    run([executable("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", prediction, "-d", str(DATASET_ID),
         "-c", CONFIGURATION, "-f", fold, "-tr", trainer, "-p", plans, "-device", device, "--disable_tta",
         "-npp", "1", "-nps", "1"], env, os.path.join(logs, f"predict_{trainer}.log"))
    plans_file = os.path.join(env["nnUNet_preprocessed"], dataset_folder_name(DATASET_ID, DATASET_NAME),
                              plans + ".json")
    run([executable("nnUNetv2_evaluate_folder"), os.path.join(raw, "labelsTs"), prediction,
         "-djfile", os.path.join(prediction, "dataset.json"), "-pfile", plans_file, "-np", "1"], env,
        os.path.join(logs, f"evaluate_{trainer}.log"))
    return prediction


@command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dinomix_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="demo_output", help="work folder [default: ./demo_output]")
    parser.add_argument("--long", action="store_true",
                        help=f"train {LONG_BUDGET[0]}x{LONG_BUDGET[1]} iterations instead of "
                             f"{DEFAULT_BUDGET[0]}x{DEFAULT_BUDGET[1]}")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None, help="iterations per epoch")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS),
                        help=f"trainers to compare, first is the reference [default: {' '.join(TRAINERS)}]; the "
                             f"full nnUNetTrainerDinoMixBudget needs DINOMIX_DINOV3_WEIGHTS")
    parser.add_argument("--plans", default="tiny", choices=("tiny", "nnUNetPlans"),
                        help="tiny: the tiny_cpu preset (CPU); nnUNetPlans: nnU-Net's own plans (GPU) [default: tiny]")
    parser.add_argument("--parallel", action="store_true",
                        help="train the trainers at the same time (one GPU has room for several phantom runs)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="phantom volume size [default: 40 80 80]")
    args = parser.parse_args(argv)
    stop_commands_on_signal()

    workdir = os.path.abspath(args.output)
    if os.path.isdir(workdir) and os.listdir(workdir):
        print(f"ERROR: {workdir} is not empty. Nothing was changed; choose another folder with -o or remove it.",
              file=sys.stderr)
        return 1
    epochs, iterations = LONG_BUDGET if args.long else DEFAULT_BUDGET
    epochs, iterations = args.epochs or epochs, args.iterations or iterations
    env = nnunet_env(workdir, args.device)
    env.update(DINOMIX_NUM_EPOCHS=str(epochs), DINOMIX_ITERATIONS_PER_EPOCH=str(iterations),
               DINOMIX_VAL_ITERATIONS_PER_EPOCH="2")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    start = time.time()

    print(f"[1/5] Generating the phantom dataset in {env['nnUNet_raw']}", flush=True)
    from nnunet_dinomix.phantom.generator import PhantomConfig
    config = PhantomConfig(shape=tuple(args.shape)) if args.shape else PhantomConfig()
    raw = write_phantom_dataset(env["nnUNet_raw"], DATASET_ID, DATASET_NAME, PhantomSplit(), seed=args.seed,
                                config=config)
    print("[2/5] nnU-Net planning and preprocessing", flush=True)
    # nnU-Net 2.8.1's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
    plan_env = dict(env, nnUNet_n_proc_DA="2")
    run([executable("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "2"], plan_env,
        os.path.join(workdir, "plan_and_preprocess.log"))
    plans = PLANS if args.plans == "tiny" else "nnUNetPlans"
    print("[3/5] " + ("Tiny CPU plans and the" if plans == PLANS else "The") + " unlabeled pool", flush=True)
    if plans == PLANS:
        run([executable("dinomix_plans_preset"), "-d", str(DATASET_ID), "--preset", PRESET], env)
    run([executable("dinomix_preprocess_unlabeled"), "-d", str(DATASET_ID), "-p", plans, "-np",
         env["nnUNet_def_n_proc"]], env)

    def one(trainer: str) -> str:
        print(f"{trainer}: {epochs} epochs x {iterations} iterations, predict, evaluate", flush=True)
        return train_predict_evaluate(trainer, workdir, env, args.device, plans)

    print(f"[4/5] Training {len(args.trainers)} trainers" + (" in parallel" if args.parallel else ""), flush=True)
    if args.parallel:
        with concurrent.futures.ThreadPoolExecutor(len(args.trainers)) as pool:
            predictions = dict(zip(args.trainers, pool.map(one, args.trainers)))
    else:
        predictions = {t: one(t) for t in args.trainers}

    from nnunet_dinomix.evaluation.report import class_voxel_shares, collect, read_labels, write_report
    print("[5/5] Report", flush=True)
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    labels, ending = read_labels(dataset_json), dataset_json["file_ending"]
    rows = collect(os.path.join(raw, "labelsTs"), predictions, labels, ending, 1)
    labels_tr = os.path.join(raw, "labelsTr")
    shares = class_voxel_shares([os.path.join(labels_tr, f) for f in sorted(os.listdir(labels_tr))], labels)
    title = (f"Phantom test set, {epochs}x{iterations} iterations, 4 labeled + 16 unlabeled cases, seed "
             f"{args.seed}, plans {plans}")
    paths = write_report(rows, labels, shares, {}, os.path.join(workdir, "report"), title)
    with open(paths["md"]) as f:
        print(f.read().split("\n## ASD")[0])  # the Dice table; distances are in the report
    print("Report: " + ", ".join(paths.values()))
    print(f"Total time: {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
