"""Metrics against values computed by hand on small arrays, and the report's aggregation (no nnU-Net)."""
import math

import numpy as np
import pytest

from nnunet_dinomix.evaluation.metrics import (EMPTY_ASD_VOXELS, asd, benchmark_case_scores, case_scores,
                                               crop_to_union, dice, hd95, surface)


def _cube(start, shape=(6, 6, 6), size=3):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def test_dice_by_hand():
    a = np.array([1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0], bool)
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert math.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))
    assert dice(a, np.zeros(5, bool)) == 0.0


def test_surface_of_a_cube_is_all_but_its_centre():
    s = surface(_cube((1, 1, 1)))
    assert s.sum() == 26 and not s[2, 2, 2]


def test_single_voxels_with_anisotropic_spacing():
    p, r = np.zeros((5, 5, 8), bool), np.zeros((5, 5, 8), bool)
    r[2, 2, 2], p[2, 2, 5] = True, True
    assert asd(p, r, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(p, r, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert asd(p, r) == pytest.approx(3.0)  # voxels


def test_shifted_cubes_by_hand():
    p, r = _cube((1, 1, 1)), _cube((2, 1, 1))
    # 9 voxels of the first layer are 1 away; the far layer's centre is 1 away from the other's surface
    assert asd(p, r) == pytest.approx(10 / 26)
    assert asd(r, p) == pytest.approx(10 / 26)
    assert hd95(p, r) == pytest.approx(1.0)
    assert asd(p, r, (2.0, 1.0, 1.0)) == pytest.approx(19 / 26)


def test_empty_masks_follow_each_convention():
    full, empty = _cube((1, 1, 1)), np.zeros((6, 6, 6), bool)
    assert math.isnan(asd(full, empty)) and math.isnan(hd95(empty, full))
    assert benchmark_case_scores(full, empty) == {"dice_benchmark": 0.0, "asd_voxels": EMPTY_ASD_VOXELS}
    assert benchmark_case_scores(empty, full) == {"dice_benchmark": 0.0, "asd_voxels": EMPTY_ASD_VOXELS}
    assert benchmark_case_scores(empty, empty) == {"dice_benchmark": 1.0, "asd_voxels": 0.0}
    scores = case_scores(np.zeros((6, 6, 6), np.uint8), np.zeros((6, 6, 6), np.uint8), 1, (1, 1, 1))
    assert math.isnan(scores["dice"]) and math.isnan(scores["asd_mm"]) and scores["dice_benchmark"] == 1.0


def test_cropping_does_not_change_the_distances():
    rng = np.random.default_rng(0)
    big_p, big_r = np.zeros((30, 40, 40), bool), np.zeros((30, 40, 40), bool)
    big_p[5:12, 10:20, 4:15] = rng.random((7, 10, 11)) > 0.3
    big_r[0:10, 12:25, 6:18] = rng.random((10, 13, 12)) > 0.3  # touches the volume's border
    small_p, small_r = crop_to_union(big_p, big_r)
    assert small_p.size < big_p.size
    spacing = (2.5, 0.8, 0.8)
    assert asd(small_p, small_r, spacing) == pytest.approx(asd(big_p, big_r, spacing))
    assert hd95(small_p, small_r, spacing) == pytest.approx(hd95(big_p, big_r, spacing))
    labels_p, labels_r = big_p.astype(np.uint8) * 3, big_r.astype(np.uint8) * 3
    assert case_scores(labels_p, labels_r, 3, spacing)["asd_mm"] == pytest.approx(asd(big_p, big_r, spacing))


def test_summary_leaves_undefined_cases_out_and_report_marks_published(tmp_path):
    from nnunet_dinomix.evaluation.report import markdown, summarise
    rows = [{"trainer": "A", "case": c, "class": "liver", "dice": d, "asd_mm": a, "hd95_mm": a,
             "dice_benchmark": d if not math.isnan(d) else 1.0, "asd_voxels": 0.0}
            for c, d, a in (("1", 0.8, 2.0), ("2", float("nan"), float("nan")), ("3", 0.6, 4.0))]
    summary = summarise(rows)
    assert summary["A"]["liver"]["dice"] == pytest.approx(0.7)
    assert summary["A"]["liver"]["asd_mm"] == pytest.approx(3.0)
    assert summary["A"]["liver"]["dice_benchmark"] == pytest.approx(0.8)
    md = markdown(summary, {"liver": 6}, {"liver": 1.0}, [], {"DHC (published, DHC protocol)": {0: 48.6, 6: 85.2}},
                  "t")
    assert "| liver | 100.00 % | head | 70.0 | 85.2 |" in md
    assert "not a like-for-like comparison" in md
