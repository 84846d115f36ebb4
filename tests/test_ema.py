"""The exponential moving average of the generator weights (``model.ema_decay``, issue 14 point 2).

The average follows the hand-computed update with TensorFlow's warm-up; it is what ``translator``,
the checkpoint's ``G_AB_ema`` / ``G_BA_ema`` and conversion use; a resumed run continues it exactly;
without it the checkpoint and the translator are those of before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tiny import TrainedRun, files, tiny_config
from torch import nn

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.convert import load_model
from medcyclegan.models import CycleGAN
from medcyclegan.models.ema import WeightAverage, warmup_decay
from medcyclegan.train.info import describe
from medcyclegan.train.schedule import lr_rule
from medcyclegan.train.trainer import Trainer

# EMA and every discriminator variant at once: one tiny run checks that they train, checkpoint,
# resume exactly and convert together (32 px fits 2 scales of the 2-layer PatchGAN: 23 px at least).
VARIANTS = {
    "model.ema_decay": 0.9,
    "model.spectral_norm_d": True,
    "model.n_scales_d": 2,
    "model.d_ct_windows": [[-160.0, 240.0]],
    "optim.lr_d": 1e-4,
    "data.val_fraction": 0.0,
}
STEPS = 4


def test_warmup_decay_is_tensorflows() -> None:
    assert [warmup_decay(0.999, n) for n in (0, 1, 2)] == [1 / 10, 2 / 11, 3 / 12]
    assert warmup_decay(0.2, 2) == 0.2  # capped at the decay
    assert warmup_decay(0.999, 8990) == pytest.approx(0.999) and warmup_decay(0.999, 10**6) == 0.999


def test_the_average_is_the_hand_computed_update_over_3_steps() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))  # BatchNorm: buffers to copy
    average = WeightAverage(network, decay=0.2)
    expected = [p.detach().double().clone() for p in network.parameters()]  # starts as a copy
    for step in range(3):
        with torch.no_grad():
            for p in network.parameters():
                p.add_(torch.randn_like(p))
        network(torch.randn(2, 1, 5, 5))  # training mode: new running statistics
        average.update(network)
        decay = min(0.2, (1 + step) / (10 + step))  # 0.1, 0.1818..., then capped at 0.2
        expected = [
            decay * e + (1 - decay) * p.detach().double() for e, p in zip(expected, network.parameters())
        ]
    assert average.updates == 3
    for got, want in zip(average.network.parameters(), expected):
        assert not got.requires_grad
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    for got, want in zip(average.network.buffers(), network.buffers()):
        assert torch.equal(got, want)


def test_without_ema_the_translator_and_checkpoint_are_unchanged(trained_run: TrainedRun) -> None:
    cfg = tiny_config()
    model = CycleGAN(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    assert model.averages == {} and model.translator("AB") is model.G_AB
    assert CycleGAN.translator_state_key(cfg, "AB") == "G_AB"
    data = load_checkpoint(trained_run.run / "checkpoints" / "last.pt")
    assert not any(key.endswith("_ema") or key.startswith("ema") for key in data)
    assert describe(trained_run.run)["networks"]["generator"]["ema_decay"] == 0.0


@pytest.fixture(scope="module")
def variant_run(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of :data:`STEPS` steps with EMA and every discriminator variant (read-only)."""
    run = tmp_path_factory.mktemp("variants") / "run"
    cfg = tiny_config(**VARIANTS, **{"train.max_steps": STEPS})
    Trainer(cfg, run, files(trained_run.mr), files(trained_run.ct), show_progress=False).fit()
    return run


def test_the_checkpoint_stores_plain_averages_and_the_translator_uses_them(variant_run: Path) -> None:
    data = load_checkpoint(variant_run / "checkpoints" / "last.pt")
    assert data["ema_updates"] == STEPS
    cfg = tiny_config(**VARIANTS)
    model = CycleGAN(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    model.load_state_dict(data)
    for direction, name in (("AB", "G_AB"), ("BA", "G_BA")):
        assert CycleGAN.translator_state_key(cfg, direction) == f"{name}_ema"
        # Plain generator state dicts: they load into a freshly built generator.
        plain = CycleGAN.build_translator(cfg, direction)
        plain.load_state_dict(data[f"{name}_ema"])
        translator = model.translator(direction)
        assert translator is model.averages[name].network and translator is not model.networks()[name]
        for a, b in zip(translator.state_dict().values(), plain.state_dict().values()):
            assert torch.equal(a, b)
        assert not all(torch.equal(a, b) for a, b in zip(data[name].values(), data[f"{name}_ema"].values()))


def test_a_resumed_run_continues_the_average_exactly(
    variant_run: Path, trained_run: TrainedRun, tmp_path: Path
) -> None:
    mr, ct = files(trained_run.mr), files(trained_run.ct)
    Trainer(tiny_config(**VARIANTS, **{"train.max_steps": 2}), tmp_path, mr, ct, show_progress=False).fit()
    resumed = Trainer(
        tiny_config(**VARIANTS, **{"train.max_steps": STEPS}),
        tmp_path,
        mr,
        ct,
        resume=tmp_path,
        show_progress=False,
    )
    assert resumed.model.averages["G_AB"].updates == 2
    resumed.fit()
    straight = load_checkpoint(variant_run / "checkpoints" / "last.pt")
    ours = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ours["ema_updates"] == straight["ema_updates"] == STEPS
    # Every network, the averages and the discriminators' spectral-norm vectors (buffers) included.
    for net in ("G_AB", "G_BA", "D_A", "D_B", "G_AB_ema", "G_BA_ema"):
        assert straight[net].keys() == ours[net].keys()
        different = [k for k in straight[net] if not torch.equal(straight[net][k], ours[net][k])]
        assert not different, (net, different[:3])


def test_conversion_translates_with_the_average(variant_run: Path, tmp_path: Path) -> None:
    data = load_checkpoint(variant_run / "checkpoints" / "last.pt")
    for name in ("G_AB", "G_BA"):  # the live generators zeroed: conversion must not read them
        data[name] = {k: torch.zeros_like(v) for k, v in data[name].items()}
    checkpoint = tmp_path / "zeroed.pt"
    torch.save(data, checkpoint)
    for to, key in (("ct", "G_AB_ema"), ("mr", "G_BA_ema")):
        generator = load_model(checkpoint, to=to, device="cpu").generator
        for name, value in generator.state_dict().items():
            assert torch.equal(value, data[key][name]), (key, name)


def test_info_says_ema_on_or_off(variant_run: Path, trained_run: TrainedRun, cli, tmp_path: Path) -> None:
    summary = describe(variant_run)
    assert summary["networks"]["generator"]["ema_decay"] == 0.9
    assert summary["networks"]["discriminator"] == {
        **summary["networks"]["discriminator"],
        "spectral_norm": True,
        "n_scales": 2,
    }
    text = cli("info", variant_run).text
    assert "EMA 0.9" in text and "spectral norm, 2 scales" in text
    assert "no EMA" in cli("info", trained_run.run).text
    # A checkpoint without the average its config promises is refused in one line.
    broken = shutil.copytree(variant_run, tmp_path / "broken")
    data = load_checkpoint(broken / "checkpoints" / "last.pt")
    del data["G_AB_ema"]
    torch.save(data, broken / "checkpoints" / "last.pt")
    result = cli("info", broken)
    assert result.code == 2 and "checkpoint has no G_AB_ema weights" in result.text
