"""Labeled-only PIC in the loader (batchgeneratorsv2 transform): the donor's image and label arrive together, the
class is drawn tail-first, the box lands where nnU-Net's centre crop keeps it. Donors are real arrays in nnU-Net's
dataset layout (``load_case`` -> data, seg, seg_prev, properties with ``class_locations``)."""
import numpy as np
import pytest
import torch

from nnunet_dinomix.pic.paste import LabeledPICTransform, class_location_counts, paste_position


class ArrayCases:
    """nnU-Net's dataset interface over in-memory cases: ``identifiers`` and ``load_case``."""

    def __init__(self, cases):
        self.cases = cases
        self.identifiers = list(cases)

    def load_case(self, identifier):
        data, seg = self.cases[identifier]
        locations = {c: np.argwhere(seg == c) for c in (1, 2) if (seg == c).any()}  # rows (channel, z, y, x)
        return data, seg, None, {"class_locations": locations}


def _case(seed, with_rare=True):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(1, 12, 40, 40)).astype(np.float32)
    seg = np.zeros((1, 12, 40, 40), dtype=np.int16)
    seg[0, 2:10, 5:30, 5:30] = 1  # large class
    if with_rare:
        seg[0, 5:7, 33:36, 33:36] = 2  # rare class
    return data, seg


def _sample(shape=(12, 48, 48)):
    return {"image": torch.zeros((1, *shape)), "segmentation": torch.zeros((1, *shape), dtype=torch.int16)}


def test_counts_come_from_nnunet_class_locations_and_know_who_holds_what():
    donors = ArrayCases({"a": _case(0), "b": _case(1, with_rare=False)})
    counts, holders = class_location_counts([donors.load_case(i)[3] for i in donors.identifiers])
    assert counts == {1: 2 * 8 * 25 * 25, 2: 2 * 3 * 3}
    assert holders == {1: [0, 1], 2: [0]}


def test_the_donor_box_is_pasted_with_its_label_inside_the_central_window():
    np.random.seed(0)
    donors = ArrayCases({"a": _case(0), "b": _case(1, with_rare=False)})
    t = LabeledPICTransform(donors, patch_size=(8, 32, 32), gamma=1.0, p=1.0)
    assert t.probabilities[1] > 0.99  # the rare class: 18 voxels against 10,000
    for _ in range(20):
        sample = _sample()
        params = t.get_parameters(**sample)
        box = params["box"]
        out = t.apply(sample, **params)
        data, seg, _, _ = donors.load_case(box["donor"])
        source = (slice(None), *box["source"])
        assert torch.equal(out["image"][(slice(None), *box["target"])], torch.from_numpy(data[source]))
        pasted = out["segmentation"][(slice(None), *box["target"])]
        assert torch.equal(pasted, torch.from_numpy(seg[source]))
        assert (pasted == box["cls"]).any()  # the box is centred on a voxel of the drawn class
        assert int(out["segmentation"].ne(0).sum()) == int(pasted.ne(0).sum())  # nothing outside the box changed
        for s, n, w in zip(box["target"], (12, 48, 48), (8, 32, 32)):  # inside the centred final-patch window
            assert (n - w) // 2 <= s.start and s.stop <= (n - w) // 2 + w


def test_class_only_paste_moves_the_drawn_class_and_keeps_the_sample_around_it():
    np.random.seed(4)
    donors = ArrayCases({"a": _case(0)})
    t = LabeledPICTransform(donors, patch_size=(8, 32, 32), gamma=1.0, p=1.0, class_only=True)
    for _ in range(10):
        sample = _sample()
        sample["image"] += 7.0  # the sample's own content, to tell kept voxels from pasted ones
        sample["segmentation"] += 3  # a label no donor holds
        params = t.get_parameters(**sample)
        box = params["box"]
        out = t.apply(sample, **params)
        data, seg, _, _ = donors.load_case(box["donor"])
        source = (slice(None), *box["source"])
        moved = torch.from_numpy(seg[source] == box["cls"])
        assert moved.any() and not moved.all()  # the box holds the drawn class and other voxels
        image = out["image"][(slice(None), *box["target"])]
        label = out["segmentation"][(slice(None), *box["target"])]
        assert torch.equal(image[moved], torch.from_numpy(data[source])[moved])
        assert (label[moved] == box["cls"]).all()
        assert (image[~moved] == 7.0).all() and (label[~moved] == 3).all()  # the rest of the box is the sample's
        assert int(out["segmentation"].ne(3).sum()) == int(moved.sum())  # nothing else changed


def test_gamma_zero_draws_classes_uniformly_and_p_zero_never_pastes():
    np.random.seed(1)
    donors = ArrayCases({"a": _case(0)})
    uniform = LabeledPICTransform(donors, patch_size=(8, 32, 32), gamma=0.0, p=1.0)
    drawn = [uniform.get_parameters(**_sample())["box"]["cls"] for _ in range(400)]
    assert 0.4 < np.mean(np.array(drawn) == 2) < 0.6
    never = LabeledPICTransform(donors, patch_size=(8, 32, 32), p=0.0)
    sample = _sample()
    assert never.get_parameters(**sample) == {"box": None}
    assert not never.apply(sample, box=None)["segmentation"].any()


def test_a_2d_sample_takes_a_slice_of_a_3d_donor():
    np.random.seed(2)
    donors = ArrayCases({"a": _case(0)})
    t = LabeledPICTransform(donors, patch_size=(32, 32), p=1.0)
    sample = _sample((48, 48))
    params = t.get_parameters(**sample)
    box = params["box"]
    assert box["source"][0].stop - box["source"][0].start == 1  # one donor slice
    out = t.apply(sample, **params)
    data, seg, _, _ = donors.load_case("a")
    expected = seg[(slice(None), *box["source"])].reshape(1, *box["side"])
    assert torch.equal(out["segmentation"][(slice(None), *box["target"])], torch.from_numpy(expected))


@pytest.mark.parametrize("box,sample,window", [((4, 10), (12, 48), (8, 32)), ((10,), (12,), (20,))])
def test_paste_position_stays_in_the_window_or_the_sample(box, sample, window):
    np.random.seed(3)
    for _ in range(50):
        for b, s, n, w in zip(box, paste_position(box, sample, window), sample, window):
            w = min(max(w, b), n)
            assert s.stop - s.start == b and (n - w) // 2 <= s.start and s.stop <= (n - w) // 2 + w


class LocationsOnly(ArrayCases):
    """Cases whose nnU-Net properties list ``counts[c]`` stored voxels of class c + 1."""

    def __init__(self, counts):
        super().__init__({"a": _case(0)})
        self.counts = counts

    def load_case(self, identifier):
        data, seg, _, _ = super().load_case(identifier)
        return data, seg, None, {"class_locations": {c + 1: np.zeros((n, 4), dtype=np.int64)
                                                     for c, n in enumerate(self.counts)}}


def test_class_draws_accept_counts_whose_float32_probabilities_do_not_sum_to_one():
    """These 8 counts give float32 curriculum probabilities that np.random.choice refuses (sum off by > 1e-8):
    in a trainer that was a crash on the first sample."""
    counts = [2552, 1911, 1533, 810, 924, 123, 226, 50]
    t = LabeledPICTransform(LocationsOnly(counts), patch_size=(8, 32, 32), p=1.0)
    assert t.probabilities.dtype == np.float64 and abs(t.probabilities.sum() - 1) < 1e-12
    np.random.seed(4)
    drawn = [t.classes[np.random.choice(len(t.classes), p=t.probabilities)] for _ in range(300)]
    assert max(set(drawn), key=drawn.count) == 8  # the rarest class (50 voxels) is drawn most
