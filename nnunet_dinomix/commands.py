"""Running nnU-Net's (and this package's) console commands from Python, as a user would type them.

The demo, the offline pseudo-labelling rounds and the benchmarks drive the real commands in subprocesses, so
that what they measure is what a user gets. No nnU-Net import.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

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


_live: set = set()  # the commands running now, for stop_commands_on_signal
_live_lock = threading.RLock()  # reentrant: the stop signal may arrive while the main thread holds it
_own_sessions = False  # set by stop_commands_on_signal: each command runs in a session (process group) of its own
_stopping = False
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def stop_commands_on_signal() -> None:
    """Make SIGTERM, SIGHUP and SIGINT stop the commands this process runs, their own children included (nnU-Net's
    data-augmentation workers), before this process exits, so that a killed benchmark (``pkill -f ssl_quality``)
    leaves no training behind; no command starts after the signal. Each command then runs in a process group of
    its own, which the signal to this process would not reach, so the handler stops the groups. Call it once from
    the main thread of a command-line entry point, before any command starts; a second signal kills at once."""
    global _own_sessions

    def stop(signum, frame):
        global _stopping
        _stopping = True
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        with _live_lock:
            for process in _live:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return
    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    _own_sessions = True


@contextlib.contextmanager
def _command(cmd: Sequence[str], **popen) -> Iterator[subprocess.Popen]:
    """A running command, known to :func:`stop_commands_on_signal` while it runs, killed if the caller fails."""
    with _live_lock:  # the stop signal either finds this command in _live or keeps it from starting
        if _stopping:
            raise DinoMixError(f"not starting {cmd[0]}: this process was told to stop")
        process = subprocess.Popen(list(cmd), start_new_session=_own_sessions, **popen)
        _live.add(process)
    try:
        with process:  # on leaving, closes the pipes and waits for the command
            try:
                yield process
            except BaseException:
                if _own_sessions:  # the command and its own children
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
                raise
    finally:
        with _live_lock:
            _live.discard(process)


def run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, log_file: Optional[str] = None,
        progress: Optional[Callable[[str], Optional[str]]] = None, on_failure: str = "") -> None:
    """Run ``cmd`` (printed first, as ``$ ...``), its output to ``log_file`` or the console; a non-zero exit
    raises a :class:`DinoMixError` naming the command, the log and ``on_failure`` (what the failure means for the
    caller's work). With a log file, ``progress`` sees every output line and what it returns (if anything) is
    printed, e.g. :class:`TrainingProgress`."""
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.time()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_file, "w")) if log_file is not None else None
        if log is None:
            streams = {}
        elif progress is None:
            streams = dict(stdout=log, stderr=subprocess.STDOUT)
        else:
            streams = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        process = stack.enter_context(_command(cmd, env=env, **streams))
        if log is not None and progress is not None:
            for line in process.stdout:
                log.write(line)
                shown = progress(line.rstrip("\n"))
                if shown:
                    print(shown, flush=True)
        code = process.wait()
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
