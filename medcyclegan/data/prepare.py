"""From a read volume to a normalised, masked, optionally resampled volume ready for slicing.

``prepare_volume`` runs once per volume (the result is cached by :mod:`medcyclegan.data.cache`):
modality check, body mask, normalisation, and optional in-plane resampling to
``DataConfig.spacing`` mm. ``restore_inplane`` maps arrays on the prepared grid (e.g. a translated
volume) back onto the exact original RAS grid.

The same steps are available piecewise for slab-by-slab work on large volumes (``convert``):
:func:`fit_volume` computes the whole-volume statistics once (normalisation parameters, body mask),
:func:`normalise_slices` and :func:`resample_slices` then act on any run of axial slices and give
exactly the values ``prepare_volume`` gives for those slices.

Resampling convention (torch ``F.interpolate`` with ``align_corners=False``): the prepared grid covers
the same field of view as the original, i.e. the outer voxel edges coincide. Along an in-plane axis
with ``n`` voxels of ``s`` mm resampled to ``n' = round(n * s / target)`` voxels, the prepared spacing is
``n * s / n'`` mm (the target, up to rounding), and prepared voxel ``i`` has its centre at original
voxel coordinate ``(i + 0.5) * n / n' - 0.5``. Resampling back uses the same convention in the other
direction, so a resample of a resample keeps structures in place (no half-voxel drift). Images use
bilinear interpolation, anti-aliased when shrinking (torch ``antialias=True``, an area-like filter);
masks use ``nearest-exact`` (torch's ``nearest`` has a half-voxel shift). The z axis is never resampled.

Memory layout: ``PreparedVolume.image`` and ``.mask`` have shape (X', Y', Z) but are views of
(Z, X', Y') C-ordered buffers, so that an axial slice ``image[:, :, z]`` is one contiguous block
(fast slicing, and memory-mapped caches read only the slices they need).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medcyclegan.config import DataConfig
from medcyclegan.data.mask import body_mask
from medcyclegan.data.normalise import (
    NormParams,
    check_modality,
    check_modality_name,
    fit_normalisation,
    normalise,
)
from medcyclegan.errors import InputError
from medcyclegan.io.volume import Volume

logger = logging.getLogger("medcyclegan")

RESAMPLE_MODES = ("bilinear", "nearest")
# Slices interpolated per torch call: bounds the temporary float32 tensors on large volumes.
_SLICES_PER_CALL = 64


@dataclass(eq=False)
class PreparedVolume:
    """A volume normalised to [-1, 1], with its body mask, on the (possibly resampled) prepared grid.

    Attributes:
        image: float32 (X', Y', Z), RAS voxel order, normalised (air about -1). A view of a
            slice-contiguous (Z, X', Y') buffer, possibly read-only (memory-mapped cache).
        mask: bool (X', Y', Z) body mask, same layout.
        params: the normalisation that maps the original values to ``image``.
        source: the file (or DICOM folder) it came from, for messages and pairing.
        original_shape: RAS shape (X, Y, Z) before resampling, in voxels.
        original_spacing: RAS voxel size (mm) before resampling.
        spacing: RAS voxel size (mm) of ``image``.
    """

    image: np.ndarray
    mask: np.ndarray
    params: NormParams
    source: str
    original_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (X', Y', Z) of the prepared grid, in voxels."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def resampled(self) -> bool:
        """True when the prepared grid differs in-plane from the original grid."""
        return tuple(self.image.shape[:2]) != tuple(self.original_shape[:2])


def prepared_inplane_shape(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], target_mm: float | None
) -> tuple[int, int]:
    """In-plane size (voxels) of the prepared grid: ``round(n * spacing / target)``, at least 1."""
    if target_mm is None:
        return int(shape[0]), int(shape[1])
    return tuple(max(1, round(n * s / target_mm)) for n, s in zip(shape[:2], spacing[:2], strict=True))  # type: ignore[return-value]


def prepared_spacing(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], size_xy: tuple[int, int]
) -> tuple[float, float, float]:
    """Voxel size (mm) of the prepared grid: the same field of view over ``size_xy`` voxels in-plane, Z kept."""
    return (shape[0] * spacing[0] / size_xy[0], shape[1] * spacing[1] / size_xy[1], spacing[2])


def fit_volume(
    volume: Volume,
    modality: str,
    data_cfg: DataConfig,
    *,
    mask: np.ndarray | Volume | None = None,
    params: NormParams | None = None,
    need_mask: bool = True,
) -> tuple[NormParams, np.ndarray | None]:
    """The whole-volume statistics of preparation, computed once: normalisation and body mask.

    Checks, in order: a constant volume (an error: nothing to normalise), the modality's plausibility
    (a warning naming the file), then computes the body mask and the normalisation exactly as
    :func:`prepare_volume` does.

    Args:
        volume: the volume as read (RAS voxel order, natural units: HU for CT).
        modality: ``"ct"`` or ``"mr"``.
        data_cfg: mask method and normalisation settings.
        mask: a user body mask on the volume's grid (nonzero = body), used instead of the automatic one.
        params: fixed normalisation parameters (default: measured on the volume).
        need_mask: ``False`` skips the automatic body mask when nothing needs it (CT parameters do
            not depend on it); a user ``mask`` or an MR volume without ``params`` always gets one.

    Returns:
        ``(params, body)``: the normalisation and the bool body mask in RAS voxel order (``None``
        when it was skipped).

    Raises:
        InputError: the volume is constant (when ``params`` is not given), the mask is not on the
            volume's grid, or the MR percentiles coincide.
    """
    modality = check_modality_name(modality)
    array = volume.array
    where = str(volume.geometry.source_path or "") or "volume"
    if params is None and array.size and np.min(array) == np.max(array):
        # Checked first: every later step (modality check, mask) would only add confusing messages.
        raise InputError(
            f"volume is constant ({float(np.min(array)):g}); there is no intensity range to normalise", where
        )
    check_modality(array, modality, where)
    body: np.ndarray | None = None
    if mask is not None:
        body = _user_mask(mask, volume, where)
    elif need_mask or (params is None and modality == "mr"):
        body = body_mask(
            array,
            modality,
            method=data_cfg.mask_method,
            threshold_hu=data_cfg.mask_threshold_hu,
            dilation=data_cfg.mask_dilation,
        )
    if params is None:
        params = fit_normalisation(array, modality, body, data_cfg, path=where)
    elif params.modality != modality:
        raise InputError(
            f"normalisation parameters are for {params.modality!r}, the volume is {modality!r}", where
        )
    return params, body


def normalise_slices(
    array_xyz: np.ndarray, params: NormParams, size_xy: tuple[int, int] | None = None
) -> np.ndarray:
    """Normalised (and in-plane resampled) axial slices, as ``prepare_volume`` computes them.

    Args:
        array_xyz: a run of axial slices (X, Y, n) in natural units, e.g. ``volume.array[:, :, a:b]``.
        params: the volume's normalisation (from :func:`fit_volume`).
        size_xy: in-plane size (voxels) of the prepared grid; ``None`` or (X, Y) keeps the grid.

    Returns:
        C-contiguous float32 (n, X', Y') array (slice-major), values in [-1, 1].
    """
    # Normalise in (Z, X, Y) order so that the result is slice-contiguous without another copy.
    image_zxy = normalise(np.moveaxis(array_xyz, 2, 0), params)
    if size_xy is not None and tuple(size_xy) != tuple(array_xyz.shape[:2]):
        image_zxy = resample_slices(image_zxy, tuple(size_xy), "bilinear")  # type: ignore[arg-type]
    return image_zxy


def prepare_volume(
    volume: Volume,
    modality: str,
    data_cfg: DataConfig,
    *,
    mask: np.ndarray | Volume | None = None,
    params: NormParams | None = None,
) -> PreparedVolume:
    """Checks, masks, normalises and (optionally) resamples one volume in-plane.

    Args:
        volume: the volume as read (RAS voxel order, natural units: HU for CT).
        modality: ``"ct"`` or ``"mr"``.
        data_cfg: mask method, normalisation and ``spacing`` (mm, ``None`` keeps the native grid).
        mask: a user body mask on the volume's grid (nonzero = body); takes precedence over the
            automatic mask.
        params: fixed normalisation parameters; by default they are measured on the volume (CT:
            the configured window; MR: percentiles inside the body mask of this volume).

    Returns:
        The prepared volume.

    Raises:
        InputError: the mask is not on the volume's grid, or the volume is constant.
    """
    modality = check_modality_name(modality)
    array = volume.array
    source = str(volume.geometry.source_path or "")
    where = source or "volume"
    params, body = fit_volume(volume, modality, data_cfg, mask=mask, params=params, need_mask=True)
    assert body is not None  # need_mask=True always gives a mask
    if not body.any():
        logger.warning("%s: the body mask is empty; this volume gives no training slices", where)
    original_shape = tuple(int(n) for n in array.shape)
    original_spacing = tuple(float(s) for s in volume.spacing)
    new_xy = prepared_inplane_shape(original_shape, original_spacing, data_cfg.spacing)  # type: ignore[arg-type]
    image_zxy = normalise_slices(array, params, new_xy)
    mask_zxy = np.ascontiguousarray(np.moveaxis(body, 2, 0))
    if new_xy != original_shape[:2]:
        mask_zxy = resample_slices(mask_zxy, new_xy, "nearest")
    spacing = prepared_spacing(original_shape, original_spacing, new_xy)  # type: ignore[arg-type]
    return PreparedVolume(
        image=np.moveaxis(image_zxy, 0, 2),
        mask=np.moveaxis(mask_zxy, 0, 2),
        params=params,
        source=source,
        original_shape=original_shape,  # type: ignore[arg-type]
        original_spacing=original_spacing,  # type: ignore[arg-type]
        spacing=spacing,
    )


def restore_inplane(array: np.ndarray, prepared: PreparedVolume, *, mode: str = "bilinear") -> np.ndarray:
    """Maps an array on the prepared grid back onto the original RAS grid (exact original shape).

    Args:
        array: (X', Y', Z), e.g. a translated volume in normalised units.
        prepared: the volume whose grid ``array`` is on.
        mode: ``"bilinear"`` (images; anti-aliased when shrinking) or ``"nearest"`` (labels, masks).

    Returns:
        (X, Y, Z) array: float32 for ``"bilinear"``, the input dtype for ``"nearest"``. Without
        resampling (``spacing`` None) the input is returned unchanged.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESAMPLE_MODES)}; got {mode!r}")
    if tuple(array.shape) != tuple(prepared.image.shape):
        raise ValueError(f"array shape {array.shape} is not the prepared grid {prepared.image.shape}")
    if not prepared.resampled:
        return array
    out_zxy = resample_slices(np.moveaxis(array, 2, 0), tuple(prepared.original_shape[:2]), mode)
    return np.moveaxis(out_zxy, 0, 2)


def resample_slices(array_zxy: np.ndarray, size_xy: tuple[int, int], mode: str) -> np.ndarray:
    """Resamples each (X, Y) slice of a (Z, X, Y) array to ``size_xy`` voxels (same field of view).

    Each slice is resampled on its own, so a run of slices gives exactly the slices of the whole
    volume resampled at once (the module's convention: ``align_corners=False``, bilinear anti-aliased
    when shrinking, ``nearest-exact`` for masks).

    Args:
        array_zxy: slice-major array (Z, X, Y).
        size_xy: in-plane size (X', Y') in voxels.
        mode: ``"bilinear"`` (images) or ``"nearest"`` (masks, labels).

    Returns:
        C-contiguous (Z, X', Y') array: float32 for bilinear, the input dtype for nearest.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESAMPLE_MODES)}; got {mode!r}")
    depth = array_zxy.shape[0]
    out_dtype = np.float32 if mode == "bilinear" else array_zxy.dtype
    out = np.empty((depth, *size_xy), dtype=out_dtype)
    shrinking = size_xy[0] < array_zxy.shape[1] or size_xy[1] < array_zxy.shape[2]
    for start in range(0, depth, _SLICES_PER_CALL):
        block = torch.from_numpy(np.asarray(array_zxy[start : start + _SLICES_PER_CALL], dtype=np.float32))
        block = block.unsqueeze(1)
        if mode == "bilinear":
            result = F.interpolate(
                block, size=size_xy, mode="bilinear", align_corners=False, antialias=shrinking
            )
        else:
            result = F.interpolate(block, size=size_xy, mode="nearest-exact")
        values = result[:, 0].numpy()
        out[start : start + _SLICES_PER_CALL] = values > 0.5 if out_dtype == np.bool_ else values
    return out


def isotropic_depth(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> int:
    """Slices along Z once Z is resampled to the in-plane spacing (the mean of X and Y): at least 1."""
    inplane_mm = 0.5 * (float(spacing[0]) + float(spacing[1]))
    return max(1, round(int(shape[2]) * float(spacing[2]) / inplane_mm))


def resample_depth(volume_xyz: np.ndarray, depth: int, mode: str = "bilinear") -> np.ndarray:
    """An (X, Y, Z) volume resampled along Z to ``depth`` slices (same field of view), C-contiguous.

    :func:`resample_slices` applied to the (Y, Z) planes: Y keeps its size, so only Z is
    interpolated (the module's convention; ``nearest`` for masks). The z axis of a prepared volume is
    never resampled; this is for the coronal and sagittal planes (:func:`plane_volume`, and
    :func:`medcyclegan.inference.translate_planes` at conversion).
    """
    if volume_xyz.shape[2] == depth:
        return np.ascontiguousarray(volume_xyz, dtype=np.float32 if mode == "bilinear" else volume_xyz.dtype)
    return resample_slices(volume_xyz, (volume_xyz.shape[1], depth), mode)


def plane_volume(prepared: PreparedVolume, plane: str) -> PreparedVolume:
    """The coronal or sagittal slices of a prepared volume, as a prepared volume of their own.

    Z is first resampled to the in-plane spacing (:func:`isotropic_depth`: a coarse Z would give
    those slices the wrong pixel aspect). The slices then lie in ``image[:, :, i]`` as for axial ones:
    coronal slices (X, Z) at each Y, sagittal slices (Y, Z) at each X, in the usual slice-contiguous
    layout; their mask comes along (nearest). ``"axial"`` returns ``prepared`` itself.
    """
    if plane == "axial":
        return prepared
    if plane not in ("coronal", "sagittal"):
        raise ValueError(f"plane must be axial, coronal or sagittal; got {plane!r}")
    depth = isotropic_depth(prepared.shape, prepared.spacing)
    sx, sy, sz = prepared.spacing
    iso_mm = prepared.shape[2] * sz / depth
    # (stack axis, slice axis 0, slice axis 1) of the isotropic (X, Y, Z) volume.
    order, spacing = ((1, 0, 2), (sx, iso_mm, sy)) if plane == "coronal" else ((0, 1, 2), (sy, iso_mm, sx))
    image_zxy = np.ascontiguousarray(resample_depth(prepared.image, depth).transpose(order))
    mask_zxy = np.ascontiguousarray(resample_depth(prepared.mask, depth, "nearest").transpose(order))
    n_slices, rows, columns = (int(n) for n in image_zxy.shape)
    return PreparedVolume(
        image=np.moveaxis(image_zxy, 0, 2),
        mask=np.moveaxis(mask_zxy, 0, 2),
        params=prepared.params,
        source=f"{prepared.source} ({plane})" if prepared.source else plane,
        original_shape=(rows, columns, n_slices),
        original_spacing=spacing,  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
    )


def _user_mask(mask: np.ndarray | Volume, volume: Volume, where: str) -> np.ndarray:
    """A user mask as bool on the volume's RAS grid; InputError when the grids differ."""
    if isinstance(mask, Volume):
        if not mask.geometry.same_grid(volume.geometry):
            raise InputError(
                f"mask {mask.geometry.source_path or ''} is not on the volume's grid "
                f"(shape {mask.shape} vs {volume.shape}, or a different affine)",
                where,
            )
        values = mask.array
    else:
        values = np.asarray(mask)
        if values.shape != volume.shape:
            raise InputError(
                f"mask shape {values.shape} does not match the volume's RAS shape {volume.shape}", where
            )
    return values.astype(bool) if values.dtype == np.bool_ else values > 0
