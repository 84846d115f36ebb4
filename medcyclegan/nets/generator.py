"""ResNet generators of CycleGAN (Zhu et al. 2017), plain and with an attention mask.

The network is written in the paper's notation (appendix 7.2), with ``k = ngf``::

    c7s1-k, dk*2, dk*4, Rk*4 x N, uk*2, uk, c7s1-C        (ngf 64: c7s1-64, d128, d256, R256 x 9, ...)

- ``c7s1-k``: 7x7 convolution, stride 1, reflection padding 3, InstanceNorm, ReLU.
- ``dk``: 3x3 convolution, stride 2 (zero padding 1), InstanceNorm, ReLU.
- ``Rk``: residual block of two 3x3 convolutions with reflection padding and InstanceNorm.
- ``uk``: 3x3 fractionally strided convolution, stride 1/2, InstanceNorm, ReLU; or, with
  ``upsample="resize"``, a nearest 2x upsample followed by a reflection-padded 3x3 convolution
  (same parameter count, no checkerboard artifacts).
- the last ``c7s1-C`` has no norm and ends in tanh, so outputs lie in [-1, 1].

InstanceNorm has no affine parameters and the convolutions keep their biases, as in the reference
implementation; with 1 input and 1 output channel, ngf 64 and 9 blocks this gives 11,365,633
parameters. The two stride-2 layers (:attr:`ResnetGenerator.n_downsampling`) mean H and W must be
multiples of :attr:`ResnetGenerator.stride_multiple` (2**2 = 4); the caller pads (see
:mod:`medcyclegan.inference`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medcyclegan.config import UPSAMPLE_MODES, Config
from medcyclegan.errors import ConfigError


# ------------------------------------------------------------------ layers in the paper's notation
def c7s1(in_channels: int, out_channels: int, *, norm_act: bool = True) -> nn.Sequential:
    """``c7s1-k``: reflection pad 3, 7x7 conv stride 1, then InstanceNorm + ReLU (unless not ``norm_act``)."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, out_channels, kernel_size=7, bias=True),
    ]
    if norm_act:
        layers += [nn.InstanceNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def d(in_channels: int, out_channels: int) -> nn.Sequential:
    """``dk``: 3x3 conv stride 2 (halves H and W), InstanceNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=True),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_generator_input(x: torch.Tensor, in_channels: int, stride_multiple: int) -> None:
    """Raises ValueError unless ``x`` is (N, in_channels, H, W) with H and W multiples of ``stride_multiple``."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"generator expects (N, {in_channels}, H, W) input; got shape {tuple(x.shape)}")
    if x.shape[-2] % stride_multiple or x.shape[-1] % stride_multiple:
        raise ValueError(
            f"generator input H and W must be multiples of {stride_multiple}; "
            f"got {x.shape[-2]}x{x.shape[-1]} (pad the slices first)"
        )


class R(nn.Module):
    """``Rk``: residual block, ``x + IN(conv3(pad(ReLU(IN(conv3(pad(x)))))))``, k channels in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def u(in_channels: int, out_channels: int, upsample: str = "transpose") -> nn.Sequential:
    """``uk``: doubles H and W, then InstanceNorm and ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels (k).
        upsample: ``"transpose"``: 3x3 transposed conv, stride 2, padding 1, output padding 1 (the
            reference); ``"resize"``: nearest 2x upsample, reflection pad 1, 3x3 conv (same weights
            shape and count, avoids the checkerboard pattern of uneven kernel overlap; the conv runs
            at the output resolution, so the whole generator costs about 15% more: 112.0 instead of
            97.5 GFLOP for a 256x256 slice at ngf 64, 9 blocks).
    """
    _check_upsample(upsample)
    if upsample == "transpose":
        resample: list[nn.Module] = [
            nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
            )
        ]
    else:
        resample = [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.ReflectionPad2d(1),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=True),
        ]
    return nn.Sequential(*resample, nn.InstanceNorm2d(out_channels), nn.ReLU(inplace=True))


# ------------------------------------------------------------------ validation
def _check_upsample(upsample: str) -> None:
    if upsample not in UPSAMPLE_MODES:
        raise ConfigError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}; got {upsample!r}")


def _check_sizes(in_channels: int, out_channels: int, ngf: int, n_blocks: int) -> None:
    for name, value, minimum in (
        ("in_channels", in_channels, 1),
        ("out_channels", out_channels, 1),
        ("ngf", ngf, 1),
        ("n_blocks", n_blocks, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"generator {name} must be an integer >= {minimum}; got {value!r}")


# ------------------------------------------------------------------ networks
class ResnetGenerator(nn.Module):
    """The reference CycleGAN ResNet generator: ``c7s1-k, d2k, d4k, R4k x N, u2k, uk, c7s1-C``.

    Args:
        in_channels: input channels (1 for 2D slices, 2k+1 with k context slices each side).
        out_channels: output channels.
        ngf: filters of the first layer (k; 64 in the reference).
        n_blocks: residual blocks (9 for 256 px, 6 for 128 px in the reference).
        upsample: ``"transpose"`` (reference) or ``"resize"`` (nearest upsample + conv).

    Input and output are (N, C, H, W) tensors in [-1, 1] with H and W multiples of
    :attr:`stride_multiple`; the output has the input's H and W.

    Raises:
        ConfigError: for an unknown ``upsample`` or non-positive sizes.
    """

    n_downsampling = 2
    """Stride-2 ``dk`` layers of the encoder (each undone by one ``uk`` layer of the decoder)."""
    stride_multiple = 2**n_downsampling
    """H and W of an input must be multiples of this (the total stride); the caller pads."""
    min_input_size = stride_multiple + 1
    """Smallest H and W (before padding) it can translate: padded to :attr:`stride_multiple`, the
    coarsest feature map must keep 2 voxels (the residual blocks' reflection padding and InstanceNorm
    fail on 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        n_blocks: int = 9,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, out_channels, ngf, n_blocks)
        _check_upsample(upsample)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.upsample = upsample
        k, n = ngf, self.n_downsampling
        # d2k, d4k: each doubles the channels and halves H and W; u2k, uk undo them in reverse.
        self.encoder = nn.Sequential(c7s1(in_channels, k), *(d(k * 2**i, k * 2 ** (i + 1)) for i in range(n)))
        self.blocks = nn.Sequential(*(R(k * 2**n) for _ in range(n_blocks)))
        self.decoder = nn.Sequential(*(u(k * 2 ** (i + 1), k * 2**i, upsample) for i in reversed(range(n))))
        self.head = c7s1(k, self._head_channels(out_channels), norm_act=False)

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int, out_channels: int) -> ResnetGenerator:
        """The generator of ``cfg.model`` (ngf, n_blocks, upsample), not yet initialised."""
        model_cfg = cfg.model
        return cls(
            in_channels,
            out_channels,
            ngf=model_cfg.ngf,
            n_blocks=model_cfg.n_blocks,
            upsample=model_cfg.upsample,
        )

    @classmethod
    def config_description(cls, cfg: Config) -> tuple[dict[str, Any], str]:
        """The options of the generator ``cfg`` builds, as JSON-ready fields and as one line (``info``)."""
        model = cfg.model
        fields = {"ngf": model.ngf, "n_blocks": model.n_blocks, "upsample": model.upsample}
        return fields, f"ngf {model.ngf}, {model.n_blocks} blocks, {model.upsample}"

    @classmethod
    def config_stride_multiple(cls, cfg: Config) -> int:
        """:attr:`stride_multiple` of the generator ``cfg`` builds (fixed for this class)."""
        return cls.stride_multiple

    @classmethod
    def config_min_input_size(cls, cfg: Config) -> int:
        """:attr:`min_input_size` of the generator ``cfg`` builds (fixed for this class)."""
        return cls.min_input_size

    @classmethod
    def config_encoder_layer_count(cls, cfg: Config) -> int:
        """How many layers :meth:`encoder_features` can index for the generator of ``cfg``."""
        return 4 + 3 * cls.n_downsampling + cfg.model.n_blocks

    def _head_channels(self, out_channels: int) -> int:
        """Channels predicted by the final c7s1 layer (subclasses add attention channels)."""
        return out_channels

    def encoder_layers(self) -> list[nn.Module]:
        """The layers :meth:`encoder_features` indexes, in the order the input passes them.

        The reference CUT's ``nn.Sequential`` without anti-aliasing (``--no_antialias``), module for
        module: 0 reflection pad, 1 conv 7x7, 2 norm, 3 ReLU (c7s1-k); 4 conv, 5 norm, 6 ReLU (d2k);
        7 conv, 8 norm, 9 ReLU (d4k); 10 + i the residual block i (i = 0 .. n_blocks - 1).
        """
        return [*(layer for stage in self.encoder for layer in stage), *self.blocks]

    def encoder_features(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the encoder layers ``layers`` for input ``x`` (the maps PatchNCE compares).

        The generator contract of CUT (:mod:`medcyclegan.models.cut`): ``layers`` are indices into
        :meth:`encoder_layers`, increasing; it runs only up to the last of them. As in the reference
        (``netG(x, layers, encode_only=True)``), a layer followed by an in-place ReLU (the norm
        layers 2, 5, 8) gives its output after that ReLU when the ReLU runs too.

        For the reference configuration (ngf 64, 9 blocks) the reference's layers 0, 4, 8, 12, 16
        are here: the padded input (C, H + 6, W + 6); the first stride-2 convolution (128, H/2, W/2);
        the second d layer's norm (256, H/4, W/4); the residual blocks 3 and 7 (256, H/4, W/4).
        With fewer than 7 residual blocks the indices beyond ``10 + n_blocks - 1`` do not exist
        (the config refuses them, :meth:`config_encoder_layer_count`).

        Raises:
            ValueError: a bad input, or ``layers`` empty, not increasing or beyond the encoder.
        """
        check_generator_input(x, self.in_channels, self.stride_multiple)
        modules = self.encoder_layers()
        wanted = list(layers)
        if not wanted or wanted[0] < 0 or any(b <= a for a, b in itertools.pairwise(wanted)):
            raise ValueError(f"encoder layers must be increasing indices >= 0; got {wanted}")
        if wanted[-1] >= len(modules):
            raise ValueError(
                f"encoder layer {wanted[-1]} does not exist: the encoder has {len(modules)} layers"
            )
        features = []
        for index, module in enumerate(modules[: wanted[-1] + 1]):
            x = module(x)
            if index in wanted:
                features.append(x)
        return features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output of the final c7s1 layer, (N, head channels, H, W)."""
        check_generator_input(x, self.in_channels, self.stride_multiple)
        return self.head(self.decoder(self.blocks(self.encoder(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translated image in [-1, 1], same shape as ``x`` when in and out channels agree."""
        return torch.tanh(self.features(x))


def combine_with_attention(
    content: torch.Tensor, attention: torch.Tensor, source: torch.Tensor
) -> torch.Tensor:
    """Attention blend ``m * content + (1 - m) * source``.

    Args:
        content: generated content (N, C, H, W), in [-1, 1].
        attention: mask m (N, 1, H, W) in [0, 1]; 1 takes the generated content, 0 keeps the input.
        source: the generator's input (N, C, H, W).
    """
    return attention * content + (1.0 - attention) * source


class AttentionResnetGenerator(ResnetGenerator):
    """ResNet generator with an attention mask (the Mask / attention-guided CycleGAN variant).

    The same trunk as :class:`ResnetGenerator`; its final ``c7s1`` layer predicts ``out_channels``
    content channels (tanh) plus one attention channel m (sigmoid), and the output is
    ``m * content + (1 - m) * input``: where m is 0 the input passes through unchanged (background,
    regions the translation should not touch).

    Args:
        in_channels: input channels; must equal ``out_channels`` for the blend.
        out_channels: output channels.
        ngf: filters of the first layer.
        n_blocks: residual blocks.
        upsample: ``"transpose"`` or ``"resize"``.

    Raises:
        ConfigError: if ``in_channels != out_channels`` or an option is invalid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        n_blocks: int = 9,
        upsample: str = "transpose",
    ) -> None:
        if in_channels != out_channels:
            raise ConfigError(
                "the attention generator blends its output with its input, so in_channels must equal "
                f"out_channels; got {in_channels} and {out_channels}"
            )
        super().__init__(in_channels, out_channels, ngf=ngf, n_blocks=n_blocks, upsample=upsample)

    def _head_channels(self, out_channels: int) -> int:
        # The last head channel is the attention logit.
        return out_channels + 1

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output (N, C, H, W) in [-1, 1] and attention mask m (N, 1, H, W) in [0, 1]."""
        head = self.features(x)
        content = torch.tanh(head[:, : self.out_channels])
        attention = torch.sigmoid(head[:, self.out_channels :])
        return combine_with_attention(content, attention, x), attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]
