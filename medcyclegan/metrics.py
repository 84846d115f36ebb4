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

SynthRAD2025 (:func:`synthrad2025`; as the challenge's own evaluation code computes it,
SynthRAD2025/evaluation ``image_metrics.py`` at commit 17cac47, and ``REFERENCE.md`` section 3):
    * MAE [HU] = mean |ref - pred| over ``m``, **not clipped** (as in 2023).
    * PSNR [dB]: both clipped to [-1024, 3071] HU (data range 4095), mask voxels only.
    * MS-SSIM, masked (:func:`masked_ms_ssim`): both clipped to [-1024, 3071] HU, set to -1024 outside
      ``m``, +1024; multi-scale SSIM of Wang, Simoncelli & Bovik (2003) in the challenge code's form,
      5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).

In both standards a voxel is inside the mask when its mask value is > 0 (negative values are outside),
and PSNR is ``inf`` when the masked voxels of both volumes are identical (skimage's 10 log10(R^2 / 0)).

The ``data_range`` alone moves PSNR by several dB, so every report records it, together with the clip
range and the source of the mask (:func:`metric_metadata`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.morphology import ball

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
# Every side is padded to at least 97 voxels before MS-SSIM, so that the 7-voxel window fits at the 5th
# scale after four ceil-halvings (97 -> 49 -> 25 -> 13 -> 7); the SynthRAD2025 code fixes 97 whatever
# the number of scales.
MS_SSIM_MIN_SIZE = 97

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
        ``mae_clipped`` (whether MAE uses the clipped values: False in both standards),
        ``mask_rule`` (which mask values count as inside), ``outside_mask_hu`` (value given to voxels
        outside the mask before SSIM/MS-SSIM), ``metrics`` (key -> one-line definition), ``units``,
        ``psnr_identical`` (PSNR of identical masked voxels), ``ssim_window`` (voxels) and, for 2025,
        ``ms_ssim_weights`` and ``ms_ssim_min_size``.

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
            "mae": "mean |ref - pred| over mask voxels, unclipped HU",
            "psnr": "skimage peak_signal_noise_ratio on clipped mask voxels, data_range 4095",
            "ms_ssim": (
                "masked multi-scale SSIM as the SynthRAD2025 evaluation code (commit 17cac47): clipped "
                "volumes set to -1024 outside the mask and shifted by +1024; each side edge-padded "
                "(numpy mode 'edge', mask alike) to >= 97; 5 scales, 7-voxel uniform window, sample "
                "covariance, K1 0.01, K2 0.03, C3 = C2/2; at each scale the mean over mask voxels "
                "(3-voxel border cropped) of l^w c^w s^w, clipped to [0, 1]; product over scales; "
                "images halved by a 2x2x2 box (fftconvolve 'same', then [::2]), the mask by [::2]"
            ),
        }
        extra = {"ms_ssim_weights": list(MS_SSIM_WEIGHTS), "ms_ssim_min_size": MS_SSIM_MIN_SIZE}
    return {
        "standard": standard,
        "data_range": high - low,
        "clip_range_hu": [low, high],
        "mae_clipped": False,
        "mask_rule": "inside where mask value > 0",
        "outside_mask_hu": low,
        "metrics": definitions,
        "units": {name: METRIC_UNITS[name] for name in definitions},
        "psnr_identical": "inf",
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
    mask_bool = np.ascontiguousarray(np.asarray(mask) > 0)  # the SynthRAD rule: negative values are outside
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
        mask: body mask, same shape; voxels > 0 are inside.

    Returns:
        ``{"mae": HU, "psnr": dB, "ssim": unitless}``. PSNR is ``inf`` when the masked voxels are
        identical. All values are NaN (with a warning) if the mask is empty; SSIM is NaN (with a
        warning) if a side is shorter than the 7-voxel window.

    Raises:
        ValueError: the arrays are not 3D or do not share one shape.
    """
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

    MAE on the unclipped HU of the mask voxels; PSNR and MS-SSIM on volumes clipped to [-1024, 3071] HU
    and set to -1024 outside the mask (see the module docstring).

    Args:
        pred_hu: synthetic CT in HU, 3D.
        ref_hu: reference CT in HU, same shape.
        mask: body mask, same shape; voxels > 0 are inside.

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
    # The official code sets voxels outside the mask to -1024 before its MAE but does not clip: the
    # masked mean then sees the raw HU.
    mae = float(np.abs(ref[inside] - pred[inside]).mean())
    ref_clip = np.where(inside, np.clip(ref, low, high), low)
    pred_clip = np.where(inside, np.clip(pred, low, high), low)
    psnr = _psnr(ref_clip[inside], pred_clip[inside], data_range)
    # Shift to non-negative values as in 2023: the luminance term depends on the absolute level.
    ms_ssim = masked_ms_ssim(pred_clip - low, ref_clip - low, inside, data_range=data_range)
    return {"mae": mae, "psnr": psnr, "ms_ssim": ms_ssim}


def ssim_components(
    image_a: np.ndarray, image_b: np.ndarray, data_range: float, win_size: int = SSIM_WINDOW
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-wise luminance, contrast and structure maps of SSIM (Wang et al. 2004, eqs. 6, 9, 10).

    Local statistics as skimage's SSIM: uniform ``win_size`` window (``scipy.ndimage.uniform_filter``,
    reflect mode), sample (co)variance (factor N / (N - 1), N = win_size**ndim). Constants C1 = (0.01 R)^2,
    C2 = (0.03 R)^2, C3 = C2 / 2, R = ``data_range``:

        l = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
        c = (2 sd_a sd_b + C2) / (var_a + var_b + C2)
        s = (cov_ab + C3) / (sd_a sd_b + C3)

    with sd = sqrt(max(var, 0)) (rounding can make a flat window's variance slightly negative), and each
    map clamped at 0 from below, as the SynthRAD2025 evaluation does. With C3 = C2 / 2, ``c * s`` equals
    skimage's contrast-structure term (2 cov + C2) / (var_a + var_b + C2) wherever s >= 0.

    Args:
        image_a: first image (float64), any number of dimensions.
        image_b: second image, same shape.
        data_range: value range R of the images.
        win_size: odd window side in voxels.

    Returns:
        ``(luminance, contrast, structure)`` maps, each the shape of the input.
    """
    n_window = win_size**image_a.ndim
    cov_norm = n_window / (n_window - 1)
    mean_a = ndi.uniform_filter(image_a, size=win_size)
    mean_b = ndi.uniform_filter(image_b, size=win_size)
    var_a = cov_norm * (ndi.uniform_filter(image_a * image_a, size=win_size) - mean_a * mean_a)
    var_b = cov_norm * (ndi.uniform_filter(image_b * image_b, size=win_size) - mean_b * mean_b)
    cov_ab = cov_norm * (ndi.uniform_filter(image_a * image_b, size=win_size) - mean_a * mean_b)
    sd_product = np.sqrt(np.maximum(var_a, 0.0) * np.maximum(var_b, 0.0))
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    c3 = c2 / 2
    luminance = np.maximum((2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1), 0.0)
    contrast = np.maximum((2 * sd_product + c2) / (var_a + var_b + c2), 0.0)
    structure = np.maximum((cov_ab + c3) / (sd_product + c3), 0.0)
    return luminance, contrast, structure


def _pad_to_min_size(
    image_a: np.ndarray, image_b: np.ndarray, mask: np.ndarray, min_size: int = MS_SSIM_MIN_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads every side shorter than ``min_size`` to ``min_size`` by repeating its edge voxels.

    ``numpy.pad(mode="edge")`` on images and mask alike, ``(min_size - n) // 2`` voxels before and the
    rest after, as the SynthRAD2025 evaluation does: a mask that touches the border grows into the
    padding, and so do the image values there.
    """
    pad = []
    for size in mask.shape:
        missing = max(0, min_size - size)
        pad.append((missing // 2, missing - missing // 2))
    if not any(before or after for before, after in pad):
        return image_a, image_b, mask
    return (
        np.pad(image_a, pad, mode="edge"),
        np.pad(image_b, pad, mode="edge"),
        np.pad(mask, pad, mode="edge"),
    )


def _box_downsample(image: np.ndarray) -> np.ndarray:
    """Halves a 3D image: coarse[i, j, k] = mean of fine[2i-1 : 2i+1, 2j-1 : 2j+1, 2k-1 : 2k+1], zeros before 0.

    This is what the SynthRAD2025 evaluation computes with
    ``scipy.signal.fftconvolve(image, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]``: the "same"
    window of a 2-tap kernel ends at the output voxel, so each coarse voxel averages its fine voxel and
    the one before it (one voxel offset from an aligned 2x2x2 mean), and the first one on every axis
    averages in zeros. Computed here directly (exact sums instead of FFT rounding); ceil(n / 2) per axis.
    """
    sizes = [(size + 1) // 2 for size in image.shape]
    # One zero before index 0 on each axis, then keep 2 * ceil(n / 2) voxels so that pairs (2i - 1, 2i)
    # line up with (0, 1), (2, 3), ... of the padded array.
    padded = np.pad(image, [(1, 0)] * image.ndim)[tuple(slice(0, 2 * size) for size in sizes)]
    a, b, c = sizes
    return padded.reshape(a, 2, b, 2, c, 2).mean(axis=(1, 3, 5))


def masked_ms_ssim(
    image_a: np.ndarray,
    image_b: np.ndarray,
    mask: np.ndarray,
    *,
    data_range: float,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
) -> float:
    """Multi-scale SSIM averaged inside a mask (3D), computed as the SynthRAD2025 evaluation does.

    Based on Wang, Simoncelli & Bovik (2003), "Multi-scale structural similarity for image quality
    assessment", in the form of the challenge's own code (SynthRAD2025/evaluation ``image_metrics.py``,
    commit 17cac47), quirks included so that the numbers are comparable with the leaderboard:

        MS-SSIM = prod_{j=1..M} clip(mean_{mask_j}(l_j^w_j * c_j^w_j * s_j^w_j), 0, 1),   M = len(weights)

    where ``l_j, c_j, s_j`` are the luminance, contrast and structure maps of scale ``j``
    (:func:`ssim_components`) and the mean runs over the mask voxels of that scale after cropping 3
    voxels (``win // 2``) from every border of map and mask. In detail:

        * the mean is taken of the powered product map (not the mean raised to the power);
        * luminance enters at every scale, with the scale's weight (not only at the coarsest scale);
        * before the first scale every side shorter than 97 voxels is padded to 97 with
          ``numpy.pad(mode="edge")``, images and mask alike (``(97 - n) // 2`` voxels before);
        * between scales the images are halved by :func:`_box_downsample` (the 2x2x2 box of
          ``fftconvolve(..., "same")`` then ``[::2]``, one voxel offset, zeros before the first voxel);
        * the mask is halved by taking every other voxel, ``mask[::2, ::2, ::2]``.

    Args:
        image_a: first volume, non-negative (e.g. clipped HU + 1024, 0 outside the mask), 3D.
        image_b: second volume, same shape.
        mask: bool mask, same shape.
        data_range: value range R of the images (e.g. 4095).
        weights: per-scale exponents, finest first (used for l, c and s alike).

    Returns:
        MS-SSIM in [0, 1] (1 for identical images); NaN (with a warning) if at some scale no mask voxel
        is left after cropping (the official code's mean of an empty selection is NaN too).
    """
    image_a = np.asarray(image_a, dtype=np.float64)
    image_b = np.asarray(image_b, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if image_a.shape != image_b.shape or mask.shape != image_a.shape or image_a.ndim != 3:
        raise ValueError(
            f"expected three 3D arrays of one shape, got {image_a.shape}, {image_b.shape}, {mask.shape}"
        )
    image_a, image_b, mask = _pad_to_min_size(image_a, image_b, mask)
    border = SSIM_WINDOW // 2
    result = 1.0
    for scale, weight in enumerate(weights):
        inside = _crop(mask, border)
        if not inside.any():
            logger.warning("MS-SSIM: no mask voxel away from the border at scale %d: NaN", scale + 1)
            return float("nan")
        luminance, contrast, structure = ssim_components(image_a, image_b, data_range)
        # (l c s)^w equals l^w c^w s^w: all three are clamped non-negative.
        term_map = (luminance * contrast * structure) ** weight
        term = float(_crop(term_map, border)[inside].mean(dtype=np.float64))
        result *= min(max(term, 0.0), 1.0)
        if scale < len(weights) - 1:
            image_a = _box_downsample(image_a)
            image_b = _box_downsample(image_b)
            mask = mask[::2, ::2, ::2]
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


# Tissue classes by the REFERENCE CT's HU, [lower, upper): air and lung below -400 HU (lung
# parenchyma is about -900 to -500 HU, denser lung and partial volume reach -400), soft tissue
# (fat at about -100 HU up to contrast-free organs and muscle) up to 250 HU, bone from 250 HU
# (cancellous bone starts at about 200-300 HU, cortical bone is above 1000 HU).
TISSUE_EDGES_HU = (-400.0, 250.0)
TISSUE_CLASSES = ("air_lung", "soft_tissue", "bone")
# The keys tissue_mae returns, in the order of TISSUE_CLASSES.
TISSUE_MAE_NAMES = tuple(f"mae_{name}" for name in TISSUE_CLASSES)


def check_tissue_edges(edges: Sequence[float]) -> tuple[float, float]:
    """``edges`` as two floats, checked: two finite HU values, the first below the second.

    Raises:
        ConfigError: anything else.
    """
    values = tuple(edges)
    try:
        low, high = (float(e) for e in values)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"tissue edges must be two increasing HU values; got {values!r}")
    return low, high


def parse_tissue_edges(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` (HU, e.g. ``"-400,250"``) as checked tissue edges.

    Raises:
        ConfigError: not two comma-separated finite numbers, the first below the second.
    """
    try:
        return check_tissue_edges([float(part) for part in text.split(",")])
    except (ValueError, ConfigError):
        raise ConfigError(
            f"--tissue-edges must be two increasing HU values LOW,HIGH (e.g. -400,250); got {text!r}"
        ) from None


def tissue_definitions(edges: Sequence[float] = TISSUE_EDGES_HU) -> dict[str, str]:
    """Each tissue class's rule in words, for reports: ``{"air_lung": "reference HU < -400", ...}``."""
    low, high = check_tissue_edges(edges)
    return {
        "air_lung": f"reference HU < {low:g}",
        "soft_tissue": f"{low:g} <= reference HU < {high:g}",
        "bone": f"reference HU >= {high:g}",
    }


def tissue_classes(ref_hu: np.ndarray, edges: tuple[float, float] = TISSUE_EDGES_HU) -> dict[str, np.ndarray]:
    """Boolean maps of :data:`TISSUE_CLASSES` from the reference CT: below, between, at or above ``edges``.

    Raises:
        ConfigError: ``edges`` are not two finite increasing HU values.
    """
    low, high = check_tissue_edges(edges)
    ref = np.asarray(ref_hu, dtype=np.float32)
    return {"air_lung": ref < low, "soft_tissue": (ref >= low) & (ref < high), "bone": ref >= high}


def tissue_mae(
    pred_hu: np.ndarray,
    ref_hu: np.ndarray,
    mask: np.ndarray | None = None,
    edges: tuple[float, float] = TISSUE_EDGES_HU,
) -> dict[str, float]:
    """MAE (HU, unclipped, as SynthRAD's MAE) inside ``mask`` per tissue class of the reference.

    Args:
        pred_hu: synthetic CT in HU.
        ref_hu: reference CT in HU, same shape.
        mask: body mask (voxels > 0 inside); None: every voxel.
        edges: the HU edges between air/lung, soft tissue and bone (:data:`TISSUE_EDGES_HU`).

    Returns:
        ``{"mae_air_lung": HU, "mae_soft_tissue": HU, "mae_bone": HU}``; a class without voxels inside
        the mask is NaN.

    Example:
        >>> import numpy as np
        >>> ref = np.array([-1000.0, 0.0, 1000.0])
        >>> tissue_mae(ref + np.array([10.0, 20.0, -300.0]), ref)
        {'mae_air_lung': 10.0, 'mae_soft_tissue': 20.0, 'mae_bone': 300.0}
    """
    pred = np.asarray(pred_hu, dtype=np.float64)
    ref = np.asarray(ref_hu, dtype=np.float64)
    if pred.shape != ref.shape or (mask is not None and np.shape(mask) != ref.shape):
        raise ValueError(f"shapes differ: pred {pred.shape}, ref {ref.shape}, mask {np.shape(mask)}")
    inside = np.ones(ref.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    error = np.abs(pred - ref)
    result = {}
    for name, voxels in tissue_classes(ref, edges).items():
        selected = voxels & inside
        result[f"mae_{name}"] = float(error[selected].mean()) if selected.any() else float("nan")
    return result


# --------------------------------------------------------------------------- outline overlap, label MAE
BODY_DICE_NAME = "dice_body"
BODY_DICE_DEFINITION = (
    "Dice 2|A & B| / (|A| + |B|) of the body outlines of prediction (A) and reference (B), each computed "
    "from its own volume by the same rule (Otsu, dilation, closing, dilation), whatever the mask used "
    "for the other metrics; NaN when both outlines are empty"
)
# Label values up to this go through np.bincount (linear time, an array of this many counts); a map
# with a larger value (e.g. 2**31 - 1) goes through np.unique, which sorts but allocates per voxel.
LABEL_BINCOUNT_MAX = 1_000_000


def dice_coefficient(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A & B| / (|A| + |B|) of two binary masks (non-zero = inside).

    Args:
        a: first mask.
        b: second mask, same shape.

    Returns:
        A value in [0, 1]: 1 for equal non-empty masks, 0 when exactly one is empty or they do not
        overlap; NaN when both are empty (0 / 0: the overlap of nothing with nothing is undefined).

    Raises:
        ValueError: the shapes differ.

    Example:
        >>> dice_coefficient(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
        0.5
    """
    inside_a = np.asarray(a) != 0
    inside_b = np.asarray(b) != 0
    if inside_a.shape != inside_b.shape:
        raise ValueError(f"shapes differ: {inside_a.shape} vs {inside_b.shape}")
    total = int(np.count_nonzero(inside_a)) + int(np.count_nonzero(inside_b))
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(inside_a & inside_b)) / total


def label_mae(pred_hu: np.ndarray, ref_hu: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """MAE (HU, unclipped) between prediction and reference over the voxels of each label.

    For every label value ``v > 0`` present in ``labels``: mean |pred - ref| over the voxels where
    ``labels == v``, in float64. 0 is background and is not reported. No mask restricts the regions:
    a label is its own region (see :func:`medcyclegan.evaluate.evaluate`).

    Args:
        pred_hu: synthetic CT in HU.
        ref_hu: reference CT in HU, same shape.
        labels: label map, same shape; integer values >= 0 (a float map must hold whole numbers).

    Returns:
        label value -> MAE in HU, in increasing value order; empty when no voxel is labelled.

    Raises:
        ValueError: the shapes differ, or the label map has non-integer or negative values.

    Example:
        >>> ref = np.zeros(4)
        >>> label_mae(ref + np.array([1.0, 2.0, 4.0, 9.0]), ref, np.array([0, 5, 5, 2]))
        {2: 9.0, 5: 3.0}
    """
    pred = np.asarray(pred_hu, dtype=np.float64)
    ref = np.asarray(ref_hu, dtype=np.float64)
    label_map = np.asarray(labels)
    if pred.shape != ref.shape or label_map.shape != ref.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, ref {ref.shape}, labels {label_map.shape}")
    if label_map.size == 0:
        return {}
    if label_map.dtype == bool:
        label_map = label_map.astype(np.uint8)
    elif not np.issubdtype(label_map.dtype, np.integer):
        if not np.issubdtype(label_map.dtype, np.floating):
            raise ValueError(f"label map has values of type {label_map.dtype}; labels must be integers")
        if not (np.isfinite(label_map).all() and np.array_equal(label_map, np.rint(label_map))):
            raise ValueError("label map has non-integer values; labels must be integers (0 = background)")
    low, high = label_map.min(), label_map.max()
    if low < 0:
        raise ValueError(
            f"label map has negative values (min {low:g}); labels must be 0 (background), 1, 2, ..."
        )
    error = np.abs(pred - ref).ravel()
    if high <= LABEL_BINCOUNT_MAX:
        index = label_map.ravel().astype(np.intp)
        values = np.arange(int(high) + 1)
    else:
        found, index = np.unique(label_map.ravel(), return_inverse=True)
        values = [int(v) for v in found]
    counts = np.bincount(index.ravel())
    sums = np.bincount(index.ravel(), weights=error)
    return {int(values[i]): float(sums[i] / counts[i]) for i in np.flatnonzero(counts) if int(values[i]) != 0}
