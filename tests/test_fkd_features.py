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
