"""What may differ when a run is resumed, and the one rule that merges a requested config into it.

A resumed run is the stored experiment continued: its config comes from the checkpoint. A requeued
job repeats its whole command line, so values *equal* to the stored ones are accepted wherever they
come from (``--config``, flags, ``--set``); only the run-control fields of
:data:`RESUMABLE_OVERRIDES` may take a new value; any other difference is refused naming the key,
the stored and the given value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from medcyclegan.config import AUTO, SECTION_NAMES, Config, apply_overrides
from medcyclegan.errors import ConfigError

logger = logging.getLogger("medcyclegan")

# Fields that may differ when resuming: they change how the run is watched or stopped, not what
# each step computes.
RESUMABLE_OVERRIDES = {
    "train.max_steps",
    "train.device",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_epoch_checkpoints",
    "train.save_every_steps",
    "train.val_every",
    "data.num_workers",
    "data.cache_dir",
    "train.channels_last",
    "train.compile",
}
# "auto" (the default) asks for no particular choice: a run that stored an explicit value (every run
# before "auto" existed stored val/cycle_ssim, max) keeps it.
_AUTO_KEEPS_STORED = {"train.best_metric", "train.best_mode"}


def _flat(cfg: Config) -> dict[str, Any]:
    """``{"section.key": value}`` of every section (normalisation and version are measured).

    Every section of the config (:data:`~medcyclegan.config.SECTION_NAMES`), so that a model's or a
    generator's section (e.g. ``unit``, ``vit_unet``) is compared as strictly as the first five.
    """
    raw = cfg.to_dict()
    return {f"{section}.{key}": value for section in SECTION_NAMES for key, value in raw[section].items()}


def merge_resume_config(
    stored: Config, requested: Config, keys: Iterable[str] | None = None, *, announce: bool = True
) -> Config:
    """The stored config with the run-control changes of ``requested``; other changes are refused.

    Args:
        stored: the config of the checkpoint being resumed.
        requested: the config the user asked for (validated, so values are already coerced).
        keys: the ``section.key`` names the user actually gave; ``None`` compares every field (a
            whole config file or a config object was given).
        announce: log the accepted changes (the trainer does; a caller that hands the result on to
            the trainer passes False, so that they are logged once).

    Raises:
        ConfigError: a field outside :data:`RESUMABLE_OVERRIDES` differs from the stored value; the
            message names every such key with its stored and given value.
    """
    old, new = _flat(stored), _flat(requested)
    names = list(new) if keys is None else [k for k in new if k in set(keys)]
    changes: dict[str, Any] = {}
    refused: list[str] = []
    for name in names:
        if new[name] == old[name] or (name in _AUTO_KEEPS_STORED and new[name] == AUTO):
            continue
        if name in RESUMABLE_OVERRIDES:
            changes[name] = new[name]
        else:
            refused.append(f"{name} (stored {old[name]!r}, given {new[name]!r})")
    if refused:
        raise ConfigError(
            f"cannot change {'; '.join(refused)} when resuming: the run continues with its stored config "
            f"(only {', '.join(sorted(RESUMABLE_OVERRIDES))} may change); "
            "drop the option, or start a new run in another --out"
        )
    if not changes:
        return stored
    if announce:
        logger.info("resume: changed %s", ", ".join(f"{k}={v}" for k, v in changes.items()))
    return apply_overrides(stored, changes)
