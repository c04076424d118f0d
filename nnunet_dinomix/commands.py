"""Running nnU-Net's (and this package's) console commands from Python, as a user would type them.

The demo, the offline pseudo-labelling rounds and the benchmarks drive the real commands in subprocesses, so
that what they measure is what a user gets. No nnU-Net import.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_dinomix import discovery
from nnunet_dinomix.errors import DinoMixError


def nnunet_env(workdir: str, device: str) -> Dict[str, str]:
    """This process's environment with nnU-Net's three folders under ``workdir``, the package's trainer folder
    on ``nnUNet_extTrainer``, and on the CPU ``nnUNet_compile=0`` (unless set)."""
    env = dict(os.environ)
    env.update(nnUNet_raw=os.path.join(workdir, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(workdir, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(workdir, "nnUNet_results"))
    if device == "cpu":
        env.setdefault("nnUNet_compile", "0")
    env.setdefault("nnUNet_def_n_proc", "2")
    trainer_dirs = [p for p in env.get(discovery.ENV, "").split(os.pathsep) if p]
    if discovery.trainer_dir() not in trainer_dirs:
        env[discovery.ENV] = os.pathsep.join(trainer_dirs + [discovery.trainer_dir()])
    return env


def executable(name: str) -> str:
    """A console script next to this interpreter (the venv's), falling back to PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) else name


def run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, log_file: Optional[str] = None,
        progress: Optional[Callable[[str], Optional[str]]] = None, on_failure: str = "") -> None:
    """Run ``cmd`` (printed first, as ``$ ...``), its output to ``log_file`` or the console; a non-zero exit
    raises a :class:`DinoMixError` naming the command, the log and ``on_failure`` (what the failure means for the
    caller's work). With a log file, ``progress`` sees every output line and what it returns (if anything) is
    printed, e.g. :class:`TrainingProgress`."""
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.time()
    if log_file is None:
        code = subprocess.run(list(cmd), env=env).returncode
    else:
        with open(log_file, "w") as log:
            if progress is None:
                code = subprocess.run(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            else:
                with subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1) as process:
                    for line in process.stdout:
                        log.write(line)
                        shown = progress(line.rstrip("\n"))
                        if shown:
                            print(shown, flush=True)
                code = process.returncode
    if code != 0:
        hint = f" (output in {log_file})" if log_file else ""
        raise DinoMixError(f"{cmd[0]} failed with exit code {code}{hint}: {' '.join(cmd)}"
                           + (f". {on_failure}" if on_failure else ""))
    print(f"  done in {time.time() - start:.0f} s", flush=True)


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ")
_NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?(?:e-?\d+)?|nan)")


class TrainingProgress:
    """One line per epoch from ``nnUNetv2_train``'s output: the epoch, the losses, the mean pseudo Dice and the
    time left, e.g. ``  [nnUNetTrainer] epoch 3/6: train_loss -0.41, val_loss -0.52, pseudo Dice 61.2 %, 38 s/epoch,
    about 2 min left``. nnU-Net's log lines are ``<timestamp>: <text>``; anything else is ignored."""

    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs
        self.epoch: Optional[int] = None
        self.values: Dict[str, float] = {}
        self.seconds: List[float] = []

    def __call__(self, line: str) -> Optional[str]:
        if not _TIMESTAMP.match(line):
            return None
        text = _TIMESTAMP.sub("", line).strip()
        if re.fullmatch(r"Epoch \d+", text):
            self.epoch, self.values = int(text.split()[1]), {}
        elif text.startswith(("train_loss ", "val_loss ")):
            key, value = text.split()[:2]
            self.values[key] = float(value)
        elif text.startswith("Pseudo dice "):
            dice = [float(v) for v in _NUMBER.findall(text)]
            dice = [d for d in dice if d == d]  # NaN: a class neither present nor predicted
            if dice:
                self.values["pseudo Dice"] = 100 * sum(dice) / len(dice)
        elif text.startswith("Epoch time: ") and self.epoch is not None:
            self.seconds.append(float(_NUMBER.findall(text)[0]))
            done = self.epoch + 1
            per_epoch = sum(self.seconds) / len(self.seconds)
            left = per_epoch * max(self.epochs - done, 0)
            parts = [f"{k} {v:.3f}" if "loss" in k else f"{k} {v:.1f} %" for k, v in self.values.items()]
            remaining = f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min"
            return (f"  [{self.name}] epoch {done}/{self.epochs}: " + ", ".join(parts + [f"{per_epoch:.0f} s/epoch"])
                    + (f", about {remaining} left" if left else ""))
        return None
