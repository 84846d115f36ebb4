"""Image similarity metrics of the SynthRAD challenges (synthetic CT against reference CT, in HU).

Two standards are implemented, each on one 3D volume with a binary body mask ``m``:

SynthRAD2023 (:func:`synthrad2023`; definitions from the challenge's published evaluation, as
summarised in ``REFERENCE.md`` section 3):
    * MAE [HU] = sum(|ref - pred| over m) / count(m). No clipping.
    * PSNR [dB]: both clipped to [-1024, 3000] HU; only voxels in ``m``;
      ``skimage.metrics.peak_signal_noise_ratio(ref_m, pred_m, data_range=4024)``, i.e.
      ``10 * log10(4024**2 / mean((ref_m - pred_m)**2))``.
    * SSIM: both clipped to [-1024, 3000] HU; voxels outside ``m`` set to -1024 in both; +1024 so that
      values are non-negative; ``skimage.metrics.structural_similarity(ref, pred, data_range=4024,
      full=True)`` on the 3D volume (7-voxel uniform window, sample covariance, K1 = 0.01, K2 = 0.03);
      the result is the mean of the SSIM map over the mask voxels after cropping 3 voxels
      (``win_size // 2``) from every border of both map and mask (skimage's own border rule).

SynthRAD2025 (:func:`synthrad2025`; https://synthrad2025.grand-challenge.org/metrics-ranking and
``REFERENCE.md`` section 3):
    * Both volumes clipped to [-1024, 3071] HU (data range 4095) and set to -1024 outside ``m`` before
      every metric (MAE included, unlike 2023).
    * MAE [HU] and PSNR [dB] (data range 4095) on the mask voxels, as above.
    * MS-SSIM, masked (:func:`masked_ms_ssim`): multi-scale SSIM of Wang, Simoncelli & Bovik (2003),
      5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).

The ``data_range`` alone moves PSNR by several dB, so every report records it, together with the clip
range and the source of the mask (:func:`metric_metadata`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medcyclegan.errors import ConfigError

logger = logging.getLogger("medcyclegan")

STANDARDS = ("synthrad2023", "synthrad2025")

# SynthRAD2023: HU clip window for PSNR and SSIM; data_range = 3000 - (-1024).
SYNTHRAD2023_CLIP_HU = (-1024.0, 3000.0)
# SynthRAD2025: HU clip window applied before every metric; data_range = 3071 - (-1024).
SYNTHRAD2025_CLIP_HU = (-1024.0, 3071.0)

SSIM_WINDOW = 7  # voxels, uniform window (skimage default)
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Smallest side that lets a 7-voxel window fit at the 5th scale after four ceil-halvings
# (97 -> 49 -> 25 -> 13 -> 7); the same bound as the usual MS-SSIM implementations, (7 - 1) * 2**4 + 1.
MS_SSIM_MIN_SIZE = (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1

BODY_MASK_METHOD = "computed from reference (Otsu, dilation, closing, dilation)"

METRIC_UNITS = {"mae": "HU", "psnr": "dB", "ssim": "1", "ms_ssim": "1"}


def _check_standard(standard: str) -> None:
    if standard not in STANDARDS:
        raise ConfigError(f"unknown standard {standard!r}; expected one of: {', '.join(STANDARDS)}")


def metric_names(standard: str) -> tuple[str, ...]:
    """The metric keys a standard returns, in report order (e.g. ``("mae", "psnr", "ssim")``).

    Raises:
        ConfigError: ``standard`` is not one of :data:`STANDARDS`.
    """
    _check_standard(standard)
    return ("mae", "psnr", "ssim") if standard == "synthrad2023" else ("mae", "psnr", "ms_ssim")


def metric_metadata(standard: str) -> dict[str, Any]:
    """What a report must record to make its numbers comparable: data range, clip range, definitions.

    Args:
        standard: ``"synthrad2023"`` or ``"synthrad2025"``.

    Returns:
        A JSON-ready dict: ``standard``, ``data_range`` (HU), ``clip_range_hu`` ([low, high] HU),
        ``mae_clipped`` (whether MAE uses the clipped values), ``outside_mask_hu`` (value given to voxels
        outside the mask before SSIM/MS-SSIM), ``metrics`` (key -> one-line definition), ``units``,
        ``ssim_window`` (voxels) and, for 2025, ``ms_ssim_weights``.

    Raises:
        ConfigError: unknown ``standard``.
    """
    _check_standard(standard)
    if standard == "synthrad2023":
        low, high = SYNTHRAD2023_CLIP_HU
        definitions = {
            "mae": "mean |ref - pred| over mask voxels, unclipped HU",
            "psnr": "skimage peak_signal_noise_ratio on clipped mask voxels, data_range 4024",
            "ssim": (
                "skimage structural_similarity (3D, 7-voxel uniform window, sample covariance, K1 0.01, "
                "K2 0.03) on clipped volumes set to -1024 outside the mask and shifted by +1024; "
                "map averaged over mask voxels after cropping 3 voxels from every border"
            ),
        }
        extra: dict[str, Any] = {}
    else:
        low, high = SYNTHRAD2025_CLIP_HU
        definitions = {
            "mae": "mean |ref - pred| over mask voxels, both clipped to [-1024, 3071] HU",
            "psnr": "skimage peak_signal_noise_ratio on clipped mask voxels, data_range 4095",
            "ms_ssim": (
                "masked multi-scale SSIM (Wang et al. 2003): 5 scales, 7-voxel uniform window, sample "
                "covariance, K1 0.01, K2 0.03, mean contrast-structure term at scales 1-4 and mean SSIM "
                "at scale 5 over mask voxels (3-voxel border cropped), negative means clamped to 0, "
                "2x2x2 box downsampling (mask: any of 8), each side padded with background to >= 97"
            ),
        }
        extra = {"ms_ssim_weights": list(MS_SSIM_WEIGHTS), "ms_ssim_min_size": MS_SSIM_MIN_SIZE}
    return {
        "standard": standard,
        "data_range": high - low,
        "clip_range_hu": [low, high],
        "mae_clipped": standard == "synthrad2025",
        "outside_mask_hu": low,
        "metrics": definitions,
        "units": {name: METRIC_UNITS[name] for name in definitions},
        "ssim_window": SSIM_WINDOW,
        **extra,
    }


def compute_metrics(
    standard: str, pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """Dispatches to :func:`synthrad2023` or :func:`synthrad2025`.

    Raises:
        ConfigError: unknown ``standard``.
    """
    _check_standard(standard)
    function = synthrad2023 if standard == "synthrad2023" else synthrad2025
    return function(pred_hu, ref_hu, mask)


# --------------------------------------------------------------------------- shared helpers
def _prepare(
    pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 C-ordered copies (int16 differences would overflow) and a bool mask, after checking shapes.

    C order for all three: boolean indexing and skimage's filters run several times slower on
    Fortran-ordered volumes (NIfTI files are read in that order), and mixed orders slower still.
    """
    pred = np.asarray(pred_hu, dtype=np.float64, order="C")
    ref = np.asarray(ref_hu, dtype=np.float64, order="C")
    mask_bool = np.ascontiguousarray(np.asarray(mask) > 0)  # any non-zero label value counts as inside
    if pred.shape != ref.shape or mask_bool.shape != ref.shape:
        raise ValueError(
            f"shapes differ: pred {pred.shape}, ref {ref.shape}, mask {mask_bool.shape} (voxels); "
            "the metrics need one voxel grid"
        )
    if ref.ndim != 3:
        raise ValueError(f"expected 3D volumes, got shape {ref.shape}")
    return pred, ref, mask_bool


def _psnr(ref_values: np.ndarray, pred_values: np.ndarray, data_range: float) -> float:
    """skimage's PSNR on two 1D arrays; ``inf`` for identical values (skimage would warn on 0/0)."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(ref_values, pred_values):
        return float("inf")
    return float(peak_signal_noise_ratio(ref_values, pred_values, data_range=data_range))


def _crop(array: np.ndarray, width: int) -> np.ndarray:
    """Removes ``width`` voxels from both ends of every axis (skimage.util.crop(array, width))."""
    return array[tuple(slice(width, size - width) for size in array.shape)]


def _nan_result(names: tuple[str, ...]) -> dict[str, float]:
    return {name: float("nan") for name in names}


# --------------------------------------------------------------------------- SynthRAD2023
def synthrad2023(pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """MAE, PSNR and SSIM of a synthetic CT with the SynthRAD2023 definitions (see module docstring).

    Args:
        pred_hu: synthetic CT in HU, 3D.
        ref_hu: reference CT in HU, same shape.
        mask: body mask, same shape; non-zero voxels are inside.

    Returns:
        ``{"mae": HU, "psnr": dB, "ssim": unitless}``. PSNR is ``inf`` when the masked voxels are
        identical. All values are NaN (with a warning) if the mask is empty; SSIM is NaN (with a
        warning) if a side is shorter than the 7-voxel window.

    Raises:
        ValueError: the arrays are not 3D or do not share one shape.
    """
    from skimage.metrics import structural_similarity

    names = metric_names("synthrad2023")
    pred, ref, inside = _prepare(pred_hu, ref_hu, mask)
    if not inside.any():
        logger.warning("empty mask: SynthRAD2023 metrics are undefined (NaN)")
        return _nan_result(names)
    low, high = SYNTHRAD2023_CLIP_HU
    data_range = high - low

    mae = float(np.abs(ref[inside] - pred[inside]).mean())

    ref_clip = np.clip(ref, low, high)
    pred_clip = np.clip(pred, low, high)
    psnr = _psnr(ref_clip[inside], pred_clip[inside], data_range)

    if min(ref.shape) < SSIM_WINDOW:
        logger.warning(
            "volume shape %s is smaller than the %d-voxel SSIM window: SSIM is NaN", ref.shape, SSIM_WINDOW
        )
        ssim = float("nan")
    else:
        # Background at the bottom of the window, then shifted to be non-negative, as in the definition.
        ref_ssim = np.where(inside, ref_clip, low) - low
        pred_ssim = np.where(inside, pred_clip, low) - low
        _, ssim_map = structural_similarity(
            ref_ssim, pred_ssim, data_range=data_range, win_size=SSIM_WINDOW, full=True
        )
        border = SSIM_WINDOW // 2
        inside_cropped = _crop(inside, border)
        if inside_cropped.any():
            ssim = float(_crop(ssim_map, border)[inside_cropped].mean(dtype=np.float64))
        else:
            logger.warning("mask lies entirely within %d voxels of the volume border: SSIM is NaN", border)
            ssim = float("nan")
    return {"mae": mae, "psnr": psnr, "ssim": ssim}


# --------------------------------------------------------------------------- SynthRAD2025
def synthrad2025(pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """MAE, PSNR and masked MS-SSIM of a synthetic CT with the SynthRAD2025 definitions.

    Both volumes are clipped to [-1024, 3071] HU and set to -1024 outside the mask before every metric.

    Args:
        pred_hu: synthetic CT in HU, 3D.
        ref_hu: reference CT in HU, same shape.
        mask: body mask, same shape; non-zero voxels are inside.

    Returns:
        ``{"mae": HU, "psnr": dB, "ms_ssim": unitless}``; all NaN (with a warning) for an empty mask;
        PSNR ``inf`` for identical masked voxels.

    Raises:
        ValueError: the arrays are not 3D or do not share one shape.
    """
    names = metric_names("synthrad2025")
    pred, ref, inside = _prepare(pred_hu, ref_hu, mask)
    if not inside.any():
        logger.warning("empty mask: SynthRAD2025 metrics are undefined (NaN)")
        return _nan_result(names)
    low, high = SYNTHRAD2025_CLIP_HU
    data_range = high - low
    ref_clip = np.where(inside, np.clip(ref, low, high), low)
    pred_clip = np.where(inside, np.clip(pred, low, high), low)

    mae = float(np.abs(ref_clip[inside] - pred_clip[inside]).mean())
    psnr = _psnr(ref_clip[inside], pred_clip[inside], data_range)
    # Shift to non-negative values as in 2023: the luminance term depends on the absolute level.
    ms_ssim = masked_ms_ssim(pred_clip - low, ref_clip - low, inside, data_range=data_range)
    return {"mae": mae, "psnr": psnr, "ms_ssim": ms_ssim}


def ssim_terms(
    image_a: np.ndarray, image_b: np.ndarray, data_range: float, win_size: int = SSIM_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise luminance and contrast-structure maps of SSIM, exactly as skimage computes them.

    Uniform ``win_size`` window (``scipy.ndimage.uniform_filter``, reflect mode), sample covariance
    (factor N / (N - 1), N = win_size**ndim), C1 = (0.01 R)^2, C2 = (0.03 R)^2 with R = ``data_range``.
    ``luminance * contrast_structure`` equals skimage's ``structural_similarity(..., full=True)`` map;
    skimage does not expose the two factors, which MS-SSIM needs separately.

    Args:
        image_a: first image (float64), any number of dimensions.
        image_b: second image, same shape.
        data_range: value range R of the images.
        win_size: odd window side in voxels.

    Returns:
        ``(luminance, contrast_structure)`` maps, each the shape of the input.
    """
    n_window = win_size**image_a.ndim
    cov_norm = n_window / (n_window - 1)
    mean_a = ndi.uniform_filter(image_a, size=win_size)
    mean_b = ndi.uniform_filter(image_b, size=win_size)
    var_a = cov_norm * (ndi.uniform_filter(image_a * image_a, size=win_size) - mean_a * mean_a)
    var_b = cov_norm * (ndi.uniform_filter(image_b * image_b, size=win_size) - mean_b * mean_b)
    cov_ab = cov_norm * (ndi.uniform_filter(image_a * image_b, size=win_size) - mean_a * mean_b)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    luminance = (2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1)
    contrast_structure = (2 * cov_ab + c2) / (var_a + var_b + c2)
    return luminance, contrast_structure


def _pad_to_min_size(
    image_a: np.ndarray, image_b: np.ndarray, mask: np.ndarray, min_size: int, background: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads every side shorter than ``min_size`` voxels, centred, with background (and mask False)."""
    pad = []
    for size in mask.shape:
        missing = max(0, min_size - size)
        pad.append((missing // 2, missing - missing // 2))
    if not any(before or after for before, after in pad):
        return image_a, image_b, mask
    return (
        np.pad(image_a, pad, constant_values=background),
        np.pad(image_b, pad, constant_values=background),
        np.pad(mask, pad, constant_values=False),
    )


def _downsample(image: np.ndarray, background: float) -> np.ndarray:
    """2x2x2 box mean; odd sides are first padded with one voxel of ``background`` (ceil halving)."""
    pad = [(0, size % 2) for size in image.shape]
    if any(after for _, after in pad):
        image = np.pad(image, pad, constant_values=background)
    a, b, c = (size // 2 for size in image.shape)
    return image.reshape(a, 2, b, 2, c, 2).mean(axis=(1, 3, 5))


def _downsample_mask(mask: np.ndarray) -> np.ndarray:
    """A coarse voxel is inside if any of its 8 children is (ceil halving, padding outside)."""
    pad = [(0, size % 2) for size in mask.shape]
    if any(after for _, after in pad):
        mask = np.pad(mask, pad, constant_values=False)
    a, b, c = (size // 2 for size in mask.shape)
    return mask.reshape(a, 2, b, 2, c, 2).any(axis=(1, 3, 5))


def masked_ms_ssim(
    image_a: np.ndarray,
    image_b: np.ndarray,
    mask: np.ndarray,
    *,
    data_range: float,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    background: float = 0.0,
) -> float:
    """Multi-scale SSIM averaged inside a mask (3D).

    Definition (Wang, Simoncelli & Bovik 2003, "Multi-scale structural similarity for image quality
    assessment"; masked and 3D as in SynthRAD2025):

        MS-SSIM = prod_{j=1..M-1} max(cs_j, 0)^w_j * max(ssim_M, 0)^w_M,   M = len(weights) = 5

    where ``cs_j`` is the mean of the contrast-structure map and ``ssim_M`` the mean of the full SSIM
    map (luminance x contrast-structure) over the mask voxels of that scale, 3 voxels (``win // 2``)
    cropped from every border as skimage does for SSIM. The luminance term enters only at the coarsest
    scale, as in Wang et al.; SSIM maps come from :func:`ssim_terms` (7-voxel uniform window, sample
    covariance, K1 0.01, K2 0.03).

    Choices (documented because the published description leaves them open):
        * Before the first scale every side shorter than 97 voxels is padded (centred) with
          ``background`` and the mask with False, so that the 7-voxel window still fits at scale 5.
        * Between scales, images are 2x2x2 box-averaged; odd sides get one voxel of ``background``
          first (ceil halving, as ``avg_pool`` with ``padding = size % 2`` in common implementations).
        * The mask is downsampled with "any of the 8 children": a thin structure never vanishes at a
          coarse scale (so the mask stays non-empty), and the boundary voxels it adds mix body and
          background in both images alike, so they are still compared fairly.
        * Negative per-scale means are clamped at 0 before the power (a negative base with a fractional
          exponent is undefined); common implementations (e.g. pytorch-msssim's ReLU) do the same.

    Args:
        image_a: first volume, non-negative (e.g. clipped HU + 1024), 3D.
        image_b: second volume, same shape.
        mask: bool mask, same shape.
        data_range: value range R of the images (e.g. 4095).
        weights: per-scale exponents, finest first.
        background: value outside the field of view, used for padding.

    Returns:
        MS-SSIM in [0, 1] (1 for identical images); NaN (with a warning) if the mask is empty or lies
        entirely in the cropped border at some scale.
    """
    image_a = np.asarray(image_a, dtype=np.float64)
    image_b = np.asarray(image_b, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if image_a.shape != image_b.shape or mask.shape != image_a.shape or image_a.ndim != 3:
        raise ValueError(
            f"expected three 3D arrays of one shape, got {image_a.shape}, {image_b.shape}, {mask.shape}"
        )
    min_size = (SSIM_WINDOW - 1) * 2 ** (len(weights) - 1) + 1
    image_a, image_b, mask = _pad_to_min_size(image_a, image_b, mask, min_size, background)
    border = SSIM_WINDOW // 2
    result = 1.0
    for scale, weight in enumerate(weights):
        luminance, contrast_structure = ssim_terms(image_a, image_b, data_range)
        inside = _crop(mask, border)
        if not inside.any():
            logger.warning("MS-SSIM: no mask voxel away from the border at scale %d: NaN", scale + 1)
            return float("nan")
        last = scale == len(weights) - 1
        term_map = luminance * contrast_structure if last else contrast_structure
        term = float(_crop(term_map, border)[inside].mean(dtype=np.float64))
        result *= max(term, 0.0) ** weight
        if not last:
            image_a = _downsample(image_a, background)
            image_b = _downsample(image_b, background)
            mask = _downsample_mask(mask)
    return float(result)


# --------------------------------------------------------------------------- body mask
def synthrad_body_mask(ref_hu: np.ndarray) -> np.ndarray:
    """Body mask of a reference CT as in the SynthRAD preprocessing: Otsu, dilation, closing, dilation.

    Steps (structuring elements in voxels, 3D):
        1. Clip to [-1024, 3071] HU, so that out-of-field padding values (e.g. -3024 or -2048 HU) fall
           into the air class instead of becoming a class of their own.
        2. Threshold: voxels above ``skimage.filters.threshold_otsu`` of the clipped volume.
        3. Binary dilation with a 3x3x3 cube (26-connected, one voxel).
        4. Binary closing with a ball of radius 2 voxels (``skimage.morphology.ball(2)``, 5x5x5); the
           volume is zero-padded by 2 voxels first so that the closing does not erode the mask where
           it touches the volume border.
        5. Binary dilation with a 3x3x3 cube.

    Args:
        ref_hu: reference CT in HU, 3D.

    Returns:
        bool array of the same shape; all False for a constant volume.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import ball

    ref = np.clip(np.asarray(ref_hu, dtype=np.float64), *SYNTHRAD2025_CLIP_HU)
    if ref.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {ref.shape}")
    if ref.min() == ref.max():
        return np.zeros(ref.shape, dtype=bool)
    mask = ref > threshold_otsu(ref)
    cube = np.ones((3, 3, 3), dtype=bool)
    mask = ndi.binary_dilation(mask, structure=cube)
    radius = 2
    padded = np.pad(mask, radius, constant_values=False)
    mask = _crop(ndi.binary_closing(padded, structure=ball(radius).astype(bool)), radius)
    return ndi.binary_dilation(mask, structure=cube)
