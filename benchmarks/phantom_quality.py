"""Segmentation quality and step time of nnUNetTrainer against nnUNetTrainerMeanTeacher on the phantom.

Runs the demo pipeline (real nnU-Net commands; the same 4 labeled cases and the same number of iterations for
both trainers) with a longer budget, then measures the step-time ratio in one process on the same dataset
(benchmarks/step_time.py), and writes benchmarks/results/phantom_quality.md.

    python benchmarks/phantom_quality.py --epochs 20 --iterations 25
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="iterations per trainer for the step-time measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default=os.path.join(HERE, "work", "phantom_quality"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "phantom_quality.md"))
    args = p.parse_args(argv)

    from nnunet_dinomix import demo
    if os.path.isdir(args.work) and os.listdir(args.work):
        raise SystemExit(f"{args.work} exists; remove it or pass --work")
    code = demo.main(["-o", args.work, "--epochs", str(args.epochs), "--iterations", str(args.iterations),
                      "--seed", str(args.seed), "--device", args.device])
    if code:
        return code
    report = open(os.path.join(args.work, "report", "dice.md")).read()

    env = demo._env(os.path.abspath(args.work), args.device)
    env["nnUNet_n_proc_DA"] = env.get("nnUNet_n_proc_DA", "0")
    step_out = os.path.join(args.work, "step_time.md")
    subprocess.run([sys.executable, os.path.join(HERE, "step_time.py"), "-d", str(demo.DATASET_ID), "-p", demo.PLANS,
                    "--device", args.device, "--steps", str(args.steps), "--out", step_out,
                    "--trainers", "nnUNetTrainer", "nnUNetTrainerMeanTeacher"], env=env, check=True)
    step_table = open(step_out).read().split("\n\n", 1)[1]

    command = "python benchmarks/phantom_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# Phantom benchmark: nnUNetTrainer vs nnUNetTrainerMeanTeacher", "",
        f"- date: {date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {args.device}",
        f"- command: `{command}`",
        f"- data: synthetic phantom (dinomix_generate_phantom, seed {args.seed}): 4 labeled, 16 unlabeled, 6 test "
        f"cases; plans nnUNetPlansTinyCPU (dinomix_plans_preset tiny_cpu); fold 'all'",
        f"- training: {args.epochs} epochs x {args.iterations} iterations for both trainers "
        f"(nnUNetTrainerBudget / nnUNetTrainerMeanTeacherBudget, identical to their parents but for the length)",
        "- evaluation: nnUNetv2_predict --disable_tta on imagesTs, nnUNetv2_evaluate_folder against labelsTs", "",
        "## Test-set Dice", "", report, "## Step time (one process, trainers taking turns)", "", step_table])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
