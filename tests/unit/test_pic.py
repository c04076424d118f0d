"""PIC on plain tensors: the curriculum, box placement, provenance, deep-supervision scales (no nnU-Net)."""
import math

import pytest
import torch

from nnunet_dinomix.pic.curriculum import ClassCounts, class_probabilities, gamma_at, voxel_counts
from nnunet_dinomix.pic.mixer import PICSettings
from nnunet_dinomix.pic.cutmix import (Box, apply_boxes, assemble, box_around, class_presence,
                                       downsample_nearest, draw_boxes)


def test_gamma_schedules_go_from_tail_first_to_uniform():
    assert gamma_at(0.0) == 1.0 and gamma_at(1.0) == 0.0 and gamma_at(0.25) == pytest.approx(0.75)
    assert gamma_at(-1) == 1.0 and gamma_at(2) == 0.0  # clipped
    assert gamma_at(0.25, shape="cosine") == pytest.approx(0.5 + 0.5 * math.cos(math.pi * 0.25))
    assert gamma_at(0.25, shape="cosine") > gamma_at(0.25)  # the cosine stays on the tail longer
    assert gamma_at(0.9, shape="constant") == 1.0
    with pytest.raises(ValueError, match="unknown gamma schedule"):
        gamma_at(0.5, shape="step")


def test_class_probabilities_inverse_frequency_then_uniform():
    counts = torch.tensor([1e6, 1e4, 1e2])
    p = class_probabilities(counts, 1.0)
    assert p.sum().item() == pytest.approx(1.0)
    expected = torch.tensor([1e-6, 1e-4, 1e-2]) / (1e-6 + 1e-4 + 1e-2)
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(class_probabilities(counts, 0.0), torch.full((3,), 1 / 3))
    half = class_probabilities(counts, 0.5)
    assert half[2] > half[1] > half[0] and half[2] < p[2]
    # never-seen classes stay finite (clamped to one voxel) and huge counts do not overflow
    assert torch.isfinite(class_probabilities(torch.tensor([0.0, 1e12]), 1.0)).all()


def test_class_counts_moving_average_is_bias_corrected_and_resumes():
    counts = ClassCounts(3, momentum=0.9)
    assert torch.equal(counts.value, torch.zeros(3, dtype=torch.float64))
    counts.update(torch.tensor([10.0, 0.0, 5.0]))
    torch.testing.assert_close(counts.value, torch.tensor([10.0, 0.0, 5.0], dtype=torch.float64))
    counts.update(torch.tensor([20.0, 2.0, 5.0]))
    expected = (0.9 * 0.1 * torch.tensor([10.0, 0, 5]) + 0.1 * torch.tensor([20.0, 2, 5])) / (1 - 0.81)
    torch.testing.assert_close(counts.value, expected.double())
    restored = ClassCounts(3, momentum=0.5)
    restored.load_state_dict(counts.state_dict())
    assert torch.equal(restored.value, counts.value) and restored.updates == 2 and restored.momentum == 0.9
    with pytest.raises(ValueError, match="3 classes, this curriculum 4"):
        ClassCounts(4).load_state_dict(counts.state_dict())


def test_voxel_counts_weighted():
    labels = torch.tensor([[0, 1, 1, 2]])
    weight = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert voxel_counts(labels, weight, 4).tolist() == [1.0, 1.0, 1.0, 0.0]


def _batch(n_labeled=2, n_unlabeled=2, shape=(8, 12, 12), ignore_label=None):
    """Labeled samples hold class 1 (and sample 0 a small class 3); unlabeled ones a confident class 2 blob."""
    torch.manual_seed(0)
    x_l, x_u = torch.randn(n_labeled, 1, *shape), torch.randn(n_unlabeled, 1, *shape) + 10
    y_l = torch.zeros(n_labeled, 1, *shape, dtype=torch.int16)
    y_l[:, :, 2:6, 2:8, 2:8] = 1
    y_l[0, :, 6, 10, 10] = 3
    pseudo = torch.zeros(n_unlabeled, 1, *shape, dtype=torch.long)
    pseudo[:, :, 1:4, 6:10, 6:10] = 2
    mask = torch.ones(n_unlabeled, 1, *shape)
    mask[:, :, :, :, :3] = 0  # not confident at one side
    if ignore_label is not None:
        y_l[1, :, 0] = ignore_label
    return assemble(x_l, y_l, x_u, pseudo, mask, ignore_label)


def test_assemble_tracks_provenance_and_ignore_label():
    b = _batch(ignore_label=4)
    assert b.num_labeled == 2 and b.image.shape == (4, 1, 8, 12, 12)
    assert b.ground_truth[:2, :, 1:].all() and not b.ground_truth[1, :, 0].any()  # ignore voxels carry nothing
    assert b.label[1, :, 0].eq(0).all() and b.pseudo_weight[:2].eq(0).all()
    assert not b.ground_truth[2:].any() and b.pseudo_weight[2:].sum() > 0
    assert not b.usable[2, :, :, :, :3].any()  # unconfident pseudo-labels cannot seed a box


def test_class_presence_uses_only_usable_voxels():
    b = _batch()
    present = class_presence(b, 4)
    assert present.tolist() == [[True, True, False, True], [True, True, False, False],
                                [True, False, True, False], [True, False, True, False]]
    b.pseudo_weight[2:] = 0
    assert not class_presence(b, 4)[2:, 2].any()


def test_box_around_keeps_size_and_voxel_at_borders():
    assert box_around((0, 5), (4, 4), (10, 10)) == (slice(0, 4), slice(3, 7))
    assert box_around((9, 9), (4, 3), (10, 10)) == (slice(6, 10), slice(7, 10))
    assert box_around((2,), (50,), (10,)) == (slice(0, 10),)  # larger than the patch: the whole axis
    for c in range(10):
        s = box_around((c,), (5,), (10,))[0]
        assert s.stop - s.start == 5 and s.start <= c < s.stop


def test_draw_boxes_targets_the_drawn_class_and_crosses_subsets():
    b = _batch()
    g = torch.Generator().manual_seed(0)
    # all mass on class 2 (only the unlabeled samples hold it): labeled targets take boxes from unlabeled samples
    boxes = draw_boxes(b, torch.tensor([0.0, 1.0, 0.0]), (0.25, 0.5), g)
    assert len(boxes) == 4
    for box in boxes:
        assert box.cls == 2 and box.source != box.target and box.source >= 2
        region = b.label[box.source, 0][box.slices]
        assert (region == 2).any()  # centred on a voxel of the drawn class
        sides = [s.stop - s.start for s in box.slices]
        assert all(round(0.25 * n) <= side <= round(0.5 * n) for side, n in zip(sides, (8, 12, 12)))
    # class 1 lives only in labeled samples: unlabeled targets take boxes from labeled ones (the other direction)
    boxes = draw_boxes(b, torch.tensor([1.0, 0.0, 0.0]), (0.25, 0.5), g)
    assert {bx.target: bx.source < 2 for bx in boxes if bx.target >= 2} == {2: True, 3: True}
    # the tiny class 3 is held by sample 0 only: sample 0 cannot draw it from itself, others take it from sample 0
    boxes = draw_boxes(b, torch.tensor([0.0, 0.0, 1.0]), (0.25, 0.5), g)
    for box in boxes:
        if box.target == 0:
            assert box.cls in (1, 2)  # fell back to what other samples hold
        else:
            assert box.cls == 3 and box.source == 0
            assert b.label[0, 0][box.slices].eq(3).any()


def test_labeled_donors_only_pastes_ground_truth_alone():
    b = _batch()
    for seed in range(5):
        boxes = draw_boxes(b, torch.tensor([0.2, 0.4, 0.4]), generator=torch.Generator().manual_seed(seed),
                           labeled_donors_only=True)
        assert boxes and all(bx.source < b.num_labeled for bx in boxes)  # sources are the labeled samples 0, 1
        assert {bx.target for bx in boxes} >= {2, 3}  # the unlabeled samples still receive boxes
        assert all(bx.cls != 2 for bx in boxes)  # class 2 lives only in the unlabeled samples: never drawn
        mixed = apply_boxes(b, boxes)
        assert not mixed.pseudo_weight[:b.num_labeled].any()  # no pseudo-labelled voxel reached a labeled sample
    with pytest.raises(ValueError, match="donors must be"):
        PICSettings(donors="unlabeled")


def test_draw_boxes_with_empty_pseudo_labels_and_absent_classes():
    b = _batch(n_labeled=1, n_unlabeled=1)
    b.label[1] = 0
    b.pseudo_weight[1] = 1.0  # confident background only
    boxes = draw_boxes(b, torch.tensor([0.2, 0.3, 0.5]), generator=torch.Generator().manual_seed(1))
    assert [(bx.target, bx.source, bx.cls) for bx in boxes if bx.target == 1][0][1:] in [(0, 1), (0, 3)]
    assert all(bx.target != 0 for bx in boxes)  # nothing foreground to give to the labeled sample
    nothing = _batch(n_labeled=1, n_unlabeled=1)
    nothing.label.zero_()
    assert draw_boxes(nothing, torch.tensor([0.2, 0.3, 0.5])) == []


def test_draw_boxes_is_reproducible_with_a_generator():
    b = _batch()
    probs = torch.tensor([0.3, 0.3, 0.4])
    first = draw_boxes(b, probs, generator=torch.Generator().manual_seed(5))
    assert first == draw_boxes(b, probs, generator=torch.Generator().manual_seed(5))


def test_apply_boxes_moves_image_label_and_provenance_together():
    b = _batch()
    box = Box(target=0, source=2, cls=2, slices=(slice(1, 4), slice(6, 10), slice(0, 10)))
    mixed = apply_boxes(b, [box])
    where = (slice(None), *box.slices)
    assert torch.equal(mixed.image[0][where], b.image[2][where])
    assert torch.equal(mixed.label[0][where], b.label[2][where])
    assert not mixed.ground_truth[0][where].any()  # pseudo-labelled voxels inside a labeled sample
    assert torch.equal(mixed.pseudo_weight[0][where], b.pseudo_weight[2][where])
    outside = torch.ones_like(b.ground_truth[0], dtype=torch.bool)
    outside[where] = False
    assert torch.equal(mixed.image[0][outside.expand_as(b.image[0])], b.image[0][outside.expand_as(b.image[0])])
    assert mixed.ground_truth[0][outside].all()
    assert torch.equal(mixed.image[1:], b.image[1:]) and mixed.boxes == [box]
    assert torch.equal(b.image, _batch().image)  # the input batch is left alone
    # both directions in one call: sources are read from the unmixed batch
    swap = [Box(0, 2, 2, box.slices), Box(2, 0, 1, box.slices)]
    mixed = apply_boxes(b, swap)
    assert torch.equal(mixed.image[2][where], b.image[0][where]) and mixed.ground_truth[2][where].all()


def test_class_paste_adds_only_the_drawn_class_and_keeps_the_rest_of_the_target():
    b = _batch()
    # sample 0 holds class 1 and, on a few voxels, class 3; the box covers both and background
    box = Box(target=2, source=0, cls=3, slices=(slice(0, 8), slice(0, 12), slice(0, 12)))
    mixed = apply_boxes(b, [box], class_only=True)
    moved = (b.label[0] == 3) & b.usable[0]
    assert moved.any() and (b.label[0] == 1).any()
    assert torch.equal(mixed.image[2][moved.expand_as(b.image[0])], b.image[0][moved.expand_as(b.image[0])])
    assert (mixed.label[2][moved] == 3).all() and mixed.ground_truth[2][moved].all()
    assert torch.equal(mixed.label[2][~moved], b.label[2][~moved])  # class 1 and background stay the target's
    assert torch.equal(mixed.pseudo_weight[2][~moved], b.pseudo_weight[2][~moved])
    assert (mixed.label[2] == 1).sum() == (b.label[2] == 1).sum()
    # the whole-box paste of the same box brings class 1 along
    assert (apply_boxes(b, [box]).label[2] == 1).sum() > 0
    with pytest.raises(ValueError, match="paste must be 'box' or 'class'"):
        PICSettings(paste="mask")


def test_deep_supervision_scales_agree_with_the_full_resolution_mix():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    b = _batch()
    scales = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]
    mixed = apply_boxes(b, draw_boxes(b, torch.tensor([0.2, 0.4, 0.4]), generator=torch.Generator().manual_seed(2)))
    levels = downsample_nearest(mixed.label, scales)
    nnunet = DownsampleSegForDSTransform(scales)
    for i in range(4):  # nnU-Net's own per-sample transform gives the same targets
        expected = nnunet(segmentation=mixed.label[i].to(torch.int16))["segmentation"]
        for level, exp in zip(levels, expected):
            assert torch.equal(level[i], exp.long())
    provenance = downsample_nearest(mixed.ground_truth, scales)
    assert [p.dtype for p in provenance] == [torch.bool] * 3
    assert [tuple(p.shape[2:]) for p in provenance] == [(8, 12, 12), (8, 6, 6), (4, 3, 3)]
    # every coarse voxel takes label and provenance from the same fine voxel
    for level, prov in zip(levels, provenance):
        gt_voxels = level[prov]
        assert set(gt_voxels.unique().tolist()) <= {0, 1, 3}
    assert downsample_nearest(mixed.label, None)[0] is mixed.label


def test_mirror_after_mix_flips_image_label_and_provenance_together():
    from nnunet_dinomix.pic.cutmix import mirror
    b = apply_boxes(_batch(), [Box(0, 2, 2, (slice(1, 4), slice(6, 10), slice(0, 10)))])
    assert mirror(b, None) is b and mirror(b, ()) is b
    g = torch.Generator().manual_seed(3)
    flips = torch.rand(4, 2, generator=torch.Generator().manual_seed(3)) < 0.5
    out = mirror(b, (1, 2), g)
    for i in range(4):
        dims = [2 + a for a, f in zip((1, 2), flips[i].tolist()) if f]
        for name in ("image", "label", "ground_truth", "pseudo_weight"):
            expected = getattr(b, name)[i:i + 1]
            expected = torch.flip(expected, dims) if dims else expected
            assert torch.equal(getattr(out, name)[i:i + 1], expected)
    assert torch.equal(b.image, apply_boxes(_batch(), list(b.boxes)).image)  # the input is left alone
    # the pasted pseudo-labelled box stays with its voxels: label 2 only where provenance says pseudo
    assert not (out.label.eq(2) & out.ground_truth).any()


def test_mixer_stops_pasting_at_paste_until_and_only_mirrors_after():
    from nnunet_dinomix.pic.mixer import PICMixer
    mixer = PICMixer(3, PICSettings(paste_until=0.75))
    before = mixer(_batch(), progress=0.5)
    assert len(before.boxes) == 4  # one per sample while pasting
    plain = _batch()
    after = mixer(plain, progress=0.75)
    assert after.boxes == [] and torch.equal(after.image, plain.image)  # no axes: nothing mirrored either
    mirrored = PICMixer(3, PICSettings(paste_until=0.0), mirror_axes=(0, 1, 2))(plain, progress=0.0)
    assert mirrored.boxes == [] and sorted(mirrored.label.flatten().tolist()) == sorted(plain.label.flatten().tolist())
    with pytest.raises(ValueError, match="paste_until"):
        PICSettings(paste_until=1.5)
