"""The runtime layer (medcyclegan.runtime): device choice, precision policy, what imports what."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

import medcyclegan.runtime
from medcyclegan.config import load_config
from medcyclegan.errors import ConfigError
from medcyclegan.runtime import distributed, precision, resolve_device
from medcyclegan.runtime.precision import autocast_context, use_bf16, use_channels_last


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cuda_devices_of_this_machine_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_number_beyond_this_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 1)
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda:5")
    assert str(caught.value) == "--device cuda:5: this machine has 1 CUDA GPU(s) (cuda:0)"


def test_cuda_without_a_gpu_is_refused_and_auto_falls_back_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"--device {name} was requested but no CUDA GPU is available"):
            resolve_device(name)


@pytest.mark.parametrize(
    "name", ["tpu", "meta", "mps", "xla", "cuda:", "cuda:-1", "cuda:0,1", "CPU", "", "garbage"]
)
def test_other_devices_are_refused_listing_the_choices(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_device(name)
    assert (
        str(caught.value)
        == f"--device must be one of auto, cpu, cuda, cuda:N (N: a GPU number); got {name!r}"
    )


def test_train_accepts_the_same_device_names_as_convert() -> None:
    assert load_config(None, {"train.device": "cuda:1"}).train.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"train.device must be one of auto, cpu, cuda, cuda:N .*'tpu'"):
        load_config(None, {"train.device": "tpu"})


def test_one_precision_policy_for_every_verb() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [use_bf16(amp, cpu) for amp in ("auto", "bf16", "off")] == [False, True, False]
    assert [use_bf16(amp, cuda) for amp in ("auto", "bf16", "off")] == [True, True, False]
    assert [use_channels_last(setting, cpu) for setting in (None, True, False)] == [False, True, False]
    assert [use_channels_last(setting, cuda) for setting in (None, True, False)] == [True, True, False]
    # On the CPU autocast never applies: bf16 asked for there still runs in fp32.
    assert isinstance(autocast_context(cpu, True), contextlib.nullcontext)


def test_the_runtime_package_re_exports_its_modules_names() -> None:
    assert medcyclegan.runtime.use_bf16 is precision.use_bf16
    assert medcyclegan.runtime.autocast_context is precision.autocast_context
    assert medcyclegan.runtime.use_channels_last is precision.use_channels_last
    assert medcyclegan.runtime.distributed is distributed
    with pytest.raises(AttributeError):
        _ = medcyclegan.runtime.no_such_name


def _modules_after_import(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_convert_augment_and_inference_import_nothing_from_train() -> None:
    loaded = _modules_after_import(
        "medcyclegan.convert", "medcyclegan.augment", "medcyclegan.inference", "medcyclegan.checkpoint"
    )
    assert "medcyclegan.convert" in loaded
    assert sorted(m for m in loaded if m == "medcyclegan.train" or m.startswith("medcyclegan.train.")) == []
    # Conversion reaches the models through the registry, but builds no discriminator and no loss:
    # MONAI (about 1.6 s to import) stays out.
    assert "medcyclegan.models.cyclegan" in loaded and "monai" not in loaded


def test_the_cli_runtime_and_augment_check_do_not_import_torch() -> None:
    # `medcyclegan --help` and `augment --check` need no torch (it costs about 2 s to import).
    loaded = _modules_after_import("medcyclegan.cli", "medcyclegan.runtime", "medcyclegan.augment")
    assert "torch" not in loaded
