"""The model interface: the registry, the checkpoint built from the model, and a loop that knows no model.

A toy one-way model (one convolution, A -> B only) registered for these tests trains, checkpoints,
resumes exactly, validates and draws samples through the same :class:`Trainer` as CycleGAN: what
the next models (pix2pix, CUT, ...) rely on.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import files, tiny_config, write_domain
from torch import nn

import medcyclegan.config
import medcyclegan.models.registry
from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import MODEL_KINDS, load_config
from medcyclegan.errors import ConfigError
from medcyclegan.models import CycleGAN, TranslationModel, model_class, register_model, registered_models
from medcyclegan.models.base import Batch, Direction
from medcyclegan.train.info import describe
from medcyclegan.train.schedule import lr_rule
from medcyclegan.train.trainer import Trainer


class ToyTranslator(nn.Conv2d):
    stride_multiple = 1  # what the slice-wise inference path pads whole slices to


class ToyModel(TranslationModel):
    """A 3x3 convolution from A to B, trained to keep its input (enough to exercise the loop)."""

    directions: ClassVar[tuple[Direction, ...]] = ("AB",)
    loss_columns: ClassVar[tuple[str, ...]] = ("loss_G", "l1")
    watched_losses: ClassVar[tuple[str, ...]] = ("loss_G",)
    network_names: ClassVar[tuple[str, ...]] = ("G",)

    def __init__(self, cfg, device, rule, **kwargs: Any) -> None:
        super().__init__(cfg, device, rule, **kwargs)
        self.G = self.build_translator(cfg, "AB").to(device)
        self.opt = torch.optim.Adam(self.G.parameters(), lr=cfg.optim.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, rule)

    @classmethod
    def build_translator(cls, cfg, direction: Direction) -> nn.Module:
        channels = cfg.data.in_channels
        return ToyTranslator(channels, channels, 3, padding=1)

    @classmethod
    def translator_key(cls, direction: Direction) -> str:
        return "G"

    @classmethod
    def build_networks(cls, cfg) -> dict[str, nn.Module]:
        return {"G": cls.build_translator(cfg, "AB")}

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G}

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        real = batch["A"]["image"].to(self.device)
        loss = (self.G(real) - real).abs().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss_G": loss.detach(), "l1": loss.detach()}

    def step_schedulers(self) -> None:
        self.sched.step()

    def learning_rate(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        self.G.load_state_dict(state["G"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[ToyModel]:
    """``model.kind: toy`` for one test (the registry and the config's list are restored after)."""
    kinds = (*MODEL_KINDS, "toy")
    monkeypatch.setattr(medcyclegan.config, "MODEL_KINDS", kinds)
    monkeypatch.setattr(medcyclegan.models.registry, "MODEL_KINDS", kinds)
    monkeypatch.setattr(medcyclegan.models.registry, "_MODELS", dict(medcyclegan.models.registry._MODELS))
    return register_model("toy")(ToyModel)


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("models")
    return files(write_domain(root / "mr", "mr", 2, 1)), files(write_domain(root / "ct", "ct", 2, 2))


def test_every_listed_kind_is_registered_and_unknown_kinds_are_refused() -> None:
    assert registered_models() == tuple(sorted(MODEL_KINDS))
    assert model_class("cyclegan") is CycleGAN
    listed = re.escape(", ".join(MODEL_KINDS))
    with pytest.raises(ConfigError, match=rf"model\.kind must be one of {listed}; got 'pix2pics'"):
        load_config(None, {"model.kind": "pix2pics"})
    with pytest.raises(ValueError, match=r"not in medcyclegan\.config\.MODEL_KINDS"):
        register_model("unlisted")(ToyModel)


def test_cyclegan_state_round_trips_and_keeps_the_0_1_0_keys() -> None:
    cfg = tiny_config()
    device = torch.device("cpu")
    model = CycleGAN(cfg, device, lr_rule(cfg.optim))
    state = model.state_dict()
    assert set(state) == {
        "G_AB",
        "G_BA",
        "D_A",
        "D_B",
        "opt_G",
        "opt_D",
        "sched_G",
        "sched_D",
        "pool_A",
        "pool_B",
    }
    other = CycleGAN(cfg, device, lr_rule(cfg.optim))
    first = next(other.G_AB.parameters())
    assert not torch.equal(first, next(model.G_AB.parameters()))
    other.load_state_dict(copy.deepcopy(state))
    for name, net in model.networks().items():
        for (key, a), b in zip(net.state_dict().items(), other.networks()[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    assert other.translator("BA") is other.G_BA and "G_AB=" in repr(other)


def test_the_loop_trains_checkpoints_and_resumes_a_model_it_does_not_know(
    toy, domains, tmp_path: Path
) -> None:
    mr, ct = domains
    overrides = {"model.kind": "toy", "train.max_steps": 6}
    straight = Trainer(
        tiny_config(**overrides),
        tmp_path / "a",
        mr,
        ct,
        val_src_paths=mr[:1],
        val_tgt_paths=ct[:1],
        show_progress=False,
    )
    assert isinstance(straight.model, ToyModel)
    straight.fit()
    data = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    # The checkpoint is the loop's records plus the model's own state_dict(), nothing hand-listed.
    assert {"G", "opt", "sched"} <= set(data) and "G_AB" not in data
    assert data["parameters"] == {"G": sum(p.numel() for p in straight.model.G.parameters())}
    # Validation of a one-way model: translation metrics on the pair, no cycle metrics.
    assert straight.val_history and "val/mae" in straight.val_history[0]
    assert not any("cycle" in key for key in straight.val_history[0])
    grid = np.asarray(Image.open(tmp_path / "a" / "samples" / "epoch_0001.png"))
    # Rows (A, G(A)) and (B): 2 x 2 tiles of the 40 x 44 slices shown 44 high, 40 wide, 2 px apart.
    assert grid.shape == (2 * 44 + 2, 2 * 40 + 2)
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,epoch,lr,loss_G,l1"
    # info describes the networks the model has (no CycleGAN generator/discriminator entries).
    networks = describe(tmp_path / "a")["networks"]
    assert networks["G"] == {
        "parameters": data["parameters"]["G"],
        "summary": f"{data['parameters']['G']:,} parameters",
    }
    assert "generator" not in networks and networks["parameters"] == data["parameters"]

    first = Trainer(
        tiny_config(**{**overrides, "train.max_steps": 3}), tmp_path / "b", mr, ct, show_progress=False
    )
    first.fit()
    resumed = Trainer(
        tiny_config(**overrides), tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False
    )
    assert resumed.global_step == 3
    resumed.fit()
    ours = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["G"]
    for key, value in data["G"].items():
        assert torch.equal(ours[key], value), key


def test_the_callers_config_is_not_changed(domains, tmp_path: Path) -> None:
    mr, ct = domains
    cfg = tiny_config(**{"train.max_steps": 1})
    before = copy.deepcopy(cfg)
    trainer = Trainer(cfg, tmp_path / "run", mr, ct, show_progress=False)
    trainer.fit()
    assert cfg == before and not cfg.normalisation
    assert trainer.cfg.normalisation and trainer.cfg is not cfg


class _RecordInputs(nn.Module):
    """A generator step that records whether each input carries a gradient back to its maker."""

    def __init__(self, step: nn.Module) -> None:
        super().__init__()
        self.step = step
        self.inputs_with_grad: list[bool] = []

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        self.inputs_with_grad.append(x.requires_grad)
        return self.step(x, **kwargs)


@pytest.mark.parametrize("detach", [False, True])
def test_cycle_detach_makes_the_translation_a_fixed_input_of_the_reconstruction(detach: bool) -> None:
    cfg = tiny_config(**{"loss.cycle_detach": detach, "loss.lambda_identity": 0.0})
    model = CycleGAN(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    model._step_G_AB, model._step_G_BA = _RecordInputs(model._step_G_AB), _RecordInputs(model._step_G_BA)
    size = cfg.data.image_size
    real_a, real_b = torch.rand(2, 1, size, size) * 2 - 1, torch.rand(2, 1, size, size) * 2 - 1
    masks = torch.ones(2, 1, size, size)
    _, _, losses = model.backward_G(real_a, real_b, masks, masks)
    # Calls in order: G_AB(A), then G_BA(fake_B) [the cycle], G_BA(B), then G_AB(fake_A) [the cycle].
    assert model._step_G_AB.inputs_with_grad == [False, not detach]
    assert model._step_G_BA.inputs_with_grad == [not detach, False]
    assert float(losses["cycle_A"]) > 0 and float(losses["cycle_B"]) > 0


def test_cycle_detach_does_not_stop_another_model_from_loading() -> None:
    """A config that turns it on (for CycleGAN) still loads with ``--model pix2pix`` and the others."""
    from medcyclegan.config import builtin_config_path

    for overrides in (
        {"model.kind": "pix2pix"},
        {"model.kind": "unit"},
        {"model.kind": "munit"},
        {"model.kind": "cut", "cut.nce_layers": [0, 4, 8, 12]},  # README's CUT recipe on quick-cpu
    ):
        cfg = load_config(builtin_config_path("quick-cpu"), {"loss.cycle_detach": True, **overrides})
        assert cfg.loss.cycle_detach and cfg.model.kind == overrides["model.kind"]
