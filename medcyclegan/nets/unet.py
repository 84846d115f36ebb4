"""The U-Net generator of pix2pix (Isola et al. 2017), as the reference implementation builds it.

Written in the paper's notation (appendix 6.1.1), ``Ck`` a 4x4 convolution with k filters, stride 2,
then the normalisation and a ReLU; ``CDk`` the same with dropout 0.5. For ``unet_downs`` n = 8 (the
reference's ``unet_256``, a 256 px slice reaches 1 x 1) and ``ngf`` 64::

    encoder  C64-C128-C256-C512-C512-C512-C512-C512          (LeakyReLU 0.2; no norm on C64)
    decoder  C512-CD512-CD512-CD512-C256-C128-C64-c(out)     (ReLU; every decoder layer after the
                                                              first reads its input concatenated
                                                              with the mirrored encoder output)

- encoder layer i halves H and W: C64 = conv, LeakyReLU; the next ones conv, norm, LeakyReLU; the
  innermost (the n-th) conv only (the decoder's ReLU follows it, as the reference's innermost block
  has no norm: a 1 x 1 map has nothing to normalise over).
- decoder layer j doubles H and W with a 4x4 transposed convolution (stride 2, padding 1): ReLU,
  transposed conv, norm, then dropout on the ``n - 5`` layers after the innermost one (the
  reference's ``use_dropout`` blocks; the paper names the first three decoder layers, the code the
  three after the innermost: we follow the code). The last layer maps to the output channels with a
  biased transposed convolution and tanh, so outputs lie in [-1, 1].
- the skip connection of level i carries the encoder output after its LeakyReLU (the reference
  applies that LeakyReLU in place on the tensor it then concatenates).

Depth: the outer five levels (C64, C128, C256, C512 and the innermost C512) are fixed, so
``unet_downs >= 5``; each further level is one more C512 / CD512 pair (``unet_128``: 7). H and W of
an input must be multiples of 2**unet_downs (:attr:`UnetGenerator.stride_multiple`); the slice-wise
inference path pads whole slices to it.

Normalisation (``model.unet_norm``): ``"batch"`` is the reference pix2pix's (``--norm batch``:
affine BatchNorm, convolutions without bias); ``"instance"`` (InstanceNorm without affine parameters
or running statistics, biased convolutions: the reference's ``--norm instance``) normalises each
slice by itself, so a slice is translated the same whatever else is in its batch, in training and
in conversion alike. Both are the reference's layers: the parameter counts are its counts (tested
against its code: 54,413,955 for unet_256, ngf 64, 3 -> 3 channels, batch norm).

Eval mode (conversion, validation and sample grids call the translator in eval mode): dropout is
off and BatchNorm uses its running statistics, so a slice's translation is deterministic and does
not depend on the other slices of its batch. The reference's ``test.py`` keeps dropout on and
BatchNorm on batch statistics unless ``--eval`` is given (the paper's dropout "as noise" at test
time); conversion here is what its ``--eval`` gives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medcyclegan.config import MAX_UNET_DOWNS, MIN_UNET_DOWNS, UNET_NORMS, Config
from medcyclegan.errors import ConfigError

# The reference's dropout rate (networks.py, UnetSkipConnectionBlock: nn.Dropout(0.5)).
DROPOUT = 0.5
# LeakyReLU slope of the encoder (paper appendix 6.1.1; networks.py: nn.LeakyReLU(0.2, True)).
LEAKY_SLOPE = 0.2
# Filters of the fixed outer levels in multiples of ngf (C64-C128-C256-C512), then 8 * ngf to the bottom.
_OUTER_WIDTHS = (1, 2, 4, 8)


def _norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer of ``norm`` (see the module docstring)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def C(in_channels: int, out_channels: int, norm: str, *, normalise: bool = True) -> nn.Sequential:
    """Encoder ``Ck``: 4x4 conv, stride 2, padding 1 (halves H and W), ``norm`` (unless not
    ``normalise``: C64), LeakyReLU 0.2.

    With BatchNorm the convolutions have no bias (as in the reference, also on C64, which has no norm).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=norm != "batch")
    ]
    if normalise:
        layers.append(_norm(norm, out_channels))
    layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    return nn.Sequential(*layers)


def CD(in_channels: int, out_channels: int, norm: str, *, dropout: bool) -> nn.Sequential:
    """Decoder ``Ck`` / ``CDk``: ReLU, 4x4 transposed conv, stride 2, padding 1 (doubles H and W), norm,
    then dropout 0.5 for ``CDk``."""
    layers: list[nn.Module] = [
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=norm != "batch"
        ),
        _norm(norm, out_channels),
    ]
    if dropout:
        layers.append(nn.Dropout(DROPOUT))
    return nn.Sequential(*layers)


def _check(in_channels: int, out_channels: int, ngf: int, n_downs: int, norm: str) -> None:
    for name, value, minimum in (
        ("in_channels", in_channels, 1),
        ("out_channels", out_channels, 1),
        ("ngf", ngf, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"generator {name} must be an integer >= {minimum}; got {value!r}")
    if (
        isinstance(n_downs, bool)
        or not isinstance(n_downs, int)
        or not MIN_UNET_DOWNS <= n_downs <= MAX_UNET_DOWNS
    ):
        raise ConfigError(
            f"model.unet_downs must be from {MIN_UNET_DOWNS} to {MAX_UNET_DOWNS}; got {n_downs!r}"
        )
    if norm not in UNET_NORMS:
        raise ConfigError(f"model.unet_norm must be one of {', '.join(UNET_NORMS)}; got {norm!r}")


class UnetGenerator(nn.Module):
    """The reference pix2pix U-Net: ``n_downs`` encoder levels mirrored by a decoder with skips.

    Args:
        in_channels: input channels (1, or 2k+1 with k context slices each side).
        out_channels: output channels.
        ngf: filters of the first layer (64 in the reference).
        n_downs: stride-2 levels (8: ``unet_256``; 7: ``unet_128``), at least 5.
        norm: ``"batch"`` (reference pix2pix) or ``"instance"``.
        dropout: dropout 0.5 in the ``CD512`` decoder layers (the reference's default, ``not
            --no_dropout``); off in eval mode.

    Input and output are (N, C, H, W) in [-1, 1] with H and W multiples of :attr:`stride_multiple`.

    Raises:
        ConfigError: for a size or option out of range.
    """

    min_input_size = 1
    """Smallest H and W (before padding) it can translate: padded to :attr:`stride_multiple`, every
    level has at least one voxel, and nothing (no reflection padding, no norm at 1 x 1) needs more."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        n_downs: int = 8,
        norm: str = "batch",
        *,
        dropout: bool = True,
    ) -> None:
        super().__init__()
        _check(in_channels, out_channels, ngf, n_downs, norm)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_downs = n_downs
        self.norm = norm
        self.stride_multiple = 2**n_downs
        # Encoder filters per level: ngf, 2 ngf, 4 ngf, then 8 ngf down to the innermost level.
        widths = [ngf * m for m in _OUTER_WIDTHS] + [ngf * 8] * (n_downs - len(_OUTER_WIDTHS))
        encoder: list[nn.Module] = [C(in_channels, widths[0], norm, normalise=False)]
        encoder += [C(widths[i - 1], widths[i], norm) for i in range(1, n_downs - 1)]
        # The innermost level: a plain convolution (its activation is the decoder's first ReLU).
        encoder.append(
            nn.Conv2d(widths[-2], widths[-1], kernel_size=4, stride=2, padding=1, bias=norm != "batch")
        )
        self.encoder = nn.ModuleList(encoder)
        # Decoder layer j undoes encoder level n - 1 - j; after the first, its input is the previous
        # output concatenated with the skip of that level (twice the channels).
        n_dropout = n_downs - 5
        decoder: list[nn.Module] = [CD(widths[-1], widths[-2], norm, dropout=False)]
        for j in range(1, n_downs - 1):
            level = n_downs - 1 - j  # the encoder level whose output size this layer restores
            decoder.append(CD(2 * widths[level], widths[level - 1], norm, dropout=j <= n_dropout))
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * widths[0], out_channels, kernel_size=4, stride=2, padding=1, bias=True),
            nn.Tanh(),
        )

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int, out_channels: int) -> UnetGenerator:
        """The U-Net of ``cfg.model`` (ngf, unet_downs, unet_norm), not yet initialised."""
        model_cfg = cfg.model
        return cls(
            in_channels,
            out_channels,
            ngf=model_cfg.ngf,
            n_downs=model_cfg.unet_downs,
            norm=model_cfg.unet_norm,
        )

    @classmethod
    def config_description(cls, cfg: Config) -> tuple[dict[str, Any], str]:
        """The U-Net's options as JSON-ready fields and as one line (``info``)."""
        model = cfg.model
        fields = {"ngf": model.ngf, "unet_downs": model.unet_downs, "unet_norm": model.unet_norm}
        return fields, f"ngf {model.ngf}, {model.unet_downs} levels, {model.unet_norm} norm"

    @classmethod
    def config_stride_multiple(cls, cfg: Config) -> int:
        """``2**unet_downs``: every level halves H and W."""
        return 2**cfg.model.unet_downs

    @classmethod
    def config_min_input_size(cls, cfg: Config) -> int:
        """:attr:`min_input_size` (the same for every depth)."""
        return cls.min_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translated image in [-1, 1], (N, out_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"generator expects (N, {self.in_channels}, H, W) input; got shape {tuple(x.shape)}"
            )
        if x.shape[-2] % self.stride_multiple or x.shape[-1] % self.stride_multiple:
            raise ValueError(
                f"generator input H and W must be multiples of {self.stride_multiple}; "
                f"got {x.shape[-2]}x{x.shape[-1]} (pad the slices first)"
            )
        skips = []
        h = x
        for layer in self.encoder:
            h = layer(h)
            skips.append(h)
        skips.pop()  # the innermost output feeds the decoder directly
        for j, layer in enumerate(self.decoder):
            h = layer(h if j == 0 else torch.cat([skips.pop(), h], dim=1))
        return self.head(torch.cat([skips.pop(), h], dim=1))
