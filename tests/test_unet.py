"""The U-Net generator of pix2pix (``model.generator: unet``): the reference's network, in our notation.

Parameter counts are those of the reference's own code: ``UnetGenerator`` of
junyanz/pytorch-CycleGAN-and-pix2pix, ``models/networks.py`` (commit 78913853), built with its
``get_norm_layer`` and ``use_dropout=True`` and counted (``sum(p.numel() for p in
net.parameters())``) in a scratch folder outside the project. The same comparison, run there with
the reference's weights copied into ours, gave identical outputs in eval and train mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medcyclegan.config import MODEL_DEFAULTS, ModelConfig, load_config
from medcyclegan.convert import ConversionModel
from medcyclegan.errors import ConfigError
from medcyclegan.models import CycleGAN
from medcyclegan.nets import (
    UnetGenerator,
    build_generator,
    count_parameters,
    generator_min_input_size,
    generator_stride_multiple,
)
from medcyclegan.train.schedule import lr_rule

# (unet_downs, in = out channels, ngf, norm) -> parameters of the reference's UnetGenerator.
REFERENCE_COUNTS = {
    (8, 3, 64, "batch"): 54_413_955,  # unet_256, the reference pix2pix (--netG unet_256 --norm batch)
    (8, 1, 64, "batch"): 54_407_809,  # the same for one-channel slices (MR -> CT)
    (7, 1, 64, "batch"): 41_822_849,  # unet_128
    (8, 3, 64, "instance"): 54_409_603,  # --norm instance: biased convolutions, no norm parameters
    (8, 1, 64, "instance"): 54_403_457,
    (5, 1, 8, "batch"): 260_945,  # the tiny CPU configuration of the tests
    (6, 1, 16, "batch"): 1_829_025,  # the quick CPU configuration (64 px slices)
}


@pytest.mark.parametrize(("downs", "channels", "ngf", "norm"), list(REFERENCE_COUNTS))
def test_parameter_count_is_the_reference_codes(downs: int, channels: int, ngf: int, norm: str) -> None:
    with torch.device("meta"):  # counted without allocating 54 million weights
        net = UnetGenerator(channels, channels, ngf=ngf, n_downs=downs, norm=norm)
    assert count_parameters(net) == REFERENCE_COUNTS[(downs, channels, ngf, norm)]


def test_layers_in_the_papers_notation() -> None:
    with torch.device("meta"):
        net = UnetGenerator(1, 1, ngf=64, n_downs=8, norm="batch")
    encoder = [
        next(m for m in layer.modules() if isinstance(m, nn.Conv2d)).out_channels for layer in net.encoder
    ]
    assert encoder == [64, 128, 256, 512, 512, 512, 512, 512]  # C64-C128-C256-C512-C512-C512-C512-C512
    decoder = [next(m for m in layer.modules() if isinstance(m, nn.ConvTranspose2d)) for layer in net.decoder]
    assert [m.out_channels for m in decoder] == [512, 512, 512, 512, 256, 128, 64]
    # Skips double the input of every decoder layer after the innermost one.
    assert [m.in_channels for m in decoder] == [512, 1024, 1024, 1024, 1024, 512, 256]
    dropout = [any(isinstance(m, nn.Dropout) for m in layer.modules()) for layer in net.decoder]
    assert dropout == [False, True, True, True, False, False, False]  # C512-CD512-CD512-CD512-C256-C128-C64
    assert all(m.p == 0.5 for m in net.modules() if isinstance(m, nn.Dropout))
    # BatchNorm: no norm on C64 nor on the innermost level; convolutions before a BatchNorm have no bias.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.encoder.modules()) == 6
    assert all(m.bias is None for m in net.encoder.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(net.head[-1], nn.Tanh) and net.head[1].bias is not None
    instance = UnetGenerator(1, 1, ngf=8, n_downs=5, norm="instance")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in instance.modules())
    assert all(
        m.bias is not None for m in instance.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    )


def test_output_shape_range_and_deterministic_eval() -> None:
    torch.manual_seed(0)
    # 6 levels: one CD512 layer (levels beyond 5 carry the dropout).
    net = build_generator(ModelConfig(generator="unet", ngf=4, unet_downs=6, unet_norm="batch"), 3, 3)
    x = torch.rand(4, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        out = net(x)
        assert out.shape == x.shape and float(out.abs().max()) <= 1.0
        # Training mode: dropout makes two passes differ. Eval mode (conversion): no dropout, running
        # statistics, so a slice's translation is the same twice and whatever else is in its batch.
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))
        torch.testing.assert_close(net(x[:1]), net(x)[:1], rtol=0, atol=1e-6)


def test_init_follows_the_config_gain() -> None:
    torch.manual_seed(0)
    net = build_generator(
        ModelConfig(generator="unet", ngf=16, unet_downs=6, unet_norm="batch", init_gain=0.05), 1, 1
    )
    weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(weights.std()) - 0.05) < 0.005
    norms = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(norms.mean()) - 1.0) < 0.01


def test_stride_and_minimum_come_from_the_config() -> None:
    for downs in (5, 7, 8):
        model_cfg = ModelConfig(generator="unet", unet_downs=downs, ngf=2)
        assert generator_stride_multiple(model_cfg) == 2**downs
        assert build_generator(model_cfg, 1, 1).stride_multiple == 2**downs
    assert generator_min_input_size(ModelConfig(generator="unet")) == 1
    cfg = load_config(None, {"model.generator": "unet", "model.unet_downs": 6, "data.image_size": 64})
    # Conversion pads whole slices to the stride of the checkpoint's config.
    conversion = ConversionModel(nn.Identity(), cfg, "mr", "ct", Path("last.pt"), torch.device("cpu"))
    assert conversion.stride_multiple == 64
    tiny = UnetGenerator(1, 1, ngf=2, n_downs=5)
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny(torch.zeros(1, 1, 48, 32))


def test_config_checks_depth_norm_and_image_size() -> None:
    with pytest.raises(ConfigError, match=r"model\.unet_downs must be from 5 to 12; got 4"):
        load_config(None, {"model.generator": "unet", "model.unet_downs": 4})
    with pytest.raises(ConfigError, match=r"model\.unet_norm must be one of batch, instance; got 'group'"):
        load_config(None, {"model.unet_norm": "group"})
    # A U-Net of 8 levels needs 256 px; the message offers the depth that takes 64 px as it is.
    with pytest.raises(ConfigError, match=r"multiple of 256 .* got 64, use 256, or model\.unet_downs 6"):
        load_config(None, {"model.generator": "unet", "data.image_size": 64})


def test_pix2pix_defaults_to_the_reference_unet_and_keeps_a_named_generator(tmp_path) -> None:
    cfg = load_config(None, {"model.kind": "pix2pix"})
    assert (cfg.model.generator, cfg.model.unet_downs, cfg.model.unet_norm) == ("unet", 8, "batch")
    assert (cfg.loss.gan_mode, cfg.optim.pool_size, cfg.pix2pix.lambda_l1) == ("vanilla", 0, 100.0)
    assert MODEL_DEFAULTS["pix2pix"]["model.generator"] == "unet"
    # Named by an override or by the config file: kept.
    assert (
        load_config(None, {"model.kind": "pix2pix", "model.generator": "resnet"}).model.generator == "resnet"
    )
    named = tmp_path / "resnet.yaml"
    named.write_text("model:\n  kind: pix2pix\n  generator: resnet\nloss:\n  gan_mode: lsgan\n")
    from_file = load_config(named)
    assert (from_file.model.generator, from_file.loss.gan_mode, from_file.optim.pool_size) == (
        "resnet",
        "lsgan",
        0,
    )
    # CycleGAN keeps its own defaults; a U-Net there uses InstanceNorm (the reference's --norm default).
    cyclegan = load_config(None, {"model.generator": "unet"})
    assert (cyclegan.model.unet_norm, cyclegan.loss.gan_mode, cyclegan.optim.pool_size) == (
        "instance",
        "lsgan",
        50,
    )


def test_cyclegan_trains_with_unet_generators() -> None:
    cfg = load_config(
        None,
        {"model.generator": "unet", "model.unet_downs": 5, "model.ngf": 4, "model.ndf": 4, "model.n_layers_d": 2,
         "data.image_size": 32, "optim.batch_size": 2, "train.device": "cpu"},
    )  # fmt: skip
    torch.manual_seed(0)
    model = CycleGAN(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    assert isinstance(model.G_AB, UnetGenerator) and model.G_AB.norm == "instance"
    image = torch.rand(2, 1, 32, 32) * 2 - 1
    batch = {d: {"image": image, "mask": torch.ones(2, 1, 32, 32)} for d in ("A", "B")}
    losses = model.train_step(batch)
    assert all(torch.isfinite(v) for v in losses.values())
