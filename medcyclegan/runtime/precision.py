"""The one mixed-precision policy: when bf16 autocast and the channels-last layout are used.

Training, validation, samples and conversion all decide here, from the run config's ``train.amp``
and ``train.channels_last`` and the device, so what validation measures is computed at the precision
conversion uses.
"""

from __future__ import annotations

import contextlib

import torch


def use_bf16(amp_setting: str, device: torch.device) -> bool:
    """Whether ``train.amp`` asks for bf16 autocast on ``device``.

    ``"auto"``: on CUDA only; ``"bf16"``: always (on the CPU :func:`autocast_context` still runs in
    fp32); ``"off"``: never.
    """
    return amp_setting == "bf16" or (amp_setting == "auto" and device.type == "cuda")


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """Whether networks and images use the channels-last (NHWC) layout.

    ``train.channels_last`` ``None`` (the default) means on CUDA only, where it is faster; a boolean
    is taken as given.
    """
    return device.type == "cuda" if setting is None else bool(setting)


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (CPU runs in fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
