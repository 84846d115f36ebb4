"""Library chatter stays out of the terminal; what it meant is said once, in our words.

Also the DICOM series whose slices are not all parallel (a stray slice, a 3-plane localizer): refused
as such, not blamed on missing slices.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcyclegan.errors import InputError
from medcyclegan.io import read_volume

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 7, 6)
_PIXDIM_1_OFFSET = 80  # pixdim[1] (float32) in a NIfTI-1 header


def zero_pixdim_nifti(path: Path, *, sform: bool) -> Path:
    """A .nii.gz whose pixdim[1] is 0; its geometry comes from the qform (or from the sform)."""
    image = nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1 if sform else 0)
    image.header.set_data_offset(352)  # after the header and its 4-byte extension flag
    raw = bytearray(image.header.binaryblock + b"\0" * 4 + np.zeros(SHAPE, np.int16).tobytes(order="F"))
    raw[_PIXDIM_1_OFFSET : _PIXDIM_1_OFFSET + 4] = struct.pack("<f", 0.0)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def nearly_even_series(write_dicom_series) -> Path:
    """A CT series with one slice 0.004 mm off: ITK warns (non-uniform sampling), we accept it."""
    folder, _ = write_dicom_series("ct", np.zeros(SHAPE, np.int16) + 100)
    third = sorted(folder.glob("*.dcm"))[3]
    ds = pydicom.dcmread(third)
    position = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [position[0], position[1], position[2] + 0.004]
    ds.save_as(third)
    return folder


def test_nothing_from_itk_or_nibabel_reaches_the_terminal(write_dicom_series, write_itk, tmp_path) -> None:
    """In a fresh process (as a user runs it): only our own warning, once."""
    nifti = zero_pixdim_nifti(tmp_path / "pixdim0.nii.gz", sform=False)
    series = nearly_even_series(write_dicom_series)
    corrupt = write_itk("corrupt.mha", np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) // 7)
    data = bytearray(corrupt.read_bytes())
    data[-40:-10] = bytes(b ^ 0xFF for b in data[-40:-10])
    corrupt.write_bytes(bytes(data))
    script = (
        "import sys\n"
        "from medcyclegan.errors import InputError\n"
        "from medcyclegan.io import read_volume\n"
        "read_volume(sys.argv[1]); read_volume(sys.argv[2])\n"
        "try:\n    read_volume(sys.argv[3])\nexcept InputError:\n    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(nifti), str(series), str(corrupt)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no "WARNING: In .../itk...", "pixdim[1,2,3]", "Uncompress failed"
    assert lines[0].startswith(f"{nifti}: a voxel size (pixdim) in the NIfTI header is 0 (read as 1 mm)")


def test_zero_pixdim_warns_once_and_only_when_it_sets_the_geometry(tmp_path, caplog) -> None:
    qform_only = zero_pixdim_nifti(tmp_path / "q.nii.gz", sform=False)
    with_sform = zero_pixdim_nifti(tmp_path / "s.nii.gz", sform=True)
    with caplog.at_level(logging.DEBUG, logger="medcyclegan"):
        read_volume(qform_only)
        read_volume(qform_only)
        volume = read_volume(with_sform)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{qform_only}: a voxel size (pixdim) in the NIfTI header is 0 (read as 1 mm) and no sform "
        "gives the geometry: the voxel spacing along that axis is a guess"
    ]
    np.testing.assert_allclose(volume.geometry.affine, np.diag([2.0, 2.0, 3.0, 1.0]))  # the sform's
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("nibabel: pixdim[1,2,3] should be non-zero") for m in debug)


def test_itk_warnings_become_debug_lines(write_dicom_series, caplog) -> None:
    series = nearly_even_series(write_dicom_series)
    with caplog.at_level(logging.DEBUG, logger="medcyclegan"):
        assert read_volume(series).array.shape == SHAPE
    itk = [r for r in caplog.records if r.getMessage().startswith("ITK: ")]
    assert itk and all(r.levelno == logging.DEBUG and "\n" not in r.getMessage() for r in itk)
    assert "Non uniform sampling" in itk[0].getMessage()


# ------------------------------------------------------------------- DICOM slices of other orientations


def _reorient(folder: Path, indices: tuple[int, ...], orientation: list[float]) -> None:
    files = sorted(folder.glob("*.dcm"))
    for i in indices:
        ds = pydicom.dcmread(files[i])
        ds.ImageOrientationPatient = orientation
        ds.save_as(files[i])


def test_a_slice_with_another_orientation_is_refused(write_dicom_series) -> None:
    folder, uid = write_dicom_series("ct", np.zeros(SHAPE, np.int16) + 100)
    _reorient(folder, (3,), [1.0, 0.0, 0.0, 0.0, 0.8, 0.6])
    with pytest.raises(InputError) as info:
        read_volume(folder)
    assert str(info.value) == (
        f"{folder}: DICOM series {uid} mixes slice orientations: 1 of 6 slices are not oriented like "
        "the first, e.g. IM0003.dcm; a 3D volume needs one orientation"
    )


@pytest.mark.parametrize("spread", [False, True])
def test_a_three_plane_localizer_is_called_a_localizer(write_dicom_series, spread) -> None:
    folder, uid = write_dicom_series("scout", np.zeros(SHAPE, np.int16) + 100)
    _reorient(folder, (2, 3), [1.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # coronal
    _reorient(folder, (4, 5), [0.0, 1.0, 0.0, 0.0, 0.0, -1.0])  # sagittal
    if spread:  # the positions of a real localizer: all around, uneven along the first normal
        for i, offset in ((2, 40.0), (3, -7.0), (4, 13.0), (5, 2.0)):
            path = sorted(folder.glob("*.dcm"))[i]
            ds = pydicom.dcmread(path)
            ds.ImagePositionPatient = [0.0, offset, offset]
            ds.save_as(path)
    with pytest.raises(InputError) as info:
        read_volume(folder)
    message = str(info.value)
    assert message.startswith(f"{folder}: DICOM series {uid} is a localizer (scout): its 6 slices lie in 3")
    assert "missing or duplicated" not in message
