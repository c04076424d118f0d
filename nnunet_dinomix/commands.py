"""Running nnU-Net's (and this package's) console commands from Python, as a user would type them.

The demo, the offline pseudo-labelling rounds and the benchmarks drive the real commands in subprocesses, so
that what they measure is what a user gets. No nnU-Net import.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Dict, Optional, Sequence

from nnunet_dinomix import discovery


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


def run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, log_file: Optional[str] = None) -> None:
    """Run ``cmd`` (printed first, as ``$ ...``), its output to ``log_file`` or the console; a non-zero exit
    raises ``SystemExit`` naming the command and the log."""
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.time()
    if log_file is None:
        result = subprocess.run(list(cmd), env=env)
    else:
        with open(log_file, "w") as log:
            result = subprocess.run(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        hint = f" (output in {log_file})" if log_file else ""
        raise SystemExit(f"command failed with exit code {result.returncode}{hint}: {' '.join(cmd)}")
    print(f"  done in {time.time() - start:.0f} s", flush=True)
