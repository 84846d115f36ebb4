"""Round trips and geometry of medcyclegan.io: NIfTI, NRRD/MHA/MHD, DICOM series, real scans, discovery."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medcyclegan.io import (
    OUTPUT_DTYPES,
    case_name,
    cast_values,
    check_finite,
    find_volumes,
    is_constant,
    is_volume_path,
    read_mask,
    read_volume,
    write_volume,
)
from medcyclegan.io.volume import LPS_TO_RAS, Geometry


def rotation_z(degrees: float) -> np.ndarray:
    """3x3 rotation about the z axis (used to build oblique affines)."""
    angle = np.deg2rad(degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])


def make_affine(
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """4x4 voxel-to-world affine: ``rotation @ diag(spacing)`` plus ``origin`` (mm)."""
    affine = np.eye(4)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    affine[:3, :3] = rot @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = origin
    return affine


SHAPE = (9, 7, 5)
# float32 stores of the sform: relative precision ~1e-7, affine entries up to ~100 mm.
FLOAT32_AFFINE_ATOL = 1e-4

AFFINES = {
    "ras": make_affine((1.5, 2.0, 3.0), (10.0, -20.0, 30.0)),
    "lps": make_affine((1.5, 2.0, 3.0), (10.0, -20.0, 30.0), np.diag([-1.0, -1.0, 1.0])),
    "oblique20": make_affine((1.5, 2.0, 3.0), (10.0, -20.0, 30.0), rotation_z(20.0)),
    "permuted": make_affine((1.5, 2.0, 3.0), (5.0, 6.0, 7.0), np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])),
}


def sample_array(dtype: str, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Distinct values per voxel, so that any axis flip or permutation changes the array."""
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) - 100.0
    if dtype.startswith("float"):
        values = values * 1.25 + 0.125
    return values.astype(dtype)


def assert_ras_matches_file(volume, file_array: np.ndarray, file_affine: np.ndarray) -> None:
    """By definition: voxel ijk of the RAS array lies at the world point of the same file voxel."""
    ras = volume.array
    assert ras.shape == volume.geometry.ras_shape
    inverse = np.linalg.inv(file_affine)
    for ijk in [(0, 0, 0), tuple(s - 1 for s in ras.shape), (1, 2, 3), (ras.shape[0] - 1, 0, 2)]:
        world = volume.affine @ np.array([*ijk, 1.0])
        file_index = inverse @ world
        rounded = np.rint(file_index[:3]).astype(int)
        np.testing.assert_allclose(file_index[:3], rounded, atol=1e-6)
        assert ras[ijk] == file_array[tuple(rounded)]
    # The RAS array's axes point (mostly) along +R, +A, +S.
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    assert np.all(np.diag(directions) > 0)
    assert np.all(np.argmax(np.abs(directions), axis=0) == [0, 1, 2])


# ----------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_nifti_read_orients_to_ras_and_keeps_dtype(write_nifti, orientation, dtype):
    array = sample_array(dtype)
    affine = AFFINES[orientation]
    path = write_nifti(f"in_{orientation}.nii.gz", array, affine)

    volume = read_volume(path)

    assert volume.array.dtype == np.dtype(dtype)
    assert volume.geometry.dtype == dtype
    assert volume.geometry.shape == SHAPE
    assert volume.geometry.source_format == "nifti"
    np.testing.assert_allclose(volume.geometry.affine, affine, atol=FLOAT32_AFFINE_ATOL)
    assert_ras_matches_file(volume, array, volume.geometry.affine)


@pytest.mark.parametrize("out_suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_nifti_round_trip(write_nifti, tmp_path, orientation, dtype, out_suffix):
    array = sample_array(dtype)
    source = write_nifti("in.nii.gz", array, AFFINES[orientation])
    volume = read_volume(source)

    out = write_volume(volume.array, volume.geometry, tmp_path / f"out{out_suffix}")
    again = read_volume(out)

    assert again.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(again.array, volume.array)
    assert again.geometry.shape == volume.geometry.shape
    atol = 0.0 if out_suffix.startswith(".nii") else 1e-9
    np.testing.assert_allclose(again.geometry.affine, volume.geometry.affine, atol=atol)
    # Reading the written file independently gives the input's file-order data.
    if out_suffix.startswith(".nii"):
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), array)
    else:
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(out))).transpose(2, 1, 0)
        np.testing.assert_array_equal(raw, array)


def test_nifti_header_is_reused_bit_for_bit(write_nifti, tmp_path):
    path = write_nifti("in.nii.gz", sample_array("int16"), AFFINES["oblique20"], qform_code=1, sform_code=4)
    image = nib.load(str(path))
    image.header["descrip"] = b"tiny test scan"
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    volume = read_volume(path)
    assert (volume.geometry.qform_code, volume.geometry.sform_code) == (1, 4)

    out = write_volume(volume.array, volume.geometry, tmp_path / "out.nii.gz")

    assert nib.load(str(out)).header.binaryblock == nib.load(str(path)).header.binaryblock


def test_nifti_description_longer_than_descrip_is_kept_whole_in_a_comment(write_nifti, tmp_path):
    volume = read_volume(write_nifti("in.nii.gz", sample_array("int16"), AFFINES["oblique20"]))
    short = write_volume(volume.array, volume.geometry, tmp_path / "short.nii.gz", description="synthetic CT")
    assert nib.load(str(short)).header["descrip"].item() == b"synthetic CT"
    assert not nib.load(str(short)).header.extensions  # nothing added where descrip holds it all
    text = "synthetic CT from MR by medcyclegan, model run/best.pt" + ", flip-avg, planes axial+coronal" * 2
    long = write_volume(volume.array, volume.geometry, tmp_path / "long.nii", description=text)
    header = nib.load(str(long)).header
    assert header["descrip"].item() == text[:79].encode()
    (comment,) = header.extensions
    assert comment.get_code() == 6 and comment.get_content() == text.encode()  # NIFTI_ECODE_COMMENT
    assert sitk.ReadImage(str(long)).GetSize() == volume.shape  # ITK reads it as before
    np.testing.assert_array_equal(read_volume(long).array, volume.array)


def test_nifti_scaling_applied_on_read_and_reset_on_write(write_nifti, tmp_path):
    stored = sample_array("int16")
    path = write_nifti("scaled.nii.gz", stored, AFFINES["ras"], slope=2.0, inter=-1024.0)

    volume = read_volume(path)

    np.testing.assert_array_equal(volume.array, stored.astype(np.float64) * 2.0 - 1024.0)
    out = write_volume(volume.array, volume.geometry, tmp_path / "out.nii.gz", dtype="int16")
    header = nib.load(str(out)).header
    slope, inter = header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)
    assert header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), stored * 2 - 1024)


def test_nifti_4d_with_one_volume_is_squeezed(write_nifti):
    array = sample_array("int16")[..., np.newaxis]
    volume = read_volume(write_nifti("4d.nii.gz", array, AFFINES["ras"]))
    assert volume.shape == SHAPE
    np.testing.assert_array_equal(volume.array, array[..., 0])


def test_single_slice_volume_is_legal(write_nifti, tmp_path):
    array = sample_array("int16", (6, 5, 1))
    volume = read_volume(write_nifti("slice.nii", array, AFFINES["ras"]))
    assert volume.shape == (6, 5, 1)
    out = write_volume(volume.array, volume.geometry, tmp_path / "slice_out.nrrd")
    np.testing.assert_array_equal(read_volume(out).array, volume.array)


def test_big_endian_nifti_reads_native_and_round_trips(tmp_path):
    array = sample_array("int16")
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    path = tmp_path / "big_endian.nii"
    nib.save(nib.Nifti1Image(array, AFFINES["lps"], header=header), str(path))
    assert nib.load(str(path)).header.endianness == ">"

    volume = read_volume(path)

    assert volume.array.dtype == np.dtype("int16") and volume.array.dtype.isnative
    assert_ras_matches_file(volume, array, volume.geometry.affine)
    out = write_volume(volume.array, volume.geometry, tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(read_volume(out).array, volume.array)


def test_uppercase_extensions_are_read(write_nifti, write_itk):
    nifti = read_volume(write_nifti("SCAN.NII.GZ", sample_array("int16"), AFFINES["ras"]))
    itk = read_volume(write_itk("SCAN.NRRD", sample_array("int16")))
    assert nifti.shape == SHAPE and itk.shape == SHAPE


@pytest.mark.parametrize(
    ("name", "expected_files"),
    [
        ("OUT.NII.GZ", ["OUT.NII.GZ"]),
        ("OUT.NRRD", ["OUT.NRRD"]),
        # ITK alone would turn X.MHA into a detached X.mhd + X.zraw.
        ("OUT.MHA", ["OUT.MHA"]),
        ("OUT.MHD", ["OUT.MHD", "OUT.zraw"]),
        ("OUT.NHDR", ["OUT.NHDR", "OUT.raw.gz"]),
    ],
)
def test_uppercase_output_extensions(write_nifti, tmp_path, name, expected_files):
    volume = read_volume(write_nifti("in.nii.gz", sample_array("int16"), AFFINES["lps"]))
    out = write_volume(volume.array, volume.geometry, tmp_path / "out" / name)
    assert sorted(p.name for p in out.parent.iterdir()) == expected_files
    if name.endswith(".GZ"):
        assert out.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_volume(out).array, volume.array)


# ------------------------------------------------------------------------------------------------- ITK

ITK_DIRECTION_FLIPPED_Y = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("in_suffix", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_itk_read_geometry(write_itk, in_suffix):
    array = sample_array("int16")
    spacing, origin = (0.5, 0.75, 2.5), (-12.5, 40.0, 7.0)
    volume = read_volume(write_itk(f"in{in_suffix}", array, spacing, origin, ITK_DIRECTION_FLIPPED_Y))

    geometry = volume.geometry
    assert geometry.source_format == "itk"
    assert geometry.itk_spacing == spacing
    assert geometry.itk_origin == origin
    assert geometry.itk_direction == ITK_DIRECTION_FLIPPED_Y
    expected_lps = make_affine(spacing, origin, np.array(ITK_DIRECTION_FLIPPED_Y).reshape(3, 3))
    np.testing.assert_array_equal(geometry.affine, LPS_TO_RAS @ expected_lps)
    # LPS with a flipped y is x->L, y->A, z->S.
    assert geometry.orientation == "LAS"
    assert_ras_matches_file(volume, array, geometry.affine)


@pytest.mark.parametrize("out_suffix", [".nrrd", ".mha", ".nhdr", ".mhd"])
@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_itk_round_trip_is_exact(write_itk, tmp_path, dtype, out_suffix):
    array = sample_array(dtype)
    direction = tuple(rotation_z(20.0).ravel())
    source = write_itk("in.nrrd", array, (0.7, 0.7, 3.3), (-101.1, 52.3, 0.1), direction)
    volume = read_volume(source)

    out = write_volume(volume.array, volume.geometry, tmp_path / "out" / f"case{out_suffix}")
    again = read_volume(out)

    np.testing.assert_array_equal(again.array, volume.array)
    assert again.array.dtype == np.dtype(dtype)
    assert again.geometry.itk_spacing == volume.geometry.itk_spacing
    assert again.geometry.itk_origin == volume.geometry.itk_origin
    assert again.geometry.itk_direction == volume.geometry.itk_direction
    np.testing.assert_array_equal(again.geometry.affine, volume.geometry.affine)
    # Detached headers: data file under its final name, no scratch files left behind.
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_itk_source_to_nifti_sets_qform_and_sform(write_itk, tmp_path):
    direction = tuple(rotation_z(-20.0).ravel())
    volume = read_volume(
        write_itk("in.mha", sample_array("int16"), (0.9, 0.8, 2.0), (3.0, 4.0, 5.0), direction)
    )

    out = write_volume(volume.array, volume.geometry, tmp_path / "out.nii.gz")

    image = nib.load(str(out))
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), volume.geometry.affine, atol=FLOAT32_AFFINE_ATOL)
    np.testing.assert_allclose(image.get_sform(), volume.geometry.affine, atol=FLOAT32_AFFINE_ATOL)
    assert image.header.get_xyzt_units()[0] == "mm"
    again = read_volume(out)
    np.testing.assert_array_equal(again.array, volume.array)
    np.testing.assert_allclose(again.affine, volume.affine, atol=FLOAT32_AFFINE_ATOL)


def test_nifti_source_to_itk_derives_lps_geometry(write_nifti, tmp_path):
    affine = AFFINES["oblique20"]
    volume = read_volume(write_nifti("in.nii.gz", sample_array("float32"), affine))
    out = write_volume(volume.array, volume.geometry, tmp_path / "out.nrrd")

    image = sitk.ReadImage(str(out))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.affine
    np.testing.assert_allclose(image.GetSpacing(), (1.5, 2.0, 3.0), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), lps[:3, 3], atol=1e-9)
    np.testing.assert_allclose(
        np.reshape(image.GetDirection(), (3, 3)), lps[:3, :3] / [1.5, 2.0, 3.0], atol=1e-6
    )


# ---------------------------------------------------------------------------------------------- writer


def test_cast_values_rounds_and_clips_to_integer_range():
    values = np.array([1.4, 1.6, -2.5, 2.5, 40000.0, -40000.0, 1e30], dtype=np.float64)
    np.testing.assert_array_equal(cast_values(values, "int16"), [1, 2, -2, 2, 32767, -32768, 32767])
    np.testing.assert_array_equal(cast_values(values, "uint8"), [1, 2, 0, 2, 255, 0, 255])
    assert cast_values(np.array([1e300]), "int64")[0] == np.iinfo(np.int64).max - 1023
    np.testing.assert_array_equal(cast_values(np.array([70000, -5], dtype=np.int32), "int16"), [32767, -5])
    np.testing.assert_array_equal(cast_values(np.array([300, -5], dtype=np.int16), "uint8"), [255, 0])
    float_out = cast_values(np.array([1.25], dtype=np.float64), "float32")
    assert float_out.dtype == np.float32 and float_out[0] == 1.25


def test_write_float_as_int16_rounds_and_clips(write_nifti, tmp_path):
    volume = read_volume(write_nifti("in.nii.gz", sample_array("float32"), AFFINES["lps"]))
    values = np.full(volume.shape, 0.6, dtype=np.float32)
    values[0, 0, 0] = 1e6
    values[1, 0, 0] = -1e6

    out = write_volume(values, volume.geometry, tmp_path / "out.nii.gz", dtype="int16")

    again = read_volume(out)
    assert again.array.dtype == np.int16
    assert again.array[0, 0, 0] == 32767 and again.array[1, 0, 0] == -32768
    assert np.count_nonzero(again.array == 1) == again.array.size - 2


def test_write_bool_mask_as_uint8(write_nifti, tmp_path):
    volume = read_volume(write_nifti("in.nii.gz", sample_array("int16"), AFFINES["ras"]))
    mask = volume.array > 0
    out = write_volume(mask, volume.geometry, tmp_path / "mask.nii.gz", dtype=bool)
    again = read_volume(out)
    assert again.array.dtype == np.uint8
    np.testing.assert_array_equal(again.array, mask)
    assert "bool" not in OUTPUT_DTYPES


def test_overwrite_replaces_existing_output(write_nifti, tmp_path):
    volume = read_volume(write_nifti("in.nii.gz", sample_array("int16"), AFFINES["ras"]))
    out = tmp_path / "out.nrrd"
    write_volume(volume.array, volume.geometry, out)
    write_volume(-volume.array, volume.geometry, out, overwrite=True)
    np.testing.assert_array_equal(read_volume(out).array, -volume.array)


def test_geometry_without_header_or_itk_fields_writes_both_formats(tmp_path):
    affine = make_affine((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), np.diag([-1.0, 1.0, -1.0]))
    geometry = Geometry(affine=affine, shape=(4, 3, 2), dtype="float32", source_format="nifti")
    array = np.arange(24, dtype=np.float32).reshape(geometry.ras_shape)
    for name in ("plain.nii.gz", "plain.mha"):
        again = read_volume(write_volume(array, geometry, tmp_path / name))
        np.testing.assert_array_equal(again.array, array)
        np.testing.assert_allclose(again.geometry.affine, affine, atol=FLOAT32_AFFINE_ATOL)


# ----------------------------------------------------------------------------------------------- DICOM


def dicom_ct(shape: tuple[int, int, int] = (6, 5, 4)) -> np.ndarray:
    """HU values between -1024 and ~2000, distinct per voxel."""
    return (np.arange(np.prod(shape)).reshape(shape) * 37 % 3000 - 1024).astype(np.int16)


def test_dicom_series_in_hu_with_geometry(write_dicom_series, tmp_path):
    hu = dicom_ct()
    spacing, origin = (0.8, 0.7, 2.5), (-10.0, -20.0, 30.0)
    folder, uid = write_dicom_series("ct", hu, spacing=spacing, origin=origin, slope=1.0, intercept=-1024.0)
    # Stored values differ from HU: the reader must apply the rescale.
    assert not np.array_equal(hu + 1024, hu)

    volume = read_volume(folder)

    geometry = volume.geometry
    assert geometry.source_format == "dicom"
    assert geometry.extra["series_uid"] == uid
    assert geometry.extra["modality"] == "CT"
    assert geometry.shape == hu.shape
    np.testing.assert_allclose(geometry.itk_spacing, spacing, atol=1e-6)
    np.testing.assert_allclose(geometry.itk_origin, origin, atol=1e-6)
    np.testing.assert_allclose(geometry.itk_direction, np.eye(3).ravel(), atol=1e-9)
    # IOP (1,0,0,0,1,0) in LPS: file axes x->L, y->P, z->S; RAS order flips x and y.
    assert geometry.orientation == "LPS"
    expected_affine = LPS_TO_RAS @ make_affine(spacing, origin)
    np.testing.assert_allclose(geometry.affine, expected_affine, atol=1e-6)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, hu[::-1, ::-1, :])
    assert volume.array.min() == hu.min() and volume.array.min() < 0


def test_dicom_non_integer_rescale_gives_float_hu(write_dicom_series):
    hu = dicom_ct().astype(np.float64) / 2.0
    folder, _ = write_dicom_series("ct", hu, slope=0.5, intercept=-1024.0)
    volume = read_volume(folder)
    assert np.issubdtype(volume.array.dtype, np.floating)
    np.testing.assert_allclose(volume.array, hu[::-1, ::-1, :], atol=1e-9)


@pytest.mark.parametrize("out_suffix", [".nii.gz", ".nrrd"])
def test_dicom_round_trip(write_dicom_series, tmp_path, out_suffix):
    folder, _ = write_dicom_series("ct", dicom_ct())
    volume = read_volume(folder)

    again = read_volume(write_volume(volume.array, volume.geometry, tmp_path / f"out{out_suffix}"))

    np.testing.assert_array_equal(again.array, volume.array)
    np.testing.assert_allclose(again.affine, volume.affine, atol=FLOAT32_AFFINE_ATOL)
    if out_suffix == ".nrrd":
        assert again.geometry.itk_origin == volume.geometry.itk_origin
        assert again.geometry.itk_spacing == volume.geometry.itk_spacing


def test_dicom_series_chosen_by_uid(write_dicom_series):
    hu = dicom_ct()
    folder, uid_a = write_dicom_series("two", hu, description="first")
    _, uid_b = write_dicom_series("two", hu[::-1] + 1, description="second", file_prefix="B")

    by_argument = read_volume(folder, series_uid=uid_b)
    by_syntax = read_volume(f"{folder}::{uid_a}")

    assert by_argument.geometry.extra["series_uid"] == uid_b
    assert by_argument.geometry.extra["series_description"] == "second"
    np.testing.assert_array_equal(by_argument.array, (hu[::-1] + 1)[::-1, ::-1, :])
    np.testing.assert_array_equal(by_syntax.array, hu[::-1, ::-1, :])


# ---------------------------------------------------------------------------------------------- masks


def test_read_mask_on_same_grid(write_nifti):
    affine = AFFINES["oblique20"]
    image = read_volume(write_nifti("image.nii.gz", sample_array("float32"), affine))
    labels = (sample_array("int16") % 3 == 0).astype(np.uint8)

    mask = read_mask(write_nifti("mask.nii.gz", labels, affine), like=image.geometry)

    assert mask.dtype == np.bool_
    assert mask.shape == image.shape
    np.testing.assert_array_equal(mask, image.geometry.array_to_ras(labels).astype(bool))


def test_read_mask_accepts_other_voxel_order_on_same_grid(write_nifti):
    """A mask stored with flipped axes still covers the same world grid: compared in RAS order."""
    ras_affine = AFFINES["ras"]
    image = read_volume(write_nifti("image.nii.gz", sample_array("int16"), ras_affine))
    labels = (sample_array("int16") > 50).astype(np.uint8)
    flip = make_affine((1.0, 1.0, 1.0), (SHAPE[0] - 1, 0, 0), np.diag([-1.0, 1.0, 1.0]))
    flipped_affine = ras_affine @ flip

    mask = read_mask(
        write_nifti("mask_flipped.nii.gz", labels[::-1].copy(), flipped_affine), like=image.geometry
    )

    np.testing.assert_array_equal(mask, labels.astype(bool))


def test_read_mask_warns_on_label_values(write_nifti, caplog):
    image = read_volume(write_nifti("image.nii.gz", sample_array("int16"), AFFINES["ras"]))
    labels = (sample_array("int16") % 3).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        mask = read_mask(write_nifti("labels.nii.gz", labels, AFFINES["ras"]), like=image.geometry)
    assert "values other than 0 and 1" in caplog.text
    np.testing.assert_array_equal(mask, labels != 0)


# -------------------------------------------------------------------------------------------- helpers


def test_importing_io_does_not_import_simpleitk_or_monai():
    code = "import sys, medcyclegan.io; print(sorted({'SimpleITK', 'monai', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_check_finite_and_is_constant():
    check_finite(np.zeros((2, 2, 2), dtype=np.int16), "x.nii")
    check_finite(np.zeros((2, 2, 2), dtype=np.float32), "x.nii")
    assert is_constant(np.full((3, 3, 3), 7.0))
    assert is_constant(np.zeros((0, 3, 3)))
    assert not is_constant(np.arange(27).reshape(3, 3, 3))


# ------------------------------------------------------------------------------------------ real scans


@pytest.mark.parametrize("name", ["brain1_image", "lung1_image"])
def test_real_scan_round_trips(real_data_dir, tmp_path, name):
    volume = read_volume(real_data_dir / f"{name}.nrrd")
    assert volume.array.dtype == np.int16
    # RAS voxel order: each array axis points mostly along +R, +A, +S.
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    assert np.all(np.diag(directions) > 0.9)

    nrrd = read_volume(write_volume(volume.array, volume.geometry, tmp_path / f"{name}.nrrd"))
    np.testing.assert_array_equal(nrrd.array, volume.array)
    np.testing.assert_array_equal(nrrd.geometry.affine, volume.geometry.affine)
    assert nrrd.geometry.itk_direction == volume.geometry.itk_direction

    nifti = read_volume(write_volume(volume.array, volume.geometry, tmp_path / f"{name}.nii.gz"))
    np.testing.assert_array_equal(nifti.array, volume.array)
    np.testing.assert_allclose(nifti.geometry.affine, volume.geometry.affine, atol=FLOAT32_AFFINE_ATOL)


def test_real_brain_has_flipped_y(real_data_dir):
    volume = read_volume(real_data_dir / "brain1_image.nrrd")
    assert volume.geometry.itk_direction == ITK_DIRECTION_FLIPPED_Y
    assert volume.geometry.orientation == "LAS"
    assert volume.shape == (256, 256, 25)
    np.testing.assert_allclose(volume.spacing, (0.78125, 0.78125, 6.5), atol=1e-6)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data_dir / "brain1_image.nrrd"))).transpose(2, 1, 0)
    # File x points to L: RAS order reverses x; file y already points to A.
    np.testing.assert_array_equal(volume.array, raw[::-1, :, :])


def test_real_label_is_a_mask_of_its_image(real_data_dir):
    image = read_volume(real_data_dir / "brain1_image.nrrd")
    mask = read_mask(real_data_dir / "brain1_label.nrrd", like=image.geometry)
    assert mask.dtype == np.bool_ and mask.shape == image.shape
    assert 0 < mask.sum() < mask.size


# ------------------------------------------------------------------------------------------- discovery


def test_find_volumes_recursive_sorted_and_filtered(
    write_nifti, write_itk, write_dicom_series, tmp_path, caplog
):
    root = tmp_path / "data"
    write_nifti("data/b.nii.gz", sample_array("int16"))
    write_nifti("data/a.nii", sample_array("int16"))
    write_itk("data/sub/c.nrrd", sample_array("int16"))
    write_itk("data/sub/d.mhd", sample_array("int16"))
    write_dicom_series("data/sub/dicom_case", dicom_ct())
    write_nifti("data/.hidden.nii.gz", sample_array("int16"))
    write_nifti("data/.cache/e.nii.gz", sample_array("int16"))
    for name in ("notes.txt", "table.csv", "sub/readme.md", "sub/image.png"):
        (root / name).write_text("not an image")

    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        found = find_volumes(root)

    assert found == [
        root / "a.nii",
        root / "b.nii.gz",
        root / "sub" / "c.nrrd",
        root / "sub" / "d.mhd",
        root / "sub" / "dicom_case",
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ignored 4 non-image file(s)" in warnings[0].getMessage()
    assert "d.zraw" not in warnings[0].getMessage()


def test_find_volumes_recognises_dicom_without_extension(write_dicom_series, tmp_path):
    folder, _ = write_dicom_series("series", dicom_ct())
    for path in folder.iterdir():
        path.rename(path.with_suffix(""))
    assert find_volumes(tmp_path) == [folder]
    assert is_volume_path(folder)


def test_find_volumes_on_a_single_file(write_nifti):
    path = write_nifti("one.nii.gz", sample_array("int16"))
    assert find_volumes(path) == [path]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("case_001.nii.gz", "case_001"),
        ("case.001.nii", "case.001"),
        ("case_002.NRRD", "case_002"),
        ("a.b.nhdr", "a.b"),
        ("x.mha", "x"),
        ("x.mhd", "x"),
        ("x.gz", "x.gz"),
    ],
)
def test_case_name(name, expected):
    assert case_name(Path("/data") / name) == expected


def test_case_name_of_dicom_folder(write_dicom_series):
    folder, uid = write_dicom_series("patient7.series", dicom_ct())
    assert case_name(folder) == "patient7.series"
    assert case_name(f"{folder}::{uid}") == f"patient7.series_{uid}"


def test_is_volume_path(tmp_path):
    assert is_volume_path(tmp_path / "x.nii.gz")
    assert is_volume_path(tmp_path / "x.MHA")
    assert not is_volume_path(tmp_path / "x.txt")
    assert not is_volume_path(tmp_path / ".nii")
    assert not is_volume_path(tmp_path)
