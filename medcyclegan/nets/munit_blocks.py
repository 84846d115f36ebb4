"""The building blocks UNIT's and MUNIT's networks share: those of the reference ``networks.py``.

NVlabs/MUNIT's ``networks.py`` (mingyuliutw/UNIT's master branch holds the same code) builds both
models' networks from these: its ``LayerNorm``, ``Conv2dBlock`` (``pad_type: reflect``), ``ResBlock``
(InstanceNorm) and the multi-scale discriminator ``MsImageDis``. :mod:`medcyclegan.nets.unit` and
:mod:`medcyclegan.nets.munit` put them together; both initialise with
:func:`~medcyclegan.nets.init.init_weights` (``method="kaiming"`` for the generators, the reference's
``gaussian`` normal(0, 0.02) for the discriminators).

The two models' checkpoints store a convolution block's parameters under different keys: MUNIT's
by the reference's attribute names (``conv.weight``, ``norm.gamma``), UNIT's by position
(``1.weight``, ``2.gamma``). The blocks that hold convolution blocks take a ``conv_block`` factory so
that each model keeps its own layout (:class:`ConvBlock` or :func:`~medcyclegan.nets.unit.conv_block`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from medcyclegan.config import MunitConfig, UnitConfig
from medcyclegan.nets.init import init_weights

# The reference's normalisation epsilon (LayerNorm, AdaptiveInstanceNorm2d).
EPS = 1e-5
# Leaky ReLU slope of the discriminators (the reference's ``lrelu``).
LRELU_SLOPE = 0.2
# The discriminators' initialisation (``weights_init('gaussian')``: normal(0, 0.02)).
DISCRIMINATOR_INIT_GAIN = 0.02


# Builds a convolution block from :class:`ConvBlock`'s arguments (``ConvBlock`` itself, or UNIT's
# position-indexed :func:`~medcyclegan.nets.unit.conv_block`).
ConvBlockFactory = Callable[..., nn.Module]


class LayerNorm(nn.Module):
    """The reference's layer normalisation (not ``torch.nn.LayerNorm``).

    Per sample over C, H and W: ``(x - mean) / (std + eps)`` with the unbiased standard deviation
    (unlike ``nn.GroupNorm(1, C)``, which divides by ``sqrt(var + eps)`` of the biased variance), then
    a per-channel ``gamma`` (initialised uniform in [0, 1), as the reference does) and ``beta`` (0).
    """

    def __init__(self, num_features: int, eps: float = EPS) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(num_features).uniform_())
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        values = x.float()  # statistics in float32 (a no-op in fp32 runs): bf16 loses too much
        mean = values.mean(dim=dims, keepdim=True)
        std = values.std(dim=dims, keepdim=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = (values - mean) / (std + self.eps) * self.gamma.view(shape) + self.beta.view(shape)
        return out.to(x.dtype)


class ConvBlock(nn.Sequential):
    """The reference's ``Conv2dBlock``: reflection pad, biased convolution, optional norm and activation.

    Its layers are named as the reference's attributes: ``pad``, ``conv``, ``norm`` and
    ``activation`` (the last two only when there is one).

    Args:
        norm: ``"in"`` (InstanceNorm, no affine), ``"ln"`` (``layer_norm``) or ``"none"``.
        activation: ``"relu"``, ``"lrelu"`` (slope 0.2), ``"tanh"`` or ``"none"``.
        layer_norm: the class of the ``"ln"`` norm: :class:`LayerNorm`, or UNIT's
            :class:`~medcyclegan.nets.unit.UnitLayerNorm`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        *,
        norm: str = "none",
        activation: str = "relu",
        layer_norm: type[LayerNorm] = LayerNorm,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            pad=nn.ReflectionPad2d(padding),
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, bias=True),
        )
        if norm == "in":
            layers["norm"] = nn.InstanceNorm2d(out_channels)
        elif norm == "ln":
            layers["norm"] = layer_norm(out_channels)
        elif norm != "none":
            raise ValueError(f"unknown norm {norm!r}")
        if activation == "relu":
            layers["activation"] = nn.ReLU(inplace=True)
        elif activation == "lrelu":
            layers["activation"] = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
        elif activation == "tanh":
            layers["activation"] = nn.Tanh()
        elif activation != "none":
            raise ValueError(f"unknown activation {activation!r}")
        super().__init__(layers)


class ResBlock(nn.Module):
    """The reference's ``ResBlock`` (InstanceNorm): ``x + conv-in(conv-in-relu(x))``, 3x3 convolutions."""

    def __init__(self, channels: int, conv_block: ConvBlockFactory = ConvBlock) -> None:
        super().__init__()
        self.model = nn.Sequential(
            conv_block(channels, channels, 3, 1, 1, norm="in", activation="relu"),
            conv_block(channels, channels, 3, 1, 1, norm="in", activation="none"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.model(x)


class MsImageDis(nn.Module):
    """The reference's multi-scale discriminator: ``num_scales`` PatchGANs, finest first.

    Each: 4x4 stride-2 convolutions (reflection padding 1, LeakyReLU 0.2, no normalisation) from
    ``dim`` channels doubling ``n_layer - 1`` times, then a 1x1 convolution to one logit map; between
    scales a 3x3 stride-2 average pooling (padding 1, not counted). With 3 channels and the
    reference configuration 8,271,171 parameters (1 channel: 8,265,027).
    """

    def __init__(
        self,
        channels: int,
        *,
        dim: int = 64,
        n_layer: int = 4,
        num_scales: int = 3,
        conv_block: ConvBlockFactory = ConvBlock,
    ) -> None:
        super().__init__()
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.cnns = nn.ModuleList(
            self._make_net(channels, dim, n_layer, conv_block) for _ in range(num_scales)
        )

    @staticmethod
    def _make_net(channels: int, dim: int, n_layer: int, conv_block: ConvBlockFactory) -> nn.Sequential:
        layers: list[nn.Module] = [conv_block(channels, dim, 4, 2, 1, activation="lrelu")]
        for _ in range(n_layer - 1):
            layers.append(conv_block(dim, 2 * dim, 4, 2, 1, activation="lrelu"))
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1, 1, 0))
        return nn.Sequential(*layers)

    @classmethod
    def from_config(
        cls, section: UnitConfig | MunitConfig, channels: int, conv_block: ConvBlockFactory = ConvBlock
    ) -> MsImageDis:
        """The discriminator of a ``unit`` or ``munit`` section (``dis_dim``, ``dis_n_layer``,
        ``dis_num_scales``), initialised normal(0, 0.02) as the reference does."""
        discriminator = cls(
            channels,
            dim=section.dis_dim,
            n_layer=section.dis_n_layer,
            num_scales=section.dis_num_scales,
            conv_block=conv_block,
        )
        return init_weights(discriminator, gain=DISCRIMINATOR_INIT_GAIN)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits (N, 1, h_i, w_i) of every scale, finest first."""
        outputs = []
        for index, model in enumerate(self.cnns):
            if index:
                x = self.downsample(x)
            outputs.append(model(x))
        return outputs
