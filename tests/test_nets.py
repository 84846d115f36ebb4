"""Generators, discriminator, initialisation: shapes, reference parameter counts, attention blend."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcyclegan.config import ModelConfig
from medcyclegan.errors import ConfigError
from medcyclegan.nets import (
    AttentionResnetGenerator,
    ResnetGenerator,
    build_discriminator,
    build_discriminator_from_config,
    build_generator,
    count_parameters,
    init_weights,
)
from medcyclegan.nets.generator import combine_with_attention

REFERENCE_GENERATOR_PARAMETERS = 11_365_633  # 1 -> 1 channel, ngf 64, 9 blocks (REFERENCE.md section 1)
REFERENCE_PATCHGAN_PARAMETERS = 2_762_689  # 1 channel, ndf 64, 3 layers


def tiny(cls: type[ResnetGenerator] = ResnetGenerator, channels: int = 1, upsample: str = "transpose"):
    torch.manual_seed(0)
    return init_weights(cls(channels, channels, ngf=8, n_blocks=2, upsample=upsample))


# ------------------------------------------------------------------ parameter counts (built, not run)
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_generator_has_reference_parameter_count(upsample: str) -> None:
    generator = ResnetGenerator(1, 1, ngf=64, n_blocks=9, upsample=upsample)
    assert count_parameters(generator) == REFERENCE_GENERATOR_PARAMETERS


def test_attention_generator_adds_only_the_attention_channel() -> None:
    attention = AttentionResnetGenerator(1, 1, ngf=64, n_blocks=9)
    # One more output channel of the final 7x7 conv: 64 * 7 * 7 weights + 1 bias.
    assert count_parameters(attention) == REFERENCE_GENERATOR_PARAMETERS + 64 * 49 + 1


def test_discriminator_has_reference_parameter_count() -> None:
    assert count_parameters(build_discriminator(1, ndf=64, n_layers=3)) == REFERENCE_PATCHGAN_PARAMETERS


@pytest.mark.parametrize(("n_layers", "expected"), [(1, 134_337), (4, 6_957_505), (5, 11_152_321)])
def test_discriminator_width_is_capped_at_8_ndf_as_the_reference(n_layers: int, expected: int) -> None:
    # Reference counts: C64, then ndf * min(2**n, 8) filters per layer, biased 4x4 convs, 4x4 conv to 1.
    discriminator = build_discriminator(1, ndf=64, n_layers=n_layers)
    assert count_parameters(discriminator) == expected
    widths = [m.out_channels for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert max(widths) == min(64 * 2**n_layers, 512)


def test_count_parameters_trainable_only() -> None:
    generator = tiny()
    total = count_parameters(generator)
    generator.head[1].weight.requires_grad_(False)
    assert count_parameters(generator, trainable_only=True) == total - generator.head[1].weight.numel()
    assert count_parameters(generator) == total


# ------------------------------------------------------------------ generator shapes and options
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize(("channels", "size"), [(1, 64), (3, 32), (1, (32, 48))])
def test_generator_output_has_input_shape_and_range(upsample: str, channels: int, size) -> None:
    height, width = (size, size) if isinstance(size, int) else size
    generator = tiny(channels=channels, upsample=upsample)
    x = torch.rand(2, channels, height, width) * 2 - 1
    with torch.no_grad():
        y = generator(x)
    assert y.shape == x.shape
    assert float(y.abs().max()) <= 1.0
    assert torch.isfinite(y).all()


def test_generator_upsample_modes_differ_in_layers_not_weights() -> None:
    transpose = tiny(upsample="transpose")
    resize = tiny(upsample="resize")
    assert any(isinstance(m, nn.ConvTranspose2d) for m in transpose.modules())
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in resize.modules())
    assert any(isinstance(m, nn.Upsample) for m in resize.modules())
    assert count_parameters(transpose) == count_parameters(resize)


def test_generator_reads_as_the_paper_notation() -> None:
    generator = ResnetGenerator(1, 1, ngf=64, n_blocks=9)
    convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # c7s1-64, d128, d256, R256 x 9 (two convs each), u128, u64, c7s1-1
    widths = [c.out_channels for c in convs]
    assert widths == [64, 128, 256] + [256] * 18 + [128, 64, 1]
    assert [c.kernel_size for c in (convs[0], convs[1], convs[-1])] == [(7, 7), (3, 3), (7, 7)]
    assert convs[1].stride == (2, 2) and convs[-3].stride == (2, 2)
    norms = [m for m in generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 + 18 + 2 and not any(n.affine for n in norms)
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in generator.modules()) == 2 + 18
    assert ResnetGenerator.stride_multiple == 4


def test_generator_rejects_sizes_not_multiple_of_four_and_wrong_channels() -> None:
    generator = tiny()
    with pytest.raises(ValueError, match="multiples of 4"):
        generator(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        generator(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upsample": "bilinear"},
        {"ngf": 0},
        {"n_blocks": -1},
        {"in_channels": 0},
        {"ngf": 8.0},
    ],
)
def test_generator_options_are_validated(kwargs: dict) -> None:
    args = {"in_channels": 1, "out_channels": 1, "ngf": 8, "n_blocks": 1, **kwargs}
    with pytest.raises(ConfigError):
        ResnetGenerator(**args)


def test_generator_backward_runs() -> None:
    generator = tiny(AttentionResnetGenerator, channels=3, upsample="resize")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    output, attention = generator.forward_with_attention(x)
    (output.mean() + attention.mean()).backward()
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------ attention
def test_attention_generator_requires_equal_channels() -> None:
    with pytest.raises(ConfigError, match="in_channels must equal"):
        AttentionResnetGenerator(1, 3, ngf=8, n_blocks=1)


def test_attention_zero_passes_the_input_through() -> None:
    generator = tiny(AttentionResnetGenerator, channels=3)
    with torch.no_grad():
        generator.head[1].bias[-1] = -1e4  # attention logit -> m = sigmoid(-1e4) = 0
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        output, attention = generator.forward_with_attention(x)
    assert attention.shape == (2, 1, 32, 32)
    assert float(attention.max()) == 0.0
    torch.testing.assert_close(output, x, rtol=0, atol=0)
    torch.testing.assert_close(generator(x), output)


def test_attention_one_gives_the_generated_content() -> None:
    generator = tiny(AttentionResnetGenerator, channels=1)
    with torch.no_grad():
        generator.head[1].bias[-1] = 1e4  # m = 1
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        output, attention = generator.forward_with_attention(x)
    assert float(attention.min()) == 1.0
    content = torch.tanh(generator.features(x)[:, :1])
    torch.testing.assert_close(output, content)
    assert not torch.allclose(output, x)


def test_combine_with_attention_is_the_blend() -> None:
    content = torch.full((1, 2, 4, 4), 0.5)
    source = torch.full((1, 2, 4, 4), -1.0)
    attention = torch.zeros(1, 1, 4, 4)
    attention[..., :2] = 0.25
    blended = combine_with_attention(content, attention, source)
    torch.testing.assert_close(blended[..., :2], torch.full((1, 2, 4, 2), 0.25 * 0.5 + 0.75 * -1.0))
    torch.testing.assert_close(blended[..., 2:], source[..., 2:])


# ------------------------------------------------------------------ discriminator
def test_discriminator_returns_logits_of_the_70px_patchgan() -> None:
    torch.manual_seed(0)
    discriminator = build_discriminator(1, ndf=8, n_layers=3)
    logits = discriminator(torch.rand(1, 1, 256, 256))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (1, 1, 30, 30)


def test_discriminator_layout_matches_reference() -> None:
    discriminator = build_discriminator(1, ndf=64, n_layers=3)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)] * 2
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) and c.bias is not None for c in convs)
    norms = [m for m in discriminator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert [n.num_features for n in norms] == [128, 256, 512]  # none on C64
    slopes = {m.negative_slope for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert not any(isinstance(m, nn.Dropout) for m in discriminator.modules())


def test_discriminator_from_config_and_options() -> None:
    cfg = ModelConfig(ndf=8, n_layers_d=2, init_gain=0.05)
    discriminator = build_discriminator_from_config(cfg, in_channels=3)
    logits = discriminator(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 14, 14)  # 64 -> 32 -> 16 (s2, s2) -> 15 (s1) -> 14 (final)
    with pytest.raises(ConfigError):
        build_discriminator(1, ndf=0)


# ------------------------------------------------------------------ initialisation
def test_init_weights_statistics() -> None:
    torch.manual_seed(0)
    generator = init_weights(ResnetGenerator(1, 1, ngf=16, n_blocks=3), gain=0.02)
    layers = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.detach().flatten() for m in layers])
    assert weights.numel() > 50_000
    assert abs(float(weights.std()) - 0.02) < 0.001
    assert abs(float(weights.mean())) < 0.001
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in layers)


def test_init_weights_affine_norms_and_gain() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4096, 1), nn.BatchNorm2d(4096), nn.InstanceNorm2d(4096, affine=True))
    init_weights(net, gain=0.05).requires_grad_(False)
    assert abs(float(net[0].weight.std()) - 0.05) < 0.003
    for norm in (net[1], net[2]):
        assert abs(float(norm.weight.mean()) - 1.0) < 0.005
        assert abs(float(norm.weight.std()) - 0.05) < 0.003
        assert float(norm.bias.abs().max()) == 0.0
    with pytest.raises(ConfigError):
        init_weights(net, gain=0.0)


def test_init_weights_with_generator_is_reproducible() -> None:
    a = init_weights(tiny(), generator=torch.Generator().manual_seed(3))
    b = init_weights(tiny(), generator=torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


# ------------------------------------------------------------------ build_generator
@pytest.mark.parametrize(
    ("name", "cls"), [("resnet", ResnetGenerator), ("resnet-attention", AttentionResnetGenerator)]
)
def test_build_generator_from_config(name: str, cls: type) -> None:
    cfg = ModelConfig(generator=name, ngf=8, n_blocks=2, upsample="resize", init_gain=0.1)
    torch.manual_seed(0)
    generator = build_generator(cfg, 3, 3)
    assert type(generator) is cls
    assert generator.upsample == "resize"
    assert len(generator.blocks) == 2
    conv_weights = torch.cat(
        [m.weight.detach().flatten() for m in generator.modules() if isinstance(m, nn.Conv2d)]
    )
    assert abs(float(conv_weights.std()) - 0.1) < 0.01  # init applied with the config's gain
    assert generator(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert hasattr(generator, "forward_with_attention") == (name == "resnet-attention")


def test_build_generator_rejects_unknown_name() -> None:
    cfg = ModelConfig(generator="no-such-net")  # not validated on purpose
    with pytest.raises(ConfigError, match=r"model\.generator"):
        build_generator(cfg, 1, 1)
