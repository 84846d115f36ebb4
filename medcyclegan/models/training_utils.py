"""Helpers the models' training steps and state loading share (CycleGAN, pix2pix, CUT, UNIT, MUNIT)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcyclegan.checkpoint import load_state_strict

# What a model's checkpoint stores besides its networks: optimisers and learning-rate schedulers.
Optimisation = torch.optim.Optimizer | torch.optim.lr_scheduler.LRScheduler


def state_to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with its tensors on the CPU (so that it can be gathered between processes)."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    """Switches the gradients of every parameter of ``modules`` on or off (e.g. frozen discriminators)."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(flag)


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Gives restored optimiser moments the memory layout of their parameters (e.g. channels-last).

    A checkpoint written by a run in another layout loads with contiguous moments; fused Adam wants
    moments laid out like the parameters.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_training_state(
    state: Mapping[str, Any],
    networks: Mapping[str, nn.Module],
    optimisation: Mapping[str, Optimisation],
    source: str | Path,
) -> None:
    """Loads a checkpoint's networks and optimisers and schedulers, each from the entry of its name.

    The networks strictly (a mismatch is one clear line naming ``source``); restored optimiser
    moments get their parameters' memory layout (:func:`match_state_layout`).
    """
    for name, net in networks.items():
        load_state_strict(net, state[name], name, source)
    for key, part in optimisation.items():
        part.load_state_dict(state[key])
    for part in optimisation.values():
        if isinstance(part, torch.optim.Optimizer):
            match_state_layout(part)
