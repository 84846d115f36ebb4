"""The run-time layer every verb shares: device choice, precision policy, autocast, several processes.

``train``, ``convert`` and ``augment`` all take ``--device`` (``train.device`` in a config) and all
resolve it here, so they accept and refuse the same names with the same messages. The modules:

* this package: :data:`DEVICE_CHOICES`, :data:`DEVICE_HELP`, :func:`check_device_name`,
  :func:`resolve_device`;
* :mod:`medcyclegan.runtime.precision`: the one mixed-precision policy (:func:`use_bf16`,
  :func:`use_channels_last`, :func:`autocast_context`);
* :mod:`medcyclegan.runtime.distributed`: torchrun detection, process groups, sharding, relaunching;
* :mod:`medcyclegan.runtime.threads`: ``--threads auto|N``, CPU threads and OpenMP waits on a shared
  machine (torch-free, called before torch is imported).

The names of precision and distributed are re-exported here (``from medcyclegan.runtime import
use_bf16``), loaded on first use: they import torch, and ``medcyclegan --help`` (which reads
:data:`DEVICE_HELP`) must not.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any

from medcyclegan.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from medcyclegan.runtime import distributed, precision
    from medcyclegan.runtime.precision import autocast_context, use_bf16, use_channels_last

__all__ = [
    "DEVICE_CHOICES",
    "DEVICE_HELP",
    "autocast_context",
    "check_device_name",
    "distributed",
    "precision",
    "resolve_device",
    "use_bf16",
    "use_channels_last",
]

# What --device accepts; "cuda:N" is GPU number N of this machine.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
# The --device help of every verb that takes it.
DEVICE_HELP = "auto, cpu, cuda or cuda:N (GPU number N)."
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

# Re-exported lazily (PEP 562): name -> the submodule that holds it.
_LAZY_NAMES = {
    "autocast_context": "precision",
    "use_bf16": "precision",
    "use_channels_last": "precision",
}
_SUBMODULES = ("distributed", "precision")


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
    # lazy: importing torch costs about 2 s (python -X importtime), and config validation and
    # `medcyclegan --help` import this module without needing a device.
    import torch  # noqa: PLC0415 (see the comment above)

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


def __getattr__(name: str) -> Any:
    # lazy: precision and distributed import torch (about 2 s, python -X importtime); see the docstring.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
