"""The ViT-UNet generator of UVCGAN (Torbunov et al. 2023): a U-Net whose bottleneck is a pixel-wise ViT.

Written after the paper and the reference code (LS4GAN/uvcgan: ``uvcgan/models/generator/vitunet.py``,
``uvcgan/torch/layers/unet.py``, ``transformer.py``); every size comes from the ``vit_unet`` section
of the run config (:class:`~medcyclegan.config.ViTUNetConfig`, the reference's ``vit-unet-12``
preset by default)::

    stem      3x3 conv (C -> f0), leaky ReLU
    level i   encoder: [IN, 3x3 conv, leaky ReLU] x 2 (-> f_i), kept as the skip; 2x2 conv stride 2
              (f_i -> f_i), for i = 0 .. depth-1 with f = vit_unet.unet_features
    bottleneck  every pixel of the (H / 2**depth, W / 2**depth) map is a token: its f_last features
              and a Fourier embedding of its position, sin(Linear(2 -> embed_features)(y, x)),
              concatenated and projected to ``features``; ``n_blocks`` pre-norm transformer blocks
              (layer norm, ``n_heads``-head self-attention, layer norm, FFN features -> ffn_features
              -> features with GELU), each residual branch scaled by one ReZero weight that starts
              at 0; projected back to f_last
    level i   decoder (i = depth-1 .. 0): nearest 2x upsample, 3x3 conv (f_i -> f_i), concatenated
              with the skip; [IN, 3x3 conv, leaky ReLU] x 2 (2 f_i -> f_i -> f_{i-1}, f_{-1} = f0)
    head      1x1 conv (f0 -> C), tanh

InstanceNorm has no affine parameters, leaky ReLU has slope 0.01 (the reference's torch defaults).
With 1 channel in and out the reference configuration has 31,359,277 parameters, as the reference
code builds it (``tests/test_vit_unet.py``).

Where it differs from the reference, and why:

- **Output in [-1, 1]** (tanh): our slices are normalised to [-1, 1]; the reference ends in a
  sigmoid for its [0, 1] images (``activ_output: sigmoid``).
- **Any slice size.** The reference fixes the image size: its token coordinates are buffers of the
  training grid, and its output is reshaped to it. Here the coordinates are computed for the grid
  of each input, normalised to [-1, 1] across it by the reference's own formula ``2 x / (n - 1) -
  1``, so the positional embedding (a learned function of those two numbers, no table) is defined
  on every grid: on the training size it is exactly the reference's, on another size the same
  embedding is evaluated at the new tokens' relative positions (a slice twice as large puts its
  tokens twice as close in that coordinate). The only size rule is the U-Net's: H and W multiples
  of ``2**depth``. Conversion thus translates whole slices, as with the ResNet generators.
- The reference builds its coordinates with ``torch.meshgrid`` in ``ij`` order over (width,
  height), so its "x" is the token's row and its "y" the column: on a square grid it feeds (row,
  column), normalised, to the projection, exactly as here; on a non-square grid it would normalise
  the rows by the width (here each axis by its own length).
- Weight initialisation is the package's (:func:`~medcyclegan.nets.init.init_weights`: convolutions
  and linear layers ~ N(0, gain) as the reference does; layer-norm weights ~ N(1, gain), where the
  reference leaves them at 1). The attention's input projection keeps torch's Xavier initialisation,
  as in the reference (it is not a ``Linear`` module).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medcyclegan.config import Config
from medcyclegan.errors import ConfigError
from medcyclegan.nets.generator import check_generator_input

# The reference's fixed choices (its vit-unet presets): unet_activ "leakyrelu" (torch's default
# slope), activ "gelu", norm "layer", unet_norm "instance" (torch's default: no affine parameters).
LEAKY_SLOPE = 0.01


def _leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE)


def conv_block(in_channels: int, out_channels: int, mid_channels: int | None = None) -> nn.Sequential:
    """The U-Net's basic block: ``[IN, 3x3 conv, leaky ReLU]`` twice (in -> mid -> out), size kept."""
    mid = out_channels if mid_channels is None else mid_channels
    return nn.Sequential(
        nn.InstanceNorm2d(in_channels),
        nn.Conv2d(in_channels, mid, kernel_size=3, padding=1),
        _leaky(),
        nn.InstanceNorm2d(mid),
        nn.Conv2d(mid, out_channels, kernel_size=3, padding=1),
        _leaky(),
    )


class EncoderLevel(nn.Module):
    """One U-Net level down: the basic block (in -> features), then a 2x2 stride-2 convolution.

    ``forward`` returns (downsampled map, skip): the skip is the block's output at the level's size.
    """

    def __init__(self, in_channels: int, features: int) -> None:
        super().__init__()
        self.block = conv_block(in_channels, features)
        self.downsample = nn.Conv2d(features, features, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return self.downsample(skip), skip


class DecoderLevel(nn.Module):
    """One U-Net level up: nearest 2x upsample and 3x3 conv, joined with the skip, the basic block.

    Args:
        features: channels coming up from the level below (and of the skip).
        out_channels: channels handed to the level above.
        rezero: scale the upsampled branch by a learned weight starting at 0 (the reference's
            ``unet_rezero``, off in its presets).
    """

    def __init__(self, features: int, out_channels: int, rezero: bool = False) -> None:
        super().__init__()
        self.upsample = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(features, features, kernel_size=3, padding=1),
        )
        self.block = conv_block(2 * features, out_channels, mid_channels=features)
        self.re_alpha = nn.Parameter(torch.zeros(1)) if rezero else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x)
        if self.re_alpha is not None:
            up = self.re_alpha * up
        return self.block(torch.cat([up, skip], dim=1))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with ReZero: ``y = x + a MHA(LN(x)); y + a FFN(LN(y))``.

    One weight ``a`` (0 at the start, so the block starts as the identity; Bachlechner et al. 2021)
    scales both residual branches, as in the reference; without ``rezero`` it is 1.
    """

    def __init__(self, features: int, n_heads: int, ffn_features: int, rezero: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(features)
        self.attention = nn.MultiheadAttention(features, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(features)
        self.ffn = nn.Sequential(
            nn.Linear(features, ffn_features), nn.GELU(), nn.Linear(ffn_features, features)
        )
        self.re_alpha = nn.Parameter(torch.zeros(1)) if rezero else None

    def _scaled(self, branch: torch.Tensor) -> torch.Tensor:
        return branch if self.re_alpha is None else self.re_alpha * branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, L, features) tokens."""
        normed = self.norm1(x)
        attended, _ = self.attention(normed, normed, normed, need_weights=False)
        y = x + self._scaled(attended)
        return y + self._scaled(self.ffn(self.norm2(y)))


def token_coordinates(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(height * width, 2) row and column of every token in row-major order, each in [-1, 1].

    The reference's ``2 i / (n - 1) - 1``; an axis of one token sits at 0 (the formula is 0 / 0).
    """

    def axis(n: int) -> torch.Tensor:
        if torch.compiler.is_exporting():
            # ONNX export (medcyclegan.export): torch.linspace would fix n at the example's size;
            # the reference's formula in tensor operations keeps it symbolic (equal within 1 ulp).
            index = torch.arange(n, device=device, dtype=torch.float32)
            last = index[-1:]
            return (2.0 * index - last) / torch.clamp(last, min=1.0)
        if n == 1:
            return torch.zeros(1, device=device)
        return torch.linspace(-1.0, 1.0, n, device=device)

    rows, cols = torch.meshgrid(axis(height), axis(width), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


class PixelwiseViT(nn.Module):
    """The bottleneck: every pixel of a (N, C, h, w) map is a token of a transformer encoder.

    Args:
        channels: C, the U-Net's innermost features (in and out).
        features: width of the transformer.
        n_heads: attention heads (must divide ``features``).
        n_blocks: transformer blocks.
        ffn_features: hidden width of each block's feed-forward network.
        embed_features: width of the Fourier positional embedding.
        rezero: ReZero weights in the blocks.
    """

    def __init__(
        self,
        channels: int,
        features: int,
        n_heads: int,
        n_blocks: int,
        ffn_features: int,
        embed_features: int,
        rezero: bool = True,
    ) -> None:
        super().__init__()
        # Fourier features of the position (Tancik et al. 2020, as the reference): sin of a learned
        # linear map of the token's two coordinates.
        self.position = nn.Linear(2, embed_features)
        self.embed = nn.Linear(embed_features + channels, features)
        self.blocks = nn.Sequential(
            *(TransformerBlock(features, n_heads, ffn_features, rezero) for _ in range(n_blocks))
        )
        self.project = nn.Linear(features, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, h*w, C), row-major like the coordinates
        coords = token_coordinates(h, w, x.device).to(self.position.weight.dtype)
        position = torch.sin(self.position(coords)).to(tokens.dtype).expand(n, -1, -1)
        y = self.blocks(self.embed(torch.cat([position, tokens], dim=2)))
        return self.project(y).transpose(1, 2).reshape(n, c, h, w)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"ViT-UNet {name} must be an integer >= 1; got {value!r}")


class ViTUNetGenerator(nn.Module):
    """UVCGAN's ViT-UNet generator (see the module docstring), output in [-1, 1].

    Args:
        in_channels: input channels (2k+1 with k context slices).
        out_channels: output channels.
        unet_features: channels of the U-Net levels, outermost first; their number is the depth.
        features, n_heads, n_blocks, ffn_features, embed_features, rezero: the bottleneck's
            transformer (:class:`PixelwiseViT`).
        unet_rezero: ReZero weights on the decoder's upsampled branches.

    Input (N, C, H, W) with H and W multiples of :attr:`stride_multiple` (``2**depth``); the output
    has the input's H and W.

    Raises:
        ConfigError: non-positive sizes, or ``n_heads`` not dividing ``features``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        unet_features: Sequence[int] = (48, 96, 192, 384),
        features: int = 384,
        n_heads: int = 6,
        n_blocks: int = 12,
        ffn_features: int = 1536,
        embed_features: int = 384,
        rezero: bool = True,
        unet_rezero: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("features", features),
            ("n_heads", n_heads),
            ("ffn_features", ffn_features),
            ("embed_features", embed_features),
            *((f"unet_features[{i}]", f) for i, f in enumerate(unet_features)),
        ):
            _check_positive_int(name, value)
        if not unet_features:
            raise ConfigError("ViT-UNet unet_features must list at least one level")
        if features % n_heads:
            raise ConfigError(f"ViT-UNet features {features} must be a multiple of n_heads {n_heads}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        widths = list(unet_features)
        self.depth = len(widths)
        self.stride_multiple = 2**self.depth
        self.min_input_size = 1
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1), _leaky())
        # Level i takes the previous level's channels (the stem's for level 0) to widths[i].
        outer = [widths[0], *widths[:-1]]
        self.encoder = nn.ModuleList(EncoderLevel(o, f) for o, f in zip(outer, widths, strict=True))
        self.bottleneck = PixelwiseViT(
            widths[-1], features, n_heads, n_blocks, ffn_features, embed_features, rezero
        )
        # Innermost first, the order the forward pass climbs back up.
        self.decoder = nn.ModuleList(
            DecoderLevel(f, o, unet_rezero) for o, f in reversed(list(zip(outer, widths, strict=True)))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    @staticmethod
    def stride_for(unet_features: Sequence[int]) -> int:
        """H and W must be multiples of this: one stride-2 convolution per U-Net level."""
        return 2 ** len(unet_features)

    @classmethod
    def config_description(cls, cfg: Config) -> tuple[dict[str, Any], str]:
        """The ``vit_unet`` section as JSON-ready fields and as one line (``info``)."""
        section = cfg.vit_unet
        fields = {
            "unet_features": list(section.unet_features),
            "features": section.features,
            "n_heads": section.n_heads,
            "n_blocks": section.n_blocks,
            "ffn_features": section.ffn_features,
        }
        text = (
            f"U-Net {'-'.join(map(str, section.unet_features))}, ViT {section.n_blocks} blocks x "
            f"{section.features} features, {section.n_heads} heads"
        )
        return fields, text

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int, out_channels: int) -> ViTUNetGenerator:
        """The generator of the run config's ``vit_unet`` section, not yet initialised."""
        section = cfg.vit_unet
        return cls(
            in_channels,
            out_channels,
            unet_features=section.unet_features,
            features=section.features,
            n_heads=section.n_heads,
            n_blocks=section.n_blocks,
            ffn_features=section.ffn_features,
            embed_features=section.embed_features,
            rezero=section.rezero,
            unet_rezero=section.unet_rezero,
        )

    @classmethod
    def config_stride_multiple(cls, cfg: Config) -> int:
        """``2**len(vit_unet.unet_features)``."""
        return cls.stride_for(cfg.vit_unet.unet_features)

    @classmethod
    def config_min_input_size(cls, cfg: Config) -> int:
        """1: padded to the stride multiple, the innermost normalised map keeps 2x2 voxels."""
        return 1

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The innermost map after the transformer, and the skips of every level (outermost first)."""
        check_generator_input(x, self.in_channels, self.stride_multiple)
        h = self.stem(x)
        skips = []
        for level in self.encoder:
            h, skip = level(h)
            skips.append(skip)
        return self.bottleneck(h), skips

    def encoder_features(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The maps PatchNCE (CUT) compares, of the encoder layers ``layers`` (increasing indices).

        The layers are ``[x, skip_0, ..., skip_{depth-1}, transformer output]``: (N, C, H, W),
        (N, f_i, H / 2**i, W / 2**i) and (N, f_last, H / 2**depth, W / 2**depth); 2 + depth of them
        (:meth:`config_encoder_layer_count`). The generator contract of :mod:`medcyclegan.models.cut`.

        Raises:
            ValueError: ``layers`` empty, not increasing or beyond the encoder.
        """
        wanted = list(layers)
        count = len(self.encoder) + 2
        if not wanted or wanted[0] < 0 or any(b <= a for a, b in itertools.pairwise(wanted)):
            raise ValueError(f"encoder layers must be increasing indices >= 0; got {wanted}")
        if wanted[-1] >= count:
            raise ValueError(f"encoder layer {wanted[-1]} does not exist: the encoder has {count} layers")
        bottleneck, skips = self._encode(x)
        maps = [x, *skips, bottleneck]
        return [maps[i] for i in wanted]

    @classmethod
    def config_encoder_layer_count(cls, cfg: Config) -> int:
        """How many layers :meth:`encoder_features` can index: the input, one per level, the bottleneck."""
        return len(cfg.vit_unet.unet_features) + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translated image in [-1, 1], (N, out_channels, H, W)."""
        h, skips = self._encode(x)
        for level, skip in zip(self.decoder, reversed(skips), strict=True):
            h = level(h, skip)
        return torch.tanh(self.head(h))
