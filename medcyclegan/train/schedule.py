"""The training schedule: which batches each step takes, how many steps, which learning rate.

Exact resume rests on these being pure functions: the batches of an epoch depend only on (seed,
epoch, domain), the learning rate only on the epoch (or the step, with ``optim.n_steps``).
"""

from __future__ import annotations

import torch

from medcyclegan.config import OptimConfig
from medcyclegan.errors import ConfigError
from medcyclegan.models.base import LrRule
from medcyclegan.runtime.seeds import derived_seed


def epoch_batches(
    n_items: int, batch_size: int, steps: int, seed: int, epoch: int, domain: int
) -> list[list[int]]:
    """The batches of one epoch: shuffled indices, cycled as needed, a pure function of its arguments."""
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, domain))
    need = steps * batch_size
    order: list[int] = []
    while len(order) < need:
        order.extend(torch.randperm(n_items, generator=generator).tolist())
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Reference schedule: constant for ``n_epochs``, then linear decay towards 0 over ``n_epochs_decay``.

    The step-based schedule (``optim.n_steps``) is the same rule counted in steps.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def lr_rule(optim: OptimConfig) -> LrRule:
    """The factor per scheduler step: per epoch, or per step with ``optim.n_steps``."""
    if optim.n_steps is not None:
        decay = optim.decay_steps
        constant = optim.n_steps - decay
        return lambda step: lr_factor(step, constant, decay)
    return lambda epoch: lr_factor(epoch, optim.n_epochs, optim.n_epochs_decay)


def schedule_steps(optim: OptimConfig, max_steps: int | None, steps_per_epoch: int) -> int:
    """Steps a run makes: the schedule's, or ``max_steps`` when that stops it earlier.

    Raises:
        ConfigError: ``max_steps`` is more than the epoch schedule has (the config refuses that for
            ``optim.n_steps``): the user would silently get fewer steps than asked for; the message
            says how to get them.
    """
    if optim.n_steps is not None:
        total = optim.n_steps
    else:
        total = steps_per_epoch * optim.total_epochs
        if max_steps is not None and max_steps > total:
            raise ConfigError(
                f"train.max_steps {max_steps} is more than the {total} steps of the epoch schedule "
                f"({optim.n_epochs} + {optim.n_epochs_decay} epochs of {steps_per_epoch} steps); "
                f"use --steps {max_steps} for a step-based schedule of {max_steps} steps (constant, "
                "then linear decay; epochs continue as needed), or more --epochs / --epochs-decay"
            )
    return min(total, max_steps) if max_steps is not None else total
