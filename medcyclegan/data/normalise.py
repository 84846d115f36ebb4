"""Exact, invertible intensity normalisation per modality, and plausibility checks of the modality.

Both modalities are mapped linearly from ``[lower, upper]`` to ``[-1, 1]`` (values outside are
clipped), which is the range of the generator's ``tanh`` output:

* CT: ``[lower, upper]`` is the fixed HU window ``DataConfig.ct_window`` (default [-1024, 3000] HU),
  identical for every volume, so that generated CT is denormalised back to HU with the same window.
* MR: MR intensities have no physical unit, so ``[lower, upper]`` are robust percentiles
  (``DataConfig.mr_percentiles``, default 0.5 % and 99.5 %) measured per volume inside its body mask
  (air would otherwise dominate the lower percentile).

The maps are computed in float64 (in blocks, to bound memory) and stored as float32, so
``denormalise(normalise(x)) == x`` within one float32 rounding for values inside the window
(integer HU come back exactly after rounding). MONAI's ``ScaleIntensityRange`` is deliberately not
used: it does not clip by default and has no inverse.

Generated images have no input of their own domain to take a scale from (an MR made from a CT has no
"input MR"), so training records one scale per domain (:func:`domain_record`) and
:func:`output_params` turns that record (a :class:`~medcyclegan.config.DomainNormalisation`) into the
parameters used to denormalise generated images.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcyclegan.config import MODALITIES, DataConfig, DomainNormalisation
from medcyclegan.errors import ConfigError, InputError

logger = logging.getLogger("medcyclegan")

# The normalised value of air: the bottom of the [-1, 1] range (air lies at or below every window's
# lower end). Slices are padded with it, in training (pad/crop to the patch size) and in inference
# (padding to the generator's stride multiple).
AIR_NORMALISED = -1.0

# Modality plausibility thresholds (HU for CT). A CT in HU always contains air (about -1000 HU) in its
# field of view: "nothing below -500 HU" means the values are not HU (e.g. raw stored values without
# the rescale) or the file is not a CT.
CT_AIR_CHECK_HU = -500.0
# MR magnitude images are non-negative (small negative values can come from interpolation or
# filtering; z-scored MR stays within a few units). An "MR" whose minimum is below -500 or with more
# than 5 % of its voxels below -100 looks like a CT in HU.
MR_MIN_CHECK = -500.0
MR_NEGATIVE_LEVEL = -100.0
MR_NEGATIVE_SHARE = 0.05


def check_modality_name(modality: str) -> str:
    """Returns the modality in lower case (``"ct"`` or ``"mr"``); raises ConfigError otherwise."""
    name = str(modality).lower()
    if name not in MODALITIES:
        raise ConfigError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
    return name


@dataclass
class NormParams:
    """A linear map of ``[lower, upper]`` (input units) onto ``[-1, 1]``.

    Attributes:
        modality: ``"ct"`` or ``"mr"``.
        lower: input value mapped to -1 (HU for CT, the MR's own units for MR).
        upper: input value mapped to +1; must be greater than ``lower``.
        clip: clip normalised values to [-1, 1] (the generator cannot produce values outside anyway).
    """

    modality: str
    lower: float
    upper: float
    clip: bool = True

    def __post_init__(self) -> None:
        self.modality = check_modality_name(self.modality)
        self.lower = float(self.lower)
        self.upper = float(self.upper)
        self.clip = bool(self.clip)
        if not (np.isfinite(self.lower) and np.isfinite(self.upper)) or not self.upper > self.lower:
            raise ConfigError(
                f"normalisation needs finite lower < upper; got lower={self.lower}, upper={self.upper}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, ready for YAML/JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormParams:
        """Inverse of :meth:`to_dict`; raises ConfigError for missing or malformed entries."""
        if not isinstance(data, dict):
            raise ConfigError(f"normalisation parameters must be a mapping; got {data!r}")
        missing = {"modality", "lower", "upper"} - set(data)
        if missing:
            raise ConfigError(f"normalisation parameters lack {sorted(missing)}; got {sorted(data)}")
        try:
            lower, upper = float(data["lower"]), float(data["upper"])
        except (TypeError, ValueError):
            raise ConfigError(f"normalisation lower/upper must be numbers; got {data!r}") from None
        return cls(modality=data["modality"], lower=lower, upper=upper, clip=bool(data.get("clip", True)))


def fit_normalisation(
    array: np.ndarray,
    modality: str,
    mask: np.ndarray | None,
    data_cfg: DataConfig,
    *,
    path: str | Path | None = None,
) -> NormParams:
    """Measures the normalisation of one volume.

    Args:
        array: the volume in its natural units (HU for CT).
        modality: ``"ct"`` or ``"mr"``.
        mask: body mask of the same shape; MR percentiles are taken inside it. ``None`` or an empty
            mask uses the whole volume (an empty mask is logged as a warning).
        data_cfg: gives ``ct_window`` (HU) and ``mr_percentiles`` (%).
        path: the file the volume came from, named in errors and warnings.

    Returns:
        CT: the configured HU window. MR: the configured percentiles of the voxels inside the mask.

    Raises:
        InputError: the volume is constant, or (MR) its percentiles coincide, so there is no
            intensity range to map.
    """
    modality = check_modality_name(modality)
    where = path if path is not None else "volume"
    lowest, highest = float(np.min(array)), float(np.max(array))
    if lowest == highest:
        raise InputError(f"volume is constant ({lowest:g}); there is no intensity range to normalise", where)
    if modality == "ct":
        low, high = data_cfg.ct_window
        return NormParams("ct", float(low), float(high))
    values = array
    if mask is not None:
        if mask.shape != array.shape:
            raise ValueError(f"mask shape {mask.shape} does not match array shape {array.shape}")
        if mask.any():
            # Percentiles ignore the order of the values: read a Fortran-ordered volume (as NIfTI is
            # read) in its memory order, through the transposes; array[mask] would take ~20x longer.
            both_fortran = array.flags.f_contiguous and mask.flags.f_contiguous
            values = array.T[mask.T] if both_fortran else array[mask]
        else:
            logger.warning("%s: empty body mask; MR percentiles are taken over the whole volume", where)
    p_low, p_high = data_cfg.mr_percentiles
    low, high = (float(v) for v in np.percentile(values, [p_low, p_high]))
    if not high > low:
        raise InputError(
            f"MR percentiles {p_low:g} % and {p_high:g} % inside the body are equal ({low:g}); "
            "the volume has no usable intensity range",
            where,
        )
    return NormParams("mr", low, high)


def normalise(array: np.ndarray, params: NormParams) -> np.ndarray:
    """Maps ``[params.lower, params.upper]`` linearly onto ``[-1, 1]`` (clipped when ``params.clip``).

    Returns:
        float32 array of the same shape.
    """
    scale = 2.0 / (params.upper - params.lower)
    source = np.asarray(array)
    out = np.empty(source.shape, dtype=np.float32)
    for part in _chunks(source.shape):
        values = (source[part].astype(np.float64) - params.lower) * scale - 1.0
        if params.clip:
            np.clip(values, -1.0, 1.0, out=values)
        out[part] = values
    return out


def denormalise(array: np.ndarray, params: NormParams) -> np.ndarray:
    """Exact inverse of :func:`normalise` (CT back to HU, MR back to the input's scale).

    Values outside [-1, 1] are clipped first when ``params.clip`` (they cannot come from
    :func:`normalise`).

    Returns:
        float32 array of the same shape.
    """
    half_range = 0.5 * (params.upper - params.lower)
    source = np.asarray(array)
    out = np.empty(source.shape, dtype=np.float32)
    for part in _chunks(source.shape):
        values = source[part].astype(np.float64)
        if params.clip:
            np.clip(values, -1.0, 1.0, out=values)
        out[part] = (values + 1.0) * half_range + params.lower
    return out


def _chunks(shape: tuple[int, ...], max_elements: int = 1 << 22) -> list[tuple[slice, ...] | tuple[()]]:
    """Index blocks along the first axis of at most ``max_elements`` each (bounds float64 temporaries)."""
    if len(shape) == 0:
        return [()]
    per_row = int(np.prod(shape[1:], dtype=np.int64)) or 1
    rows = max(1, max_elements // per_row)
    return [(slice(start, start + rows),) for start in range(0, max(shape[0], 1), rows)]


def check_modality(array: np.ndarray, modality: str, path: str | Path | None) -> bool:
    """Warns (logger ``medcyclegan``) when the values contradict the declared modality.

    Rules: a CT without any voxel below -500 HU is not in HU (or not a CT); an MR whose minimum is
    below -500, or with more than 5 % of its voxels below -100, looks like a CT in HU.

    Args:
        array: the volume in its natural units.
        modality: ``"ct"`` or ``"mr"``.
        path: the file, named in the warning.

    Returns:
        True when the values are plausible, False when a warning was logged.
    """
    modality = check_modality_name(modality)
    where = path if path is not None else "volume"
    lowest = float(np.min(array))
    if modality == "ct":
        if lowest >= CT_AIR_CHECK_HU:
            logger.warning(
                "%s: declared CT but no voxel is below %g HU (minimum %g): values may not be in HU "
                "(missing rescale slope/intercept?) or the file is not a CT",
                where,
                CT_AIR_CHECK_HU,
                lowest,
            )
            return False
        return True
    negative_share = float(np.count_nonzero(array < MR_NEGATIVE_LEVEL)) / max(array.size, 1)
    if lowest < MR_MIN_CHECK or negative_share > MR_NEGATIVE_SHARE:
        logger.warning(
            "%s: declared MR but %.1f %% of voxels are below %g and the minimum is %g: "
            "this looks like a CT in HU",
            where,
            100.0 * negative_share,
            MR_NEGATIVE_LEVEL,
            lowest,
        )
        return False
    return True


def domain_record(params_list: list[NormParams], modality: str, data_cfg: DataConfig) -> DomainNormalisation:
    """Summarises the normalisation of a training domain for the run config.

    Args:
        params_list: the per-volume parameters of the domain's training volumes.
        modality: ``"ct"`` or ``"mr"``.
        data_cfg: the run's data config.

    Returns:
        CT: method ``"window"``, the HU ``window`` and ``lower``/``upper`` equal to it. MR: method
        ``"percentiles"``, the ``percentiles``, ``lower``/``upper`` the medians over the volumes (MR
        units) and ``n_volumes``.

    Raises:
        ConfigError: an MR domain without volumes, or parameters of another modality.
    """
    modality = check_modality_name(modality)
    for params in params_list:
        if params.modality != modality:
            raise ConfigError(f"domain {modality!r} received normalisation parameters of {params.modality!r}")
    if modality == "ct":
        low, high = (float(v) for v in data_cfg.ct_window)
        return DomainNormalisation("ct", "window", low, high, window=(low, high))
    if not params_list:
        raise ConfigError("cannot summarise the MR normalisation of a domain without volumes")
    p_low, p_high = (float(v) for v in data_cfg.mr_percentiles)
    return DomainNormalisation(
        "mr",
        "percentiles",
        # Median over volumes: robust to one oddly scaled scan.
        float(np.median([p.lower for p in params_list])),
        float(np.median([p.upper for p in params_list])),
        percentiles=(p_low, p_high),
        n_volumes=len(params_list),
    )


def output_params(record: DomainNormalisation) -> NormParams:
    """Parameters to denormalise GENERATED images of a domain, from its :func:`domain_record`.

    CT: the training HU window. MR: the median scale of the training MR volumes.
    """
    return NormParams(record.modality, record.lower, record.upper)
