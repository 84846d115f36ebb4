"""An exponential moving average (EMA) of a network's weights, for translating with smoother weights.

After every optimiser step of the network, each floating-point parameter of the average moves
towards the network's: ``average = d * average + (1 - d) * weight``; buffers (normalisation
statistics, if the network has any) are copied. The decay ``d`` has the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``::

    d_n = min(decay, (1 + n) / (10 + n))        n = updates before this one (0, 1, 2, ...)

so that a short run's average is not dominated by the random initialisation: the average starts as a
copy of the initial network, the first update keeps 10 % of it, and until ``d_n`` reaches ``decay``
(n = 8,990 at 0.999) the average covers about the last n / 9 steps.

Why not ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: its update count is
a tensor read back at every update (a device synchronisation per step on CUDA), it has no warm-up,
and its state dict is prefixed (``module.``) and carries ``n_averaged``. Here the average is a plain
copy of the network: its ``state_dict`` loads into a freshly built network, which is what a
checkpoint stores and conversion loads.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# TensorFlow's warm-up constants: d_n = min(decay, (1 + n) / (10 + n)).
_WARMUP_OFFSET = 1.0
_WARMUP_SCALE = 10.0


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of the update after ``updates`` earlier ones: ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (_WARMUP_OFFSET + updates) / (_WARMUP_SCALE + updates))


class WeightAverage:
    """The exponential moving average of ``network``'s weights (see the module docstring).

    Args:
        network: the trained network; the average starts as a copy of it (same device and layout).
        decay: the decay once warmed up, in (0, 1).

    Attributes:
        network: the averaged copy (no gradients), the translator validation and conversion use.
        updates: how many updates it has had (a checkpoint stores it with ``network.state_dict()``:
            the warm-up depends on it).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1); got {decay!r}")
        self.decay = decay
        self.network = copy.deepcopy(network).requires_grad_(False)
        self.updates = 0

    def __repr__(self) -> str:
        return f"WeightAverage(decay={self.decay}, updates={self.updates})"

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Moves the average towards ``network`` (call after each of its optimiser steps)."""
        weight = 1.0 - warmup_decay(self.decay, self.updates)
        for average, current in zip(self.network.parameters(), network.parameters(), strict=True):
            average.lerp_(current.detach(), weight)
        for average, current in zip(self.network.buffers(), network.buffers(), strict=True):
            average.copy_(current)
        self.updates += 1
