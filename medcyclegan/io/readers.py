"""Reading volumes (NIfTI, NRRD/MHA/MHD, DICOM series) into a :class:`Volume` in RAS voxel order.

NIfTI goes through nibabel (as MONAI's ``NibabelReader`` does, in one decompression pass that also
checks the gzip CRC); NRRD, MHA/MHD and DICOM through SimpleITK, which is imported only when needed (GPU machines may lack it). Values keep their natural dtype (int16 CT stays
int16; NIfTI ``scl_slope``/``scl_inter`` and DICOM rescale slope/intercept are applied, so DICOM CT is
in HU). Every problem with an input becomes one :class:`InputError` line naming the file.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import stat
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_lib

from medcyclegan.errors import InputError, MedCycleGANError
from medcyclegan.io.discovery import (
    DICOM_SUFFIX,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    SERIES_SEPARATOR,
    VOLUME_SUFFIXES,
    file_kind,
    is_dicom_file,
    is_special_file,
    split_series,
    volume_suffix,
)
from medcyclegan.io.gzip_io import open_gzip_read
from medcyclegan.io.headers import DataLayout, check_data_files_inside, data_layout
from medcyclegan.io.library_messages import native_output_to_debug_log, nibabel_messages, route_itk_messages
from medcyclegan.io.volume import LPS_TO_RAS, Geometry, Volume

logger = logging.getLogger("medcyclegan")

# Deflate cannot compress better than about 1032:1, so a gzip file of N bytes holds at most ~1032*N
# bytes. A header promising more is corrupted: refuse it before allocating the array.
_MAX_DEFLATE_RATIO = 1032
_SIZE_SLACK_BYTES = 1 << 20
_NIFTI1_HEADER_BYTES = 348
_NIFTI2_HEADER_BYTES = 540
_MAX_MESSAGE_CHARS = 200
_GZIP_CHUNK_BYTES = 1 << 22
_META_ELEMENT_TYPE = re.compile(r"^MET_[A-Z_]+$")
_META_MAX_DIMS = 10
# Lower bounds of element sizes (MET_LONG is 4 or 8 bytes depending on the writer's platform).
_META_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip
_META_AMBIGUOUS_TYPES = ("MET_LONG", "MET_ULONG")
_ITK_IMAGE_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
# Slices whose spacing differs from the median by more than this fraction mean missing/duplicate slices.
_SLICE_SPACING_TOLERANCE = 0.01
_SLICE_SPACING_ABS_TOLERANCE_MM = 0.01
# Direction cosines of two slices differing by more than this: another orientation (about 0.06 deg).
_ORIENTATION_TOLERANCE = 1e-3
# Row and column direction cosines of a slice: unit length and orthogonal within this.
_DIRECTION_TOLERANCE = 1e-2
# Files already warned about for a guessed voxel size (pixdim 0, no ITK spacing): one warning per file and process.
_PIXDIM_WARNED: set[str] = set()
# Voxel sizes outside these bounds (1 nm, 1 km) can only come from a corrupted header.
_MIN_VOXEL_MM = 1e-6
_MAX_VOXEL_MM = 1e6


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """Raises :class:`InputError` if ``array`` holds NaN or infinite values, saying how many.

    Args:
        array: voxel values (any dtype; integer arrays are always finite).
        path: the file the values came from, named in the message.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    if np.isfinite(array).all():
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(np.count_nonzero(np.isinf(array)))
    parts = []
    if n_nan:
        parts.append(f"{n_nan} NaN")
    if n_inf:
        parts.append(f"{n_inf} infinite")
    raise InputError(f"has {' and '.join(parts)} voxel(s) of {array.size}; fix or remove them first", path)


def is_constant(array: np.ndarray) -> bool:
    """True if every voxel has the same value (or the array is empty): nothing to learn from it."""
    if array.size == 0:
        return True
    return bool(np.min(array) == np.max(array))


def read_volume(
    path: str | Path, *, series_uid: str | None = None, allow_external_data: bool | None = None
) -> Volume:
    """Reads a 3D volume with its exact geometry; the array is returned in RAS voxel order.

    Args:
        path: a ``.nii.gz``/``.nii``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, a folder holding one
            DICOM series, or ``FOLDER::SERIES_UID`` to choose one series of a folder holding several.
        series_uid: the DICOM Series Instance UID to read from a folder holding several series.
        allow_external_data: let a detached header (``.mhd``, ``.nhdr``, ``.nrrd``) name data files
            outside its own folder; default: only if the environment variable
            ``MEDCYCLEGAN_ALLOW_EXTERNAL_DATA_FILES`` is ``1``.

    Returns:
        The volume: values in their natural dtype (HU for DICOM CT), axes (R, A, S).

    Raises:
        InputError: missing, empty, unreadable, corrupted or truncated file; unknown extension; 2D or
            4D data; non-scalar voxels; NaN or infinite voxels; ambiguous or unknown DICOM series;
            a detached header naming a data file outside its folder.
    """
    folder, uid_from_path = split_series(path)
    if uid_from_path is not None:
        if series_uid is not None and series_uid != uid_from_path:
            raise InputError(f"series UID given twice ({uid_from_path} and {series_uid})", folder)
        if not uid_from_path:
            raise InputError(f"no series UID after '{SERIES_SEPARATOR}'", folder)
        path, series_uid = folder, uid_from_path
    path = Path(path)
    if not path.exists():
        raise InputError("not found", path)
    if path.is_dir():
        volume = _read_dicom_series(path, series_uid)
    else:
        if series_uid is not None:
            raise InputError("a series UID only applies to a DICOM folder, and this is a file", path)
        volume = _read_file(path, allow_external_data)
    check_finite(volume.array, path)
    return volume


def read_geometry(path: str | Path) -> Geometry:
    """The geometry of a volume, for a NIfTI file from its header alone (no voxels read).

    Other formats (and a NIfTI header nibabel cannot take) go through :func:`read_volume`, which
    turns any problem into one clear :class:`InputError`. The header's affine is the one
    :func:`read_volume` keeps, so :meth:`Geometry.same_grid` gives the same answer on both.
    """
    path = Path(path)
    if volume_suffix(path) in NIFTI_SUFFIXES and path.is_file():
        try:
            image = nib.load(str(path))
            shape = tuple(int(s) for s in image.shape)
            if len(shape) == 3:
                return Geometry(
                    np.asarray(image.affine), shape, str(image.get_data_dtype()), "nifti", str(path)
                )
        except Exception:  # read_volume below says what is wrong, in one line
            pass
    return read_volume(path).geometry


def read_mask(path: str | Path, like: Geometry, *, positive_only: bool = False) -> np.ndarray:
    """Reads a mask (non-zero = inside) that must lie on the same grid as the volume ``like``.

    The grids are compared in RAS voxel order, so a mask stored with other axis flips still matches.

    Args:
        path: the mask file (any format :func:`read_volume` reads).
        like: geometry of the volume the mask belongs to.
        positive_only: only voxels > 0 are inside (the SynthRAD evaluation's rule: negative values are
            outside); by default every non-zero voxel is.

    Returns:
        Boolean array in RAS voxel order, shape ``like.ras_shape``.

    Raises:
        InputError: unreadable mask, or not on the grid of ``like`` (:meth:`Geometry.same_grid`).
    """
    mask = read_volume(path)
    geometry = mask.geometry
    if geometry.ras_shape != like.ras_shape:
        raise InputError(
            f"mask shape {_shape_text(geometry.ras_shape)} (RAS) differs from the image's "
            f"{_shape_text(like.ras_shape)}; the mask must be on the image's grid",
            path,
        )
    if not geometry.same_grid(like):
        difference = geometry.affine_difference(like)
        raise InputError(
            f"mask affine differs from the image's by up to {difference:.4g} mm; "
            "the mask must be on the image's grid (same spacing, origin and direction)",
            path,
        )
    values = mask.array
    inside = values > 0 if positive_only else values != 0
    if np.count_nonzero((values != 0) & (values != 1)):
        rule = "only voxels > 0 count" if positive_only else "every non-zero voxel counts"
        logger.warning("%s: mask has values other than 0 and 1; %s as inside", path, rule)
    return inside


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _read_file(path: Path, allow_external_data: bool | None = None) -> Volume:
    try:
        info = path.stat()
        # Before opening: opening a FIFO blocks until someone writes to it, and a device never ends.
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"is {file_kind(info.st_mode)}, not a regular file; give a volume file", path)
        size = info.st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot be opened ({exc.strerror or exc})", path) from None
    if size == 0:
        raise InputError("is empty (0 bytes)", path)
    suffix = volume_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path, suffix, size)
    if suffix in ITK_SUFFIXES:
        return _read_itk(path, suffix, size, allow_external_data)
    if path.name.lower().endswith(DICOM_SUFFIX):
        raise InputError("is a single DICOM file; give the folder holding the whole series", path)
    raise InputError(
        f"unknown file type; expected one of {', '.join(VOLUME_SUFFIXES)} or a DICOM series folder", path
    )


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """Validates a file's array shape: 3D, or 4D+ with singleton trailing axes (squeezed)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise InputError(f"is {len(shape)}D (shape {_shape_text(shape)}); give a 3D volume", path)
    extra = shape[3:]
    if any(s != 1 for s in extra):
        if len(extra) == 1:
            raise InputError(
                f"is 4D (a series of {extra[0]} volumes, shape {_shape_text(shape)}); give one 3D volume",
                path,
            )
        raise InputError(f"is {len(shape)}D (shape {_shape_text(shape)}); give one 3D volume", path)
    if any(s <= 0 for s in shape[:3]):
        raise InputError(f"has an empty axis (shape {_shape_text(shape)})", path)
    return shape[:3]  # type: ignore[return-value]


def _check_voxel_type(dtype: np.dtype, path: Path) -> None:
    if dtype.fields is not None or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_
    ):
        raise InputError(f"has unsupported voxel type {dtype} (RGB or complex?); give a scalar volume", path)


def _check_size(voxel_bytes: int, offset: int, file_bytes: int, compressed: bool, path: Path) -> None:
    """Refuses a header promising more voxel data than the file can hold (before allocating it)."""
    capacity = file_bytes * _MAX_DEFLATE_RATIO + _SIZE_SLACK_BYTES if compressed else file_bytes
    if offset + voxel_bytes > capacity:
        where = "" if offset == 0 else f" after a {offset}-byte header"
        raise InputError(
            f"is truncated or its header is corrupted: it promises {voxel_bytes} bytes of voxels{where}, "
            f"more than this {file_bytes}-byte file can hold",
            path,
        )


def _check_affine(affine: np.ndarray, path: Path) -> None:
    """Refuses a voxel-to-world matrix that is non-finite, implausibly scaled or has no clear axes."""
    if not np.isfinite(affine).all():
        raise InputError("has an invalid geometry (non-finite values in the voxel-to-world matrix)", path)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 mm overflows to inf: refused below
        voxel_sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if voxel_sizes.min() < _MIN_VOXEL_MM or voxel_sizes.max() > _MAX_VOXEL_MM:
        sizes = "x".join(f"{v:.3g}" for v in voxel_sizes)
        raise InputError(f"has an implausible voxel size ({sizes} mm)", path)
    ornt = ornt_lib.io_orientation(affine)
    if np.isnan(ornt).any() or sorted(ornt[:, 0].astype(int)) != [0, 1, 2]:
        raise InputError("has a degenerate geometry (voxel axes are not independent directions)", path)


def _one_line(text: str, path: Path | None = None) -> str:
    """A library message on one short line, without the file name (the error prefix names it)."""
    if path is not None:
        text = text.replace(str(path), "the file").replace(path.name, "the file")
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 3] + "..."
    return text


# ---------------------------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, suffix: str, size: int) -> Volume:
    # nibabel prints each header fix once per parse (twice here), and warns about odd extensions.
    with nibabel_messages() as messages, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            volume = _read_nifti_file(path, suffix, size)
        finally:
            for warning in caught:
                logger.debug("nibabel: %s: %s", path, warning.message)
    _report_pixdim_fixes(messages, volume.geometry, path)
    return volume


def _report_pixdim_fixes(messages: list[str], geometry: Geometry, path: Path) -> None:
    """One warning of our own (once per file and process) when nibabel invented a voxel size.

    A zero (or negative) ``pixdim`` is replaced by 1 mm (or its absolute value). That matters only when
    the geometry comes from the qform or from pixdim alone (``sform_code`` 0): the sform does not use
    pixdim.
    """
    zero = any("pixdim[1,2,3] should be non-zero" in m for m in messages)
    negative = any("pixdim[1,2,3] should be positive" in m for m in messages)
    if geometry.sform_code > 0 or not (zero or negative) or str(path) in _PIXDIM_WARNED:
        return
    _PIXDIM_WARNED.add(str(path))
    what = "0 (read as 1 mm)" if zero else "negative (read as its absolute value)"
    logger.warning(
        "%s: a voxel size (pixdim) in the NIfTI header is %s and no sform gives the geometry: "
        "the voxel spacing along that axis is a guess",
        path,
        what,
    )


def _read_nifti_file(path: Path, suffix: str, size: int) -> Volume:
    try:
        # nib.load reads only the header here; the voxels are read below through MONAI.
        header_image = nib.load(str(path), mmap=False)
    except Exception as exc:
        raise _nifti_error(exc, path, suffix) from None
    if not isinstance(header_image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"is not a NIfTI file (nibabel reads it as {type(header_image).__name__})", path)
    header = header_image.header
    try:
        file_shape = tuple(int(s) for s in header.get_data_shape())
        raw_dtype = np.dtype(header.get_data_dtype())
        # The proxy's offset is the one nibabel reads from (the loaded header may show vox_offset 0).
        offset = int(header_image.dataobj.offset)
        # Snapshot before MONAI's loader, which may rewrite an sform that disagrees with pixdim.
        affine = np.array(header_image.affine, dtype=np.float64)
        qform_code = int(header["qform_code"])
        sform_code = int(header["sform_code"])
        header_bytes = header.binaryblock
    except Exception as exc:
        raise InputError(f"has an invalid NIfTI header ({_one_line(str(exc), path)})", path) from None
    shape = _spatial_shape(file_shape, path)
    _check_voxel_type(raw_dtype, path)
    _check_affine(affine, path)
    _check_size(math.prod(file_shape) * raw_dtype.itemsize, offset, size, suffix == ".nii.gz", path)
    header_size = int(header["sizeof_hdr"])
    if offset < header_size:
        # nibabel would read the header itself as voxels (niftilib moves such an offset past it).
        raise InputError(
            f"has an invalid NIfTI header (vox_offset {offset} lies inside its {header_size}-byte header)",
            path,
        )

    data = _load_nifti_voxels(path, suffix, type(header_image))
    data = data.reshape(shape)
    geometry = Geometry(
        affine=affine,
        shape=shape,
        dtype=data.dtype.name,
        source_format="nifti",
        source_path=str(path),
        qform_code=qform_code,
        sform_code=sform_code,
        nifti_header=bytes(header_bytes),
    )
    return Volume(geometry.array_to_ras(data), geometry)


def _load_nifti_voxels(path: Path, suffix: str, image_class: type) -> np.ndarray:
    """The voxels as nibabel gives them (``scl_slope``/``scl_inter`` applied, file order kept).

    A ``.nii.gz`` is decompressed once (:mod:`medcyclegan.io.gzip_io`: isal), through a
    stream this function reads to its end: reaching the end checks the CRC-32 and length of the whole
    file. (nibabel on its own stops at the
    last voxel and never checks them, so a corrupted file could decode silently into wrong values; a
    separate checking pass would decompress the file twice.)
    """
    try:
        with open_gzip_read(path) if suffix == ".nii.gz" else open(path, "rb") as stream:
            file_map = image_class.make_file_map({"image": stream})
            image = image_class.from_file_map(file_map, mmap=False)
            # The same reading as MONAI's NibabelReader (np.asanyarray of the array proxy).
            data = np.asanyarray(image.dataobj)
            # Anything after the voxels, then the CRC check. A slice or more there means damaged
            # dimensions (or a gzip bomb): refused before decompressing the rest.
            slice_bytes = max(1, data.nbytes // max(1, data.shape[-1])) if data.ndim else 1
            extra = 0
            while chunk := stream.read(min(_GZIP_CHUNK_BYTES, slice_bytes)):
                extra += len(chunk)
                if extra >= slice_bytes:
                    break
    except Exception as exc:
        raise _nifti_error(exc, path, suffix) from None
    _check_no_extra_slices(extra, slice_bytes, path)
    _check_voxel_type(data.dtype, path)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _nifti_error(exc: Exception, path: Path, suffix: str) -> InputError:
    """Turns a nibabel/gzip failure into one line saying what is wrong with the file."""
    if isinstance(exc, MemoryError):
        return InputError("is too large to load into memory", path)
    gzip_problem = _gzip_problem(exc)
    if gzip_problem is None and suffix == ".nii.gz":
        gzip_problem = _probe_gzip(path)
    if gzip_problem is not None:
        return InputError(gzip_problem, path)
    message = str(exc)
    match = re.search(r"Expected (\d+) bytes, got (\d+) bytes", message)
    if match:
        return InputError(
            f"is truncated: expected {match.group(1)} bytes of voxel data, found {match.group(2)}", path
        )
    if "Cannot work out file type" in message:
        return InputError(_not_nifti_reason(path, suffix), path)
    if "extension content" in message or "read length must be non-negative" in message:
        return InputError("has a malformed NIfTI header extension (its size field is wrong)", path)
    return InputError(f"cannot be read as NIfTI ({type(exc).__name__}: {_one_line(message, path)})", path)


def _gzip_problem(exc: BaseException) -> str | None:
    if isinstance(exc, EOFError):
        return "is truncated (gzip stream ended early)"
    if isinstance(exc, gzip.BadGzipFile):
        if "CRC" in str(exc) or "length" in str(exc):
            return "is corrupted (its gzip checksum does not match the data)"
        return "is not a valid gzip file (a .nii.gz must be gzip-compressed NIfTI)"
    if isinstance(exc, zlib.error):
        return f"is corrupted (gzip data error: {_one_line(str(exc))})"
    return None


def _probe_gzip(path: Path) -> str | None:
    """Decompresses the whole file (discarding the output) and checks its CRC; the problem, if any."""
    try:
        with open_gzip_read(path) as handle:
            while handle.read(_GZIP_CHUNK_BYTES):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        return _gzip_problem(exc) or f"is corrupted ({_one_line(str(exc), path)})"
    return None


def _not_nifti_reason(path: Path, suffix: str) -> str:
    try:
        with open_gzip_read(path) if suffix == ".nii.gz" else open(path, "rb") as handle:
            start = handle.read(_NIFTI1_HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        start = b""
    if len(start) < _NIFTI1_HEADER_BYTES:
        return f"is too short to be NIfTI ({len(start)} bytes; a NIfTI header alone is 348 bytes)"
    sizes = {int.from_bytes(start[:4], "little"), int.from_bytes(start[:4], "big")}
    if not sizes & {_NIFTI1_HEADER_BYTES, _NIFTI2_HEADER_BYTES}:
        looks_text = all(32 <= b < 127 or b in b"\t\r\n" for b in start[:64])
        kind = "it looks like a text file" if looks_text else "no NIfTI header found"
        return f"is not a NIfTI file ({kind})"
    return "has an invalid NIfTI header"


# ------------------------------------------------------------------------------------------------ ITK


def import_simpleitk(
    path: str | Path, purpose: str, error_class: type[MedCycleGANError] = InputError
) -> ModuleType:
    """SimpleITK, imported on first use (it may be missing, e.g. on GPU machines that only read NIfTI).

    Raises:
        InputError (or ``error_class``): SimpleITK is not installed, naming what needed it.
    """
    try:
        import SimpleITK  # noqa: PLC0415 - lazy: optional at run time (GPU machines may only read NIfTI)
    except ImportError:
        raise error_class(
            f"{purpose} needs SimpleITK, which is not installed (pip install SimpleITK)", path
        ) from None
    route_itk_messages(SimpleITK)
    return SimpleITK


def _itk_message(exc: BaseException, path: Path | None = None) -> str:
    """The useful part of a SimpleITK/ITK exception (last line, without source locations)."""
    # MetaIO ends with "Reason: <errno text>", which is stale and meaningless here.
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith("Reason:")
    ]
    text = lines[-1] if lines else type(exc).__name__
    if "Unable to determine ImageIO reader" in text:
        return "its content is not in a format ITK recognises"
    if "File cannot be read" in text:
        return "its header cannot be parsed"
    text = re.sub(r"^.*?(sitk::ERROR|itk::ERROR|ITK ERROR):\s*", "", text)
    text = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    text = re.sub(r"^\[\w+\]\s*\w+:\s*", "", text)
    return _one_line(text, path)


def _itk_dtype(pixel_id: int) -> np.dtype:
    import SimpleITK as sitk  # noqa: PLC0415 - lazy: optional at run time; only ITK/DICOM paths, after import_simpleitk

    # A one-voxel image of that pixel type tells numpy's dtype without a hand-written table.
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype


def _read_itk(path: Path, suffix: str, size: int, allow_external_data: bool | None) -> Volume:
    sitk = import_simpleitk(path, f"reading {suffix} files")

    layout = data_layout(path, suffix)
    if layout is not None:
        check_data_files_inside(layout, allow_external_data)
        _check_data_files_regular(layout, path)
        _warn_if_no_spacing(layout, suffix, path)
        if suffix in (".mha", ".mhd"):
            _check_metaimage_header(path, layout, size)
        elif layout.compression == "bzip2":
            raise InputError(
                "uses NRRD bzip2 encoding, which ITK cannot read; re-save it with gzip or raw encoding", path
            )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    # ITK matches extensions case-sensitively: choose the reader from our (case-insensitive) suffix.
    reader.SetImageIO(_ITK_IMAGE_IO[suffix])
    try:
        with native_output_to_debug_log():  # MetaIO prints some problems with std::cerr
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot be read ({_itk_message(exc, path)})", path) from None
    file_shape = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"has {reader.GetNumberOfComponents()} values per voxel (vector or RGB); give a scalar volume",
            path,
        )
    _spatial_shape(file_shape, path)
    try:
        dtype = _itk_dtype(reader.GetPixelID())
    except RuntimeError as exc:
        raise InputError(f"has an unsupported pixel type ({_itk_message(exc, path)})", path) from None
    _check_voxel_type(dtype, path)
    if suffix not in (".nhdr", ".mhd"):
        # Attached data: the voxels (raw or gzip-compressed) must fit in this very file.
        _check_size(math.prod(file_shape) * dtype.itemsize, 0, size, True, path)
    if layout is not None and layout.compression is not None:
        _check_compressed_voxels(layout, math.prod(file_shape) * dtype.itemsize, path)
    elif layout is not None and suffix in (".nrrd", ".nhdr"):
        _check_nrrd_raw_size(layout, file_shape, dtype.itemsize, size, path)
    try:
        with native_output_to_debug_log():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot be read ({_itk_message(exc, path)})", path) from None
    except MemoryError:
        raise InputError("is too large to load into memory", path) from None
    return _itk_volume(image, path, "itk")


def _warn_if_no_spacing(layout: DataLayout, suffix: str, path: Path) -> None:
    """One warning (per file and process) when the header gives no voxel spacing: ITK then uses 1 mm.

    MetaImage without ``ElementSpacing``; NRRD whose ``space directions`` and ``spacings`` leave an
    axis without a size (``none``, ``nan`` or absent), as the warning for a NIfTI pixdim of 0 does.
    """
    fields = layout.fields
    if suffix in (".mha", ".mhd"):
        missing = "ElementSpacing" not in fields and "ElementSize" not in fields
        what = "no ElementSpacing"
    else:
        directions = fields.get("space directions", "").split()
        spacings = []
        for token in fields.get("spacings", "").split():
            try:
                spacings.append(float(token))
            except ValueError:
                continue
        given = max(sum(t.lower() != "none" for t in directions), sum(math.isfinite(v) for v in spacings))
        missing = given < 3
        what = "no size for some axes ('space directions' or 'spacings' missing, none or nan)"
    if missing and str(path) not in _PIXDIM_WARNED:
        _PIXDIM_WARNED.add(str(path))
        logger.warning("%s: the header gives %s: the voxel spacing is a guess (1 mm)", path, what)


def _check_nrrd_raw_size(
    layout: DataLayout, file_shape: tuple[int, ...], itemsize: int, size: int, path: Path
) -> None:
    """Refuses raw NRRD voxel data (in the file or one data file) a slice or more longer than its sizes.

    Skips text encodings, lists of data files and files with a line or byte skip (whose data may
    legitimately sit anywhere in a longer file).
    """
    encoding = layout.fields.get("encoding", "raw").lower()
    if encoding != "raw" or layout.line_skip or layout.byte_skip or len(layout.data_files) > 1:
        return
    if layout.data_files:
        try:
            present = layout.data_files[0].stat().st_size
        except OSError:
            return  # ITK reports the missing file
    else:
        present = size - layout.data_offset
    voxel_bytes = math.prod(file_shape) * itemsize
    _check_no_extra_slices(present - voxel_bytes, voxel_bytes // max(1, file_shape[-1]), path)


def _check_data_files_regular(layout: DataLayout, path: Path) -> None:
    """Refuses a data file that is a FIFO, a device or a socket (ITK would block or read forever)."""
    for data_file, shown in zip(layout.data_files, layout.data_names):
        try:
            mode = data_file.stat().st_mode
        except (OSError, ValueError):
            continue  # missing: reported with the sizes below, or by ITK
        if not stat.S_ISREG(mode):
            raise InputError(f"its data file {shown} is {file_kind(mode)}, not a regular file", path)


def _check_metaimage_header(path: Path, layout: DataLayout, size: int) -> None:
    """Validates a MetaImage header before ITK sees it.

    ITK's MetaIO corrupts the heap and kills the process (not an exception) on some malformed
    headers, e.g. a missing ``ElementDataFile`` line or fewer data bytes than announced, so those are
    refused here. The checks are lenient: unknown keys are allowed, only structure and sizes matter.
    """
    fields = layout.fields

    def numbers(key: str, count: int, kind: type = float) -> list[Any] | None:
        if key not in fields:
            return None
        try:
            values = [kind(v) for v in fields[key].split()]
        except ValueError:
            values = []
        if len(values) != count:
            raise InputError(f"has a malformed MetaImage header ({key} needs {count} numbers)", path)
        if not all(math.isfinite(v) for v in values):
            # MetaIO reads "inf" and "nan" as 0: the volume would silently move to the origin.
            raise InputError(f"has non-finite values in its MetaImage header ({key} = {fields[key]})", path)
        return values

    ndims = (numbers("NDims", 1, int) or [0])[0]
    if not 1 <= ndims <= _META_MAX_DIMS:
        raise InputError("has a malformed MetaImage header (NDims missing or out of range)", path)
    dim_size = numbers("DimSize", ndims, int)
    if dim_size is None or min(dim_size) <= 0:
        raise InputError("has a malformed MetaImage header (DimSize missing or not positive)", path)
    for key in ("ElementSpacing", "ElementSize", "Offset", "Origin", "Position", "CenterOfRotation"):
        numbers(key, ndims)
    for key in ("TransformMatrix", "Rotation", "Orientation"):
        numbers(key, ndims * ndims)
    channels = (numbers("ElementNumberOfChannels", 1, int) or [1])[0]
    element_type = fields.get("ElementType", "")
    if not _META_ELEMENT_TYPE.match(element_type) or channels < 1:
        raise InputError("has a malformed MetaImage header (ElementType missing or unknown)", path)
    compressed_size = numbers("CompressedDataSize", 1, int)
    element_bytes = _META_ELEMENT_BYTES.get(element_type, 1)

    data_file = fields["ElementDataFile"]
    if not layout.data_files:
        data_bytes = size - layout.data_offset
    elif layout.header.name.lower().endswith(".mha"):
        raise InputError(
            "has a malformed MetaImage header (ElementDataFile must be LOCAL in a .mha file)", path
        )
    elif not data_file.strip() or not data_file.isprintable():
        raise InputError("has a malformed MetaImage header (ElementDataFile is not a file name)", path)
    elif len(layout.data_files) > 1 or data_file.upper().startswith("LIST"):
        if layout.compression:
            # MetaIO has no checked way to read compressed slices from several files.
            raise InputError(
                "has compressed voxel data split over several files, which cannot be checked; "
                "re-save it as one .mha or .mhd file",
                path,
            )
        _check_metaimage_file_list(path, layout, dim_size, channels * element_bytes)
        return
    else:
        data_path = layout.data_files[0]
        if not data_path.is_file():
            raise InputError(f"its data file {data_file} is missing", path)
        data_bytes = data_path.stat().st_size
    header_size = _int_field_value(fields.get("HeaderSize", "0"))
    if header_size > 0:
        data_bytes -= header_size if layout.data_files else 0
        if data_bytes < 0:
            raise InputError(
                f"is truncated: its HeaderSize ({header_size}) skips past the end of its data file", path
            )
    if layout.compression:
        if compressed_size is not None and compressed_size[0] > data_bytes:
            raise InputError(
                f"is truncated: {compressed_size[0]} bytes of compressed voxels announced, {data_bytes} present",
                path,
            )
    elif fields.get("BinaryData", "True").lower() == "true":
        needed = math.prod(dim_size) * channels * element_bytes
        if header_size > 0 and not layout.data_files:
            needed += header_size  # MetaIO skips HeaderSize bytes after the header
        if needed > data_bytes:
            raise InputError(f"is truncated: {needed} bytes of voxels announced, {data_bytes} present", path)
        slice_bytes = math.prod(dim_size[:-1]) * channels * element_bytes
        # HeaderSize -1: the voxels are the file's last bytes. MET_LONG may be 4 or 8 bytes a voxel.
        if header_size != -1 and element_type not in _META_AMBIGUOUS_TYPES:
            _check_no_extra_slices(data_bytes - needed, slice_bytes, path)


def _int_field_value(text: str) -> int:
    try:
        return int(text.split()[0]) if text.split() else 0
    except ValueError:
        return 0


def _check_no_extra_slices(extra_bytes: int, slice_bytes: int, path: Path, subject: str = "") -> None:
    """Refuses a file holding at least one slice of voxel data more than its header describes.

    A header whose dimensions were damaged (the last size lowered) would otherwise read as a smaller
    volume, silently. Padding shorter than one slice is tolerated.
    """
    if slice_bytes > 0 and extra_bytes >= slice_bytes:
        raise InputError(
            f"{subject}holds {extra_bytes} bytes more voxel data than its header describes (at least "
            f"{extra_bytes // slice_bytes} slice(s)): its dimensions in the header look wrong",
            path,
        )


def _check_metaimage_file_list(path: Path, layout: DataLayout, dim_size: list[int], voxel_bytes: int) -> None:
    """A slice list (``LIST [N]D``) or file pattern (``name%d MIN MAX STEP [N]``) must name one file
    per N-dimensional piece (default N = NDims - 1), each holding that piece.

    MetaIO reads fewer files without a word: the missing slices are zeros, or whatever was in memory.
    """
    spec = layout.fields["ElementDataFile"].split()
    piece_text = spec[1] if spec[0].upper() == "LIST" and len(spec) > 1 else spec[4] if len(spec) > 4 else ""
    try:
        piece_dims = int(piece_text.upper().removesuffix("D")) if piece_text else len(dim_size) - 1
    except ValueError:
        piece_dims = -1
    if not 1 <= piece_dims <= len(dim_size):
        raise InputError(
            f"has a malformed MetaImage header (ElementDataFile piece dimension {piece_text!r})", path
        )
    pieces = math.prod(dim_size[piece_dims:])
    if len(layout.data_files) != pieces:
        raise InputError(
            f"names {len(layout.data_files)} data file(s) but its DimSize needs {pieces} "
            f"({piece_dims}D pieces); each piece must have its own file",
            path,
        )
    piece_bytes = math.prod(dim_size[:piece_dims]) * voxel_bytes
    offset = max(layout.data_offset, 0)
    for data_path, shown in zip(layout.data_files, layout.data_names):
        if not data_path.is_file():
            raise InputError(f"its data file {shown} is missing", path)
        present = data_path.stat().st_size - offset
        if present < piece_bytes:
            raise InputError(
                f"its data file {shown} is truncated: {piece_bytes} bytes of voxels needed, "
                f"{max(present, 0)} present",
                path,
            )


def _check_compressed_voxels(layout: DataLayout, voxel_bytes: int, path: Path) -> None:
    """Decompresses the voxel data once (discarding it, 4 MiB at a time) and checks it is intact.

    ITK does not check: MetaIO decodes a corrupted zlib stream into wrong voxels (printing only
    "Uncompress failed" on stderr) and NrrdIO ignores the gzip length field. zlib's Adler-32 (MetaImage)
    or gzip's CRC-32 and length (NRRD) catch corrupted data; the decompressed size must be what the
    header announces. Done before ITK reads the file, so ITK never meets a broken stream.

    Raises:
        InputError: corrupted or truncated compressed data, or a decompressed size other than the
            header's, naming the data file where it is not ``path`` itself.
    """
    sources = layout.data_files or (path,)
    expected = voxel_bytes + len(sources) * max(layout.byte_skip, 0)
    # Decompressing stops once past what the header announces (a small file may expand 1000-fold);
    # with a negative byte skip the voxels are the stream's last bytes, so it has no end to check.
    ceiling = expected if layout.byte_skip >= 0 else None
    total = 0
    for source in sources:
        subject = "" if source == path else f"its data file {source.name} "
        try:
            with open(source, "rb") as handle:
                handle.seek(layout.data_offset)
                if layout.compression == "zlib":
                    limit = layout.fields.get("CompressedDataSize", "")
                    total += _zlib_stream_size(
                        handle,
                        int(limit) if limit.isdigit() else None,
                        None if ceiling is None else ceiling - total,
                    )
                    continue
                for _ in range(layout.line_skip):
                    handle.readline()
                with open_gzip_read(handle) as stream:
                    buffer = bytearray(_GZIP_CHUNK_BYTES)
                    while count := stream.readinto(buffer):
                        total += count
                        if ceiling is not None and total > ceiling:
                            break
        except OSError as exc:
            if isinstance(exc, gzip.BadGzipFile):
                # A trailer mismatch says "CRC check failed" or "Incorrect length of data produced".
                checksum = "CRC" in str(exc) or "length" in str(exc)
                problem = _gzip_problem(exc) if checksum else _NOT_GZIP
                raise InputError(f"{subject}{problem}", path) from None
            raise InputError(f"{subject}cannot be opened ({exc.strerror or exc})", path) from None
        except (EOFError, zlib.error) as exc:
            problem = _gzip_problem(exc) if layout.compression == "gzip" else _zlib_problem(exc)
            raise InputError(f"{subject}{problem}", path) from None
    if ceiling is not None and total > ceiling:
        raise InputError(
            f"is corrupted: its compressed voxel data holds more than the {expected} bytes "
            "the header announces",
            path,
        )
    if total != expected and not (layout.byte_skip < 0 and total >= voxel_bytes):
        kind = "is truncated" if total < expected else "is corrupted"
        raise InputError(
            f"{kind}: its compressed voxel data holds {total} bytes, the header announces {expected}", path
        )


_NOT_GZIP = (
    "is corrupted or not gzip-compressed (its header says gzip, its voxel data does not start like gzip)"
)


def _zlib_stream_size(handle: Any, limit: int | None, ceiling: int | None = None) -> int:
    """The decompressed size of the zlib (or gzip) stream at the handle's position, checked to its end.

    With ``ceiling``, decompression stops as soon as more than ``ceiling`` bytes came out (the size
    returned is then only known to exceed it).

    Raises:
        EOFError: the stream ends before its end marker.
        zlib.error: corrupted data or a wrong Adler-32 checksum.
    """
    # 32 + MAX_WBITS accepts zlib and gzip headers alike, as MetaIO does.
    decompressor = zlib.decompressobj(32 + zlib.MAX_WBITS)
    total = 0
    remaining = limit
    while not decompressor.eof:
        chunk = handle.read(_GZIP_CHUNK_BYTES if remaining is None else min(_GZIP_CHUNK_BYTES, remaining))
        if not chunk:
            raise EOFError("compressed data ended early")
        if remaining is not None:
            remaining -= len(chunk)
        while chunk and not decompressor.eof:
            total += len(decompressor.decompress(chunk, _GZIP_CHUNK_BYTES))
            chunk = decompressor.unconsumed_tail
            if ceiling is not None and total > ceiling:
                return total
    return total


def _zlib_problem(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "is truncated (its compressed voxel data ends early)"
    text = str(exc)
    if "incorrect data check" in text:
        return "is corrupted (the checksum of its compressed voxel data does not match)"
    return f"is corrupted (compressed voxel data: {_one_line(text.removeprefix('Error -3 while decompressing data: '))})"


def _itk_volume(image: Any, path: Path, source_format: str, extra: dict[str, str] | None = None) -> Volume:
    """An ITK image (LPS world, z-y-x array) as a Volume (RAS world, x-y-z file order -> RAS order)."""
    import SimpleITK as sitk  # noqa: PLC0415 - lazy: optional at run time; only ITK/DICOM paths, after import_simpleitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"has {image.GetNumberOfComponentsPerPixel()} values per voxel (vector or RGB); give a scalar volume",
            path,
        )
    file_shape = tuple(int(s) for s in image.GetSize())
    shape = _spatial_shape(file_shape, path)
    ndim = image.GetDimension()
    spacing = np.array(image.GetSpacing(), dtype=np.float64)[:3]
    origin = np.array(image.GetOrigin(), dtype=np.float64)[:3]
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)[:3, :3]
    _check_itk_direction(direction, path)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing  # column j = direction of axis j times its spacing
    affine_lps[:3, 3] = origin
    affine = LPS_TO_RAS @ affine_lps
    _check_affine(affine, path)

    array = sitk.GetArrayFromImage(image)  # axes reversed: (t,) z, y, x
    array = array.reshape(array.shape[-3:]).transpose(2, 1, 0)
    _check_voxel_type(array.dtype, path)
    if source_format == "dicom":
        array = _narrow_integers(array)
    geometry = Geometry(
        affine=affine,
        shape=shape,
        dtype=array.dtype.name,
        source_format=source_format,
        source_path=str(path),
        qform_code=1,
        sform_code=1,
        itk_spacing=tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        itk_origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        itk_direction=tuple(float(v) for v in direction.ravel()),
        extra=dict(extra or {}),
    )
    return Volume(geometry.array_to_ras(array), geometry)


def _check_itk_direction(direction: np.ndarray, path: Path) -> None:
    """Refuses an ITK direction that is not a rotation (or reflection): its columns are the axes' cosines.

    ITK multiplies direction and spacing, so a column of length 2 silently doubles that axis's voxel
    size and a shear tilts it, while the header's spacing (and every viewer that trusts it) says
    otherwise; DICOM written from it would carry non-unit orientation cosines. Such a header is
    corrupted or hand-made: which of spacing or direction is right cannot be told.
    """
    if not np.isfinite(direction).all():
        raise InputError("has an invalid geometry (non-finite values in the direction matrix)", path)
    lengths = np.linalg.norm(direction, axis=0)
    gram = direction.T @ direction
    if np.abs(gram - np.eye(3)).max() > _DIRECTION_TOLERANCE:
        what = (
            "lengths " + ", ".join(f"{v:.3g}" for v in lengths)
            if np.abs(lengths - 1).max() > _DIRECTION_TOLERANCE
            else "axes not perpendicular"
        )
        raise InputError(
            f"has an invalid direction matrix (its columns are not orthonormal direction cosines: {what}); "
            "the voxel size and orientation it gives are ambiguous: fix the header",
            path,
        )


def _narrow_integers(array: np.ndarray) -> np.ndarray:
    """int32 -> int16 when lossless: GDCM widens 16-bit DICOM to int32 whenever it applies a rescale."""
    if array.dtype == np.int32 and array.size:
        info = np.iinfo(np.int16)
        if info.min <= array.min() and array.max() <= info.max:
            return array.astype(np.int16)
    return array


# ---------------------------------------------------------------------------------------------- DICOM


def _dicom_tag(reader: Any, key: str, default: str = "") -> str:
    try:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else default
    except RuntimeError:
        return default


def _series_summary(folder: Path, uid: str) -> str:
    import SimpleITK as sitk  # noqa: PLC0415 - lazy: optional at run time; only ITK/DICOM paths, after import_simpleitk

    with native_output_to_debug_log():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    description = ""
    if files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        try:
            with native_output_to_debug_log():
                reader.ReadImageInformation()
            description = _dicom_tag(reader, "0008|103e")
        except RuntimeError:
            pass
    described = f"'{description}'" if description else "no description"
    return f"{uid} ({described}, {len(files)} slices)"


def _read_dicom_series(folder: Path, series_uid: str | None) -> Volume:
    sitk = import_simpleitk(folder, "reading DICOM series")

    _check_no_special_files(folder)
    try:
        with native_output_to_debug_log():  # GDCM and OpenJPEG print some problems themselves
            uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise InputError(f"cannot be scanned for DICOM ({_itk_message(exc, folder)})", folder) from None
    if not uids:
        raise InputError(
            "is a folder without a DICOM series; give a volume file or a folder of DICOM slices", folder
        )
    if series_uid is None:
        if len(uids) > 1:
            listing = "; ".join(_series_summary(folder, uid) for uid in uids)
            raise InputError(
                f"holds {len(uids)} DICOM series, choose one with FOLDER{SERIES_SEPARATOR}SERIES_UID "
                f"(series_uid=...): {listing}",
                folder,
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        listing = "; ".join(_series_summary(folder, uid) for uid in uids)
        raise InputError(f"has no DICOM series {series_uid}; it holds: {listing}", folder)

    with native_output_to_debug_log():  # GDCM decodes pixel data while sorting the slices
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with native_output_to_debug_log():
            image = reader.Execute()
    except RuntimeError as exc:
        problem = _slice_size_mismatch(sitk, files) or _itk_message(exc, folder)
        compression = _compressed_syntax(Path(files[0])) if files else None
        if compression is not None:
            problem = (
                f"its pixel data is {compression}-compressed and could not be decoded: {problem}; "
                "decompress the series first, e.g. with gdcmconv --raw or dcmdjpeg"
            )
        raise InputError(f"DICOM series {series_uid} cannot be read ({problem})", folder) from None
    except MemoryError:
        raise InputError(f"DICOM series {series_uid} is too large to load into memory", folder) from None
    if image.GetDimension() == 2 or (len(files) == 1 and image.GetSize()[2:3] == (1,)):
        raise InputError(f"DICOM series {series_uid} is a single 2D slice; give a 3D series", folder)
    _check_slice_pixels(reader, folder, series_uid, files)
    if len(files) > 1:
        try:
            _check_slice_positions(reader, len(files), folder, series_uid, files)
        except InputError as error:
            unread = _unread_dicom_files(sitk, folder, uids, series_uid, files)
            if not unread:
                raise
            # The likely cause of missing slices: files GDCM could not read at all.
            raise InputError(
                f"{_error_text(error, folder)}; {len(unread)} file(s) here cannot be read as DICOM: "
                f"{_examples(unread)}",
                folder,
            ) from None
    unread = _unread_dicom_files(sitk, folder, uids, series_uid, files)
    if unread:
        logger.warning(
            "%s: ignored %d file(s) that are not DICOM images or cannot be read: %s",
            folder,
            len(unread),
            _examples(unread),
        )
    extra = {
        "series_uid": series_uid,
        "series_description": _slice_tag(reader, "0008|103e"),
        "modality": _slice_tag(reader, "0008|0060"),
        # The slice files in the volume's slice order (names in ``folder``, a JSON list): what a DICOM
        # output reads the source's patient, study and slice UIDs from (io.dicom_writer).
        "series_files": json.dumps([Path(name).name for name in files]),
    }
    return _itk_volume(image, folder, "dicom", extra)


# Bytes read before the expected start of the pixel data, and tag matches tried, in _pixel_data_bytes.
_PIXEL_TAIL_MARGIN = 4096
_PIXEL_TAG_CANDIDATES = 8
_PIXEL_TAGS = {
    "0028|0010": "Rows",
    "0028|0011": "Columns",
    "0028|0100": "BitsAllocated",
    "0028|0002": "SamplesPerPixel",
}


def _error_text(error: InputError, path: Path) -> str:
    """An InputError's message without its ``PATH: `` prefix."""
    return str(error).removeprefix(f"{path}: ")


def _examples(paths: Sequence[str | Path], count: int = 3) -> str:
    names = ", ".join(Path(p).name for p in list(paths)[:count])
    return names + (", ..." if len(paths) > count else "")


def _pixel_data_bytes(path: Path, needed: int) -> int | None:
    """The length of a DICOM file's uncompressed PixelData element, if found at the end of the file.

    Only the last ``needed`` bytes (plus a margin) are read. The element is recognised by its tag
    (7FE0,0010), a consistent header (explicit VR: OB/OW/UN and zero padding; implicit VR: a length
    reaching the end of the file) and a value that ends within the file. ``None`` when not found
    (compressed or unusual files): nothing is checked then.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            start = max(0, size - needed - _PIXEL_TAIL_MARGIN)
            handle.seek(start)
            tail = handle.read()
    except OSError:
        return None
    position = len(tail)
    for _ in range(_PIXEL_TAG_CANDIDATES):
        position = tail.rfind(b"\xe0\x7f\x10\x00", 0, position)
        if position < 0:
            return None
        vr, reserved = tail[position + 4 : position + 6], tail[position + 6 : position + 8]
        if vr in (b"OB", b"OW", b"UN") and reserved == b"\x00\x00" and len(tail) >= position + 12:
            length = int.from_bytes(tail[position + 8 : position + 12], "little")
            if length != 0xFFFFFFFF and position + 12 + length <= len(tail):
                return length
        elif len(tail) >= position + 8:
            length = int.from_bytes(tail[position + 4 : position + 8], "little")
            if position + 8 + length == len(tail):
                return length
    return None


def _unread_dicom_files(
    sitk: ModuleType, folder: Path, uids: Sequence[str], read_uid: str, read_files: Sequence[str]
) -> list[Path]:
    """Files of ``folder`` that look like DICOM (``.dcm`` or the DICM magic) but are in no series.

    ``read_files`` are the files of the series ``read_uid`` (known already: GDCM scans the folder
    again for each other series only).
    """
    in_series = {os.path.normpath(name) for name in read_files}
    with native_output_to_debug_log():
        for uid in uids:
            if uid != read_uid:
                names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
                in_series.update(os.path.normpath(name) for name in names)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [
        entry
        for entry in entries
        if not entry.name.startswith(".")
        and is_dicom_file(entry)
        and os.path.normpath(str(entry)) not in in_series
    ]


def _check_slice_pixels(series_reader: Any, folder: Path, series_uid: str, files: Sequence[str]) -> None:
    """Refuses slices whose pixel layout differs from the first slice's, or with too little pixel data,
    and a PixelSpacing that is not two positive numbers.

    GDCM reads such slices without an error: a slice with fewer bytes than its Rows x Columns needs
    comes back filled with whatever was in memory, an 8-bit slice among 16-bit ones is misread, and a
    zero or negative PixelSpacing silently becomes 1 mm.
    """
    first = {tag: _slice_tag(series_reader, tag, 0) for tag in _PIXEL_TAGS}
    for index, name in enumerate(files):
        values = {tag: _slice_tag(series_reader, tag, index) for tag in _PIXEL_TAGS}
        differ = [
            f"{_PIXEL_TAGS[t]} {values[t] or 'missing'} (first slice: {first[t] or 'missing'})"
            for t in _PIXEL_TAGS
            if values[t] != first[t]
        ]
        if differ:
            raise InputError(
                f"DICOM series {series_uid}: slice {Path(name).name} has {', '.join(differ)}; "
                "every slice of a volume needs the same pixel layout",
                folder,
            )
        try:
            needed = math.prod(int(values[t]) for t in _PIXEL_TAGS) // 8
            needed *= max(1, int(_slice_tag(series_reader, "0028|0008", index) or 1))
        except ValueError:
            continue
        present = _pixel_data_bytes(Path(name), needed)
        if present is not None and present < needed:
            raise InputError(
                f"DICOM series {series_uid}: slice {Path(name).name} is damaged: it holds {present} bytes "
                f"of pixel data, its Rows x Columns x BitsAllocated need {needed}",
                folder,
            )
    spacing_text = _slice_tag(series_reader, "0028|0030", 0)
    if spacing_text:
        try:
            spacing = [float(v) for v in spacing_text.split("\\")]
        except ValueError:
            spacing = []
        if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise InputError(
                f"DICOM series {series_uid} has an invalid PixelSpacing ({spacing_text}); "
                "it must be two positive numbers (mm)",
                folder,
            )


# Compressed DICOM transfer syntaxes (UID prefix -> name), for a message when decoding fails.
_COMPRESSED_SYNTAXES = (
    ("1.2.840.10008.1.2.4.9", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.20", "HTJ2K (High-Throughput JPEG 2000)"),
    ("1.2.840.10008.1.2.4.8", "JPEG-LS"),
    ("1.2.840.10008.1.2.4.5", "JPEG"),
    ("1.2.840.10008.1.2.4.70", "JPEG"),
    ("1.2.840.10008.1.2.4.1", "MPEG"),
    ("1.2.840.10008.1.2.5", "RLE"),
    ("1.2.840.10008.1.2.1.99", "deflate"),
)
_TRANSFER_SYNTAX_TAG = b"\x02\x00\x10\x00UI"
_META_HEADER_BYTES = 2048


def _compressed_syntax(path: Path) -> str | None:
    """The name of the compression of a DICOM file's pixel data (from its transfer syntax), if any."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_META_HEADER_BYTES)
    except OSError:
        return None
    position = head.find(_TRANSFER_SYNTAX_TAG)
    if position < 0:
        return None
    length = int.from_bytes(head[position + 6 : position + 8], "little")
    uid = head[position + 8 : position + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")
    return next((name for prefix, name in _COMPRESSED_SYNTAXES if uid.startswith(prefix)), None)


def _slice_size_mismatch(sitk: ModuleType, files: Sequence[str]) -> str | None:
    """Which slice has another size than the first (ITK says only "Size: [6, 3, 1]"), if any."""
    sizes = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            with native_output_to_debug_log():
                reader.ReadImageInformation()
        except RuntimeError:
            return f"slice {Path(name).name} cannot be read"
        sizes.append(tuple(reader.GetSize()[:2]))
        if sizes[-1] != sizes[0]:
            return (
                f"slice {Path(name).name} is {_shape_text(sizes[-1])} pixels, the first slice "
                f"{_shape_text(sizes[0])}; every slice of a volume needs the same size"
            )
    return None


def _check_no_special_files(folder: Path) -> None:
    """Refuses a DICOM folder holding a FIFO, device or socket: GDCM then finds no series at all."""
    try:
        special = [entry for entry in sorted(folder.iterdir()) if is_special_file(entry)]
    except OSError:
        return  # GDCM reports an unreadable folder itself
    if special:
        kind = file_kind(special[0].stat().st_mode)
        raise InputError(
            f"holds {special[0].name}, {kind}, among its files; DICOM folders are scanned as a whole "
            "and cannot hold special files: move it elsewhere",
            folder,
        )


def _slice_tag(series_reader: Any, key: str, index: int = 0) -> str:
    try:
        if series_reader.HasMetaDataKey(index, key):
            return series_reader.GetMetaData(index, key).strip()
    except RuntimeError:
        pass
    return ""


def _slice_vector(series_reader: Any, index: int, key: str, length: int) -> np.ndarray | None:
    text = _slice_tag(series_reader, key, index)
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.shape == (length,) else None


def _check_slice_orientations(
    series_reader: Any, orientations: list[np.ndarray], folder: Path, series_uid: str, files: Sequence[str]
) -> None:
    """Refuses a series whose slices do not all have the first slice's orientation.

    Before the spacing check, which would blame the uneven positions of such slices on missing or
    duplicated slices. Slices in 3 or more planes (or ImageType LOCALIZER) are a localizer (scout).
    """
    first = orientations[0]
    differ = [i for i, o in enumerate(orientations) if np.abs(o - first).max() > _ORIENTATION_TOLERANCE]
    if not differ:
        return
    planes: list[np.ndarray] = []
    for o in orientations:
        normal = np.cross(o[:3], o[3:])
        if all(abs(float(np.dot(normal, p))) < 1 - _ORIENTATION_TOLERANCE for p in planes):
            planes.append(normal)
    localizer = any(
        "LOCALIZER" in _slice_tag(series_reader, "0008|0008", i).upper() for i in range(len(orientations))
    )
    if localizer or len(planes) >= 3:
        raise InputError(
            f"DICOM series {series_uid} is a localizer (scout): its {len(orientations)} slices lie in "
            f"{len(planes)} different planes, not one 3D volume; choose the series of the scan itself",
            folder,
        )
    example = f", e.g. {Path(files[differ[0]]).name}" if len(files) == len(orientations) else ""
    raise InputError(
        f"DICOM series {series_uid} mixes slice orientations: {len(differ)} of {len(orientations)} "
        f"slices are not oriented like the first{example}; a 3D volume needs one orientation",
        folder,
    )


def _check_slice_positions(
    series_reader: Any, n_slices: int, folder: Path, series_uid: str, files: Sequence[str] = ()
) -> None:
    """Refuses series with slices of several orientations (a localizer, a stray slice), or with
    missing or duplicated slices (uneven steps along the slice normal)."""
    orientations = [_slice_vector(series_reader, i, "0020|0037", 6) for i in range(n_slices)]
    positions = [_slice_vector(series_reader, i, "0020|0032", 3) for i in range(n_slices)]
    if any(o is None for o in orientations) or any(p is None for p in positions):
        logger.warning(
            "%s: DICOM series %s lacks slice positions (ImagePositionPatient or ImageOrientationPatient): "
            "the slice order and spacing cannot be checked, and the spacing between slices is a guess "
            "(ITK then uses 1 mm)",
            folder,
            series_uid,
        )
        return
    oriented = cast("list[np.ndarray]", orientations)  # no None left
    if not all(np.isfinite(p).all() for p in positions):  # type: ignore[union-attr]
        raise InputError(
            f"DICOM series {series_uid} has non-finite slice positions (ImagePositionPatient)", folder
        )
    for o in oriented:
        row, column = o[:3], o[3:]
        if not (
            np.isfinite(o).all()
            and abs(np.linalg.norm(row) - 1) < _DIRECTION_TOLERANCE
            and abs(np.linalg.norm(column) - 1) < _DIRECTION_TOLERANCE
            and abs(float(np.dot(row, column))) < _DIRECTION_TOLERANCE
        ):
            raise InputError(
                f"DICOM series {series_uid} has an invalid ImageOrientationPatient "
                f"({' '.join(f'{v:g}' for v in o)}): it must be two orthogonal unit vectors",
                folder,
            )
    _check_slice_orientations(series_reader, oriented, folder, series_uid, files)
    orientation = oriented[0]
    normal = np.cross(orientation[:3], orientation[3:])
    distances = np.array([float(np.dot(normal, p)) for p in positions])  # type: ignore[arg-type]
    steps = np.diff(distances)
    median = float(np.median(steps))
    tolerance = max(_SLICE_SPACING_ABS_TOLERANCE_MM, _SLICE_SPACING_TOLERANCE * abs(median))
    if abs(median) < _SLICE_SPACING_ABS_TOLERANCE_MM or np.abs(steps - median).max() > tolerance:
        raise InputError(
            f"DICOM series {series_uid} has unevenly spaced slices (steps {np.abs(steps).min():.4g} to "
            f"{np.abs(steps).max():.4g} mm along the slice normal): missing or duplicated slices?",
            folder,
        )
    offsets = np.diff(np.array(positions), axis=0)
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.abs(in_plane).max() > tolerance:
        logger.warning(
            "%s: DICOM series %s has tilted slices (gantry tilt); the geometry ignores the tilt",
            folder,
            series_uid,
        )
