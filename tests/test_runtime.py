"""Device choice: one helper for train, convert and augment (medcyclegan.runtime)."""

from __future__ import annotations

import pytest
import torch

from medcyclegan.config import load_config
from medcyclegan.errors import ConfigError
from medcyclegan.runtime import resolve_device


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
