"""A T1-weighted-like pseudo-MR made from a real CT, for measuring MR -> CT translation on real anatomy.

Real paired MR/CT cannot ship with the toolkit, but a real CT can: its pseudo-MR keeps every bone,
airway and lung vessel of the scan at the scan's resolution, and the CT itself is the exact paired
ground truth. The contrast is a fixed, **non-monotonic** map of HU (:data:`T1_LIKE_CONTRAST`), so
that, as in a real T1-weighted MR, intensity alone does not tell air from cortical bone (both dark)
nor fluid from bone marrow: a translator has to use anatomy, not a look-up table. On top of it come
a smooth multiplicative bias field and Rician noise, both seeded.

The map, piecewise linear between these (HU, intensity) points and constant beyond the ends
(intensity in arbitrary scanner units; fat, the brightest tissue, is 1000):

==========  =========  =========================================================================
HU          intensity  tissue
==========  =========  =========================================================================
-1024       0          air outside the body (no signal)
-990        0          air in airways and the trachea
-900        40         aerated lung (very few protons, short T2*): dark
-600        90         dense lung, vessels in partial volume: dark
-400        200        partial volume of lung and soft tissue
-120        1000       fat: bright (short T1)
-80         1000       fat
-30         600        fat and water in partial volume
0           350        fluid (long T1): darker than soft tissue
40          480        muscle, organs, blood: mid-grey
100         500        soft tissue, enhancing organs
250         620        cancellous bone (fatty marrow): intermediate, brighter than muscle
500         560        dense cancellous bone
900         200        compact bone: darkening
1300        60         cortical bone (almost no mobile protons): dark
3071        40         densest bone, metal
==========  =========  =========================================================================

Then: ``mr = |map(ct) * bias + n|`` with a complex Gaussian ``n`` of standard deviation ``sigma =
noise_fraction * 1000`` in each channel (Rician magnitude, rounded), and ``bias = exp(bias_strength *
f)`` for a smooth unit-variance random field ``f`` with features about ``2 * bias_scale_mm`` mm
across (:func:`medcyclegan.sample_data.bias_field`, the phantom's own). The same CT and seed give the
same pseudo-MR, bit for bit.

Example:
    >>> import numpy as np
    >>> ct = np.full((8, 8, 8), 40, dtype=np.int16)  # muscle
    >>> mr = pseudo_mr(ct, (1.0, 1.0, 1.0), seed=0, bias_strength=0.0, noise_fraction=0.0)
    >>> float(mr.mean()), mr.dtype
    (480.0, dtype('float32'))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from medcyclegan.errors import ConfigError
from medcyclegan.io.volume import Volume
from medcyclegan.sample_data import _check_seed as check_seed  # the phantom's own seed rule
from medcyclegan.sample_data import bias_field, rician_magnitude

# (HU, intensity) points of the T1-like contrast map; see the module docstring for the tissues.
T1_LIKE_CONTRAST: tuple[tuple[float, float], ...] = (
    (-1024.0, 0.0),
    (-990.0, 0.0),
    (-900.0, 40.0),
    (-600.0, 90.0),
    (-400.0, 200.0),
    (-120.0, 1000.0),
    (-80.0, 1000.0),
    (-30.0, 600.0),
    (0.0, 350.0),
    (40.0, 480.0),
    (100.0, 500.0),
    (250.0, 620.0),
    (500.0, 560.0),
    (900.0, 200.0),
    (1300.0, 60.0),
    (3071.0, 40.0),
)
# The brightest intensity of the map (fat): the noise level is a fraction of it.
PSEUDO_MR_FULL_SCALE = max(intensity for _, intensity in T1_LIKE_CONTRAST)

DEFAULT_BIAS_STRENGTH = 0.1  # standard deviation of the log gain: about +-10 %
DEFAULT_BIAS_SCALE_MM = 80.0  # a coil's sensitivity changes over about 16 cm
DEFAULT_NOISE_FRACTION = 0.02  # sigma = 20 units: SNR about 24 in muscle, 50 in fat


def t1_like_contrast(ct_hu: np.ndarray) -> np.ndarray:
    """The noise-free, bias-free T1-like intensity of every voxel of ``ct_hu`` (float32, same shape).

    Piecewise linear through :data:`T1_LIKE_CONTRAST`, constant below -1024 HU and above 3071 HU.
    """
    hu, intensity = (np.asarray(column, dtype=np.float64) for column in zip(*T1_LIKE_CONTRAST))
    values = np.asarray(ct_hu, dtype=np.float32)
    return np.interp(values, hu, intensity).astype(np.float32)


def _check_parameters(seed: int, bias_strength: float, bias_scale_mm: float, noise_fraction: float) -> None:
    check_seed(seed, "pseudo-MR seed")
    for name, value, positive in (
        ("bias_strength", bias_strength, False),
        ("bias_scale_mm", bias_scale_mm, True),
        ("noise_fraction", noise_fraction, False),
    ):
        number = float(value)
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            kind = "a positive" if positive else "a non-negative"
            raise ConfigError(f"must be {kind} finite number; got {value!r}", f"pseudo-MR {name}")


def pseudo_mr(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    seed: int = 0,
    bias_strength: float = DEFAULT_BIAS_STRENGTH,
    bias_scale_mm: float = DEFAULT_BIAS_SCALE_MM,
    noise_fraction: float = DEFAULT_NOISE_FRACTION,
) -> np.ndarray:
    """A T1-weighted-like MR of a CT volume: contrast map, bias field, Rician noise (see the module).

    Args:
        ct_hu: CT in Hounsfield units, 3D (any voxel order; ``spacing`` follows its axes).
        spacing: voxel size in mm along the three axes (the bias field is smooth in mm).
        seed: seed of the bias field and the noise (non-negative).
        bias_strength: standard deviation of the log gain of the bias field (0: none).
        bias_scale_mm: size of the bias field's features (about twice this, in mm).
        noise_fraction: noise sigma per channel as a fraction of fat's intensity (0: none).

    Returns:
        float32 array of the same shape, integer-valued, non-negative.

    Raises:
        ConfigError: a negative seed or an invalid bias or noise parameter.
        ValueError: ``ct_hu`` is not 3D, or ``spacing`` does not have 3 positive sizes.
    """
    _check_parameters(seed, bias_strength, bias_scale_mm, noise_fraction)
    ct = np.asarray(ct_hu)
    if ct.ndim != 3:
        raise ValueError(f"expected a 3D CT volume, got shape {ct.shape}")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_t):
        raise ValueError(f"spacing must be 3 positive sizes in mm; got {tuple(spacing)!r}")
    rng = np.random.default_rng(int(seed))
    signal = t1_like_contrast(ct)
    # The field and the noise are always drawn, so that each parameter changes only its own part.
    signal *= bias_field(rng, ct.shape, spacing_t, bias_strength, scale_mm=bias_scale_mm)
    return rician_magnitude(rng, signal, noise_fraction * PSEUDO_MR_FULL_SCALE)


def pseudo_mr_volume(
    ct: Volume,
    *,
    seed: int = 0,
    bias_strength: float = DEFAULT_BIAS_STRENGTH,
    bias_scale_mm: float = DEFAULT_BIAS_SCALE_MM,
    noise_fraction: float = DEFAULT_NOISE_FRACTION,
) -> Volume:
    """:func:`pseudo_mr` of a CT :class:`~medcyclegan.io.volume.Volume`, on exactly its grid (float32).

    The geometry is the CT's (shape, affine, orientation, header codes) with the value type float32,
    so writing it back gives the pseudo-MR on the CT's grid.
    """
    array = pseudo_mr(
        ct.array,
        ct.spacing,
        seed=seed,
        bias_strength=bias_strength,
        bias_scale_mm=bias_scale_mm,
        noise_fraction=noise_fraction,
    )
    return Volume(array, dataclasses.replace(ct.geometry, dtype="float32"))
