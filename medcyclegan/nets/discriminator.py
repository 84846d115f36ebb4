"""The 70x70 PatchGAN discriminator of CycleGAN, built from MONAI's ``PatchDiscriminator``.

Reference layout (Zhu et al. 2017, ``n_layers=3``): ``C64-C128-C256-C512`` then a 4x4 convolution to
one channel. Every ``Ck`` is a 4x4 convolution, InstanceNorm (none on C64) and LeakyReLU 0.2; all
are stride 2 except C512 and the final convolution (stride 1), all use padding 1. A 256x256 input
gives 30x30 logits, each seeing a 70x70 pixel patch.

MONAI's ``PatchDiscriminator(spatial_dims=2, channels=ndf, num_layers_d=n_layers, kernel_size=4,
norm="INSTANCE", bias=True)`` is exactly this network for ``n_layers <= 3``: its initial
convolution is C64 (stride 2, biased, no norm), its ``num_layers_d`` layers double the channels with
stride 2 except the last, and its final convolution is 4x4 with padding 1. ``bias=True`` matters: the
reference keeps convolution biases with InstanceNorm (MONAI's default ``bias=False`` drops the 896
biases of C128-C512: 2,761,793 parameters instead of the reference's 2,762,689 for 1 input channel).

One difference, corrected here: for ``n_layers > 3`` the reference caps the width at ``8 * ndf`` (512),
while MONAI keeps doubling (1024, 2048, ...; 11,160,513 parameters at 4 layers instead of the
reference's 6,957,505). :class:`PatchGAN` then rebuilds the layers past the cap, and the final
convolution, with MONAI's own ``Convolution`` block at the reference width; the module layout and
state-dict keys stay MONAI's. For ``n_layers <= 3`` (the default, and every shipped configuration)
nothing is rebuilt.

MONAI returns the list of every layer's output; :class:`PatchGAN` returns only the logits
(the last element), which is what the adversarial losses take.

Two variants (off by default, see :func:`build_discriminator`):

- **spectral normalisation** (Miyato et al. 2018) of every convolution, through
  ``torch.nn.utils.parametrizations.spectral_norm``. The InstanceNorm layers are then left out, as
  SN-GAN and SN-PatchGAN do: spectral norm bounds each layer's Lipschitz constant, and a per-image
  renormalisation after it would undo that bound. A convolution's weight is then stored as
  ``...conv.parametrizations.weight.original`` with the power iteration's vectors ``..._u`` and
  ``..._v`` beside it (buffers, so a resumed run continues the same iteration).
- **multi-scale** (pix2pixHD, Wang et al. 2018): :class:`MultiScalePatchGAN`, ``n_scales``
  PatchGANs of the same layout judging the image at 1, 1/2, 1/4 ... of its resolution (average
  pooling 3x3, stride 2, padding 1, padding not counted); it returns the list of their logits, and
  :class:`~medcyclegan.losses.AdversarialLoss` averages its loss over the list.

And one input option, for a CT domain: :class:`WindowedInput` shows the discriminator its image in
extra HU windows (e.g. a soft-tissue window), each as its own channel.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import PatchDiscriminator
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as spectral_norm_parametrization

from medcyclegan.errors import ConfigError
from medcyclegan.nets.init import init_weights

_LEAKY_RELU = ("LEAKYRELU", {"negative_slope": 0.2})
# MONAI's layer i has ndf * 2**(i + 1) channels: layers 0-2 (C128, C256, C512) stay within 8 * ndf.
_UNCAPPED_LAYERS = 3


class PatchGAN(nn.Module):
    """PatchGAN discriminator returning raw logits (N, 1, h, w) (no sigmoid).

    Args:
        in_channels: image channels (1, or 2k+1 for 2.5D inputs).
        ndf: filters of the first layer (C64 at ndf 64).
        n_layers: strided layers after the first (3 gives the 70x70 PatchGAN).
        instance_norm: InstanceNorm after C128 ... C512 (the reference); False leaves it out (the
            spectrally normalised variant).

    Raises:
        ConfigError: if a size is not a positive integer.
    """

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, *, instance_norm: bool = True
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("ndf", ndf), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"discriminator {name} must be an integer >= 1; got {value!r}")
        self._norm = "INSTANCE" if instance_norm else None
        self.model = PatchDiscriminator(
            spatial_dims=2,
            channels=ndf,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=n_layers,
            kernel_size=4,
            activation=_LEAKY_RELU,
            norm=self._norm,  # type: ignore[arg-type]  (None: no norm layer, as MONAI's ADN reads it)
            bias=True,
            padding=1,
            # None instead of 0.0 builds no Dropout(p=0) layers at all (ADN skips them): same network,
            # fewer no-op kernels per step.
            dropout=None,  # type: ignore[arg-type]
        )
        if n_layers > _UNCAPPED_LAYERS:
            self._cap_width(ndf, n_layers)

    def _cap_width(self, ndf: int, n_layers: int) -> None:
        """Rebuilds the layers that MONAI makes wider than the reference's ``8 * ndf`` cap."""
        cap = 8 * ndf
        for index in range(_UNCAPPED_LAYERS, n_layers):
            # Layer i of MONAI's stack outputs ndf * 2**(i + 1) channels; the reference caps that at 8 * ndf.
            layer = Convolution(
                spatial_dims=2,
                in_channels=cap,
                out_channels=cap,
                kernel_size=4,
                strides=1 if index == n_layers - 1 else 2,
                padding=1,
                act=_LEAKY_RELU,
                norm=self._norm,
                bias=True,
            )
            setattr(self.model, str(index), layer)  # same name, same position in the Sequential
        self.model.final_conv = Convolution(
            spatial_dims=2,
            in_channels=cap,
            out_channels=1,
            kernel_size=4,
            strides=1,
            padding=1,
            bias=True,
            conv_only=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, h, w) for images (N, C, H, W); 256x256 gives 30x30 with 3 layers."""
        return self.model(x)[-1]


class MultiScalePatchGAN(nn.Module):
    """pix2pixHD's multi-scale discriminator: PatchGANs at 1, 1/2, 1/4 ... of the input resolution.

    Args:
        discriminators: one network per scale, finest first (built by :func:`build_discriminator`).

    State-dict keys: ``scales.<i>.`` then the PatchGAN's own.
    """

    def __init__(self, discriminators: list[nn.Module]) -> None:
        super().__init__()
        self.scales = nn.ModuleList(discriminators)
        # pix2pixHD's downsampling between scales; the padding is not counted so that the border
        # of the coarse images keeps the mean of the pixels it covers.
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits (N, 1, h_i, w_i) of every scale, finest first."""
        logits = []
        for index, discriminator in enumerate(self.scales):
            if index:
                x = self.downsample(x)
            logits.append(discriminator(x))
        return logits


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation on every convolution of ``module`` (in place); returns ``module``.

    Apply after the weight initialisation: the parametrisation keeps the initialised weight as its
    ``original`` (``init_weights`` on a parametrised layer would write into a computed tensor).
    """
    for layer in list(module.modules()):
        if isinstance(layer, nn.modules.conv._ConvNd):
            spectral_norm_parametrization(layer)
    return module


def build_discriminator(
    in_channels: int,
    ndf: int = 64,
    n_layers: int = 3,
    init_gain: float = 0.02,
    *,
    spectral_norm: bool = False,
    n_scales: int = 1,
    init_method: str = "normal",
) -> nn.Module:
    """A PatchGAN (see :class:`PatchGAN`) with the reference normal(0, ``init_gain``) initialisation.

    Args:
        in_channels: image channels.
        ndf: filters of the first layer.
        n_layers: strided layers (3: the 70x70 PatchGAN).
        init_gain: standard deviation of the weight initialisation.
        spectral_norm: spectral normalisation on every convolution, without InstanceNorm.
        n_scales: 1 for one PatchGAN; more for a :class:`MultiScalePatchGAN` of that many.
        init_method: ``"normal"`` or ``"xavier"`` (see :func:`~medcyclegan.nets.init.init_weights`).

    Returns:
        A module mapping (N, C, H, W) images to (N, 1, h, w) logits, or with ``n_scales > 1`` to the
        list of each scale's logits.

    Raises:
        ConfigError: if a size is not a positive integer.
    """
    if isinstance(n_scales, bool) or not isinstance(n_scales, int) or n_scales < 1:
        raise ConfigError(f"discriminator n_scales must be an integer >= 1; got {n_scales!r}")
    discriminators = []
    for _ in range(n_scales):
        discriminator = PatchGAN(in_channels, ndf=ndf, n_layers=n_layers, instance_norm=not spectral_norm)
        init_weights(discriminator, gain=init_gain, method=init_method)
        discriminators.append(add_spectral_norm(discriminator) if spectral_norm else discriminator)
    return discriminators[0] if n_scales == 1 else MultiScalePatchGAN(discriminators)


class WindowedInput(nn.Module):
    """A discriminator that sees its CT also through intensity windows, as extra channels.

    CT normalised over a wide HU window (``data.ct_window``, default [-1024, 3000] HU) puts all soft
    tissue (-100..100 HU) into 5 % of [-1, 1]: a discriminator hardly sees a 100 HU blotch there.
    Each window ``[low, high]`` (in the normalised units of the image) adds the CT channels once more
    as ``clamp(2 (x - low) / (high - low) - 1, -1, 1)``, the image as a radiologist's window shows
    it. The input itself stays first (the clamped channels have no gradient outside their window,
    the full range always has one), then each window's copy of the channels ``channels`` in turn:
    C input channels and n windows of k CT channels give C + n * k.

    Args:
        discriminator: the network judging the stack (its input channels: C + n * k).
        windows: ``(low, high)`` pairs in normalised units, low < high.
        channels: indices of the input channels that hold CT (all of them by default; pix2pix's
            conditional discriminator sees ``cat(source, target)`` and only one of them is CT).

    State-dict keys: ``discriminator.`` then the network's own; the windows are not state (the
    config that built them is saved with the run).

    Example:
        >>> import torch
        >>> net = WindowedInput(nn.Identity(), [(-0.5, 0.0)])
        >>> net(torch.tensor([[[[-1.0, -0.25, 1.0]]]])).tolist()
        [[[[-1.0, -0.25, 1.0]], [[-1.0, 0.0, 1.0]]]]
    """

    def __init__(
        self,
        discriminator: nn.Module,
        windows: list[tuple[float, float]],
        channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if not windows:
            raise ConfigError("WindowedInput needs at least one window")
        for low, high in windows:
            if not low < high:
                raise ConfigError(f"a discriminator window must have low < high; got [{low}, {high}]")
        if channels is not None and (not channels or any(c < 0 for c in channels)):
            raise ConfigError(f"WindowedInput channels must be indices >= 0; got {channels}")
        self.discriminator = discriminator
        self.windows = [(float(low), float(high)) for low, high in windows]
        self.channels = None if channels is None else [int(c) for c in channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        ct = x if self.channels is None else x[:, self.channels]
        stack = [x]
        for low, high in self.windows:
            stack.append(((ct - low) * (2.0 / (high - low)) - 1.0).clamp(-1.0, 1.0))
        return self.discriminator(torch.cat(stack, dim=1))

    def extra_repr(self) -> str:
        windows = "windows=[" + ", ".join(f"[{low:.4g}, {high:.4g}]" for low, high in self.windows) + "]"
        return windows if self.channels is None else f"{windows}, channels={self.channels}"
