"""The networks: ResNet generators (plain and attention), pix2pix's U-Net, and the 70x70 PatchGAN
(single or multi-scale, optionally spectrally normalised).

Build them from a :class:`~medcyclegan.config.ModelConfig`::

    generator = build_generator(cfg.model, in_channels=1, out_channels=1)
    discriminator = build_discriminator_from_config(cfg.model, in_channels=1)

Both come initialised as the reference does (normal(0, ``cfg.model.init_gain``)).

The discriminator module (and with it MONAI, about 1.4 s to import) is loaded only when first used,
so that conversion, which needs only a generator, starts faster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from medcyclegan.config import GENERATORS, ModelConfig
from medcyclegan.errors import ConfigError
from medcyclegan.nets.generator import AttentionResnetGenerator, ResnetGenerator
from medcyclegan.nets.init import init_weights
from medcyclegan.nets.unet import UnetGenerator

if TYPE_CHECKING:
    from medcyclegan.nets.discriminator import MultiScalePatchGAN, PatchGAN, build_discriminator

__all__ = [
    "AttentionResnetGenerator",
    "MultiScalePatchGAN",
    "PatchGAN",
    "ResnetGenerator",
    "UnetGenerator",
    "build_discriminator",
    "build_discriminator_from_config",
    "build_generator",
    "count_parameters",
    "discriminator_min_size",
    "generator_class",
    "generator_min_input_size",
    "generator_stride_multiple",
    "init_weights",
]


# The class of each name of config.GENERATORS, in its order (the names are written there only).
# Every class builds itself from the model config (``from_config``) and says, from the config alone,
# what its input's H and W must be multiples of (``config_stride_multiple``) and the smallest slice
# it takes (``config_min_input_size``): config validation and conversion ask before building one.
class GeneratorClass(Protocol):
    """What :data:`_GENERATORS` holds: a generator class that builds itself from the model config."""

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module: ...
    def from_config(self, model_cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module: ...
    def config_stride_multiple(self, model_cfg: ModelConfig) -> int: ...
    def config_min_input_size(self, model_cfg: ModelConfig) -> int: ...


_GENERATORS: dict[str, GeneratorClass] = dict(
    zip(GENERATORS, (ResnetGenerator, AttentionResnetGenerator, UnetGenerator), strict=True)
)


def generator_class(name: str) -> GeneratorClass:
    """The generator class ``model.generator`` names.

    Raises:
        ConfigError: for an unknown generator.
    """
    cls = _GENERATORS.get(name)
    if cls is None:
        raise ConfigError(f"model.generator must be one of {', '.join(_GENERATORS)}; got {name!r}")
    return cls


def generator_stride_multiple(model_cfg: ModelConfig) -> int:
    """H and W of an input of the generator of ``model_cfg`` must be multiples of this.

    The built network's ``stride_multiple``; it may depend on the config (a U-Net's depth).

    Raises:
        ConfigError: for an unknown generator.
    """
    return int(generator_class(model_cfg.generator).config_stride_multiple(model_cfg))


def generator_min_input_size(model_cfg: ModelConfig) -> int:
    """Smallest H and W (before padding) the generator of ``model_cfg`` can translate.

    Raises:
        ConfigError: for an unknown generator.
    """
    return int(generator_class(model_cfg.generator).config_min_input_size(model_cfg))


def discriminator_min_size(n_layers: int, n_scales: int = 1) -> int:
    """Smallest square input (pixels) for which the PatchGAN with ``n_layers`` gives any logits.

    Its ``n_layers`` stride-2 4x4 convolutions (padding 1) floor-halve the side, then two stride-1
    4x4 convolutions take 1 pixel each: at least 1 pixel is left when ``side // 2**n_layers >= 3``.
    With ``n_scales`` (the multi-scale PatchGAN) the coarsest discriminator sees the input after
    ``n_scales - 1`` average poolings (3x3, stride 2, padding 1), each of which takes the side to
    ``ceil(side / 2)``: the side must reach ``3 * 2**n_layers`` after them.
    Computed here rather than in :mod:`medcyclegan.nets.discriminator` so that config validation does
    not import MONAI (tested against the real network in ``tests/test_nets.py``).
    """
    coarsest = 3 * 2**n_layers
    return (coarsest - 1) * 2 ** (n_scales - 1) + 1


def build_generator(model_cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """The generator named by ``model_cfg.generator``, initialised with ``model_cfg.init_gain``.

    Args:
        model_cfg: model section of the run config (generator, ngf, n_blocks, upsample, init_gain).
        in_channels: input channels (2k+1 with k context slices).
        out_channels: output channels.

    Returns:
        A :class:`ResnetGenerator` or :class:`AttentionResnetGenerator` (which also has
        ``forward_with_attention``), both with ``stride_multiple`` 4 and ``min_input_size`` 5; or a
        :class:`UnetGenerator` (``stride_multiple`` 2**unet_downs).

    Raises:
        ConfigError: for an unknown generator or invalid sizes.
    """
    generator = generator_class(model_cfg.generator).from_config(model_cfg, in_channels, out_channels)
    init_weights(generator, gain=model_cfg.init_gain)
    return generator


def build_discriminator_from_config(model_cfg: ModelConfig, in_channels: int) -> nn.Module:
    """The PatchGAN of ``model_cfg`` (ndf, n_layers_d, spectral_norm_d, n_scales_d), initialised with
    ``model_cfg.init_gain``."""
    # lazy: the discriminator imports MONAI (about 1.4 s), which conversion does not need
    from medcyclegan.nets.discriminator import build_discriminator  # noqa: PLC0415 (see the comment above)

    return build_discriminator(
        in_channels,
        ndf=model_cfg.ndf,
        n_layers=model_cfg.n_layers_d,
        init_gain=model_cfg.init_gain,
        spectral_norm=model_cfg.spectral_norm_d,
        n_scales=model_cfg.n_scales_d,
    )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (scalars) of ``module``; with ``trainable_only``, those with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def __getattr__(name: str) -> Any:
    # Lazy re-export of the discriminator names (PEP 562), see the module docstring.
    if name in ("MultiScalePatchGAN", "PatchGAN", "build_discriminator"):
        from medcyclegan.nets import discriminator  # noqa: PLC0415 - lazy: MONAI, as above

        return getattr(discriminator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
