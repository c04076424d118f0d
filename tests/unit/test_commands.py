"""Running commands as a user would: the log keeps everything, the console gets one progress line per epoch."""
import os
import signal
import subprocess
import sys
import time

import pytest

from nnunet_dinomix.commands import TrainingProgress, run
from nnunet_dinomix.errors import DinoMixError

# nnUNetv2_train's own lines (nnU-Net 2.8.1, as in benchmarks/work logs), plus a line that is not nnU-Net's
EPOCH = """2026-11-24 05:57:21.394089: 
2026-11-24 05:57:21.394089: Epoch 0
2026-11-24 05:57:21.394089: Current learning rate: 0.01
2026-11-24 05:58:21.394089: train_loss 0.9001
2026-11-24 05:58:21.394366: val_loss -0.2203
2026-11-24 05:58:21.394502: Pseudo dice [np.float32(0.5), np.float32(0.0), np.float32(nan), np.float32(1.0)]
2026-11-24 05:58:21.394615: Epoch time: 60.00 s
some warning printed by a library
2026-11-24 05:58:22.366338: Epoch 1
2026-11-24 05:59:02.394089: train_loss 0.5
2026-11-24 05:59:02.394615: Epoch time: 40.00 s"""


def test_training_progress_reads_nnunet_lines_into_one_line_per_epoch():
    progress = TrainingProgress("nnUNetTrainer", epochs=4)
    shown = [s for s in map(progress, EPOCH.splitlines()) if s]
    assert shown == [
        "  [nnUNetTrainer] epoch 1/4: train_loss 0.900, val_loss -0.220, pseudo Dice 50.0 %, 60 s/epoch, "
        "about 3 min left",
        "  [nnUNetTrainer] epoch 2/4: train_loss 0.500, 50 s/epoch, about 2 min left"]
    last = TrainingProgress("T", epochs=2)
    assert [s for s in map(last, EPOCH.splitlines()) if s][0].endswith("60 s/epoch, about 60 s left")


def test_run_logs_every_line_and_prints_progress(tmp_path, capsys):
    script = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
    source, log = tmp_path / "output.txt", tmp_path / "train.log"
    source.write_text(EPOCH)
    run([sys.executable, "-c", script, str(source)], log_file=str(log), progress=TrainingProgress("T", epochs=2))
    assert log.read_text() == EPOCH
    out = capsys.readouterr().out
    assert "[T] epoch 1/2: train_loss 0.900" in out and "[T] epoch 2/2: train_loss 0.500, 50 s/epoch\n" in out
    assert "some warning" not in out
    with pytest.raises(DinoMixError, match=f"exit code 3 \\(output in {log}\\).*Nothing was lost"):
        run([sys.executable, "-c", "import sys; print('x'); sys.exit(3)"], log_file=str(log),
            progress=TrainingProgress("T", 1), on_failure="Nothing was lost.")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# a caller like benchmarks/ssl_quality.py: commands run from a worker thread, the main thread waits on them
CALLER = """
import concurrent.futures, sys
from nnunet_dinomix import commands
commands.stop_commands_on_signal()
child = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
         "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")
with concurrent.futures.ThreadPoolExecutor(1) as pool:
    first = pool.submit(commands.run, [sys.executable, '-c', child, sys.argv[1]])
    later = pool.submit(commands.run, [sys.executable, '-c', "open(sys.argv[1], 'w').write('started')", sys.argv[2]])
    first.result()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_terminated_caller_stops_its_commands_and_their_children_and_starts_no_more(tmp_path):
    pid_file, later_file = tmp_path / "grandchild.pid", tmp_path / "later.txt"
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(pid_file), str(later_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    caller.send_signal(signal.SIGTERM)  # what pkill sends
    assert caller.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    try:
        assert not _alive(grandchild), "the command's own child outlived the terminated caller"
    finally:
        if _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
    assert not later_file.exists()  # the queued command never started
