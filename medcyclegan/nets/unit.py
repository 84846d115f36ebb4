"""UNIT's networks (Liu et al. 2017): VAE encoders and decoders with shared high-level layers, and
the multi-scale LSGAN discriminator.

After the reference (mingyuliutw/UNIT, master, ``networks.py``; the same code is NVlabs/MUNIT's):

* encoder (``ContentEncoder``): c7s1-dim (reflection padding, InstanceNorm, ReLU), ``n_downsample``
  4x4 stride-2 convolutions doubling the filters, then residual blocks (two 3x3 convolutions with
  InstanceNorm, ReLU between them). Its output is the mean ``mu`` of the latent code; training
  samples ``z = mu + N(0, 1)`` (the reference's reduced VAE: unit variance, KL = mean(mu^2)).
* decoder (``Decoder`` of ``VAEGen``): residual blocks (InstanceNorm), ``n_downsample`` times
  nearest 2x upsampling + 5x5 convolution with the reference's LayerNorm and ReLU, then a 7x7
  convolution to the image with tanh.
* the shared latent space: the paper's encoders share their last layers and its decoders their
  first (Liu et al. 2017, section 2). The master branch of the reference does *not* share weights
  (two independent ``VAEGen``; only the losses tie the latent spaces); its ``version_02`` branch, the
  NIPS paper's code (``src/trainers/cocogan_nets.py``, ``COCOResGen``), shares one residual block at
  the end of the encoders (``enc_shared``) and one at the start of the decoders (``dec_shared``).
  Here the last ``shared_blocks`` residual blocks of the encoders and the first ``shared_blocks`` of
  the decoders are one module, :class:`UnitSharedLayers`, used by both domains: each encoder +
  decoder has the master's ``n_res`` blocks in all, and ``shared_blocks`` 0 gives the master's
  networks exactly.
* discriminator (:class:`~medcyclegan.nets.munit_blocks.MsImageDis`, shared with MUNIT): per scale, 4x4 stride-2 convolutions with reflection padding, no
  normalisation, LeakyReLU 0.2, filters doubling from ``dim``, then a 1x1 convolution to one logit
  map; the scales see the input average-pooled (3x3, stride 2, padding 1, padding not counted).

Initialisation as the reference's ``weights_init``: ``kaiming`` (normal, fan-in, gain sqrt(2), biases
0) for the generators, ``gaussian`` (normal(0, 0.02), biases 0) for the discriminators; the LayerNorm
scales are drawn uniform in [0, 1) as its ``LayerNorm`` does.

The reference's blocks (``LayerNorm``, ``Conv2dBlock``, ``ResBlock``, ``MsImageDis``) are MUNIT's
too: :mod:`medcyclegan.nets.munit_blocks`; UNIT's checkpoints index a block's layers by position
(:func:`conv_block`), and its LayerNorm rounds as :class:`UnitLayerNorm`.
"""

from __future__ import annotations

import torch
from torch import nn

from medcyclegan.config import UnitConfig
from medcyclegan.nets.init import init_weights
from medcyclegan.nets.munit_blocks import ConvBlock, LayerNorm, MsImageDis, ResBlock


class UnitLayerNorm(LayerNorm):
    """The reference's ``LayerNorm`` as UNIT computes it: statistics of the sample flattened to
    (N, C*H*W), the affine step in the input's dtype.

    The same function as :class:`~medcyclegan.nets.munit_blocks.LayerNorm` (same parameters and
    initialisation), but not the same float rounding (another reduction order, and under bf16
    autocast one more rounding): kept so that UNIT's outputs and trained runs stay bit-identical.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.float().flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        mean = flat.mean(1).view(shape)
        std = flat.std(1).view(shape)
        out = ((x.float() - mean) / (std + self.eps)).to(x.dtype)
        channel = (1, -1) + (1,) * (x.dim() - 2)
        return out * self.gamma.view(channel) + self.beta.view(channel)


def conv_block(*args: int, **kwargs: str) -> nn.Sequential:
    """A :class:`~medcyclegan.nets.munit_blocks.ConvBlock` (same arguments) with its layers indexed by
    position, and :class:`UnitLayerNorm` as its ``"ln"`` norm.

    UNIT's checkpoints store a block's layers as ``0`` (pad), ``1`` (convolution), ``2`` (norm or
    activation) ...: the same layers, re-indexed so that those checkpoints keep loading.
    """
    return nn.Sequential(*ConvBlock(*args, **kwargs, layer_norm=UnitLayerNorm))  # type: ignore[arg-type]


def residual_blocks(n: int, dim: int) -> nn.Sequential:
    """``n`` residual blocks of ``dim`` filters in a row (an empty Sequential is the identity)."""
    return nn.Sequential(*(ResBlock(dim, conv_block) for _ in range(n)))


class UnitEncoder(nn.Module):
    """A domain's own encoder layers: c7s1-dim, ``n_downsample`` d-layers, ``n_res`` residual blocks."""

    def __init__(self, in_channels: int, dim: int, n_downsample: int, n_res: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_block(in_channels, dim, 7, 1, 3, norm="in", activation="relu")]
        for _ in range(n_downsample):
            layers.append(conv_block(dim, 2 * dim, 4, 2, 1, norm="in", activation="relu"))
            dim *= 2
        layers.append(residual_blocks(n_res, dim))
        self.model = nn.Sequential(*layers)
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnitDecoder(nn.Module):
    """A domain's own decoder layers: ``n_res`` residual blocks, ``n_upsample`` (upsample, c5-LN-ReLU),
    c7s1-out with tanh."""

    def __init__(self, dim: int, n_upsample: int, n_res: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [residual_blocks(n_res, dim)]
        for _ in range(n_upsample):
            layers += [
                nn.Upsample(scale_factor=2),
                conv_block(dim, dim // 2, 5, 1, 2, norm="ln", activation="relu"),
            ]
            dim //= 2
        layers.append(conv_block(dim, out_channels, 7, 1, 3, norm="none", activation="tanh"))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnitSharedLayers(nn.Module):
    """The layers both domains share: the encoders' last residual blocks and the decoders' first.

    ``encoder`` ends in the latent code's mean; ``decoder`` starts from a (sampled) latent code.
    """

    def __init__(self, dim: int, n_blocks: int) -> None:
        super().__init__()
        self.encoder = residual_blocks(n_blocks, dim)
        self.decoder = residual_blocks(n_blocks, dim)


class UnitVAE(nn.Module):
    """One domain's own encoder and decoder layers (the reference's ``VAEGen`` without the shared ones)."""

    def __init__(self, channels: int, cfg: UnitConfig) -> None:
        super().__init__()
        own = cfg.n_res - cfg.shared_blocks
        self.enc = UnitEncoder(channels, cfg.dim, cfg.n_downsample, own)
        self.dec = UnitDecoder(self.enc.out_channels, cfg.n_downsample, own, channels)


class UnitTranslator(nn.Module):
    """Translation by the mean latent code: ``decoder(shared.decoder(shared.encoder(encoder(x))))``.

    Holds the encoder of one domain, the shared layers and the decoder of the other (the same
    parameter tensors as the model's networks). Deterministic: no noise is drawn, as the reference
    translates (``UNIT_Trainer.forward`` and ``sample`` decode the mean).

    Attributes:
        stride_multiple: H and W must be multiples of it (``2**n_downsample``).
        min_input_size: smallest H and W before padding to ``stride_multiple``: the latent code must
            keep 2 pixels (the residual blocks' reflection padding fails on 1), as the ResNet
            generator's.
    """

    def __init__(
        self, encoder: UnitEncoder, shared: UnitSharedLayers, decoder: UnitDecoder, stride_multiple: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.shared = shared
        self.decoder = decoder
        self.stride_multiple = stride_multiple
        self.min_input_size = stride_multiple + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.shared.decoder(self.shared.encoder(self.encoder(x))))


def build_unit_networks(cfg: UnitConfig, channels: int) -> dict[str, nn.Module]:
    """UNIT's networks by state key, initialised: ``gen_A``, ``gen_B``, ``shared``, ``dis_A``, ``dis_B``.

    Built in this order, each drawing from torch's global generator.
    """
    gen_a, gen_b = UnitVAE(channels, cfg), UnitVAE(channels, cfg)
    shared = UnitSharedLayers(gen_a.enc.out_channels, cfg.shared_blocks)
    for generator in (gen_a, gen_b, shared):
        init_weights(generator, method="kaiming")
    dis_a, dis_b = (MsImageDis.from_config(cfg, channels, conv_block) for _ in range(2))
    return {"gen_A": gen_a, "gen_B": gen_b, "shared": shared, "dis_A": dis_a, "dis_B": dis_b}


def unit_translator(
    gen_from: UnitVAE, shared: UnitSharedLayers, gen_to: UnitVAE, cfg: UnitConfig
) -> UnitTranslator:
    """The translator from ``gen_from``'s domain to ``gen_to``'s (sharing their parameter tensors)."""
    return UnitTranslator(gen_from.enc, shared, gen_to.dec, cfg.stride_multiple)


def latent_shape(cfg: UnitConfig, image: torch.Tensor) -> tuple[int, ...]:
    """Shape of the latent code of a batch of images (N, C, H, W): (N, dim * 2**n, H >> n, W >> n)."""
    n, _, h, w = image.shape
    d = cfg.n_downsample
    return (n, cfg.dim * 2**d, h >> d, w >> d)
