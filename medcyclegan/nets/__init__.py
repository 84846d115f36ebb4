"""The networks: ResNet generators (plain and attention), pix2pix's U-Net, UVCGAN's ViT-UNet
generator and the 70x70 PatchGAN (single or multi-scale, optionally spectrally normalised).

Build them from the run config (:class:`~medcyclegan.config.Config`)::

    generator = build_generator(cfg, in_channels=1, out_channels=1)
    discriminator = build_discriminator_from_config(cfg.model, in_channels=1)

The generator functions also take the ``model`` section alone (a
:class:`~medcyclegan.config.ModelConfig`) for the generators that read nothing else (the ResNet
ones); the ViT-UNet reads the ``vit_unet`` section as well, so it needs the whole config.

Both come initialised as the reference does (normal(0, ``cfg.model.init_gain``)). CUT's projection
head is :class:`medcyclegan.nets.patch_sample.PatchSampleF`; the generators CUT can use expose their
encoder layers (``encoder_features``, see :func:`encoder_layer_count`).

The discriminator module (and with it MONAI, about 1.4 s to import) is loaded only when first used,
so that conversion, which needs only a generator, starts faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import nn

from medcyclegan.config import GENERATORS, Config, ModelConfig
from medcyclegan.errors import ConfigError
from medcyclegan.nets.generator import AttentionResnetGenerator, ResnetGenerator
from medcyclegan.nets.init import init_weights
from medcyclegan.nets.unet import UnetGenerator
from medcyclegan.nets.vit_unet import ViTUNetGenerator

if TYPE_CHECKING:
    from medcyclegan.nets.discriminator import MultiScalePatchGAN, PatchGAN, build_discriminator

__all__ = [
    "AttentionResnetGenerator",
    "MultiScalePatchGAN",
    "PatchGAN",
    "ResnetGenerator",
    "UnetGenerator",
    "ViTUNetGenerator",
    "build_discriminator",
    "build_discriminator_from_config",
    "build_domain_discriminator",
    "build_generator",
    "count_parameters",
    "describe_discriminator",
    "describe_generator",
    "discriminator_min_size",
    "encoder_layer_count",
    "generator_class",
    "generator_min_input_size",
    "generator_stride_multiple",
    "init_weights",
]


# The class of each name of config.GENERATORS, in its order (the names are written there only).
# Every class builds itself from the run config (``from_config``) and says, from the config alone,
# what its input's H and W must be multiples of (``config_stride_multiple``) and the smallest slice
# it takes (``config_min_input_size``): config validation and conversion ask before building one.
class GeneratorClass(Protocol):
    """What :data:`_GENERATORS` holds: a generator class that builds itself from the run config."""

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module: ...
    def from_config(self, cfg: Config, in_channels: int, out_channels: int) -> nn.Module: ...
    def config_description(self, cfg: Config) -> tuple[dict[str, Any], str]: ...
    def config_stride_multiple(self, cfg: Config) -> int: ...
    def config_min_input_size(self, cfg: Config) -> int: ...


_GENERATORS: dict[str, GeneratorClass] = dict(
    zip(GENERATORS, (ResnetGenerator, AttentionResnetGenerator, UnetGenerator, ViTUNetGenerator), strict=True)
)
# Generators configured by more than the ``model`` section (which section): they need the run config.
_SECTIONS_READ = {"vit-unet": "vit_unet"}


def _run_config(cfg: Config | ModelConfig) -> Config:
    """``cfg``, or a bare ``model`` section as a config whose other sections are unused defaults.

    Raises:
        TypeError: a bare ``model`` section for a generator that reads another section (its
            defaults would silently stand in for the run's values).
    """
    if isinstance(cfg, Config):
        return cfg
    section = _SECTIONS_READ.get(cfg.generator)
    if section is not None:
        raise TypeError(
            f"the {cfg.generator} generator is configured by the {section} section too: pass the "
            "whole run config (cfg), not cfg.model"
        )
    return Config(model=cfg)


def generator_class(name: str) -> GeneratorClass:
    """The generator class ``model.generator`` names.

    Raises:
        ConfigError: for an unknown generator.
    """
    cls = _GENERATORS.get(name)
    if cls is None:
        raise ConfigError(f"model.generator must be one of {', '.join(_GENERATORS)}; got {name!r}")
    return cls


def describe_generator(cfg: Config | ModelConfig) -> tuple[dict[str, Any], str]:
    """The generator of ``cfg`` for ``info``: ``({"type": name, options...}, "name options...")``.

    Raises:
        ConfigError: for an unknown generator.
    """
    run = _run_config(cfg)
    name = run.model.generator
    fields, text = generator_class(name).config_description(run)
    return {"type": name, **fields}, f"{name} {text}"


def describe_discriminator(model_cfg: ModelConfig) -> tuple[dict[str, Any], str]:
    """The PatchGAN of ``model_cfg`` for ``info``: ``({"type": "PatchGAN", options...}, one line)``."""
    fields = {
        "type": "PatchGAN",
        "ndf": model_cfg.ndf,
        "n_layers": model_cfg.n_layers_d,
        "spectral_norm": model_cfg.spectral_norm_d,
        "n_scales": model_cfg.n_scales_d,
        "ct_windows": [list(w) for w in model_cfg.d_ct_windows],
    }
    windows = ", ".join(f"[{low:g}, {high:g}]" for low, high in model_cfg.d_ct_windows)
    text = (
        f"PatchGAN ndf {model_cfg.ndf}, {model_cfg.n_layers_d} layers"
        + (", spectral norm" if model_cfg.spectral_norm_d else "")
        + (f", {model_cfg.n_scales_d} scales" if model_cfg.n_scales_d > 1 else "")
        + (f", CT domain also sees HU windows {windows}" if windows else "")
    )
    return fields, text


def generator_stride_multiple(cfg: Config | ModelConfig) -> int:
    """H and W of an input of the generator of ``cfg`` (``model.generator``) must be multiples of this.

    The built network's ``stride_multiple``; it may depend on the config (a U-Net's depth).

    Raises:
        ConfigError: for an unknown generator.
    """
    run = _run_config(cfg)
    return int(generator_class(run.model.generator).config_stride_multiple(run))


def generator_min_input_size(cfg: Config | ModelConfig) -> int:
    """Smallest H and W (before padding) the generator of ``cfg`` can translate.

    Raises:
        ConfigError: for an unknown generator.
    """
    run = _run_config(cfg)
    return int(generator_class(run.model.generator).config_min_input_size(run))


def encoder_layer_count(cfg: Config | ModelConfig) -> int:
    """How many encoder layers the generator of ``cfg`` exposes to CUT's PatchNCE.

    The generator contract of :mod:`medcyclegan.models.cut`: a generator class with
    ``encoder_features(x, layers) -> list[Tensor]`` (the outputs of its encoder layers ``layers``,
    indices in increasing order) and the classmethod ``config_encoder_layer_count(cfg)`` (the run
    config).

    Raises:
        ConfigError: for an unknown generator, or one without ``encoder_features``.
    """
    run = _run_config(cfg)
    cls = generator_class(run.model.generator)
    count = getattr(cls, "config_encoder_layer_count", None)
    if count is None or not hasattr(cls, "encoder_features"):
        raise ConfigError(
            f"model.generator {run.model.generator!r} has no encoder_features (the feature maps CUT's "
            "PatchNCE compares); use it with another model.kind"
        )
    return int(count(run))


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


def build_generator(
    cfg: Config | ModelConfig, in_channels: int, out_channels: int, *, init_method: str = "normal"
) -> nn.Module:
    """The generator named by ``model.generator``, initialised with ``model.init_gain``.

    Args:
        cfg: the run config (model: generator, ngf, n_blocks, upsample, init_gain; vit_unet), or
            its model section alone for the ResNet generators.
        in_channels: input channels (2k+1 with k context slices).
        out_channels: output channels.
        init_method: ``"normal"`` (the reference CycleGAN's) or ``"xavier"`` (see :func:`init_weights`).

    Returns:
        A :class:`ResnetGenerator` or :class:`AttentionResnetGenerator` (which also has
        ``forward_with_attention``), both with ``stride_multiple`` 4 and ``min_input_size`` 5; a
        :class:`UnetGenerator` (``stride_multiple`` 2**unet_downs) or a :class:`ViTUNetGenerator`
        (``stride_multiple`` ``2**len(vit_unet.unet_features)``).

    Raises:
        ConfigError: for an unknown generator or invalid sizes.
        TypeError: the model section alone for the ViT-UNet.
    """
    run = _run_config(cfg)
    generator = generator_class(run.model.generator).from_config(run, in_channels, out_channels)
    init_weights(generator, gain=run.model.init_gain, method=init_method)
    return generator


def build_discriminator_from_config(
    model_cfg: ModelConfig, in_channels: int, *, init_method: str = "normal"
) -> nn.Module:
    """The PatchGAN of ``model_cfg`` (ndf, n_layers_d, spectral_norm_d, n_scales_d), initialised with
    ``model_cfg.init_gain`` (and ``init_method``, see :func:`init_weights`)."""
    # lazy: the discriminator imports MONAI (about 1.4 s), which conversion does not need
    from medcyclegan.nets.discriminator import build_discriminator  # noqa: PLC0415 (see the comment above)

    return build_discriminator(
        in_channels,
        ndf=model_cfg.ndf,
        n_layers=model_cfg.n_layers_d,
        init_gain=model_cfg.init_gain,
        spectral_norm=model_cfg.spectral_norm_d,
        n_scales=model_cfg.n_scales_d,
        init_method=init_method,
    )


def build_domain_discriminator(
    cfg: Config, modalities: str | Sequence[str], channels: int, *, init_method: str = "normal"
) -> nn.Module:
    """The discriminator of a domain: :func:`build_discriminator_from_config` for an input of
    ``channels`` channels per image it sees (``modalities``: one modality, or one per image of a
    conditional discriminator's ``cat(source, target)``).

    With ``model.d_ct_windows`` the CT images among them are also shown in those HU windows
    (:class:`~medcyclegan.nets.discriminator.WindowedInput` around a PatchGAN of the extra channels).
    The HU windows become normalised units through ``data.ct_window``, the mapping the CT itself
    went through.
    """
    groups = [modalities] if isinstance(modalities, str) else list(modalities)
    ct_channels = [
        group * channels + c
        for group, modality in enumerate(groups)
        if modality == "ct"
        for c in range(channels)
    ]
    total = len(groups) * channels
    windows = cfg.model.d_ct_windows if ct_channels else []
    if not windows:
        return build_discriminator_from_config(cfg.model, total, init_method=init_method)
    from medcyclegan.data.normalise import NormParams, normalise  # noqa: PLC0415 - lazy: numpy data code
    from medcyclegan.nets.discriminator import WindowedInput  # noqa: PLC0415 - lazy: MONAI, as above

    # Unclipped: a window may reach past data.ct_window and keeps its own width.
    ct_map = NormParams("ct", *cfg.data.ct_window, clip=False)
    units = [(float(a), float(b)) for a, b in normalise(np.asarray(windows, dtype=np.float64), ct_map)]
    inner = build_discriminator_from_config(
        cfg.model, total + len(units) * len(ct_channels), init_method=init_method
    )
    return WindowedInput(inner, units, None if len(ct_channels) == total else ct_channels)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (scalars) of ``module``; with ``trainable_only``, those with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def __getattr__(name: str) -> Any:
    # Lazy re-export of the discriminator names (PEP 562), see the module docstring.
    if name in ("MultiScalePatchGAN", "PatchGAN", "build_discriminator"):
        from medcyclegan.nets import discriminator  # noqa: PLC0415 - lazy: MONAI, as above

        return getattr(discriminator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
