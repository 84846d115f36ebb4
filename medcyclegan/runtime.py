"""Run-time choices shared by every verb: which device to compute on.

``train``, ``convert`` and ``augment`` all take ``--device`` (``train.device`` in a config) and all
resolve it here, so they accept and refuse the same names with the same messages.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from medcyclegan.errors import ConfigError

if TYPE_CHECKING:
    import torch

# What --device accepts; "cuda:N" is GPU number N of this machine.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
# The --device help of every verb that takes it.
DEVICE_HELP = "auto, cpu, cuda or cuda:N (GPU number N)."
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: object, option: str = "--device") -> str:
    """Checks the spelling of a device choice (no hardware is looked at); returns it.

    Raises:
        ConfigError: anything but ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (e.g. ``tpu``, ``meta``),
            with one line naming ``option`` and listing the valid choices.
    """
    if not isinstance(name, str) or not _DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{option} must be one of {', '.join(DEVICE_CHOICES)} (N: a GPU number); got {name!r}"
        )
    return name


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """The torch device for a device choice: ``auto`` is CUDA when available, else the CPU.

    Raises:
        ConfigError: a name :func:`check_device_name` refuses, ``cuda`` without a CUDA GPU, or
            ``cuda:N`` beyond this machine's GPUs.
    """
    import torch

    check_device_name(name, option)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{option} {name} was requested but no CUDA GPU is available (use auto or cpu)")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        valid = ", ".join(f"cuda:{i}" for i in range(count))
        raise ConfigError(f"{option} {name}: this machine has {count} CUDA GPU(s) ({valid})")
    return device
