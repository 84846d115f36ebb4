"""``Volume`` (an array in RAS voxel order) and ``Geometry`` (everything needed to write it back).

Conventions:
    * World coordinates are RAS millimetres, as in NIfTI (ITK's LPS is converted on read and back on
      write).
    * ``Volume.array`` is in RAS voxel order: axis 0 increases towards R, axis 1 towards A, axis 2
      towards S (nibabel's "RAS+" axcodes). Axial slices
      are ``array[:, :, z]``. Reorientation is a pure permutation/flip of axes (no resampling), so it is
      exactly invertible; an oblique affine is reoriented to its closest RAS axes, its obliquity kept in
      the affine.
    * ``Geometry`` describes the file as it was: its voxel order, shape, affine, dtype and header codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nibabel import orientations as ornt_lib

RAS_ORNT = ornt_lib.axcodes2ornt(("R", "A", "S"))
# ITK stores LPS world coordinates: flipping x and y converts between LPS and RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Two grids are the same when their RAS affines agree entry by entry within this many mm (absolute):
# the rule of Geometry.same_grid, used by every caller (masks, evaluation, segmentation datasets).
# Large enough for float rounding of a stored affine: NIfTI stores it in float32 (about 7 digits, so
# an origin 500 mm from the centre is rounded by up to 3e-5 mm), other formats print it in decimal.
# Small enough to be no real shift: a hundredth of a 0.1 mm voxel, so a label or prediction shifted
# or scaled by any visible amount is refused. Absolute, not relative: an origin 0.01 mm off is the
# same error at 0 and at 500 mm from the scanner's centre.
GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True, eq=False)
class Geometry:
    """The on-disk geometry of a volume, kept from reading to writing.

    Attributes:
        affine: 4x4 voxel-to-world matrix (RAS, mm) for the file's own voxel order.
        shape: spatial shape in the file's own voxel order.
        dtype: numpy dtype name of the values as read (after any rescale slope/intercept).
        source_format: ``"nifti"``, ``"itk"`` (NRRD/MHA/MHD) or ``"dicom"``.
        source_path: the file or folder it was read from.
        qform_code: NIfTI qform code (1 = scanner) to restore on write.
        sform_code: NIfTI sform code to restore on write.
        nifti_header: raw bytes of the input NIfTI header, reused on write so that units, intent and
            descriptions survive; ``None`` for other formats.
        itk_spacing: exact ITK spacing (mm) as read, for lossless ITK round trips; ``None`` if not ITK.
        itk_origin: exact ITK origin (LPS, mm); ``None`` if not ITK.
        itk_direction: exact ITK direction (row-major 3x3, LPS); ``None`` if not ITK.
        extra: format-specific metadata worth keeping (e.g. DICOM series UID); plain values only.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    dtype: str
    source_format: str
    source_path: str = ""
    qform_code: int = 1
    sform_code: int = 1
    nifti_header: bytes | None = None
    itk_spacing: tuple[float, float, float] | None = None
    itk_origin: tuple[float, float, float] | None = None
    itk_direction: tuple[float, ...] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the file's axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Closest axis codes of the file's voxel axes, e.g. ``"LPS"`` or ``"RAS"``."""
        return "".join(ornt_lib.aff2axcodes(self.affine))

    @property
    def ornt(self) -> np.ndarray:
        return ornt_lib.io_orientation(self.affine)

    @property
    def to_ras(self) -> np.ndarray:
        """nibabel orientation transform from the file's voxel order to RAS voxel order."""
        return ornt_lib.ornt_transform(self.ornt, RAS_ORNT)

    @property
    def from_ras(self) -> np.ndarray:
        return ornt_lib.ornt_transform(RAS_ORNT, self.ornt)

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        perm = self.to_ras[:, 0].astype(int)
        out = [0, 0, 0]
        for src_axis, dst_axis in enumerate(perm):
            out[dst_axis] = self.shape[src_axis]
        return tuple(out)  # type: ignore[return-value]

    @property
    def ras_affine(self) -> np.ndarray:
        """Voxel-to-world matrix of the array after reorientation to RAS voxel order."""
        return self.affine @ ornt_lib.inv_ornt_aff(self.to_ras, self.shape)

    @property
    def ras_spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.ras_affine[:3, :3], axis=0))  # type: ignore[return-value]

    def array_to_ras(self, array: np.ndarray) -> np.ndarray:
        """Reorients an array of this file's voxel order (spatial axes first) to RAS voxel order."""
        if array.shape[:3] != self.shape:
            raise ValueError(f"array shape {array.shape[:3]} does not match geometry shape {self.shape}")
        return _contiguous(ornt_lib.apply_orientation(array, self.to_ras))

    def array_from_ras(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`array_to_ras`: back to the file's voxel order."""
        if array.shape[:3] != self.ras_shape:
            raise ValueError(f"array shape {array.shape[:3]} does not match RAS shape {self.ras_shape}")
        return _contiguous(ornt_lib.apply_orientation(array, self.from_ras))

    def same_grid(self, other: Geometry) -> bool:
        """True if ``other`` covers the same voxels: the grid-equality rule of the whole package.

        Compared in RAS voxel order, so a file stored with other axis flips or permutations still
        matches: the RAS shapes must be equal and every entry of the two RAS affines (spacing times
        direction in the 3x3 part, the origin in the last column, all in mm) may differ by at most
        :data:`GRID_TOLERANCE_MM` (absolute, no relative part). See that constant for why 1e-3 mm.
        A NaN anywhere in an affine is never the same grid.
        """
        return self.ras_shape == other.ras_shape and self.affine_difference(other) <= GRID_TOLERANCE_MM

    def grid_differences(self, other: Geometry) -> list[str]:
        """What differs between the grids of ``self`` and ``other``, in words; empty on the same grid.

        Items (each only when it differs beyond :data:`GRID_TOLERANCE_MM`): ``"shape (X, Y, Z) vs
        (...) (RAS)"``, ``"spacing (...) vs (...) mm"``, ``"origin (...) vs (...) mm (RAS)"``,
        ``"direction differs"``. Only for messages: :meth:`same_grid` is the rule.
        """
        if self.same_grid(other):
            return []
        if self.ras_shape != other.ras_shape:
            differences = [
                f"shape {format_numbers(self.ras_shape)} vs {format_numbers(other.ras_shape)} (RAS)"
            ]
        else:
            differences = []
        a, b = self.ras_affine, other.ras_affine
        spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
        if not np.allclose(spacing_a, spacing_b, rtol=0, atol=GRID_TOLERANCE_MM):
            differences.append(f"spacing {format_numbers(spacing_a)} vs {format_numbers(spacing_b)} mm")
        if not np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=GRID_TOLERANCE_MM):
            differences.append(f"origin {format_numbers(a[:3, 3])} vs {format_numbers(b[:3, 3])} mm (RAS)")
        if not np.allclose(a[:3, :3] / spacing_a, b[:3, :3] / spacing_b, rtol=0, atol=GRID_TOLERANCE_MM):
            differences.append("direction differs")
        return differences or ["affine differs"]

    def affine_difference(self, other: Geometry) -> float:
        """The largest absolute difference (mm) between the RAS affines of ``self`` and ``other``.

        For error messages ("affines differ by up to 0.5 mm"); NaN when an affine holds NaN.
        """
        return float(np.abs(self.ras_affine - other.ras_affine).max())  # NaN propagates


def format_numbers(values: Any) -> str:
    """``(a, b, c)`` with 6 significant digits each: shapes, spacings and origins in messages."""
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.asarray(values).ravel()) + ")"


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` itself when C- or Fortran-contiguous, else a copy in the closest contiguous layout.

    A NIfTI volume is Fortran-ordered (x fastest): reoriented by a pure axis permutation it stays one
    contiguous block, and forcing C order would transpose the whole volume (about 1 s for 200 MB). Its
    axial slices are then contiguous too, which is what slab-by-slab work reads. Flips (negative
    strides) are copied out, keeping the memory order of the axes.
    """
    if array.flags.c_contiguous or array.flags.f_contiguous:
        return array
    return np.copy(array, order="K")


@dataclass(eq=False)
class Volume:
    """A 3D scalar volume in RAS voxel order with the geometry of the file it came from.

    Attributes:
        array: the voxel values, shape ``geometry.ras_shape``, axes (R, A, S).
        geometry: the on-disk geometry, used to write results back onto the input's exact grid.
    """

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.ras_shape:
            raise ValueError(
                f"array shape {self.array.shape} != geometry RAS shape {self.geometry.ras_shape}"
            )

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world matrix (RAS mm) of ``array``."""
        return self.geometry.ras_affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along R, A, S."""
        return self.geometry.ras_spacing

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry with new voxel values (same RAS shape)."""
        return Volume(array, self.geometry)
