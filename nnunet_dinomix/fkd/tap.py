"""Read a feature map out of a network's forward without changing how the network is called (no nnU-Net import)."""
from __future__ import annotations

from typing import Optional

import torch


class FeatureTap:
    """Keeps the output of one module of the student from its latest forward (a forward hook). The network is
    still called through its wrappers, so DDP's gradient synchronisation and torch.compile are not bypassed as
    they would be by calling the encoder directly.

    Under torch.compile the hook must exist before the compiled module's first call: one added later is not in
    the traced graph and never fires (:meth:`pop` then raises). tests/test_compile.py checks both orders."""

    def __init__(self, module: torch.nn.Module):
        self.features: Optional[torch.Tensor] = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.features = output

    def pop(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("the tapped student stage did not run in the last forward")
        return features

    def remove(self) -> None:
        self._handle.remove()
