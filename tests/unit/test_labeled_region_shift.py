"""The Budget trainers' ``labeled_region_shift``: the labeled images shifted by their own ground truth."""
from types import SimpleNamespace

import pytest
import torch

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.random_stream import RandomStream
from nnunet_dinomix.ssl.region_shift import RegionIntensityShift, RegionShiftSettings
from nnunet_dinomix.training.budget import labeled_region_shift, shift_labeled_batch


def _batch():
    target = torch.zeros(2, 1, 6, 10, 10)
    target[:, :, 1:5, 1:5, 1:5] = 1
    target[:, :, :, :, 9] = -1  # nnU-Net's padding of the segmentation
    target[:, :, 1:5, 6:9, 6:9] = 3  # an ignore label: one more than the classes the shift knows
    coarse = target[:, :, ::2, ::2, ::2]
    return {"data": torch.zeros(2, 1, 6, 10, 10), "target": [target, coarse], "keys": ["a", "b"]}


def test_the_labeled_images_are_shifted_by_their_ground_truth_from_a_private_stream():
    batch = _batch()
    shift = RegionIntensityShift(3, RegionShiftSettings(shift=1.0, p_per_class=1.0))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    shifted = shift_labeled_batch(batch, shift, RandomStream(7))
    assert torch.equal(torch.rand(1), before)  # the global stream (the batches) did not move
    assert shifted["target"] is batch["target"] and shifted["keys"] == ["a", "b"]
    assert torch.equal(batch["data"], torch.zeros(2, 1, 6, 10, 10))  # a new tensor; the loader's is untouched
    core = (slice(None), 0, slice(2, 4), slice(2, 4), slice(2, 4))
    offsets = shifted["data"][core].flatten(1)
    assert bool((offsets.std(1) < 1e-6).all()) and bool((offsets[:, 0].abs() > 0).all())  # one offset per sample
    assert float(offsets[0, 0]) != float(offsets[1, 0])  # drawn per sample
    # padding and the ignore label count as background: away from class 1 nothing moves
    assert torch.equal(shifted["data"][:, :, :, :, 7:], batch["data"][:, :, :, :, 7:])
    again = shift_labeled_batch(_batch(), shift, RandomStream(7))
    assert torch.equal(again["data"], shifted["data"])  # the same stream, the same draws


def test_region_based_training_is_refused_with_what_to_do():
    trainer = SimpleNamespace(label_manager=SimpleNamespace(has_regions=True, num_segmentation_heads=3),
                              labeled_region_shift=1.0, local_rank=0, random_stream=0, budget_seed=None)
    with pytest.raises(DinoMixError, match="Leave labeled_region_shift unset"):
        labeled_region_shift(trainer)
    trainer.label_manager.has_regions = False
    shift, stream = labeled_region_shift(trainer)
    assert shift.num_classes == 3 and shift.settings.shift == 1.0 and isinstance(stream, RandomStream)
