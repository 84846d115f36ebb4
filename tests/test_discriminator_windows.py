"""``model.d_ct_windows`` (issue 14): the CT domain's discriminator sees its image in extra HU windows.

The window channels follow their definition (a radiologist's window of the HU values, clamped to
[-1, 1]), only the CT domain gets them, the gradient still reaches the generator through the full-range
channel, a tiny step trains, the state dict loads into a fresh build, and bad values are one line.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from medcyclegan.config import load_config, parse_override
from medcyclegan.errors import ConfigError
from medcyclegan.models import CycleGAN
from medcyclegan.models.cut import CUT
from medcyclegan.models.pix2pix import Pix2Pix
from medcyclegan.nets import build_domain_discriminator, describe_discriminator
from medcyclegan.nets.discriminator import PatchGAN, WindowedInput

SOFT = [-160.0, 240.0]  # W400 L40
BONE = [-500.0, 1500.0]  # W2000 L500


class _Recorder(torch.nn.Module):
    """Returns its input, so a test can read what the discriminator network is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _units(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    low, high = window
    return (hu - low) * (2.0 / (high - low)) - 1.0


def test_each_window_channel_is_that_hu_window_of_the_image() -> None:
    cfg = tiny_config(**{"model.d_ct_windows": [SOFT, BONE]})
    net = build_domain_discriminator(cfg, "ct", 1)
    assert isinstance(net, WindowedInput)
    net.discriminator = _Recorder()
    hu = torch.tensor([-1000.0, -160.0, -100.0, 40.0, 240.0, 700.0, 1500.0, 2500.0]).reshape(1, 1, 1, 8)
    ct_window = cfg.data.ct_window
    stacked = net(_units(hu, ct_window))
    assert stacked.shape == (1, 3, 1, 8)
    torch.testing.assert_close(stacked[:, 0], _units(hu, ct_window)[:, 0])
    for channel, window in ((1, SOFT), (2, BONE)):
        expected = ((hu - window[0]) / (window[1] - window[0]) * 2 - 1).clamp(-1, 1)
        torch.testing.assert_close(stacked[:, channel], expected[:, 0], atol=1e-5, rtol=0)
    # 40 HU is the soft-tissue window's centre, 240 its top; -100 HU is at 0.3 of its width
    assert stacked[0, 1, 0, 3].item() == pytest.approx(0.0, abs=1e-5)
    assert stacked[0, 1, 0, 2].item() == pytest.approx(-0.7, abs=1e-5)


def test_context_slices_keep_their_channels_in_every_window() -> None:
    cfg = tiny_config(**{"model.d_ct_windows": [SOFT], "data.context_slices": 1})
    net = build_domain_discriminator(cfg, "ct", 3)
    first = net.discriminator.model.initial_conv.conv if isinstance(net.discriminator, PatchGAN) else None
    assert first is not None and first.in_channels == 6
    net.discriminator = _Recorder()
    x = torch.linspace(-1, 1, 3 * 4).reshape(1, 3, 2, 2)
    stacked = net(x)
    torch.testing.assert_close(stacked[:, :3], x)
    low, high = net.windows[0]
    torch.testing.assert_close(stacked[:, 3:], ((x - low) * 2 / (high - low) - 1).clamp(-1, 1))


def test_only_the_ct_domain_gets_windows() -> None:
    cfg = tiny_config(**{"model.d_ct_windows": [SOFT]})
    model = CycleGAN(cfg, torch.device("cpu"), lambda step: 1.0)
    assert isinstance(model.D_B, WindowedInput) and not isinstance(model.D_A, WindowedInput)
    reverse = tiny_config(
        **{"model.d_ct_windows": [SOFT], "data.src_modality": "ct", "data.tgt_modality": "mr"}
    )
    model = CycleGAN(reverse, torch.device("cpu"), lambda step: 1.0)
    assert isinstance(model.D_A, WindowedInput) and not isinstance(model.D_B, WindowedInput)
    plain = CycleGAN(tiny_config(), torch.device("cpu"), lambda step: 1.0)
    assert not isinstance(plain.D_B, WindowedInput)


def test_pix2pix_windows_only_the_ct_half_of_its_conditional_input() -> None:
    cfg = tiny_config(
        **{"model.kind": "pix2pix", "model.generator": "resnet", "model.d_ct_windows": [SOFT, BONE]}
    )
    model = Pix2Pix(cfg, torch.device("cpu"), lambda step: 1.0)
    assert isinstance(model.D_B, WindowedInput) and model.D_B.channels == [1]
    model.D_B.discriminator = _Recorder()
    mr, ct = torch.full((1, 1, 2, 2), 0.7), torch.full((1, 1, 2, 2), -0.5)
    stacked = model.D_B(torch.cat([mr, ct], dim=1))
    assert stacked.shape == (1, 4, 2, 2)
    torch.testing.assert_close(stacked[:, :2], torch.cat([mr, ct], dim=1))
    for index, (low, high) in enumerate(model.D_B.windows):
        torch.testing.assert_close(
            stacked[:, 2 + index], ((ct[:, 0] - low) * 2 / (high - low) - 1).clamp(-1, 1)
        )
    reverse = tiny_config(
        **{"model.kind": "pix2pix", "model.generator": "resnet", "model.d_ct_windows": [SOFT]},
        **{"data.src_modality": "ct", "data.tgt_modality": "mr"},
    )
    assert Pix2Pix(reverse, torch.device("cpu"), lambda step: 1.0).D_B.channels == [0]


def test_cut_windows_its_ct_discriminator() -> None:
    cfg = tiny_config(**{"model.kind": "cut", "cut.nce_layers": [0, 4], "model.d_ct_windows": [SOFT]})
    nets = CUT.build_networks(cfg)
    assert isinstance(nets["D_B"], WindowedInput) and nets["D_B"].channels is None


def test_the_gradient_reaches_values_outside_every_window() -> None:
    # -1000 HU is outside the soft-tissue window: its gradient comes through the full-range channel.
    cfg = tiny_config(**{"model.d_ct_windows": [SOFT]})
    net = build_domain_discriminator(cfg, "ct", 1)
    x = torch.full((1, 1, cfg.data.image_size, cfg.data.image_size), -1.0, requires_grad=True)
    out = net(x)
    logits = out if isinstance(out, torch.Tensor) else out[0]
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_tiny_step_trains_and_the_state_loads_into_a_fresh_build() -> None:
    cfg = tiny_config(**{"model.d_ct_windows": [SOFT, BONE]})
    model = CycleGAN(cfg, torch.device("cpu"), lambda step: 1.0)
    size = cfg.data.image_size
    generator = torch.Generator().manual_seed(0)
    batch = {
        d: {
            "image": torch.rand(2, 1, size, size, generator=generator) * 2 - 1,
            "mask": torch.ones(2, 1, size, size),
        }
        for d in "AB"
    }
    before = [p.detach().clone() for p in model.D_B.parameters()]
    losses = model.train_step(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.D_B.parameters()))
    fresh = CycleGAN(cfg, torch.device("cpu"), lambda step: 1.0)
    fresh.D_B.load_state_dict(model.D_B.state_dict())
    assert all(k.startswith("discriminator.") for k in model.D_B.state_dict())
    assert "windows=[[" in repr(model.D_B)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model.d_ct_windows": [[240, -160]]}, "model.d_ct_windows: window [240, -160] needs low < high"),
        ({"model.d_ct_windows": [[0, 0]]}, "needs low < high"),
        (
            {"model.d_ct_windows": [[-160]]},
            "each window must be [low, high], two finite HU values; got [-160]",
        ),
        ({"model.d_ct_windows": [[-160, float("inf")]]}, "two finite HU values"),
        ({"model.d_ct_windows": [["a", 1]]}, "two finite HU values"),
        ({"model.d_ct_windows": [[True, 1]]}, "two finite HU values"),
        ({"model.d_ct_windows": 5}, "model.d_ct_windows must be a list of [low, high] HU windows; got 5"),
        ({"model.d_ct_windows": [[0, 1]] * 5}, "model.d_ct_windows: at most 4 windows; got 5"),
        (
            {"model.d_ct_windows": [[3000, 4000]]},
            "model.d_ct_windows: window [3000, 4000] HU lies outside data.ct_window [-1024, 3000], where "
            "the CT is clipped; it would show nothing",
        ),
        (
            {"model.d_ct_windows": [SOFT], "data.src_modality": "mr", "data.tgt_modality": "mr"},
            "model.d_ct_windows needs a CT domain",
        ),
    ],
)
def test_bad_windows_are_one_config_error(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_the_yaml_form_round_trips() -> None:
    key, value = parse_override("model.d_ct_windows=[[-160, 240], [-500, 1500]]")
    cfg = load_config(None, {key: value})
    assert cfg.model.d_ct_windows == [SOFT, BONE]
    again = load_config(None, {"model.d_ct_windows": cfg.to_dict()["model"]["d_ct_windows"]})
    assert again.model.d_ct_windows == [SOFT, BONE]


def test_info_names_the_windows() -> None:
    fields, text = describe_discriminator(tiny_config(**{"model.d_ct_windows": [SOFT, BONE]}).model)
    assert fields["ct_windows"] == [SOFT, BONE]
    assert text.endswith("CT domain also sees HU windows [-160, 240], [-500, 1500]")
    fields, text = describe_discriminator(tiny_config().model)
    assert fields["ct_windows"] == [] and "windows" not in text
