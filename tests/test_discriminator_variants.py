"""Discriminator variants (issue 14 point 2): own learning rate, spectral norm, multi-scale PatchGAN.

Each trains a tiny step, the networks are what the options say, their state dicts load into a fresh
build, the size rule knows the coarsest scale, and bad values are one ConfigError line. (Resume
exactness with all of them on: tests/test_ema.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_config
from torch import nn
from torch.nn.utils import parametrize

from medcyclegan.config import load_config
from medcyclegan.errors import ConfigError
from medcyclegan.losses import AdversarialLoss
from medcyclegan.models import CycleGAN
from medcyclegan.nets import build_discriminator, build_discriminator_from_config, discriminator_min_size
from medcyclegan.nets.discriminator import MultiScalePatchGAN, PatchGAN


def _batch(size: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return {
        d: {
            "image": torch.rand(2, 1, size, size, generator=generator) * 2 - 1,
            "mask": torch.ones(2, 1, size, size),
        }
        for d in "AB"
    }


@pytest.mark.parametrize(
    "variant",
    [{"optim.lr_d": 5e-5}, {"model.spectral_norm_d": True}, {"model.n_scales_d": 2}],
    ids=["lr_d", "spectral_norm", "multi_scale"],
)
def test_a_tiny_training_step_runs_and_moves_the_discriminators(variant: dict) -> None:
    cfg = tiny_config(**variant)
    model = CycleGAN(cfg, torch.device("cpu"), lambda step: 1.0)
    before = [p.detach().clone() for p in model.D_A.parameters()]
    losses = model.train_step(_batch(cfg.data.image_size))
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.D_A.parameters()))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_lr_d_is_the_discriminators_rate_and_the_schedule_scales_both() -> None:
    cfg = tiny_config(**{"optim.lr_d": 5e-5})
    model = CycleGAN(cfg, torch.device("cpu"), lambda step: 0.5**step)
    assert [g["lr"] for g in model.opt_D.param_groups] == [5e-5]
    assert [g["lr"] for g in model.opt_G.param_groups] == [cfg.optim.lr]
    model.step_schedulers()
    assert model.opt_D.param_groups[0]["lr"] == pytest.approx(2.5e-5)
    assert model.learning_rate() == pytest.approx(cfg.optim.lr / 2)
    default = CycleGAN(tiny_config(), torch.device("cpu"), lambda step: 1.0)
    assert default.opt_D.param_groups[0]["lr"] == default.opt_G.param_groups[0]["lr"]


def test_spectral_norm_is_on_every_convolution_without_instance_norm() -> None:
    discriminator = build_discriminator(1, ndf=8, n_layers=4, spectral_norm=True)  # 4: capped layers too
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in discriminator.modules())
    assert any(k.endswith("parametrizations.weight.0._u") for k in discriminator.state_dict())
    # Spectral norm divides each weight by its largest singular value (power iteration estimate).
    discriminator(torch.rand(1, 1, 64, 64))
    weight = convs[1].weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(weight, ord=2) == pytest.approx(1.0, rel=0.1)
    plain = build_discriminator(1, ndf=8, n_layers=4)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    ("spectral_norm", "n_scales"), [(True, 1), (False, 2), (True, 3)], ids=["sn", "2_scales", "sn_3_scales"]
)
def test_state_dicts_load_into_a_fresh_build(spectral_norm: bool, n_scales: int) -> None:
    torch.manual_seed(0)
    first = build_discriminator(1, ndf=8, n_layers=2, spectral_norm=spectral_norm, n_scales=n_scales)
    first(torch.rand(1, 1, 64, 64))  # a training-mode forward: the power iteration moves on
    torch.manual_seed(1)
    second = build_discriminator(1, ndf=8, n_layers=2, spectral_norm=spectral_norm, n_scales=n_scales)
    second.load_state_dict(first.state_dict(), strict=True)
    x = torch.rand(2, 1, 64, 64)
    a, b = first.eval()(x), second.eval()(x)
    for got, want in zip(a if n_scales > 1 else [a], b if n_scales > 1 else [b]):
        assert torch.equal(got, want)


def test_multi_scale_gives_one_logit_map_per_scale_on_the_pooled_images() -> None:
    cfg = tiny_config(**{"model.n_scales_d": 3, "data.image_size": 64})
    discriminator = build_discriminator_from_config(cfg.model, in_channels=3)
    assert isinstance(discriminator, MultiScalePatchGAN) and len(discriminator.scales) == 3
    assert all(isinstance(d, PatchGAN) for d in discriminator.scales)
    x = torch.rand(2, 3, 64, 64)
    logits = discriminator(x)
    # 64, 32, 16 px through a 2-layer PatchGAN: side // 4 - 2.
    assert [tuple(t.shape) for t in logits] == [(2, 1, 14, 14), (2, 1, 6, 6), (2, 1, 2, 2)]
    coarse = F.avg_pool2d(F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(logits[2], discriminator.scales[2](coarse))
    single = build_discriminator_from_config(tiny_config().model, in_channels=1)
    assert isinstance(single, PatchGAN)  # n_scales 1: the reference network and its state-dict keys


@pytest.mark.parametrize("spectral_norm", [False, True], ids=["instance_norm", "spectral_norm"])
@pytest.mark.parametrize("n_scales", [2, 3])
def test_discriminator_min_size_knows_the_coarsest_scale(n_scales: int, spectral_norm: bool) -> None:
    smallest = discriminator_min_size(2, n_scales)
    discriminator = build_discriminator(1, ndf=4, n_layers=2, n_scales=n_scales, spectral_norm=spectral_norm)
    with torch.no_grad():  # training mode, as in training
        assert all(t.numel() > 0 for t in discriminator(torch.rand(1, 1, smallest, smallest)))
        with pytest.raises((RuntimeError, ValueError)):  # one pixel less: a conv or an InstanceNorm refuses
            discriminator(torch.rand(1, 1, smallest - 1, smallest - 1))
    assert discriminator_min_size(2, 1) == discriminator_min_size(2) == 12


def test_the_adversarial_loss_of_a_list_is_the_mean_over_scales() -> None:
    real = [torch.randn(2, 1, 6, 6), torch.randn(2, 1, 2, 2)]
    fake = [torch.randn(2, 1, 6, 6), torch.randn(2, 1, 2, 2)]
    for mode in ("lsgan", "vanilla", "hinge"):
        loss = AdversarialLoss(mode)
        assert loss.generator_loss(fake) == pytest.approx(
            float(loss.generator_loss(fake[0]) + loss.generator_loss(fake[1])) / 2
        )
        assert loss.discriminator_loss(real, fake) == pytest.approx(
            float(loss.discriminator_loss(real[0], fake[0]) + loss.discriminator_loss(real[1], fake[1])) / 2
        )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model.ema_decay": 1.0}, "model.ema_decay must be in [0, 1) (0 keeps no average); got 1.0"),
        ({"model.ema_decay": -0.1}, "model.ema_decay must be in [0, 1)"),
        ({"model.n_scales_d": 0}, "model.n_scales_d must be > 0; got 0"),
        ({"model.n_scales_d": 9}, "model.n_scales_d must be at most 8; got 9"),
        ({"optim.lr_d": 0}, "optim.lr_d must be > 0; got 0.0"),
        ({"optim.lr_d": float("nan")}, "optim.lr_d must be a finite number; got nan"),
        ({"model.spectral_norm_d": "maybe"}, "model.spectral_norm_d must be true or false; got 'maybe'"),
        (
            {"model.n_scales_d": 2, "data.image_size": 44},
            "data.image_size 44 is too small for model.n_layers_d 3 at model.n_scales_d 2: the discriminator "
            "needs at least 47 pixels (raise the size or lower n_layers_d or n_scales_d)",
        ),
    ],
)
def test_bad_values_are_one_config_error(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert expected in str(error.value) and "\n" not in str(error.value)
