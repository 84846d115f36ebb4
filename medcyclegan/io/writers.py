"""Writing a RAS-ordered array back onto the exact grid of its input (NIfTI via nibabel, ITK via SimpleITK).

The output format follows the output path's extension, whatever the input format was. The geometry
written is the input's: shape and voxel order, affine, qform/sform codes, and for NIfTI inputs the
whole header (units, intent, descriptions). SimpleITK is imported only when writing an ITK format.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from medcyclegan.errors import OutputError
from medcyclegan.io.atomic import atomic_path, check_can_write, publish
from medcyclegan.io.discovery import DETACHED_HEADER_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, volume_suffix
from medcyclegan.io.gzip_io import open_gzip_write
from medcyclegan.io.readers import import_simpleitk
from medcyclegan.io.volume import LPS_TO_RAS, Geometry

# Voxel types every output format stores natively.
OUTPUT_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)
_NIFTI2_HEADER_BYTES = 540
# The data file ITK writes beside a detached header (always compressed, see _write_itk_files).
_DATA_FILE_SUFFIX = {".mhd": ".zraw", ".nhdr": ".raw.gz"}
# A written affine may differ from the requested one by float32 rounding of the stored sform.
_AFFINE_TOLERANCE = 1e-5
_NIFTI_DESCRIP_BYTES = 79


def write_volume(
    array_ras: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    *,
    dtype: str | np.dtype | None = None,
    overwrite: bool = False,
    description: str | None = None,
) -> Path:
    """Writes ``array_ras`` on the grid of ``geometry`` to ``path`` (format from its extension).

    Args:
        array_ras: voxel values in RAS voxel order, shape ``geometry.ras_shape``.
        geometry: the input's geometry (from :func:`~medcyclegan.io.readers.read_volume`).
        path: output ``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.
        dtype: stored voxel type (one of :data:`OUTPUT_DTYPES`; ``bool`` is stored as ``uint8``);
            default ``geometry.dtype``. Floats cast to an integer type are rounded to the nearest
            integer and clipped to the type's range.
        overwrite: replace an existing output.
        description: what the volume is (e.g. "synthetic CT ... by medcyclegan"), stored as the
            NIfTI ``descrip`` (its first 79 characters; a longer one also whole in a comment
            extension), the NRRD ``content`` field or the MetaImage ``Description``; it replaces
            the description of a reused input header (an MR series description must not label a
            synthetic CT). ``None`` keeps the input header's.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        OutputError: unknown output extension or dtype, existing output without ``overwrite``,
            unwritable folder, or a failure of the writing library.
        ValueError: ``array_ras`` does not have the geometry's RAS shape, or holds NaN/Inf for an
            integer ``dtype`` (programming errors).
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise OutputError(f"unknown output type; use one of {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)}", path)
    out_dtype = _output_dtype(dtype if dtype is not None else geometry.dtype, path)
    array_ras = np.asarray(array_ras)
    if tuple(array_ras.shape) != geometry.ras_shape:
        raise ValueError(
            f"array shape {array_ras.shape} does not match the geometry's RAS shape {geometry.ras_shape}"
        )
    check_can_write(path, overwrite)
    data = cast_values(geometry.array_from_ras(array_ras), out_dtype)
    if suffix in NIFTI_SUFFIXES:
        _write_nifti(data, geometry, path, overwrite, description)
    else:
        _write_itk(data, geometry, path, suffix, overwrite, description)
    return path


def files_written_by(path: str | Path) -> list[Path]:
    """Every file :func:`write_volume` creates or replaces for the output ``path``, ``path`` first.

    A ``.mhd`` or ``.nhdr`` output also writes its data file beside it, named after the header with
    a lower-case extension (``A.MHD`` -> ``A.zraw``; ``.nhdr`` -> ``.raw.gz``): an output's data file
    can replace an input's even where the header names differ.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in _DATA_FILE_SUFFIX:
        return [path]
    return [path, path.parent / f"{path.name[: -len(suffix)]}{_DATA_FILE_SUFFIX[suffix]}"]


def _output_dtype(dtype: str | np.dtype, path: Path) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved == np.bool_:
        return np.dtype(np.uint8)
    if resolved is None or resolved.name not in OUTPUT_DTYPES:
        raise OutputError(
            f"unsupported output dtype {dtype!r}; choose one of {', '.join(OUTPUT_DTYPES)}", path
        )
    return resolved


def cast_values(array: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """Casts to ``dtype``; to an integer type values are rounded (``np.rint``) and clipped to its range.

    Args:
        array: values of any numeric dtype.
        dtype: target numpy dtype.

    Returns:
        A new native-byte-order array of ``dtype`` (or ``array`` itself if it already is one).

    Raises:
        ValueError: NaN or infinite values cast to an integer type (they have no integer value).
    """
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array
    if not np.issubdtype(dtype, np.integer):
        return array.astype(dtype)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"cannot store NaN or infinite values as {dtype.name}")
        array = np.rint(array)
    info = np.iinfo(dtype)
    low, high = info.min, info.max
    if np.issubdtype(array.dtype, np.floating):
        # float(2**63 - 1) rounds up to 2**63, which would overflow the cast: step back one float.
        low_f, high_f = float(low), float(high)
        if high_f > high:
            high_f = float(np.nextafter(high_f, -np.inf))
        return np.clip(array, low_f, high_f).astype(dtype)
    if np.issubdtype(array.dtype, np.integer):
        source = np.iinfo(array.dtype)
        if source.min >= low and source.max <= high:
            return array.astype(dtype)
        # Clip in a type holding both ranges (Python ints) to avoid wrap-around.
        clipped = np.clip(array, max(low, source.min), min(high, source.max))
        return clipped.astype(dtype)
    return array.astype(dtype)


# ---------------------------------------------------------------------------------------------- NIfTI


def _write_nifti(
    data: np.ndarray, geometry: Geometry, path: Path, overwrite: bool, description: str | None
) -> None:
    if geometry.nifti_header is not None:
        is_nifti2 = len(geometry.nifti_header) == _NIFTI2_HEADER_BYTES
        header_class = nib.Nifti2Header if is_nifti2 else nib.Nifti1Header
        image_class = nib.Nifti2Image if is_nifti2 else nib.Nifti1Image
        header = header_class(binaryblock=geometry.nifti_header)
        header.set_data_shape(data.shape)
        header.set_data_dtype(data.dtype)
        # Stored values must be exactly ours: no scaling on write or read.
        header.set_slope_inter(1.0, 0.0)
        # The input's display window does not fit new values (an MR window on a synthetic CT).
        header["cal_min"] = 0.0
        header["cal_max"] = 0.0
        header["qform_code"] = geometry.qform_code
        header["sform_code"] = geometry.sform_code
        if not np.allclose(header.get_best_affine(), geometry.affine, atol=_AFFINE_TOLERANCE):
            # The geometry's affine was changed after reading: it wins over the old header.
            header.set_sform(geometry.affine, code=max(geometry.sform_code, 1))
            header.set_qform(geometry.affine, code=max(geometry.qform_code, 1))
        # affine=None keeps the header's qform and sform bit for bit.
        image = image_class(data, None, header=header)
    else:
        image_class = nib.Nifti1Image
        image = nib.Nifti1Image(data, geometry.affine)
        image.header.set_data_dtype(data.dtype)
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
        image.header.set_xyzt_units("mm")
    if description is not None:
        # descrip is 80 bytes of ASCII, NUL-terminated by convention.
        encoded = description.encode("ascii", "replace")
        image.header["descrip"] = encoded[:_NIFTI_DESCRIP_BYTES]
        if len(encoded) > _NIFTI_DESCRIP_BYTES:
            # The whole text in a comment extension (NIFTI_ECODE_COMMENT), which nibabel and ITK keep.
            image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", encoded))
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            if path.name.lower().endswith(".gz"):
                # nibabel deflates on one core with zlib; isal on all of them, at about zlib 1's size.
                with open(tmp, "wb") as raw, open_gzip_write(raw) as stream:
                    image.to_file_map(image_class.make_file_map({"image": stream}))
            else:
                nib.save(image, str(tmp))
        except OSError as exc:
            raise OutputError(f"cannot be written ({exc.strerror or exc})", path) from None


# ------------------------------------------------------------------------------------------------ ITK


def _itk_geometry(geometry: Geometry) -> tuple[list[float], list[float], list[float]]:
    """Spacing, origin (LPS, mm) and row-major direction (LPS) for ITK."""
    if (
        geometry.itk_spacing is not None
        and geometry.itk_origin is not None
        and geometry.itk_direction is not None
    ):
        return list(geometry.itk_spacing), list(geometry.itk_origin), list(geometry.itk_direction)
    affine_lps = np.linalg.inv(LPS_TO_RAS) @ geometry.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing
    return spacing.tolist(), affine_lps[:3, 3].tolist(), direction.ravel().tolist()


def _write_itk(
    data: np.ndarray, geometry: Geometry, path: Path, suffix: str, overwrite: bool, description: str | None
) -> None:
    sitk = import_simpleitk(path, f"writing {suffix} files", OutputError)

    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    spacing, origin, direction = _itk_geometry(geometry)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    if description is not None:
        # NRRD's own "content" field; MetaImage writes any key as a header line.
        key = "NRRD_content" if suffix in (".nrrd", ".nhdr") else "Description"
        image.SetMetaData(key, " ".join(description.split()))
    _write_itk_files(image, path, suffix, overwrite)


def _write_itk_files(image: object, path: Path, suffix: str, overwrite: bool) -> None:
    """Writes an ITK image; for .nhdr/.mhd its data file is moved in first and the header last.

    ITK picks the format from a lower-case extension only (``X.MHA`` silently becomes a detached
    ``X.mhd`` + ``X.zraw``) and names data files after the header, so the image is written under
    ``<stem><suffix in lower case>`` in a hidden scratch folder next to the output, then moved; the
    header goes through :func:`atomic_path`. A crash leaves at worst a stray data file.
    """
    import SimpleITK as sitk  # noqa: PLC0415 - lazy: optional at run time (see readers.import_simpleitk)

    stem = path.name[: -len(suffix)]
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        scratch_header = scratch / f"{stem}{suffix}"
        try:
            sitk.WriteImage(image, str(scratch_header), useCompression=True)
        except RuntimeError as exc:
            raise OutputError(f"cannot be written ({_itk_error_line(exc)})", path) from None
        if not scratch_header.is_file():
            raise OutputError("cannot be written (ITK did not create the file)", path)
        data_files = [f for f in sorted(scratch.iterdir()) if f != scratch_header]
        if data_files and suffix not in DETACHED_HEADER_SUFFIXES:
            raise OutputError(
                "cannot be written (ITK wrote a separate data file for a single-file format)", path
            )
        announced = {p.name for p in files_written_by(path)}
        if any(data_file.name not in announced for data_file in data_files):
            # files_written_by must list every file, or convert's input check would miss one.
            raise OutputError("cannot be written (ITK wrote an unexpected data file)", path)
        for data_file in data_files:
            check_can_write(path.parent / data_file.name, overwrite)
        published: list[Path] = []
        try:
            for data_file in data_files:
                target = path.parent / data_file.name
                try:
                    publish(data_file, target, overwrite=overwrite)
                except OSError as exc:
                    raise OutputError(f"cannot be written ({exc.strerror or exc})", target) from None
                published.append(target)
            with atomic_path(path, overwrite=overwrite) as tmp:
                os.replace(scratch_header, tmp)
        except BaseException:
            if not overwrite:
                # Data files this call created (their names were free) must not outlive a header
                # that was never published; replaced ones (overwrite) cannot be taken back.
                for target in published:
                    with contextlib.suppress(OSError):
                        target.unlink()
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _itk_error_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join((lines[-1] if lines else type(exc).__name__).split())[:200]
