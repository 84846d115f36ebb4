"""The MUNIT networks (Huang et al. 2018), as NVlabs/MUNIT's ``networks.py`` builds them.

Per domain one auto-encoder, :class:`AdaINGen` (the reference's name):

- :class:`ContentEncoder`: c7s1-dim (InstanceNorm), ``n_downsample`` 4x4 stride-2 convolutions
  doubling the width (InstanceNorm), ``n_res`` residual blocks (InstanceNorm): a content code of
  ``dim * 2**n_downsample`` channels at ``1 / 2**n_downsample`` of the resolution.
- :class:`StyleEncoder`: c7s1-dim, two 4x4 stride-2 convolutions doubling the width, two more
  keeping it (4 downsamplings in all, :data:`~medcyclegan.config.MUNIT_STYLE_DOWNSAMPLE`), no
  normalisation, global average pooling and a 1x1 convolution to the ``style_dim`` style code.
- :class:`MLP`: 3 linear layers (``style_dim -> mlp_dim -> mlp_dim -> 2 * channels`` of every AdaIN
  layer), the AdaIN parameters of the decoder from a style code.
- :class:`Decoder`: ``n_res`` residual blocks with adaptive instance normalisation
  (:func:`adaptive_instance_norm`), ``n_downsample`` times nearest 2x upsampling + 5x5 convolution
  halving the width (the reference's :class:`~medcyclegan.nets.munit_blocks.LayerNorm`), and a 7x7 convolution with tanh.

Every convolution is reflection-padded and biased, activations are ReLU; the discriminators,
:class:`~medcyclegan.nets.munit_blocks.MsImageDis`, are ``dis_num_scales`` plain (no normalisation) LeakyReLU(0.2) PatchGANs of
``dis_n_layer`` 4x4 stride-2 layers and a 1x1 output convolution, at 1, 1/2, 1/4 ... of the
resolution. The parameter counts equal the reference's exactly (``tests/test_munit.py``). The
blocks the reference shares with UNIT (``LayerNorm``, ``Conv2dBlock``, ``ResBlock``, ``MsImageDis``)
are in :mod:`medcyclegan.nets.munit_blocks`.

One difference of form, not of result: the reference stores the decoder's AdaIN parameters on its
layers before each call (``assign_adain_params``); here they are an argument of
:meth:`Decoder.forward`, so that a call has no state (the same network can decode several styles
at once, under DDP and ``torch.compile``). The reference's never-read AdaIN running statistics
(buffers, "just dummy buffers") are left out.

Conversion translates with :class:`StyleTranslator`: the content encoder of the source domain and
the MLP + decoder of the target's, with one style code for every slice (the prior's mean, zeros,
unless set).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from medcyclegan.config import MUNIT_STYLE_DOWNSAMPLE, MunitConfig
from medcyclegan.nets.init import init_weights
from medcyclegan.nets.munit_blocks import EPS, ConvBlock, ResBlock

# AdaINGen's MLP has 3 layers (``MLP(style_dim, ..., mlp_dim, 3, ...)`` in the reference).
MLP_LAYERS = 3


def adaptive_instance_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """AdaIN (Huang and Belongie 2017): ``weight * (x - mean(x)) / sqrt(var(x) + eps) + bias``.

    Mean and (biased) variance per sample and channel over H and W, as the reference computes them
    (``F.batch_norm`` of the batch seen as one sample of N * C channels).

    Args:
        x: features (N, C, H, W).
        weight: the style's standard deviations (N, C).
        bias: the style's means (N, C).
    """
    # In float32 (a no-op in fp32 runs): bf16 statistics over a slice lose too much.
    normalised = F.instance_norm(x.float(), eps=eps)
    out = normalised * weight.float()[:, :, None, None] + bias.float()[:, :, None, None]
    return out.to(x.dtype)


class AdaINResBlock(nn.Module):
    """A residual block whose two norms are AdaIN: ``x + AdaIN(conv(ReLU(AdaIN(conv(x)))))``.

    :meth:`forward` takes the block's AdaIN parameters, (N, 4 * channels): mean then standard
    deviation of the first norm, then of the second (the reference's order).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = ConvBlock(channels, channels, 3, 1, 1, activation="none")
        self.conv2 = ConvBlock(channels, channels, 3, 1, 1, activation="none")
        self.activation = nn.ReLU(inplace=True)

    @property
    def num_adain_params(self) -> int:
        return 4 * self.channels

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        mean1, std1, mean2, std2 = params.split(self.channels, dim=1)
        out = self.activation(adaptive_instance_norm(self.conv1(x), std1, mean1))
        return x + adaptive_instance_norm(self.conv2(out), std2, mean2)


class ContentEncoder(nn.Module):
    """Image (N, C, H, W) -> content code (N, dim * 2**n_downsample, H / 2**n_downsample, W / ...)."""

    def __init__(self, in_channels: int, dim: int, n_downsample: int, n_res: int) -> None:
        super().__init__()
        self.n_downsample = n_downsample
        layers: list[nn.Module] = [ConvBlock(in_channels, dim, 7, 1, 3, norm="in")]
        for _ in range(n_downsample):
            layers.append(ConvBlock(dim, 2 * dim, 4, 2, 1, norm="in"))
            dim *= 2
        layers += [ResBlock(dim) for _ in range(n_res)]
        self.model = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class StyleEncoder(nn.Module):
    """Image (N, C, H, W) -> style code (N, style_dim): 4 downsamplings, global average pooling."""

    def __init__(self, in_channels: int, dim: int, style_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(in_channels, dim, 7, 1, 3)]
        for _ in range(2):
            layers.append(ConvBlock(dim, 2 * dim, 4, 2, 1))
            dim *= 2
        layers += [ConvBlock(dim, dim, 4, 2, 1) for _ in range(MUNIT_STYLE_DOWNSAMPLE - 2)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, style_dim, 1, 1, 0)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)


class MLP(nn.Module):
    """Style code (N, style_dim) -> AdaIN parameters (N, out_features): ReLU between the layers."""

    def __init__(self, style_dim: int, out_features: int, dim: int, n_layers: int = MLP_LAYERS) -> None:
        super().__init__()
        widths = [style_dim, *([dim] * (n_layers - 1)), out_features]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if index < n_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        self.model = nn.Sequential(*layers)

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        return self.model(style.flatten(1))


class Decoder(nn.Module):
    """Content code and AdaIN parameters -> image (N, C, H, W) in [-1, 1]."""

    def __init__(self, dim: int, out_channels: int, n_upsample: int, n_res: int) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(AdaINResBlock(dim) for _ in range(n_res))
        layers: list[nn.Module] = []
        for _ in range(n_upsample):
            layers += [nn.Upsample(scale_factor=2), ConvBlock(dim, dim // 2, 5, 1, 2, norm="ln")]
            dim //= 2
        layers.append(ConvBlock(dim, out_channels, 7, 1, 3, activation="tanh"))
        self.model = nn.Sequential(*layers)

    @property
    def num_adain_params(self) -> int:
        """Length of the parameter vector :meth:`forward` takes (the MLP's output)."""
        return sum(block.num_adain_params for block in self.res_blocks)

    def forward(self, content: torch.Tensor, adain_params: torch.Tensor) -> torch.Tensor:
        x = content
        for block, params in zip(
            self.res_blocks, adain_params.split([b.num_adain_params for b in self.res_blocks], dim=1)
        ):
            x = block(x, params)
        return self.model(x)


class AdaINGen(nn.Module):
    """One domain's auto-encoder: :meth:`encode` to (content, style), :meth:`decode` back to an image.

    Built as the reference's ``AdaINGen(input_dim, gen)``; with 3 channels and the reference
    configuration 15,026,187 parameters (1 channel: 15,007,369).
    """

    def __init__(
        self,
        channels: int,
        *,
        dim: int = 64,
        style_dim: int = 8,
        mlp_dim: int = 256,
        n_downsample: int = 2,
        n_res: int = 4,
    ) -> None:
        super().__init__()
        self.style_dim = style_dim
        self.enc_style = StyleEncoder(channels, dim, style_dim)
        self.enc_content = ContentEncoder(channels, dim, n_downsample, n_res)
        self.dec = Decoder(self.enc_content.output_dim, channels, n_downsample, n_res)
        self.mlp = MLP(style_dim, self.dec.num_adain_params, mlp_dim)

    @classmethod
    def from_config(cls, munit: MunitConfig, channels: int, *, initialise: bool = True) -> AdaINGen:
        """The generator of the ``munit`` section, kaiming-initialised (the reference's ``init:
        kaiming``) unless not ``initialise`` (weights about to be loaded)."""
        generator = cls(
            channels,
            dim=munit.dim,
            style_dim=munit.style_dim,
            mlp_dim=munit.mlp_dim,
            n_downsample=munit.n_downsample,
            n_res=munit.n_res,
        )
        return init_weights(generator, method="kaiming") if initialise else generator  # type: ignore[return-value]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content code, style code (N, style_dim)) of ``images``."""
        return self.enc_content(images), self.enc_style(images)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The image of ``content`` in ``style`` (N, style_dim)."""
        return self.dec(content, self.mlp(style))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``images`` from their own codes."""
        return self.decode(*self.encode(images))


class StyleTranslator(nn.Module):
    """Translation with a style: the source's content encoder, the target's MLP and decoder.

    The modules are those of the two :class:`AdaINGen` (shared, not copied). Every slice is
    decoded with one style code, :attr:`style`: zeros, the mean of the N(0, I) prior the styles are
    trained to follow, unless :meth:`set_style` chose another. Deterministic.

    Attributes:
        stride_multiple: H and W of an input must be multiples of this (the inference path pads).
        min_input_size: smallest H and W before that padding.
        style_dim: the style code's length.
    """

    def __init__(self, source: AdaINGen, target: AdaINGen) -> None:
        super().__init__()
        self.enc_content = source.enc_content
        self.mlp = target.mlp
        self.dec = target.dec
        self.style_dim = target.style_dim
        self.stride_multiple = 2**source.enc_content.n_downsample
        # Padded to the stride multiple, the content code keeps 2 pixels: reflection padding (the
        # residual blocks' and the decoder's) needs a side longer than the pad.
        self.min_input_size = self.stride_multiple + 1
        # Not in the state dict: the fixed style is this class's definition, not a trained weight.
        self.register_buffer("style", torch.zeros(1, self.style_dim), persistent=False)

    def set_style(self, style: torch.Tensor | None) -> None:
        """Decodes with ``style`` (``style_dim`` values) from now on; ``None`` restores the zeros."""
        if style is None:
            self.style.zero_()
            return
        code = torch.as_tensor(style, dtype=self.style.dtype).reshape(-1)
        if code.numel() != self.style_dim:
            raise ValueError(f"a style code has {self.style_dim} values; got {code.numel()}")
        self.style.copy_(code.view(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.translate(x, self.style)

    def translate(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x`` decoded with the style code ``style`` (1, style_dim), every slice alike (ONNX export's
        graph takes the code as an input through this)."""
        content = self.enc_content(x)
        code = style.to(content.dtype).expand(x.shape[0], -1)
        return self.dec(content, self.mlp(code))
