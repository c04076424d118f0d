"""Pseudo-labelling rules, DistDW class weights, the unlabeled losses and the pseudo-label diagnostics: torch only."""
import math

import pytest
import torch

from nnunet_dinomix.ssl.losses import masked_cross_entropy, unlabeled_loss
from nnunet_dinomix.ssl.pseudo import (ClassBalance, PseudoLabeller, class_reliability, largest_component_mask,
                                       pseudo_label_quality, reliable_classes)


def _logits(confidences, labels, num_classes=3):
    """(1, K, N, 1, 1) logits whose softmax gives each voxel ``confidence`` on ``label``, the rest uniform."""
    n = len(labels)
    probs = torch.zeros(1, num_classes, n, 1, 1)
    for i, (c, k) in enumerate(zip(confidences, labels)):
        probs[0, :, i] = (1 - c) / (num_classes - 1)
        probs[0, k, i] = c
    return probs.log()


def test_global_rule_keeps_confident_voxels_only():
    p = PseudoLabeller(3, "global", threshold=0.9)(_logits([0.99, 0.5], [2, 1]))
    assert p.labels.shape == (1, 1, 2, 1, 1)
    assert p.labels.flatten().tolist() == [2, 1]
    assert p.confidence[0, 0, 0].item() == pytest.approx(0.99, abs=1e-5)
    assert p.mask.flatten().tolist() == [1.0, 0.0]


def test_no_rule_trusts_every_voxel():
    p = PseudoLabeller(3, None)(_logits([0.99, 0.4], [2, 1]))
    assert p.mask.flatten().tolist() == [1.0, 1.0]


def test_class_adaptive_rule_keeps_the_confident_share_of_a_rare_uncertain_class():
    """Background is predicted at 0.99, a rare organ never above 0.7: the global rule drops the organ wholesale,
    the class-adaptive rule learns a lower bar for it and keeps its more confident half."""
    conf = [0.99] * 8 + [0.55, 0.6, 0.65, 0.7]
    labels = [0] * 8 + [2, 2, 2, 2]
    logits = _logits(conf, labels)
    assert PseudoLabeller(3, "global", 0.9)(logits).mask.flatten()[8:].sum() == 0
    adaptive = PseudoLabeller(3, "class_adaptive", 0.9, quantile=0.5, momentum=0.0)
    mask = adaptive(logits).mask.flatten().tolist()
    assert mask[:8] == [1.0] * 8
    assert mask[8:] == [0.0, 0.0, 1.0, 1.0]
    assert adaptive.class_thresholds[2] == pytest.approx(0.625, abs=1e-3)
    assert adaptive.class_thresholds[0] == pytest.approx(0.9)  # capped at the global threshold
    restored = PseudoLabeller(3, "class_adaptive", 0.9)
    restored.load_state_dict(adaptive.state_dict())
    assert torch.equal(restored.class_thresholds, adaptive.class_thresholds)


def test_class_gate_drops_unreliable_classes_and_background_next_to_them():
    """Classes 0, 1, 2 with class 2 not yet reliable: a confident class-2 label is dropped (a confident confusion
    passes the confidence rule), and so is background whose runner-up is class 2; background whose runner-up is
    the reliable class 1 stays, and so does a confident class-1 label."""
    probs = torch.tensor([[0.98, 0.01, 0.01],  # background, its runner-up a tie (not asserted)
                          [0.01, 0.98, 0.01],  # class 1
                          [0.01, 0.01, 0.98],  # class 2 (unreliable)
                          [0.96, 0.01, 0.03],  # background, runner-up 2
                          [0.96, 0.03, 0.01]])  # background, runner-up 1
    logits = probs.t().reshape(1, 3, 5, 1, 1).log()
    labeller = PseudoLabeller(3, "global", threshold=0.9)
    ungated = labeller(logits).mask.flatten().tolist()
    labeller.reliable = torch.tensor([True, True, False])
    gated = labeller(logits).mask.flatten().tolist()
    assert ungated == [1.0] * 5
    assert gated[1:] == [1.0, 0.0, 0.0, 1.0]
    labeller.reliable = torch.tensor([True, True, True])
    assert labeller(logits).mask.flatten().tolist() == ungated


def test_largest_component_filter_untrusts_fragments_per_class_and_sample():
    """Sample 0: class 1 as a 3x3x3 block and a one-voxel fragment, class 2 as one voxel (its only component);
    sample 1: class 1's fragment alone (its own largest). Only sample 0's class-1 fragment loses its trust."""
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    labels[0, 0, 1:4, 1:4, 1:4] = 1
    labels[0, 0, 6, 6, 6] = 1
    labels[0, 0, 6, 1, 6] = 2
    labels[1, 0, 6, 6, 6] = 1
    keep = largest_component_mask(labels)
    assert keep.shape == labels.shape and keep.dtype == torch.bool
    assert not keep[0, 0, 6, 6, 6]
    assert int((~keep).sum()) == 1
    # a diagonal neighbour is connected (full connectivity, as in nnU-Net's postprocessing)
    labels[0, 0, 4, 4, 4] = 1
    assert largest_component_mask(labels)[0, 0, 4, 4, 4]
    labels[0, 0, 4, 4, 4] = 0

    logits = torch.zeros(2, 3, 8, 8, 8).scatter_(1, labels, 10.0)
    plain = PseudoLabeller(3, None)(logits)
    filtered = PseudoLabeller(3, None, largest_component=True)(logits)
    assert plain.mask.sum() == labels.numel()
    assert torch.equal(filtered.mask.bool(), largest_component_mask(labels))
    assert torch.equal(filtered.labels, plain.labels)


def test_class_reliability_averages_over_epochs_and_skips_nan():
    history = [[0.0, float("nan")], [0.8, float("nan")], [1.0, 0.9]]
    r = class_reliability(history, momentum=0.5)
    assert r[0].item() == pytest.approx(0.5 * (0.5 * 0.0 + 0.5 * 0.8) + 0.5 * 1.0)
    assert r[1].item() == pytest.approx(0.9)  # first measurement starts the average
    assert class_reliability([]).numel() == 0
    assert reliable_classes(r, 3, 0.8).tolist() == [True, False, True]
    assert reliable_classes(torch.tensor([float("nan"), 0.99]), 3, 0.8).tolist() == [True, False, True]
    assert reliable_classes(class_reliability([]), 3, 0.8).tolist() == [True, False, False]


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="confidence rule"):
        PseudoLabeller(3, "entropy")


def test_distdw_weights_follow_the_pseudo_label_histogram():
    balance = ClassBalance(3, momentum=0.0)
    assert torch.equal(balance.weights, torch.ones(3))  # before any update
    labels = torch.tensor([0] * 1000 + [1] * 100 + [2] * 10).view(1, 1, -1, 1, 1)
    balance.update(labels, torch.ones_like(labels, dtype=torch.float32))
    w = balance.weights
    assert w[0] == pytest.approx(0.0, abs=1e-6)  # the majority class ends at 0
    assert w[2] == pytest.approx(3.0)  # the rarest at K
    assert w[1] == pytest.approx(3.0 * math.log(10) / math.log(100), rel=1e-5)


def test_class_weighted_ce_is_a_weighted_mean():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 1, 1)
    target = torch.tensor([0, 1, 2, 2]).view(1, 1, 4, 1, 1)
    mask = torch.ones_like(target, dtype=torch.float32)
    weights = torch.tensor([0.0, 1.0, 3.0])
    ce = torch.nn.functional.cross_entropy(logits[:, :, :, 0, 0], target[:, 0, :, 0, 0], reduction="none")[0]
    expected = (ce[1] * 1 + ce[2] * 3 + ce[3] * 3) / 7
    torch.testing.assert_close(masked_cross_entropy(logits, target, mask, weights), expected)
    torch.testing.assert_close(  # as torch's own weighted CE
        masked_cross_entropy(logits, target, mask, weights),
        torch.nn.functional.cross_entropy(logits, target[:, 0], weight=weights))


def test_unlabeled_losses_reward_agreeing_with_the_pseudo_label():
    torch.manual_seed(3)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6))
    agree = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 10
    disagree = agree.roll(1, dims=1)
    mask = torch.ones_like(labels, dtype=torch.float32)
    for kind in ("ce", "dice_ce", "batch_dice_ce"):
        good = unlabeled_loss(kind, agree, labels, mask, batch_dice=False)
        bad = unlabeled_loss(kind, disagree, labels, mask, batch_dice=False)
        assert good < bad - 1.0, kind
    with pytest.raises(ValueError, match="unknown unlabeled loss"):
        unlabeled_loss("focal", agree, labels, mask, batch_dice=False)


def test_ce_does_not_push_a_class_absent_from_the_masked_pseudo_label_to_zero():
    """The Dice pitfall: per-sample Dice on a mask without class 2 pulls class 2's probability down on every masked
    voxel; CE leaves a correctly classified voxel nearly alone."""
    logits = torch.zeros(1, 3, 4, 1, 1, requires_grad=True)
    target = torch.zeros(1, 1, 4, 1, 1, dtype=torch.long)
    mask = torch.ones_like(target, dtype=torch.float32)
    with torch.no_grad():
        logits[0, 0] = 10.0  # confidently background, as the pseudo-label says
    grads = {}
    for kind in ("ce", "dice_ce"):
        logits.grad = None
        unlabeled_loss(kind, logits, target, mask, batch_dice=False).backward()
        grads[kind] = logits.grad[0, 2].abs().sum().item()
    assert grads["dice_ce"] > 10 * grads["ce"]


def test_pseudo_label_quality_counts_against_the_truth():
    labels = torch.tensor([0, 1, 1, 2, 2, 0]).view(1, 1, 6, 1, 1)
    mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.float32).view(1, 1, 6, 1, 1)
    truth = torch.tensor([0, 1, 1, 2, 0, 2]).view(1, 1, 6, 1, 1)
    from nnunet_dinomix.ssl.pseudo import PseudoLabels
    counts = pseudo_label_quality(PseudoLabels(labels, torch.ones_like(mask), mask), truth, 3)
    # rows: true positives among trusted, trusted pseudo-labels, true voxels, trusted true voxels
    assert counts[:, 1].tolist() == [1, 1, 2, 1]  # one trusted hit; the second voxel of class 1 was masked
    assert counts[:, 2].tolist() == [1, 2, 2, 2]  # voxel 4 labelled 2 is background; voxel 5 (truth 2) called 0
    # samples whose truth is unknown (-1) are not counted
    unknown = pseudo_label_quality(PseudoLabels(labels, torch.ones_like(mask), mask), torch.full_like(truth, -1), 3)
    assert unknown.sum() == 0
