"""Segmentation quality of nnU-Net's trainer against the semi-supervised trainers on the phantom, plus step time.

Runs the demo pipeline (real nnU-Net commands; the same 4 labeled cases and the same number of iterations for
every trainer), reports per-class test Dice and the mean over the three rarest classes (by labeled voxel count),
then measures the step-time ratios side by side in one process on the same data (benchmarks/step_time.py), and
writes benchmarks/results/<name>.md.

CPU (tiny plans):  python benchmarks/phantom_quality.py --epochs 20 --iterations 25
GPU (nnU-Net's own plans, trainers in parallel on one GPU):
    python benchmarks/phantom_quality.py --device cuda --plans nnUNetPlans --parallel --epochs 25 --iterations 40 \
        --name phantom_quality_gpu
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TRAINERS = ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacherBudget", "nnUNetTrainerDinoMixNoFKDBudget",
                    "nnUNetTrainerDinoMixBudget"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS)
    p.add_argument("--plans", default="tiny", choices=("tiny", "nnUNetPlans"))
    p.add_argument("--parallel", action="store_true")
    p.add_argument("--steps", type=int, default=20, help="iterations per trainer for the step-time measurement "
                                                         "(0: skip it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default="phantom_quality", help="result file name (benchmarks/results/NAME.md)")
    p.add_argument("--work", default=None, help="work folder [default: benchmarks/work/NAME]")
    args = p.parse_args(argv)
    work = args.work or os.path.join(HERE, "work", args.name)
    out = os.path.join(HERE, "results", args.name + ".md")

    from nnunet_dinomix import commands, discovery
    from nnunet_dinomix.cli import demo
    commands.stop_commands_on_signal()  # a killed benchmark stops its trainings and the step-time run
    if os.path.isdir(work) and os.listdir(work):
        raise SystemExit(f"{work} exists; remove it or pass --work")
    os.makedirs(work, exist_ok=True)
    teacher_note = "none"
    if any(getattr(discovery.trainer_class(t), "use_fkd", False) for t in args.trainers) \
            and not os.environ.get("DINOMIX_DINOV3_WEIGHTS"):
        # a random teacher measures FKD's cost and shows the pipeline runs; it carries no knowledge
        from nnunet_dinomix.fkd.random_teacher import random_dinov3, write_meta_checkpoint
        os.environ["DINOMIX_DINOV3_WEIGHTS"] = write_meta_checkpoint(random_dinov3(), work)
        teacher_note = "randomly initialised ViT-S/16 in Meta's .pth layout (a cost check: it carries no knowledge)"
    code = demo.main(["-o", os.path.join(work, "demo"), "--epochs", str(args.epochs), "--iterations",
                      str(args.iterations), "--seed", str(args.seed), "--device", args.device, "--plans", args.plans,
                      "--trainers", *args.trainers] + (["--parallel"] if args.parallel else []))
    if code:
        return code
    with open(os.path.join(work, "demo", "report", "report.md")) as f:
        report = f.read().split("\n## ASD")[0].split("\n", 2)[2]  # the Dice table, without the report's title
    plans = demo.PLANS if args.plans == "tiny" else "nnUNetPlans"

    step_table = "(skipped)"
    if args.steps > 0:
        env = commands.nnunet_env(os.path.join(work, "demo"), args.device)
        env.setdefault("nnUNet_n_proc_DA", "0" if args.device == "cpu" else "4")
        step_out = os.path.join(work, "step_time.md")
        base = [t[:-len("Budget")] if t.endswith("Budget") else t for t in args.trainers]
        commands.run([sys.executable, os.path.join(HERE, "step_time.py"), "-d", str(demo.DATASET_ID), "-p", plans,
                      "--device", args.device, "--steps", str(args.steps), "--out", step_out, "--trainers", *base],
                     env=env)
        step_table = open(step_out).read().split("\n\n", 1)[1]

    command = "python benchmarks/phantom_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"# Phantom benchmark: {', '.join(args.trainers)}", "",
        f"- date: {date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {args.device}"
        + (f" ({__import__('torch').cuda.get_device_name()})" if args.device == "cuda" else ""),
        f"- command: `{command}`",
        f"- data: synthetic phantom (dinomix_generate_phantom, seed {args.seed}): 4 labeled, 16 unlabeled, 6 test "
        f"cases; plans {plans}; fold 'all'",
        f"- training: {args.epochs} epochs x {args.iterations} iterations for every trainer (the Budget variants are "
        f"identical to their parents but for the length)" + ("; trained at the same time on one device" if
                                                             args.parallel else ""),
        f"- DINOv3 teacher: {teacher_note}",
        "- evaluation: nnUNetv2_predict --disable_tta on imagesTs, nnUNetv2_evaluate_folder against labelsTs", "",
        "## Test-set Dice", "", report, "## Step time (one process, trainers taking turns)", "", step_table]) + "\n"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
