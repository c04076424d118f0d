"""A private stream of random numbers for code that can only draw from the global generators.

nnU-Net's data loaders and batchgenerators' transforms draw from Python's ``random``, NumPy's global generator and
torch's default CPU generator. With ``nnUNet_n_proc_DA=0`` the labeled and the unlabeled loader run in the same
process, so every unlabeled batch would move the labeled stream on: a semi-supervised run would see other labeled
batches than plain nnU-Net with the same seed, from the first step after burn-in on. :class:`RandomStream` keeps
its own copy of the three generators' states and swaps it in only while its draws are made, so the global stream
(the labeled batches) is exactly what it would have been without them.

Only CPU generators are swapped; a CUDA tensor's random numbers come from the CUDA generator, which no data loader
uses.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


class RandomStream:
    def __init__(self, seed: int):
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Start the stream over from ``seed`` (a non-negative integer), without touching the global generators."""
        python = random.Random(seed)
        self._python = python.getstate()
        self._numpy = np.random.RandomState(seed % 2 ** 32).get_state()
        self._torch = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """While inside, the global generators draw this stream's numbers; on leaving, this stream keeps where it
        got to and the global generators are back where they were (also when the block raises)."""
        saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        torch.random.set_rng_state(self._torch)
        try:
            yield
        finally:
            self._python, self._numpy, self._torch = random.getstate(), np.random.get_state(), \
                torch.random.get_rng_state()
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.set_rng_state(saved[2])
