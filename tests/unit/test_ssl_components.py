"""EMA, ramp-ups, masked losses and perturbations: torch only, no trainer."""
import math

import pytest
import torch
from torch import nn

from nnunet_dinomix.ssl.ema import ema_decay, ema_update, make_ema_teacher
from nnunet_dinomix.ssl.losses import deep_supervision_sum, masked_cross_entropy, masked_dice_ce, masked_soft_dice
from nnunet_dinomix.ssl.perturb import clipped_gaussian_noise
from nnunet_dinomix.ssl.schedules import linear_rampup, sigmoid_rampup


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.Conv3d(4, 3, 1))


def test_ema_decay_warms_up_then_caps():
    assert ema_decay(0, 0.99) == 0.0
    assert ema_decay(1, 0.99) == pytest.approx(0.5)
    assert ema_decay(9, 0.99) == pytest.approx(0.9)
    assert ema_decay(10_000, 0.99) == 0.99


def test_make_ema_teacher_is_frozen_detached_copy():
    student = _net()
    teacher = make_ema_teacher(student)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(pt, ps) and pt.data_ptr() != ps.data_ptr()


def test_ema_update_is_exact_convex_combination_and_copies_buffers():
    student = _net()
    teacher = make_ema_teacher(student)
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student[1].running_mean.fill_(3.0)
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, torch.full((4,), 3.0))
    assert teacher[1].num_batches_tracked == student[1].num_batches_tracked


def test_ema_update_rejects_mismatched_networks():
    with pytest.raises(ValueError):
        ema_update(nn.Linear(2, 2), _net(), 0.9)


def test_rampups():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0
    values = [sigmoid_rampup(s, 100) for s in range(0, 101, 10)]
    assert values == sorted(values)
    assert sigmoid_rampup(5, 0) == 1.0
    assert linear_rampup(25, 100) == 0.25 and linear_rampup(-1, 100) == 0.0


@pytest.mark.parametrize("batch_dice", [False, True])
def test_masked_dice_ce_equals_nnunet_loss_with_ignore_label(batch_dice):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, 7, 5)
    target = torch.randint(0, 4, (2, 1, 6, 7, 5))
    ignore = 4
    target[:, :, :2] = ignore
    nnunet = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                            weight_ce=1, weight_dice=1, ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
    expected = nnunet(logits, target)
    mask = target != ignore
    ours = masked_dice_ce(logits, torch.where(mask, target, 0), mask, batch_dice)
    torch.testing.assert_close(ours, expected)


def _mixed_batch_with_boxes():
    """2 labeled samples (ground truth everywhere) and 2 unlabeled ones whose only ground truth is one box."""
    torch.manual_seed(3)
    target = torch.zeros(4, 1, 8, 16, 16, dtype=torch.long)
    for c in range(1, 6):  # one block per class in every sample
        target[:, :, 1:4, 3 * c - 2:3 * c + 1, 2:8] = c
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[:2] = True
    mask[2:, :, 1:4, 1:5, 1:9] = True  # the box holds classes 1 and 2 only
    return torch.randn(4, 6, 8, 16, 16), target, mask


def _labeled_gradient(loss_fn, logits):
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits).backward()
    return logits.grad[:2]


def test_weighing_samples_keeps_the_labeled_dice_gradient_of_a_mixed_batch():
    logits, target, mask = _mixed_batch_with_boxes()
    alone = _labeled_gradient(lambda l: masked_soft_dice(l[:2], target[:2], mask[:2], False), logits)
    uniform = _labeled_gradient(lambda l: masked_soft_dice(l, target, mask, False), logits)
    weighed = _labeled_gradient(lambda l: masked_soft_dice(l, target, mask, False, weigh_samples=True), logits)
    # the uniform mean over 4 samples halves what the 2 labeled samples get; the share-weighted mean keeps it but
    # for the boxes' share of the ground truth (2 x 96 of 2 x 2048 + 2 x 96 voxels)
    assert uniform.norm() / alone.norm() == pytest.approx(0.5, abs=1e-4)
    share = 2 * 2048 / (2 * 2048 + 2 * 96)
    assert weighed.norm() / alone.norm() == pytest.approx(share, abs=1e-4)
    torch.testing.assert_close(weighed / share, alone)


def test_weighing_samples_changes_nothing_when_every_voxel_is_labeled_or_dice_is_batch_wide():
    logits, target, mask = _mixed_batch_with_boxes()
    full = torch.ones_like(mask)
    torch.testing.assert_close(masked_dice_ce(logits, target, full, False, weigh_samples=True),
                               masked_dice_ce(logits, target, full, False))
    torch.testing.assert_close(masked_soft_dice(logits, target, mask, True, weigh_samples=True),
                               masked_soft_dice(logits, target, mask, True))
    empty = torch.zeros_like(mask)
    assert masked_soft_dice(logits, target, empty, False, weigh_samples=True).item() == 0.0


def test_masked_losses_only_see_masked_voxels():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (1, 1, 4, 4, 4))
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2, :, :] = 1
    masked_dice_ce(logits, target, mask, batch_dice=False).backward()
    assert logits.grad[:, :, 2:].abs().sum() == 0
    assert logits.grad[:, :, :2].abs().sum() > 0
    # changing the target outside the mask changes nothing
    other = target.clone()
    other[..., 2:, :, :] = (other[..., 2:, :, :] + 1) % 3
    a = masked_dice_ce(logits.detach(), target, mask, False)
    b = masked_dice_ce(logits.detach(), other, mask, False)
    torch.testing.assert_close(a, b)


def test_masked_cross_entropy_empty_mask_is_zero_with_graph():
    logits = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.zeros(1, 1, 2, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_masked_soft_dice_perfect_prediction_is_minus_one():
    target = torch.randint(0, 3, (1, 1, 5, 5, 5))
    logits = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 50
    loss = masked_soft_dice(logits, target, torch.ones_like(target, dtype=torch.float), batch_dice=True)
    assert loss.item() == pytest.approx(-1.0, abs=1e-4)


def test_deep_supervision_sum_matches_nnunet_wrapper_and_skips_zero_weights():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    calls = []

    def loss_fn(a, b):
        calls.append(a.shape)
        return ((a - b) ** 2).mean()

    xs = [torch.randn(2, 3, s, s) for s in (8, 4, 2)]
    ys = [torch.randn_like(x) for x in xs]
    weights = (4 / 7, 2 / 7, 0.0)
    ours = deep_supervision_sum(loss_fn, weights, xs, ys)
    assert len(calls) == 2  # the zero-weighted scale is never evaluated
    torch.testing.assert_close(ours, DeepSupervisionWrapper(loss_fn, weights)(xs, ys))
    with pytest.raises(ValueError):
        deep_supervision_sum(loss_fn, (0.0,), xs[:1], ys[:1])


def test_clipped_gaussian_noise_is_bounded_and_identity_at_zero():
    x = torch.zeros(1000)
    g = torch.Generator().manual_seed(0)
    y = clipped_gaussian_noise(x, 0.1, clip=2.0, generator=g)
    assert y.abs().max() <= 0.2 + 1e-7
    assert y.std() > 0.05
    assert clipped_gaussian_noise(x, 0.0) is x


def test_ema_teacher_does_not_inherit_the_students_hooks():
    from nnunet_dinomix.ssl.ema import make_ema_teacher
    from nnunet_dinomix.fkd.tap import FeatureTap
    student = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Conv3d(2, 2, 1))
    tap = FeatureTap(student[0])
    teacher = make_ema_teacher(student)
    teacher(torch.randn(1, 1, 2, 2, 2))
    with pytest.raises(RuntimeError, match="did not run"):
        tap.pop()  # the teacher's forward did not feed the student's tap
    student(torch.randn(1, 1, 2, 2, 2))
    assert tap.pop().shape == (1, 2, 2, 2, 2)
    tap.remove()
    student(torch.randn(1, 1, 2, 2, 2))
    assert tap.features is None


def test_marginal_background_reads_background_as_background_or_merged_class():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 1, 3, 5, 5))
    mask = torch.ones_like(target, dtype=torch.float32)
    nothing = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(masked_cross_entropy(logits, target, mask, merged=nothing),
                          masked_cross_entropy(logits, target, mask))
    merged = torch.tensor([False, False, True, False])
    loss = masked_cross_entropy(logits, target, mask, merged=merged)
    p = torch.softmax(logits, 1)
    t = target[:, 0]
    expected = torch.where(t == 0, -torch.log(p[:, 0] + p[:, 2]), -torch.log(p.gather(1, t.unsqueeze(1))[:, 0]))
    assert torch.allclose(loss, expected.mean(), atol=1e-6)
    # on background voxels the plain CE pushes the merged class down; the marginal one never does
    background = (t == 0).unsqueeze(1).float()
    plain_grad, = torch.autograd.grad(masked_cross_entropy(logits, target, background), logits)
    marginal_grad, = torch.autograd.grad(masked_cross_entropy(logits, target, background, merged=merged), logits)
    on_bg = t == 0
    assert bool((plain_grad[:, 2][on_bg] > 0).all())
    assert bool((marginal_grad[:, 2][on_bg] <= 1e-9).all())


def test_marginal_background_leaves_merged_classes_out_of_the_dice():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 4, 6, 6)
    target = torch.randint(0, 4, (1, 1, 4, 6, 6))
    mask = torch.ones_like(target, dtype=torch.float32)
    merged = torch.tensor([False, True, False, False])
    probs = torch.softmax(logits, 1)
    onehot = torch.cat([(target == c).float() for c in range(4)], 1)
    dice = [(2 * (probs[:, c] * onehot[:, c]).sum() + 1e-5) / (probs[:, c].sum() + onehot[:, c].sum() + 1e-5)
            for c in (2, 3)]
    assert torch.allclose(masked_soft_dice(logits, target, mask, False, merged=merged), -torch.stack(dice).mean(),
                          atol=1e-6)
    assert not torch.allclose(masked_soft_dice(logits, target, mask, False, merged=merged),
                              masked_soft_dice(logits, target, mask, False), atol=1e-4)
    everything = torch.tensor([False, True, True, True])  # all foreground closed: no Dice term, no NaN
    assert float(masked_soft_dice(logits, target, mask, False, merged=everything)) == 0.0


def test_strong_view_moves_intensities_but_no_voxel_and_leaves_its_input_alone():
    import dataclasses

    import numpy as np

    from nnunet_dinomix.random_stream import RandomStream
    from nnunet_dinomix.ssl.strong_view import StrongView, StrongViewSettings

    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 8, 8).repeat(4, 1, 1, 1, 1)  # four copies of one sample
    before = x.clone()
    always = StrongViewSettings(p_brightness=1.0, p_contrast=1.0, p_gamma=1.0, p_noise=0.0)
    with RandomStream(1).active():
        y = StrongView(always)(x)
    assert torch.equal(x, before) and y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x, atol=1e-2)
    assert not torch.allclose(y[0], y[1], atol=1e-3)  # every sample its own draw
    for b in range(4):  # brightness, contrast and gamma are monotone: the intensity order of each channel stays
        for c in range(2):
            order = torch.argsort(x[b, c].flatten())
            assert bool((torch.diff(y[b, c].flatten()[order]) >= -1e-5).all())
    # reproducible from a stream, and the global generators are left where they were
    state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    with RandomStream(1).active():
        again = StrongView(always)(x)
    assert torch.equal(again, y)
    assert np.array_equal(np.random.get_state()[1], state[0]) and torch.equal(torch.random.get_rng_state(), state[1])
    never = dataclasses.replace(always, p_brightness=0.0, p_contrast=0.0, p_gamma=0.0)
    assert torch.equal(StrongView(never)(x), x)


def test_spatial_view_is_rigid_in_voxels_and_moves_labels_with_the_image():
    from nnunet_dinomix.ssl.strong_view import SpatialView, SpatialViewSettings

    d, h, w = 4, 24, 40  # a plane that is not square: a rotation in normalised coordinates would shear it
    view = SpatialView(SpatialViewSettings(45.0, (0.8, 1.2)))
    torch.manual_seed(0)
    theta = view.draw(500, (d, h, w)).double()
    half = torch.tensor([w, h, d], dtype=torch.float64) / 2
    in_voxels = theta[:, :, :3] * half[None, :, None] / half[None, None, :]
    zoom = 1 / in_voxels[:, 2, 2]
    assert torch.allclose(in_voxels @ in_voxels.transpose(1, 2), torch.diag_embed((1 / zoom[:, None] ** 2)
                                                                                  .expand(-1, 3)), atol=1e-6)
    angles = torch.atan2(in_voxels[:, 1, 0], in_voxels[:, 0, 0]).rad2deg()
    assert angles.abs().max() <= 45 and angles.abs().max() > 40 and angles.abs().min() < 5
    assert zoom.min() >= 0.8 - 1e-6 and zoom.max() <= 1.2 + 1e-6 and zoom.max() - zoom.min() > 0.35

    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disk = ((yy ** 2 + xx ** 2) <= 8 ** 2).long()
    labels = disk[None, None, None].repeat(2, 1, d, 1, 1)
    x, conf, mask = labels.float() * 3, torch.rand(labels.shape), torch.ones(labels.shape)
    image, moved, _, trust = view(x, labels, conf, mask)
    for b in range(2):
        inside_disk = moved[b, 0, 0] == 1
        cy, cx = yy[inside_disk], xx[inside_disk]
        assert abs(float(cy.var()) - float(cx.var())) < 0.15 * float(cx.var())  # the disk stays round
        assert abs(float(cy.mean())) < 1 and abs(float(cx.mean())) < 1  # and where it was
    inside = trust > 0
    assert bool(((image / 3).round().long()[inside] == moved[inside]).float().mean() > 0.97)  # labels follow
    identity = SpatialView(SpatialViewSettings(0.0, (1.0, 1.0)))(x, labels, conf, mask)
    assert torch.equal(identity[1], labels) and torch.allclose(identity[0], x, atol=1e-4)
    assert bool((identity[3] == 1).all())
    zoomed_out = SpatialView(SpatialViewSettings(0.0, (0.7, 0.7)))(x, labels, conf, mask)[3]
    assert float(zoomed_out[:, :, :, 0].max()) == 0 and float(zoomed_out[:, :, 1:-1, h // 2, w // 2].min()) == 1


def test_region_shift_changes_the_order_of_structures_but_not_background_or_classes_not_drawn():
    from nnunet_dinomix.ssl.region_shift import RegionIntensityShift, RegionShiftSettings

    labels = torch.zeros(2, 1, 8, 12, 12, dtype=torch.long)
    labels[:, :, 1:7, 1:5, 1:5] = 1
    labels[:, :, 1:7, 6:11, 6:11] = 2
    x = torch.where(labels == 1, 1.0, torch.where(labels == 2, 2.0, 0.0)).float().repeat(1, 2, 1, 1, 1)
    shift = RegionIntensityShift(3, RegionShiftSettings(shift=1.5, p_per_class=1.0))
    offsets = torch.tensor([[[0.0, 1.4, -1.2], [0.0, -0.5, 0.3]],  # sample 0: class 1 above class 2 in channel 0
                            [[0.0, 0.0, 0.7], [0.0, 0.0, 0.0]]])  # sample 1: class 1 not drawn
    y = shift.apply(x, labels, offsets)
    assert y.shape == x.shape and y.dtype == x.dtype
    core1 = (slice(2, 6), slice(2, 4), slice(2, 4))  # inside class 1, beyond the 3-voxel smoothing of its edge
    core2 = (slice(2, 6), slice(7, 10), slice(7, 10))
    assert torch.allclose(y[0, 0][core1], torch.tensor(2.4)) and torch.allclose(y[0, 0][core2], torch.tensor(0.8))
    assert torch.allclose(y[0, 1][core1], torch.tensor(0.5))  # each channel its own offset
    assert torch.equal(y[1, :][(slice(None),) + core1], x[1, :][(slice(None),) + core1])  # class not drawn
    assert torch.allclose(y[1, 0][core2], torch.tensor(2.7))
    # background away from both regions keeps its value; beside a region the step is smoothed over 3 voxels
    assert torch.equal(y[..., 0:3, 8:12], x[..., 0:3, 8:12])
    assert abs(float(y[0, 0, 3, 5, 2]) - 1.4 / 3) < 1e-5  # one of the box's three rows is class 1
    # drawn: background never, each class with p_per_class, within [-shift, shift]
    torch.manual_seed(0)
    drawn = RegionIntensityShift(3, RegionShiftSettings(shift=0.5, p_per_class=0.5)).get_parameters(2000, 1)
    assert bool((drawn[..., 0] == 0).all()) and float(drawn.abs().max()) <= 0.5
    assert 0.4 < float((drawn[..., 1:] != 0).float().mean()) < 0.6
    with pytest.raises(ValueError):
        RegionIntensityShift(3, RegionShiftSettings(shift=-1.0))
