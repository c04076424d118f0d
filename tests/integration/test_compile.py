"""torch.compile and the FKD feature tap (nnU-Net compiles by default on the GPU; here inductor runs on the CPU).

A forward hook added to a submodule after a compiled module's first call is not in the traced graph and never
fires; one added before the first call fires and matches eager. The trainer therefore attaches its tap inside
``initialize()`` (in ``configure_optimizers``, before any forward), and a forward of the network in between, as
nnU-Net's architecture plot does, must not matter.
"""
import functools

import pytest
import torch

from nnunet_dinomix.fkd.tap import FeatureTap


def _tiny_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), 1, 3, 1,
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True).eval()


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_tap_attached_before_the_first_compiled_call_matches_eager_and_a_late_one_never_fires(fresh_dynamo):
    x = torch.randn(2, 1, 8, 16, 16)
    net = _tiny_unet()
    eager_tap = FeatureTap(net.encoder.stages[1])
    with torch.no_grad():
        eager_out = net(x)[0]
    eager = eager_tap.pop()
    eager_tap.remove()

    compiled = torch.compile(net)  # inductor
    tap = FeatureTap(net.encoder.stages[1])  # before the first call, as the trainer does
    with torch.no_grad():
        out = compiled(x)[0]
    torch.testing.assert_close(tap.pop(), eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-5)

    # after the first call: the order the trainer must never use. (Changing the hooks of a module that had some
    # when traced recompiles; a hook on a module that had none is simply not in the graph.)
    late = FeatureTap(net.encoder.stages[2])
    with torch.no_grad():
        compiled(x)
    with pytest.raises(RuntimeError, match="did not run"):
        late.pop()


def test_compiled_dinomix_trains_with_its_tap_after_an_early_forward_and_does_not_recompile(
        phantom_with_pool, dinov3_meta_file, monkeypatch, fresh_dynamo):
    """The trainer with nnU-Net's own compile switched on (aot_eager: dynamo's tracing, where hooks are decided,
    without a C++ build of the whole network). A forward between initialize() and training, as nnU-Net's
    plot_network_architecture does with hiddenlayer installed, used to freeze the graph without the tap."""
    from support import make_trainer
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    import shutil

    monkeypatch.setenv(WEIGHTS_ENV, dinov3_meta_file)
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    t = make_trainer("nnUNetTrainerDinoMix")
    t.burn_in_steps = 0
    t.initialize()
    assert hasattr(t.network, "_orig_mod")  # nnU-Net compiled it
    # the early forward, shaped as the student's batch (labeled + unlabeled samples), with gradients: a call that
    # the graph of every later train step is reused from
    t.network(torch.zeros(2 * t.batch_size, 1, *t.configuration_manager.patch_size))
    t.on_train_start()
    try:
        t.on_train_epoch_start()
        steps = [t.train_step(next(t.dataloader_train)) for _ in range(2)]
        torch._dynamo.config.error_on_recompile = True  # warm: every later step reuses the graphs
        steps += [t.train_step(next(t.dataloader_train)) for _ in range(2)]
        assert all(float(s["train_loss_fkd"]) > 0 for s in steps)
        for module in t.ema_teacher.modules():
            assert not module._forward_hooks  # the EMA copy does not carry the tap
    finally:
        torch._dynamo.config.error_on_recompile = False
        t.on_train_end()
        shutil.rmtree(t.output_folder_base, ignore_errors=True)
