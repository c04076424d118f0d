"""Step time (and peak GPU memory) of several trainers, side by side in one process.

Each trainer is built by nnU-Net's own ``get_trainer_from_args`` and started with ``on_train_start`` (its
loaders, augmenters, unlabeled stream). Then the trainers take turns, one iteration each, so that machine load
affects all of them alike. An iteration is what nnU-Net's loop does: ``next(dataloader_train)`` and
``train_step``. Reported: median and quartiles per trainer, and the ratio of medians to the first trainer.

    python benchmarks/step_time.py -d 990 -p nnUNetPlansTinyCPU --device cpu --steps 20 \
        --trainers nnUNetTrainer nnUNetTrainerMeanTeacher --out benchmarks/results/step_time_cpu.md
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
from datetime import date

import numpy as np
import torch


@contextlib.contextmanager
def nnunet_compile(on: bool):
    """nnU-Net decides in ``_do_i_compile`` (from nnUNet_compile, and never on the CPU); force it either way."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    original = nnUNetTrainer._do_i_compile
    nnUNetTrainer._do_i_compile = lambda self: on
    try:
        yield
    finally:
        nnUNetTrainer._do_i_compile = original


def build(trainer: str, dataset: str, configuration: str, plans: str, device: torch.device, compiled: bool):
    from nnunetv2.run.run_training import get_trainer_from_args
    with contextlib.redirect_stdout(io.StringIO()), nnunet_compile(compiled):
        t = get_trainer_from_args(dataset, configuration, "all", trainer, plans, device=device)
        t.disable_checkpointing = True
        if hasattr(t, "burn_in_steps"):  # time the semi-supervised step, not the supervised burn-in
            t.burn_in_steps = 0
        t.on_train_start()
        t.on_train_epoch_start()
    return t


def one_iteration(t, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    t.train_step(next(t.dataloader_train))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


STEP_PARTS = ("unlabeled_batch_with_truth", "teacher_pseudo_labels", "mix", "student_forward", "segmentation_losses",
              "auxiliary_losses", "optimizer_step", "update_teacher")


def profile(t, device: torch.device, steps: int) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for step in STEP_PARTS:  # label the named steps of train_step in the profile (instance attributes only)
        method = getattr(t, step, None)
        if method is not None:
            def labelled(*a, _method=method, _name=step, **k):
                with record_function(f"step:{_name}"):
                    return _method(*a, **k)
            setattr(t, step, labelled)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function("iteration"):
                one_iteration(t, device)
    keys = ("device_time_total", "cuda_time_total") if device.type == "cuda" else ("cpu_time_total",)
    for key in keys:  # the CUDA column's name changed across torch versions
        try:
            return prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)
        except (AttributeError, KeyError, ValueError):
            continue
    return prof.key_averages().table(row_limit=25, max_name_column_width=60)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True)
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write a markdown result file")
    p.add_argument("--random-teacher", default=None, metavar="DIR",
                   help="write a randomly initialised DINOv3 ViT-S/16 (Meta's .pth layout) into DIR and use it for the "
                        "FKD trainers: same cost as the real weights, no knowledge")
    p.add_argument("--compile", choices=("off", "on", "both"), default="off",
                   help="nnU-Net's torch.compile of the network, forced off or on (both: every trainer twice); "
                        "compilation falls into the warm-up iterations")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="afterwards, profile N iterations of the last trainer and add the top operators to the report")
    args = p.parse_args(argv)

    from nnunet_dinomix import discovery
    discovery.register_in_environment()
    teacher_note = os.environ.get("DINOMIX_DINOV3_WEIGHTS", "none")
    if args.random_teacher:
        from nnunet_dinomix.fkd.random_teacher import random_dinov3, write_meta_checkpoint
        os.makedirs(args.random_teacher, exist_ok=True)
        os.environ["DINOMIX_DINOV3_WEIGHTS"] = write_meta_checkpoint(random_dinov3(), args.random_teacher)
        teacher_note = "randomly initialised ViT-S/16 (12 blocks) in Meta's .pth layout"
    device = torch.device(args.device)
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    trainers = {name + (" (compiled)" if on and args.compile == "both" else ""):
                build(name, args.d, args.c, args.p, device, on) for on in modes for name in args.trainers}
    times = {name: [] for name in trainers}
    peak = {}
    for name, t in trainers.items():
        for _ in range(args.warmup):
            one_iteration(t, device)
    for step in range(args.steps):
        order = list(trainers) if step % 2 == 0 else list(reversed(trainers))
        for name in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(one_iteration(trainers[name], device))
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated())
    profile_lines = []
    if args.profile > 0:
        last = list(trainers)[-1]
        profile_lines = [f"## Profile of {last} ({args.profile} iterations, torch.profiler, top operators by "
                         f"{'CUDA' if device.type == 'cuda' else 'CPU'} time)", "", "```",
                         profile(trainers[last], device, args.profile), "```", ""]
    for t in trainers.values():
        with contextlib.redirect_stdout(io.StringIO()):
            t.on_train_end()

    base = list(trainers)[0]
    base_median = float(np.median(times[base]))
    t0 = trainers[base]
    cm = t0.configuration_manager
    header = (f"patch {cm.patch_size}, batch {t0.batch_size} labeled (+{t0.batch_size} unlabeled for semi-supervised "
              f"trainers), features {cm.network_arch_init_kwargs['features_per_stage']}")
    lines = ["| trainer | median s/iter | p25 | p75 | ratio to " + base + (" | peak GPU memory GiB | memory ratio |"
                                                                          if peak else " |"),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if peak else "")]
    for name, ts in times.items():
        med = float(np.median(ts))
        q1, q3 = np.percentile(ts, 25), np.percentile(ts, 75)
        row = f"| {name} | {med:.3f} | {q1:.3f} | {q3:.3f} | {med / base_median:.2f} |"
        if peak:
            row += f" {peak[name] / 2 ** 30:.2f} | {peak[name] / peak[base]:.2f} |"
        lines.append(row)
    machine = (torch.cuda.get_device_name() if device.type == "cuda" else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
               f"{torch.get_num_threads()}")
    command = "python benchmarks/step_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join([
        f"# Step time: {', '.join(trainers)}", "",
        f"- date: {date.today().isoformat()}", f"- machine: {machine}", f"- torch {torch.__version__}",
        f"- command: `{command}`",
        f"- setting: dataset {args.d}, {args.c}, plans {args.p}; {header}; nnUNet_n_proc_DA="
        f"{os.environ.get('nnUNet_n_proc_DA', 'default')}; torch.compile {args.compile}",
        f"- DINOv3 teacher (FKD trainers): {teacher_note}",
        f"- method: {args.warmup} warm-up iterations each, then {args.steps} iterations per trainer, taking turns "
        f"in one process; an iteration is next(dataloader_train) + train_step", "", *lines, "", *profile_lines])
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
