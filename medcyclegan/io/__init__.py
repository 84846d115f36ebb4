"""Reading and writing volumes with their exact geometry (NIfTI, NRRD/MHA/MHD, DICOM series)."""

from __future__ import annotations

from medcyclegan.io.discovery import (
    SERIES_SEPARATOR,
    VOLUME_SUFFIXES,
    case_name,
    find_volumes,
    is_dicom_folder,
    is_volume_path,
)
from medcyclegan.io.readers import check_finite, is_constant, read_mask, read_volume
from medcyclegan.io.volume import Geometry, Volume
from medcyclegan.io.writers import OUTPUT_DTYPES, cast_values, write_volume

__all__ = [
    "OUTPUT_DTYPES",
    "SERIES_SEPARATOR",
    "VOLUME_SUFFIXES",
    "Geometry",
    "Volume",
    "case_name",
    "cast_values",
    "check_finite",
    "find_volumes",
    "is_constant",
    "is_dicom_folder",
    "is_volume_path",
    "read_mask",
    "read_volume",
    "write_volume",
]
