"""DDP, run rather than assumed: two processes, the gloo backend, on the CPU.

nnU-Net's DDP launcher needs one GPU per rank and its trainer then insists on CUDA (it sets the device to
``cuda:<rank>`` and wraps with ``device_ids=[rank]``). Each rank here builds the trainer as nnU-Net does inside a
gloo process group and undoes only those two CUDA-isms (device back to the CPU, no ``device_ids``, no grad scaler);
everything of this package's runs as it would on GPUs: the per-rank unlabeled loader, the gathered log values, the
feature tap through the DDP wrapper, checkpoints written by rank 0 only.

Checked for Mean Teacher and DINO-Mix (random DINOv3 in Meta's format): the ranks draw different unlabeled samples
(even with the same DINOMIX_SEED), the logged values are the ranks' means, the students (and EMA teachers) stay
identical, and only rank 0 writes the checkpoint.
"""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
TRAINERS = ("nnUNetTrainerMeanTeacherBudget", "nnUNetTrainerDinoMixBudget")


def _checksum(module) -> float:
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def _rank(rank: int, folder: str, dataset: str, plans: str) -> None:
    import numpy as np
    import torch.distributed as dist
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    ddp = nnunet_trainer_module.DDP
    nnunet_trainer_module.DDP = lambda module, device_ids=None, **kw: ddp(module, **kw)  # CPU modules: no ids
    report = {}
    for name in TRAINERS:
        t = get_trainer_from_args(dataset, "3d_fullres", "all", name, plans, device=torch.device("cpu"))
        assert t.is_ddp and t.local_rank == rank
        t.device, t.grad_scaler = torch.device("cpu"), None  # nnU-Net set cuda:<rank>
        t.burn_in_steps = 0
        t.on_train_start()
        t.on_train_epoch_start()
        x_u, _ = t.unlabeled_batch_with_truth()
        outputs = [t.train_step(next(t.dataloader_train)) for _ in range(2)]
        local = {k: float(np.nanmean([float(o[k]) for o in outputs])) for k in ("loss", "train_loss_unsup")}
        if "train_loss_fkd" in outputs[0]:
            local["train_loss_fkd"] = float(np.nanmean([float(o["train_loss_fkd"]) for o in outputs]))
        t.on_train_epoch_end(outputs)
        logged = {"loss": float(t.logger.get_value("train_losses", step=-1))}
        logged.update({k: float(t.logger.get_value(k, step=-1)) for k in local if k != "loss"})
        checkpoint = os.path.join(folder, f"{name}_rank{rank}.pth")
        t.save_checkpoint(checkpoint)
        report[name] = {"unlabeled": float(x_u.double().sum()), "local": local, "logged": logged,
                        "student": _checksum(t.student), "teacher": _checksum(t.ema_teacher),
                        "head": _checksum(t.distiller.head) if getattr(t, "distiller", None) is not None else 0.0,
                        "wrote_checkpoint": os.path.isfile(checkpoint),
                        "network_is_ddp": isinstance(t.network, torch.nn.parallel.DistributedDataParallel)}
        t.on_train_end()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


@pytest.mark.e2e
def test_two_gloo_ranks_train_mean_teacher_and_dinomix(phantom_with_pool, dinov3_meta_file, tmp_path, monkeypatch):
    from support import DATASET_ID, TINY_PLANS
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
    monkeypatch.setenv(WEIGHTS_ENV, dinov3_meta_file)
    monkeypatch.setenv("DINOMIX_SEED", "0")  # the worst case for per-rank sampling: one seed for both ranks
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))  # read by the ranks' fresh nnU-Net imports
    mp.spawn(_rank, args=(str(tmp_path), str(DATASET_ID), TINY_PLANS), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for name in TRAINERS:
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0["network_is_ddp"] and r1["network_is_ddp"]
        assert r0["unlabeled"] != r1["unlabeled"], "both ranks drew the same unlabeled samples"
        for key, logged in r0["logged"].items():
            expected = (r0["local"][key] + r1["local"][key]) / 2
            assert logged == pytest.approx(expected, rel=1e-5), key
            assert r1["logged"][key] == pytest.approx(logged, rel=1e-6)
        assert r0["local"]["loss"] != r1["local"]["loss"]  # different data per rank, so the mean is a real mean
        assert r0["student"] == pytest.approx(r1["student"], rel=1e-6, abs=1e-6)
        assert r0["teacher"] == pytest.approx(r1["teacher"], rel=1e-6, abs=1e-6)
        assert r0["head"] == pytest.approx(r1["head"], rel=1e-6, abs=1e-6)  # the FKD head trains in step too
        assert r0["wrote_checkpoint"] and not r1["wrote_checkpoint"]
    assert ranks[0]["nnUNetTrainerDinoMixBudget"]["local"]["train_loss_fkd"] > 0
