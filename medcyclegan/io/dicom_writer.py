"""A synthetic CT as a DICOM series a planning system imports: CT Image Storage, one slice per file.

The series is written on exactly the grid of the volume it was computed from (the input's
:class:`~medcyclegan.io.volume.Geometry`), slice ``k`` of the file's own voxel order in file
``k + 1``: ImagePositionPatient, ImageOrientationPatient, PixelSpacing (row spacing, then column
spacing), SliceThickness and SpacingBetweenSlices come from the geometry's affine. Pixels are int16
HU as they are (RescaleSlope 1, RescaleIntercept 0, PixelRepresentation 1): every int16 value is a
valid HU value, nothing can overflow, and the rescaled values are exactly the NIfTI output's.

Who the series belongs to (:class:`DicomSource`):

* from a DICOM source series (:func:`read_dicom_source`): the patient (name, ID, birth date, sex,
  ...), the study (StudyInstanceUID, date, time, ID, accession number, referring physician), the
  FrameOfReferenceUID and the PatientPosition of the MR, copied element by element with their
  SpecificCharacterSet; each slice names the MR slice it was made from (SourceImageSequence). The
  source's files are read again here with pydicom (headers only): SimpleITK's metadata strings lose
  the character set of names, and a planning system matches the patient on exactly these values.
* from any other input (:func:`new_dicom_source`): the patient name and ID given (default: the case
  name), the StudyInstanceUID given or a new one, a new FrameOfReferenceUID.

Every series gets a new SeriesInstanceUID and new SOPInstanceUIDs from pydicom's
:func:`~pydicom.uid.generate_uid` (pydicom's root ``1.2.826.0.1.3680043.8.498.`` and a random
UUID: writing again never reuses a UID for other pixels), Modality CT, ImageType
``DERIVED\\SECONDARY\\AXIAL``, and a SeriesDescription, ImageComments and DerivationDescription that
say it is synthetic, which model made it and from what.

The folder is written atomically (:func:`~medcyclegan.io.atomic.atomic_folder`): a hidden
temporary folder beside it, renamed into place, so no half-written series is ever visible and two
processes never mix their slices.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medcyclegan import __version__
from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.io.atomic import atomic_folder
from medcyclegan.io.discovery import is_dicom_file, volume_suffix
from medcyclegan.io.volume import GRID_TOLERANCE_MM, LPS_TO_RAS, Geometry
from medcyclegan.io.writers import cast_values

logger = logging.getLogger("medcyclegan")

# The source's elements every slice carries: patient, study, frame of reference, patient position.
COPIED_FROM_SOURCE = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PatientPosition",
)
# What a synthetic CT cannot be registered to its MR without (one line each when missing).
REQUIRED_FROM_SOURCE = {
    "StudyInstanceUID": "the study it must join",
    "FrameOfReferenceUID": "the frame of reference it must share with the MR",
}
# Why identifiers given for a DICOM source are refused.
KEEPS_ITS_IDENTITY = (
    "is a DICOM series: its synthetic CT keeps the series' own patient and study; "
    "--dicom-patient-name, --dicom-patient-id and --dicom-study-uid are for other inputs"
)
# Type 2 elements of the CT Image IOD: present in every slice, empty when unknown.
TYPE2_ELEMENTS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PositionReferenceIndicator",
    "PatientPosition",
    "KVP",
    "AcquisitionNumber",
)
# Display windows (explanation, centre HU, width HU): soft tissue first (the default), then bone.
WINDOWS = (("SOFT TISSUE", 40, 400), ("BONE", 400, 1800))
# The synthetic series' SeriesNumber: the source's plus this (it sorts beside its MR), else this.
SERIES_NUMBER_OFFSET = 1000
_MAX_IS = 2**31 - 1
# A UID as DICOM spells it: digits and dots, at most 64 characters (leading zeros, which old
# scanners wrote, are kept: the copy must be exact for the planning system to link the series).
_UID_TEXT = re.compile(r"[0-9]+(\.[0-9]+)*")
# A UID this package writes: no leading zeros either (pydicom's rule, without its warning).
_NEW_UID_TEXT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_MAX_UID_CHARS = 64
_MAX_LO_CHARS = 64  # SeriesDescription, PatientID (LO)
_MAX_PN_COMPONENT_CHARS = 64
_MAX_ST_CHARS = 1024  # DerivationDescription (ST)
_MAX_LT_CHARS = 10240  # ImageComments (LT)
# Elements read from every source slice (the first one is read whole, pixels excepted).
_SLICE_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
)


@dataclass(frozen=True)
class DicomIdentity:
    """Who the DICOM output of a non-DICOM input belongs to (``convert --dicom-*``); None: default.

    Attributes:
        patient_name: PatientName (``^`` separates family and given names) [default: the case name].
        patient_id: PatientID [default: the case name].
        study_uid: StudyInstanceUID of the study to join [default: a new study].
    """

    patient_name: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None

    @property
    def given(self) -> bool:
        """True when any identifier was given."""
        return any(v is not None for v in (self.patient_name, self.patient_id, self.study_uid))

    def check(self) -> DicomIdentity:
        """Returns ``self`` once every given value is valid DICOM.

        Raises:
            ConfigError: a name or ID too long or with a backslash or control character, a study UID
                that is not digits and dots (no leading zeros) of at most 64 characters.
        """
        for option, value, limit in (
            ("--dicom-patient-name", self.patient_name, _MAX_PN_COMPONENT_CHARS),
            ("--dicom-patient-id", self.patient_id, _MAX_LO_CHARS),
        ):
            if value is None:
                continue
            if not value.strip() or "\\" in value or not value.isprintable():
                raise ConfigError(f"{option} must be printable text without a backslash; got {value!r}")
            longest = max(len(part) for part in value.split("^"))
            if longest > limit:
                raise ConfigError(f"{option} may hold at most {limit} characters per part; got {longest}")
        if self.study_uid is not None and not (
            len(self.study_uid) <= _MAX_UID_CHARS and _NEW_UID_TEXT.fullmatch(self.study_uid)
        ):
            raise ConfigError(
                "--dicom-study-uid must be a DICOM UID (digits and dots, no leading zeros, at most 64 "
                f"characters); got {self.study_uid!r}"
            )
        return self


@dataclass(frozen=True, eq=False)
class DicomSource:
    """What a synthetic DICOM series takes from its source: identity, study, frame of reference.

    Attributes:
        attributes: the elements every slice carries (patient, study, frame of reference, patient
            position, character set), as :data:`COPIED_FROM_SOURCE` names them.
        derived_from: what it was made from, for the descriptions (``"MR series 1.2.3 (T1 axial)"``,
            ``"file brain.nii.gz"``).
        references: for each slice of the file's voxel order, the (SOPClassUID, SOPInstanceUID) of
            the source slice at that place; empty when the source is not DICOM.
        series_number: the source's SeriesNumber, if it had one.
    """

    attributes: Dataset
    derived_from: str
    references: tuple[tuple[str, str], ...] = ()
    series_number: int | None = None


def read_dicom_source(geometry: Geometry) -> DicomSource:
    """The patient, study and frame of reference of the DICOM series ``geometry`` was read from.

    The series' slice files (``geometry.extra["series_files"]``, kept by
    :func:`~medcyclegan.io.readers.read_volume`) are read again with pydicom, headers only.
    pydicom's remarks on odd values (it converts them as they are used) go to the debug log: what
    matters here is checked, in one line of its own.

    Raises:
        InputError: a slice cannot be read any more, lacks a StudyInstanceUID or FrameOfReferenceUID
            (or holds one that is not a UID), or its slices disagree on the series, study or frame of
            reference (naming the slice file).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = _read_dicom_source(geometry)
    for warning in caught:
        logger.debug("pydicom: %s", warning.message)
    return source


def _read_dicom_source(geometry: Geometry) -> DicomSource:
    folder = Path(geometry.source_path)
    names = json.loads(geometry.extra.get("series_files", "[]"))
    if geometry.source_format != "dicom" or not names:
        raise ValueError("read_dicom_source needs the geometry of a DICOM series read by read_volume")
    paths = [folder / name for name in names]
    first = _read_header(paths[0], None)
    for keyword, why in REQUIRED_FROM_SOURCE.items():
        value = _text(first, keyword)
        if not value:
            raise InputError(
                f"has no {keyword} ({why}); a synthetic CT series cannot be made from this series: "
                "convert it to NIfTI instead",
                paths[0],
            )
        if len(value) > _MAX_UID_CHARS or not _UID_TEXT.fullmatch(value):
            raise InputError(f"has an invalid {keyword} {value[:80]!r} (not a DICOM UID)", paths[0])
    expected = {
        "SeriesInstanceUID": geometry.extra.get("series_uid", "").strip(" \0"),
        "StudyInstanceUID": _text(first, "StudyInstanceUID"),
        "FrameOfReferenceUID": _text(first, "FrameOfReferenceUID"),
    }
    references = []
    for path in paths:
        header = first if path == paths[0] else _read_header(path, _SLICE_TAGS)
        for keyword, value in expected.items():
            found = _text(header, keyword)
            if found != value:
                raise InputError(
                    f"has {keyword} {found[:80]!r} where its series has {value!r}: a series must lie in "
                    "one study and one frame of reference (or the folder changed while it was read)",
                    path,
                )
        references.append((_text(header, "SOPClassUID"), _text(header, "SOPInstanceUID")))
    attributes = Dataset()
    for keyword in COPIED_FROM_SOURCE:
        if keyword in first:
            attributes.add(copy.deepcopy(first[keyword]))
    modality = _text(first, "Modality") or "DICOM"
    description = _ascii(_text(first, "SeriesDescription"))
    derived_from = f"{_ascii(modality)} series {expected['SeriesInstanceUID']}" + (
        f" ({description})" if description else ""
    )
    usable = len(references) == geometry.shape[2] and all(all(r) for r in references)
    return DicomSource(
        attributes=attributes,
        derived_from=derived_from,
        references=tuple(references) if usable else (),
        series_number=_integer(first.get("SeriesNumber")),
    )


def new_dicom_source(identity: DicomIdentity, case: str, derived_from: str) -> DicomSource:
    """A new patient/study/frame of reference for the DICOM output of a non-DICOM input.

    Args:
        identity: the identifiers given (checked here); the name and ID default to ``case``, the
            study to a new StudyInstanceUID.
        case: the input's case name.
        derived_from: what the series was made from (``"file brain.nii.gz"``).

    Raises:
        ConfigError: an invalid identifier (see :meth:`DicomIdentity.check`).
    """
    identity.check()
    now = datetime.datetime.now()
    default = case[:_MAX_LO_CHARS].replace("\\", "_")
    name = identity.patient_name if identity.patient_name is not None else default
    patient_id = identity.patient_id if identity.patient_id is not None else default
    attributes = Dataset()
    if not (name + patient_id).isascii():
        attributes.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    attributes.PatientName = name
    attributes.PatientID = patient_id
    attributes.StudyInstanceUID = identity.study_uid or generate_uid()
    attributes.StudyDate = now.strftime("%Y%m%d")
    attributes.StudyTime = now.strftime("%H%M%S")
    attributes.FrameOfReferenceUID = generate_uid()
    return DicomSource(attributes=attributes, derived_from=derived_from)


def dicom_output_source(geometry: Geometry, identity: DicomIdentity | None, case: str) -> DicomSource:
    """:func:`read_dicom_source` for a DICOM input, else :func:`new_dicom_source`; the grid checked first.

    Raises:
        InputError: a DICOM source without what the output needs; identifiers given for a DICOM
            source (it keeps its own patient and study).
        OutputError: a grid DICOM cannot store (:func:`check_dicom_grid`).
        ConfigError: invalid identifiers.
    """
    check_dicom_grid(geometry)
    if geometry.source_format == "dicom":
        if identity is not None and identity.given:
            raise InputError(KEEPS_ITS_IDENTITY, geometry.source_path)
        return read_dicom_source(geometry)
    return new_dicom_source(identity or DicomIdentity(), case, f"file {Path(geometry.source_path).name}")


@dataclass(frozen=True)
class SliceGrid:
    """A grid as DICOM stores it (LPS mm): orthonormal rows, columns and slice normal.

    Attributes:
        origin: the centre of voxel (0, 0, 0).
        row: the unit direction of the file's axis 0 (along a row of pixels).
        column: the unit direction of the file's axis 1 (down a column).
        normal: ``row x column``.
        spacing: voxel sizes along the file's axes 0, 1 (mm).
        step: signed distance from slice ``k`` to ``k + 1`` along ``normal`` (mm).
    """

    origin: np.ndarray
    row: np.ndarray
    column: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float]
    step: float

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k``."""
        return self.origin + k * self.step * self.normal


def check_dicom_grid(geometry: Geometry) -> SliceGrid:
    """The grid of ``geometry`` as a DICOM series stores it; refuses one it cannot store.

    A series stores orthogonal unit rows and columns (ImageOrientationPatient) and a position per
    slice; readers stack the slices along the normal. The grid is refused when some voxel centre of
    the volume would move by more than :data:`~medcyclegan.io.volume.GRID_TOLERANCE_MM` (the
    package's one grid tolerance) in that form: a sheared or non-orthogonal grid.

    Raises:
        OutputError: the grid is sheared (naming the input).
    """
    affine = LPS_TO_RAS @ geometry.affine  # RAS -> LPS (the flip is its own inverse)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    row = axes[:, 0] / spacing[0]
    column = axes[:, 1] - (axes[:, 1] @ row) * row
    column /= np.linalg.norm(column)
    normal = np.cross(row, column)
    step = float(axes[:, 2] @ normal)
    stored = np.column_stack([spacing[0] * row, spacing[1] * column, step * normal])
    # The largest move of a linear map over the volume is at one of its 8 corner voxels.
    last = [max(n - 1, 0) for n in geometry.shape]
    corners = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])]).T
    moved = float(np.abs((axes - stored) @ corners).max())
    if not moved <= GRID_TOLERANCE_MM:
        raise OutputError(
            f"has a sheared (non-orthogonal) voxel grid: a DICOM series stores orthogonal rows, columns "
            f"and slices, and would move voxels by up to {moved:.3g} mm; write it as NIfTI, NRRD or MHA",
            geometry.source_path or None,
        )
    return SliceGrid(affine[:3, 3].copy(), row, column, normal, (float(spacing[0]), float(spacing[1])), step)


def check_can_write_series(folder: str | Path, overwrite: bool = False) -> Path:
    """Fails fast, before any work, if the series folder ``folder`` cannot be written.

    Raises:
        OutputError: a volume file name (``.nii.gz``, ...), an existing file or link, an existing
            non-empty folder without ``overwrite``, with ``overwrite`` a folder holding anything
            but DICOM files (``--overwrite`` replaces a series as a whole, never a folder of other
            things), or an unwritable place.
    """
    folder = Path(folder)
    if volume_suffix(folder) is not None:
        raise OutputError(
            "is a volume file name; --output-format dicom writes a folder of DICOM slices: give a folder",
            folder,
        )
    if folder.is_symlink():
        raise OutputError("is a symbolic link; give the series folder itself", folder)
    if folder.exists():
        if not folder.is_dir():
            raise OutputError("is a file; --output-format dicom writes a folder of DICOM slices", folder)
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            raise OutputError(f"cannot be listed ({exc.strerror or exc})", folder) from None
        if entries and not overwrite:
            raise OutputError("already exists; pass --overwrite to replace it", folder)
        other = [e for e in entries if e.is_symlink() or not e.is_file() or not is_dicom_file(e)]
        if other:
            raise OutputError(
                f"holds {other[0].name}, which is not a DICOM file: --overwrite replaces a DICOM series "
                "folder as a whole and nothing else; remove it yourself or give another folder",
                folder,
            )
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder ({exc.strerror})", parent) from None
    if not parent.is_dir():
        raise OutputError("is not a folder", parent)
    return folder


def write_dicom_series(
    array_ras: np.ndarray,
    geometry: Geometry,
    folder: str | Path,
    *,
    source: DicomSource,
    description: str,
    overwrite: bool = False,
) -> Path:
    """Writes ``array_ras`` (HU) on the grid of ``geometry`` as a CT series in ``folder``.

    Args:
        array_ras: HU in RAS voxel order, shape ``geometry.ras_shape``; stored as int16 (floats are
            rounded, values clipped to the int16 range).
        geometry: the input's geometry.
        folder: the series folder (created; one ``CT0001.dcm`` ... per slice of the file's order).
        source: patient, study and frame of reference (:func:`dicom_output_source`).
        description: what the series is (``"synthetic CT from MR by medcyclegan ..., model ..."``):
            the SeriesDescription (its first 64 characters), ImageComments and DerivationDescription.
        overwrite: replace an existing series folder as a whole.

    Returns:
        ``folder`` as a :class:`Path`.

    Raises:
        OutputError: see :func:`check_can_write_series` and :func:`check_dicom_grid`; a write failure.
        ValueError: ``array_ras`` does not have the geometry's RAS shape, or holds NaN/Inf.
    """
    folder = Path(folder)
    grid = check_dicom_grid(geometry)
    array_ras = np.asarray(array_ras)
    if tuple(array_ras.shape) != geometry.ras_shape:
        raise ValueError(
            f"array shape {array_ras.shape} does not match the geometry's RAS shape {geometry.ras_shape}"
        )
    check_can_write_series(folder, overwrite)
    data = cast_values(geometry.array_from_ras(array_ras), np.int16)
    series = _series_dataset(data.shape, grid, source, description)
    references = source.references
    width = max(4, len(str(data.shape[2])))
    with atomic_folder(folder, overwrite=overwrite) as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(data.shape[2]):
            ds = _slice_dataset(series, grid, k, data[:, :, k], references[k] if references else None)
            try:
                ds.save_as(tmp / f"CT{k + 1:0{width}d}.dcm", enforce_file_format=True)
            except (ValueError, TypeError, AttributeError, LookupError) as exc:  # odd copied values
                raise OutputError(f"cannot be written as DICOM ({_ascii(str(exc))[:200]})", folder) from None
    for warning in caught:
        logger.debug("pydicom: %s", warning.message)
    return folder


def _series_dataset(
    shape: tuple[int, int, int], grid: SliceGrid, source: DicomSource, description: str
) -> Dataset:
    """The elements every slice of the series shares."""
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    text = _ascii(description)
    derivation = f"{text}; computed from {source.derived_from}"
    ds = Dataset()
    for element in source.attributes:
        ds.add(element)
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    number = SERIES_NUMBER_OFFSET + (source.series_number or 0)
    ds.SeriesNumber = number if 0 <= number <= _MAX_IS else SERIES_NUMBER_OFFSET
    ds.SeriesDescription = text.replace("\\", "/")[:_MAX_LO_CHARS]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.Manufacturer = "medcyclegan"
    ds.SoftwareVersions = __version__
    ds.ImageComments = derivation[:_MAX_LT_CHARS]
    ds.DerivationDescription = derivation[:_MAX_ST_CHARS]
    ds.BurnedInAnnotation = "NO"
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in (*grid.row, *grid.column)]
    # PixelSpacing is (between rows, between columns): the file's axis 1 first, then axis 0.
    ds.PixelSpacing = [format_number_as_ds(grid.spacing[1]), format_number_as_ds(grid.spacing[0])]
    ds.SliceThickness = format_number_as_ds(abs(grid.step))
    ds.SpacingBetweenSlices = format_number_as_ds(abs(grid.step))
    ds.Columns, ds.Rows = shape[0], shape[1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.WindowCenter = [str(centre) for _, centre, _ in WINDOWS]
    ds.WindowWidth = [str(width) for _, _, width in WINDOWS]
    ds.WindowCenterWidthExplanation = [name for name, _, _ in WINDOWS]
    for keyword in TYPE2_ELEMENTS:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _slice_dataset(
    series: Dataset, grid: SliceGrid, k: int, pixels_xy: np.ndarray, reference: tuple[str, str] | None
) -> Dataset:
    """Slice ``k``: the series' elements, its own UID, position and pixels (rows along the file's axis 1)."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.update(series)
    ds.file_meta = meta
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = k + 1
    position = grid.position(k)
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
    ds.SliceLocation = format_number_as_ds(float(position @ grid.normal))
    if reference is not None:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = reference
        ds.SourceImageSequence = DicomSequence([item])
    ds.PixelData = np.ascontiguousarray(pixels_xy.T, dtype="<i2").tobytes()
    return ds


def _read_header(path: Path, tags: tuple[str, ...] | None) -> Dataset:
    """The header of one source slice (``tags`` only, when given), with pydicom."""
    try:
        return pydicom.dcmread(
            path, stop_before_pixels=True, force=True, specific_tags=list(tags) if tags else None
        )
    except OSError as exc:
        raise InputError(
            f"cannot be read again for its DICOM attributes ({exc.strerror or exc})", path
        ) from None
    except Exception as exc:  # a hostile header can make pydicom fail in many ways: one line each
        raise InputError(
            f"cannot be read again for its DICOM attributes ({type(exc).__name__}: {_ascii(str(exc))[:200]})",
            path,
        ) from None


def _text(ds: Dataset, keyword: str) -> str:
    """An element's value as text without DICOM's padding ('' when absent or empty)."""
    try:
        return str(ds.get(keyword, "") or "").strip(" \0")
    except Exception:  # a hostile value pydicom cannot convert counts as missing
        return ""


def _integer(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _ascii(text: str) -> str:
    """``text`` as printable ASCII on one line (valid in every DICOM character set)."""
    text = " ".join(text.split())
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
