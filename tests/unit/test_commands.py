"""Running commands as a user would: the log keeps everything, the console gets one progress line per epoch."""
import sys

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
