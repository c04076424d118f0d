"""Slice-wise teacher features and the normalised MSE, with a small random DINOv3 ViT (no nnU-Net)."""
import pytest
import torch

from nnunet_dinomix.fkd.features import (IMAGENET_MEAN, ct_to_unit, normalized_mse, patch_tokens, resample_to,
                                         robust_minmax_per_slice, slice_features, teacher_input_size,
                                         to_teacher_rgb)


@pytest.fixture(scope="module")
def teacher():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=1, num_classes=0).eval()


def test_ct_to_unit_inverts_nnunet_ct_normalisation():
    hu = torch.tensor([-200.0, -100.0, 50.0, 200.0, 400.0])
    mean, std = 60.0, 40.0
    z = (hu.clamp(-100, 200) - mean) / std  # what nnU-Net's CTNormalization stores
    assert torch.allclose(ct_to_unit(z, mean, std, -100, 200), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_robust_minmax_is_per_slice():
    x = torch.stack([torch.linspace(0, 1, 100), torch.linspace(-500, 500, 100)]).view(2, 1, 10, 10)
    y = robust_minmax_per_slice(x)
    for i in range(2):
        assert y[i].min() == 0 and y[i].max() == 1
        assert (y[i] > 0).float().mean() > 0.9  # only the lowest 1% are clipped


def test_teacher_input_size_and_rgb():
    assert teacher_input_size(128, 128) == (128, 128)
    assert teacher_input_size(20, 100) == (16, 96)
    assert teacher_input_size(40, 40, scale=2.0) == (80, 80)
    rgb = to_teacher_rgb(torch.zeros(2, 1, 20, 30), (32, 32))
    assert rgb.shape == (2, 3, 32, 32)
    assert torch.allclose(rgb[0, :, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor((0.229, 0.224, 0.225)))


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_slice_features_equal_slice_by_slice_encoding(teacher, slice_axis):
    torch.manual_seed(1)
    volume = torch.randn(2, 1, 5, 32, 48) if slice_axis == 0 else torch.randn(2, 1, 32, 48, 5)
    unit = torch.sigmoid
    feats = slice_features(teacher, volume, unit, slice_axis=slice_axis, chunk=3)
    assert feats.shape == (2, 384, 5, 2, 3)
    for b in range(2):
        for s in range(5):
            sl = volume[b, :, s] if slice_axis == 0 else volume[b, :, :, :, s]
            with torch.no_grad():
                ref = patch_tokens(teacher, to_teacher_rgb(unit(sl[None]), (32, 48)))[0]
            torch.testing.assert_close(feats[b, :, s], ref, atol=1e-5, rtol=1e-4)


def test_normalized_mse_is_two_minus_two_cosine():
    torch.manual_seed(2)
    a, b = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 8, 3, 4, 4)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    torch.testing.assert_close(normalized_mse(a, b), (2 - 2 * cos).mean())
    assert normalized_mse(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale invariant
    assert normalized_mse(a, -a).item() == pytest.approx(4.0, abs=1e-5)
    weight = torch.zeros(2, 1, 3, 4, 4)
    weight[0, 0, 0, 0, 0] = 1
    expected = (2 - 2 * cos[0, 0, 0, 0])
    torch.testing.assert_close(normalized_mse(a, b, weight), expected)


def test_resample_to_grid():
    x = torch.randn(1, 4, 5, 2, 3)
    assert resample_to(x, (5, 2, 3)) is x
    assert resample_to(x, (10, 8, 8)).shape == (1, 4, 10, 8, 8)


def test_projection_head_maps_channels_and_grid_and_learns():
    from nnunet_dinomix.fkd.head import ProjectionHead
    torch.manual_seed(3)
    head = ProjectionHead(32, 384)
    student = torch.randn(2, 32, 4, 8, 8)
    target = torch.randn(2, 384, 8, 4, 4)
    out = head(student, target.shape[2:])
    assert out.shape == target.shape
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    first = normalized_mse(out, target).item()
    for _ in range(30):
        opt.zero_grad()
        loss = normalized_mse(head(student, target.shape[2:]), target)
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.05  # the distillation loss trains the head


# ----------------------------------------------------------------------------- the distiller
def test_teacher_grid_follows_the_volume_axes(teacher):
    from nnunet_dinomix.fkd.distiller import FKDistiller
    torch.manual_seed(4)
    x = torch.randn(1, 1, 32, 48, 5)  # slices along the last axis (e.g. anisotropic, transposed data)
    d = FKDistiller(teacher, 8, torch.sigmoid, slice_axis=2)
    feats = d.teacher_features(x)
    assert feats.shape == (1, 384, 2, 3, 5)
    raw = slice_features(teacher, x, torch.sigmoid, slice_axis=2)  # (B, C, S, h, w)
    torch.testing.assert_close(feats[:, :, :, :, 1], raw[:, :, 1])
    two_d = d.teacher_features(torch.randn(2, 1, 32, 48))  # a 2D configuration
    assert two_d.shape == (2, 384, 2, 3)


def test_intensity_to_unit_for_ct_and_mr():
    from nnunet_dinomix.fkd.distiller import intensity_to_unit
    props = {"mean": 60.0, "std": 40.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
    ct = intensity_to_unit("CTNormalization", props)
    torch.testing.assert_close(ct(torch.tensor([(50.0 - 60) / 40])), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="foreground intensity"):
        intensity_to_unit("CTNormalization", None)
    assert intensity_to_unit("ZScoreNormalization", None) is robust_minmax_per_slice


def test_semantic_uniqueness_weights_outliers_more():
    from nnunet_dinomix.fkd.distiller import semantic_uniqueness
    feats = torch.ones(1, 4, 1, 2, 2)
    feats[0, :, 0, 1, 1] = torch.tensor([1.0, -1.0, 0.0, 0.0])  # one token unlike the others
    w = semantic_uniqueness(feats)
    assert w.shape == (1, 1, 1, 2, 2) and (w >= 0).all()
    assert w[0, 0, 0, 1, 1] > 3 * w[0, 0, 0, 0, 0]


def test_default_student_stage_matches_the_vit_patch():
    from nnunet_dinomix.fkd.distiller import default_student_stage
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert default_student_stage(strides, slice_axis=0) == 4  # in-plane 16
    assert default_student_stage(strides, slice_axis=0, max_in_plane_stride=4) == 2
    assert default_student_stage([[1, 1, 1], [2, 2, 1]], slice_axis=2) == 1


def test_distiller_trains_the_head_only_and_keeps_the_teacher_frozen_in_eval(teacher):
    from nnunet_dinomix.fkd.distiller import FKDistiller
    torch.manual_seed(5)
    d = FKDistiller(teacher, 8, torch.sigmoid)
    assert set(n.split(".")[0] for n, _ in d.named_parameters()) == {"head"}
    assert all(k.startswith("head.") for k in d.state_dict())
    d.train()  # nnU-Net-style train() calls must not reach the teacher
    assert not d.teacher.training
    student = torch.randn(2, 8, 2, 3, 3, requires_grad=True)
    loss = d.loss(student, torch.randn(2, 1, 4, 32, 32))
    loss.backward()
    assert 0 < loss.item() <= 4 and student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.head.parameters())
    weighted = FKDistiller(teacher, 8, torch.sigmoid, uniqueness_weighting=True)
    weighted.head.load_state_dict(d.head.state_dict())
    assert weighted.loss(student, torch.randn(2, 1, 4, 32, 32)).item() != pytest.approx(loss.item())


def test_resample_to_pools_when_shrinking():
    x = torch.arange(16.0).view(1, 1, 1, 4, 4)
    out = resample_to(x, (1, 2, 2))
    torch.testing.assert_close(out, torch.nn.functional.avg_pool3d(x, (1, 2, 2)))
    assert resample_to(x, (3, 2, 8)).shape == (1, 1, 3, 2, 8)
