"""RandomStream: private draws that leave the global generators where they were."""
import random

import numpy as np
import pytest
import torch

from nnunet_dinomix.random_stream import RandomStream


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def _seed_globals(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_draws_inside_the_stream_do_not_move_the_global_generators():
    _seed_globals(0)
    undisturbed = [_draw() for _ in range(3)]
    _seed_globals(0)
    stream = RandomStream(7)
    interleaved = []
    for _ in range(3):
        interleaved.append(_draw())
        with stream.active():
            _draw(), np.random.randint(0, 100, size=5), torch.randn(4)
    assert interleaved == undisturbed


def test_the_stream_continues_where_it_stopped_and_repeats_from_its_seed():
    a = RandomStream(7)
    with a.active():
        first = _draw()
    with a.active():
        second = _draw()
    assert first != second
    b = RandomStream(7)
    with b.active():
        assert _draw() == first
        assert _draw() == second
    b.reseed(8)
    with b.active():
        assert _draw() != first


def test_the_global_generators_are_restored_when_the_block_raises():
    _seed_globals(1)
    expected = _draw()
    _seed_globals(1)
    with pytest.raises(RuntimeError):
        with RandomStream(3).active():
            _draw()
            raise RuntimeError("inside")
    assert _draw() == expected
