"""Weight initialisation of the reference CycleGAN (``init_type="normal"``, gain 0.02), and the
Xavier (CUT) and Kaiming (UNIT, MUNIT) variants.

Convolution, transposed convolution and linear weights are drawn from normal(0, gain) and their
biases set to 0; normalisation layers that have affine parameters get weights from normal(1, gain)
and biases 0. Normalisation layers without affine parameters (the InstanceNorm of the reference)
have nothing to initialise.
"""

from __future__ import annotations

import torch
from torch import nn

from medcyclegan.config import INIT_TYPES
from medcyclegan.errors import ConfigError

# Every convolution flavour (1D/2D/3D, plain and transposed) derives from _ConvNd; the norm layers
# with running statistics (BatchNorm*, InstanceNorm*) from _NormBase.
_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# The config's ``model.init_type`` choices, and the generators' init of UNIT and MUNIT (not a choice).
INIT_METHODS = (*INIT_TYPES, "kaiming")


@torch.no_grad()
def init_weights(
    module: nn.Module,
    gain: float = 0.02,
    generator: torch.Generator | None = None,
    *,
    method: str = "normal",
) -> nn.Module:
    """Initialises every layer of ``module`` in place, as the reference CycleGAN does.

    Args:
        module: network whose sub-layers are initialised (the module itself included).
        gain: standard deviation of the normal distributions (weights of convolutions ~ N(0, gain),
            affine norm weights ~ N(1, gain)).
        generator: random generator to draw from; ``None`` uses torch's global generator.
        method: ``"normal"`` (the reference CycleGAN's) or ``"xavier"``: convolution and linear
            weights from Xavier's normal distribution scaled by ``gain`` (the reference CUT's
            default ``--init_type``, taesungp/contrastive-unpaired-translation models/networks.py)
            or ``"kaiming"``: Kaiming's normal distribution, std sqrt(2 / fan_in) (``gain`` not used;
            the generators' ``weights_init('kaiming')`` of NVlabs/MUNIT networks.py, UNIT's too).

    Returns:
        ``module``, for chaining.

    Raises:
        ConfigError: if ``gain`` is not a positive number.
    """
    if not gain > 0:
        raise ConfigError(f"init gain must be > 0; got {gain!r}")
    if method not in INIT_METHODS:
        raise ConfigError(f"init method must be one of {', '.join(INIT_METHODS)}; got {method!r}")
    for layer in module.modules():
        if isinstance(layer, _WEIGHT_LAYERS):
            if method == "xavier":
                nn.init.xavier_normal_(layer.weight, gain=gain, generator=generator)
            elif method == "kaiming":
                nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_in", generator=generator)
            else:
                nn.init.normal_(layer.weight, 0.0, gain, generator=generator)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, _NORM_LAYERS):
            weight = getattr(layer, "weight", None)
            bias = getattr(layer, "bias", None)
            if weight is not None:
                nn.init.normal_(weight, 1.0, gain, generator=generator)
            if bias is not None:
                nn.init.zeros_(bias)
    return module
