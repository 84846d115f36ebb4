"""Every input and output problem of medcyclegan.io gives one clear line naming the file."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcyclegan.errors import InputError, OutputError
from medcyclegan.io import find_volumes, read_mask, read_volume, write_volume
from medcyclegan.io.writers import cast_values

SHAPE = (8, 7, 6)


def volume_array(dtype: str = "int16", shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return (np.arange(int(np.prod(shape))).reshape(shape) % 200 - 100).astype(dtype)


def read_error(path: str | Path, **kwargs: object) -> str:
    """The message of the InputError that reading ``path`` raises; checks it is one clean line."""
    with pytest.raises(InputError) as info:
        read_volume(path, **kwargs)  # type: ignore[arg-type]
    return checked_line(str(info.value), path)


def checked_line(message: str, path: str | Path) -> str:
    folder = str(path).split("::")[0]
    assert message.startswith(f"{folder}: "), message
    assert "\n" not in message
    for library_noise in ("Traceback", ".cxx", "itk::ERROR", "sitk::ERROR", "0x"):
        assert library_noise not in message, message
    return message[len(folder) + 2 :]


# ------------------------------------------------------------------------------------- missing / empty


def test_missing_file(tmp_path):
    assert read_error(tmp_path / "absent.nii.gz") == "not found"


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.nii", "empty.nrrd", "empty.mha"])
def test_zero_byte_file(tmp_path, name):
    path = tmp_path / name
    path.touch()
    assert read_error(path) == "is empty (0 bytes)"


def test_unreadable_file(write_nifti, tmp_path):
    path = write_nifti("locked.nii.gz", volume_array())
    path.chmod(0)
    try:
        if path.open("rb"):  # running as root: permissions do not apply
            pytest.skip("file permissions are not enforced for this user")
    except PermissionError:
        assert "cannot be opened" in read_error(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("name", ["scan.png", "scan.txt", "scan.gz", "scan"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG not really")
    message = read_error(path)
    assert message.startswith("unknown file type")
    assert ".nii.gz" in message and ".nrrd" in message and "DICOM" in message


def test_single_dicom_file(write_dicom_series):
    folder, _ = write_dicom_series("ct", volume_array("int16") + 200)
    assert "give the folder" in read_error(next(folder.iterdir()))


# ------------------------------------------------------------------------------------- corrupted NIfTI


def test_truncated_nii_gz_in_the_voxels(write_nifti, tmp_path):
    rng = np.random.default_rng(0)
    # Random values do not compress: truncating the file cuts the voxel stream, not the header.
    source = write_nifti("full.nii.gz", rng.integers(-1000, 1000, size=(32, 32, 16)).astype(np.int16))
    data = source.read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert read_error(path) == "is truncated (gzip stream ended early)"


def test_truncated_nii_gz_in_the_header(write_nifti, tmp_path):
    data = write_nifti("full.nii.gz", volume_array()).read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[:40])
    assert "truncated" in read_error(path)


def test_corrupted_gzip_data(write_nifti, tmp_path):
    rng = np.random.default_rng(1)
    data = bytearray(write_nifti("full.nii.gz", rng.normal(size=(24, 24, 8)).astype(np.float32)).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(data))
    # Zeroed deflate data can still decode (to wrong values): only the gzip CRC catches it.
    assert read_error(path) == "is corrupted (its gzip checksum does not match the data)"


def test_nii_gz_that_is_not_gzip(write_nifti, tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(write_nifti("plain.nii", volume_array()).read_bytes())
    assert read_error(path) == "is not a valid gzip file (a .nii.gz must be gzip-compressed NIfTI)"


def test_truncated_nii(write_nifti, tmp_path):
    data = write_nifti("full.nii", volume_array()).read_bytes()
    path = tmp_path / "truncated.nii"
    path.write_bytes(data[:-100])
    message = read_error(path)
    assert message.startswith("is truncated or its header is corrupted")
    assert f"{np.prod(SHAPE) * 2} bytes of voxels" in message


@pytest.mark.parametrize("name", ["notes.nii", "notes.nii.gz"])
def test_text_file_named_nifti(tmp_path, name):
    text = ("patient notes, not an image\n" * 40).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    assert read_error(path) == "is not a NIfTI file (it looks like a text file)"


def test_short_text_file_named_nii(tmp_path):
    path = tmp_path / "short.nii"
    path.write_text("hello")
    assert read_error(path).startswith("is too short to be NIfTI (5 bytes")


def test_header_promising_more_than_a_gzip_file_can_hold(write_nifti, tmp_path):
    path = write_nifti("small.nii.gz", volume_array())
    image = nib.load(str(path))
    header = image.header.copy()
    header.set_data_shape((2000, 2000, 2000))
    raw = header.binaryblock + b"\x00" * 4 + volume_array().tobytes()
    huge = tmp_path / "huge.nii.gz"
    huge.write_bytes(gzip.compress(raw))
    message = read_error(huge)
    assert message.startswith("is truncated or its header is corrupted")
    assert str(2000**3 * 2) in message


# ------------------------------------------------------------------------------------- dimensionality


def test_2d_nifti(write_nifti):
    assert read_error(write_nifti("slice.nii.gz", volume_array(shape=(8, 7)))) == (
        "is 2D (shape 8x7); give a 3D volume"
    )


def test_2d_itk(write_itk_2d):
    assert read_error(write_itk_2d) == "is 2D (shape 8x7); give a 3D volume"


@pytest.fixture
def write_itk_2d(tmp_path: Path) -> Path:
    import SimpleITK as sitk

    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(volume_array(shape=(7, 8))), str(path))
    return path


def test_4d_series_nifti(write_nifti):
    message = read_error(write_nifti("series.nii.gz", volume_array(shape=(*SHAPE, 3))))
    assert message == "is 4D (a series of 3 volumes, shape 8x7x6x3); give one 3D volume"


def test_4d_series_itk(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "series.mha"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(volume_array())] * 2), str(path))
    assert read_error(path) == "is 4D (a series of 2 volumes, shape 6x7x8x2); give one 3D volume"


def test_5d_nifti(write_nifti):
    assert read_error(write_nifti("5d.nii", volume_array(shape=(*SHAPE, 1, 3)))).startswith("is 5D")


def test_vector_itk(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), dtype=np.uint8), isVector=True), str(path))
    assert read_error(path) == "has 3 values per voxel (vector or RGB); give a scalar volume"


def test_complex_nifti(write_nifti):
    message = read_error(write_nifti("complex.nii", volume_array("complex64")))
    assert message.startswith("has unsupported voxel type complex64")


# ----------------------------------------------------------------------------------------- bad values


def test_nan_voxels_are_counted(write_nifti):
    array = volume_array("float32")
    array[0, 0, :3] = np.nan
    assert read_error(write_nifti("nan.nii.gz", array)) == (
        f"has 3 NaN voxel(s) of {array.size}; fix or remove them first"
    )


def test_inf_voxels_are_counted(write_itk):
    array = volume_array("float64")
    array[1, 2, 3] = np.inf
    array[2, 2, 3] = -np.inf
    array[3, 2, 3] = np.nan
    message = read_error(write_itk("inf.mha", array))
    assert message == f"has 1 NaN and 2 infinite voxel(s) of {array.size}; fix or remove them first"


# ------------------------------------------------------------------------------------------ bad ITK files


def test_nrrd_with_broken_header(tmp_path):
    path = tmp_path / "broken.nrrd"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n" + "x" * 128)
    assert read_error(path) == "cannot be read (type (short) and encoding (raw) require endian info)"


def test_nrrd_that_is_text(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("just some text\n" * 20)
    assert read_error(path).startswith('cannot be read (couldn\'t parse "just some text" as magic')


def test_mha_that_is_text(tmp_path):
    path = tmp_path / "notes.mha"
    path.write_text("just some text\n" * 20)
    assert read_error(path) == "has a malformed MetaImage header (line 1 is not 'Key = Value')"


def test_truncated_nrrd(write_itk, tmp_path):
    data = write_itk("full.nrrd", volume_array(), compress=False).read_bytes()
    path = tmp_path / "truncated.nrrd"
    path.write_bytes(data[:-50])
    assert read_error(path).startswith("cannot be read (")


def test_nrrd_header_promising_huge_data(tmp_path):
    path = tmp_path / "huge.nrrd"
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 3000 3000 3000\nendian: little\nencoding: gzip\n\n"
    path.write_bytes(header.encode() + gzip.compress(b"\x00" * 1000))
    assert read_error(path).startswith("is truncated or its header is corrupted")


# ----------------------------------------------------------------------------------------------- DICOM


def test_two_series_folder_lists_each_series(write_dicom_series):
    hu = volume_array("int16") + 100
    folder, uid_a = write_dicom_series("mixed", hu, description="CT soft tissue")
    _, uid_b = write_dicom_series("mixed", hu[:, :, :4], description="CT bone", file_prefix="B")

    message = read_error(folder)

    assert message.startswith("holds 2 DICOM series, choose one with FOLDER::SERIES_UID")
    assert f"{uid_a} ('CT soft tissue', 6 slices)" in message
    assert f"{uid_b} ('CT bone', 4 slices)" in message


def test_unknown_series_uid(write_dicom_series):
    folder, uid = write_dicom_series("ct", volume_array("int16") + 100)
    message = read_error(f"{folder}::1.2.3.4")
    assert message.startswith("has no DICOM series 1.2.3.4; it holds: ")
    assert uid in message
    assert read_error(folder, series_uid="9.9").startswith("has no DICOM series 9.9")


def test_empty_series_uid_after_separator(write_dicom_series):
    folder, _ = write_dicom_series("ct", volume_array("int16") + 100)
    assert read_error(f"{folder}::") == "no series UID after '::'"


def test_series_uid_for_a_file(write_nifti):
    path = write_nifti("scan.nii.gz", volume_array())
    assert read_error(path, series_uid="1.2.3").startswith("a series UID only applies to a DICOM folder")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    assert read_error(tmp_path).startswith("is a folder without a DICOM series")


def test_dicom_series_with_a_missing_slice(write_dicom_series):
    folder, uid = write_dicom_series("gap", volume_array("int16") + 100, skip_slices=(3,))
    message = read_error(folder)
    assert message.startswith(f"DICOM series {uid} has unevenly spaced slices")
    assert "missing or duplicated slices" in message


def test_single_slice_dicom_series(write_dicom_series):
    folder, uid = write_dicom_series("one", volume_array("int16", (8, 7, 1)) + 100)
    assert read_error(folder) == f"DICOM series {uid} is a single 2D slice; give a 3D series"


# ----------------------------------------------------------------------------------------------- masks


def test_mask_with_another_shape(write_nifti):
    image = read_volume(write_nifti("image.nii.gz", volume_array()))
    path = write_nifti("mask.nii.gz", np.ones((8, 7, 5), dtype=np.uint8))
    with pytest.raises(InputError) as info:
        read_mask(path, like=image.geometry)
    message = checked_line(str(info.value), path)
    assert message.startswith("mask shape 8x7x5 (RAS) differs from the image's 8x7x6")


def test_mask_with_another_affine(write_nifti):
    image = read_volume(write_nifti("image.nii.gz", volume_array()))
    shifted = np.eye(4)
    shifted[0, 3] = 0.01
    path = write_nifti("mask.nii.gz", np.ones(SHAPE, dtype=np.uint8), shifted)
    with pytest.raises(InputError) as info:
        read_mask(path, like=image.geometry)
    assert checked_line(str(info.value), path).startswith(
        "mask affine differs from the image's by up to 0.01 mm"
    )


def test_mask_within_tolerance_is_accepted(write_nifti):
    image = read_volume(write_nifti("image.nii.gz", volume_array()))
    nudged = np.eye(4)
    nudged[0, 3] = 5e-4
    mask = read_mask(write_nifti("mask.nii.gz", np.ones(SHAPE, dtype=np.uint8), nudged), like=image.geometry)
    assert mask.all()


# --------------------------------------------------------------------------------------------- writing


@pytest.fixture
def volume(write_nifti):
    return read_volume(write_nifti("in.nii.gz", volume_array()))


def test_write_unknown_extension(volume, tmp_path):
    with pytest.raises(OutputError) as info:
        write_volume(volume.array, volume.geometry, tmp_path / "out.png")
    assert str(info.value).startswith(f"{tmp_path / 'out.png'}: unknown output type")


def test_write_existing_output_without_overwrite(volume, tmp_path):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError) as info:
        write_volume(volume.array, volume.geometry, out)
    assert "already exists" in str(info.value)
    assert out.read_bytes() == b"precious"


def test_write_existing_detached_data_file_without_overwrite(volume, tmp_path):
    data_file = tmp_path / "out.zraw"
    data_file.write_bytes(b"precious")
    with pytest.raises(OutputError) as info:
        write_volume(volume.array, volume.geometry, tmp_path / "out.mhd")
    assert str(info.value).startswith(f"{data_file}: already exists")
    assert data_file.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.zraw"]


@pytest.mark.parametrize("dtype", ["float16", "complex64", "bogus", "U8"])
def test_write_unsupported_dtype(volume, tmp_path, dtype):
    with pytest.raises(OutputError) as info:
        write_volume(volume.array, volume.geometry, tmp_path / "out.nii.gz", dtype=dtype)
    assert f"unsupported output dtype '{dtype}'" in str(info.value)


def test_write_shape_mismatch_is_a_programming_error(volume, tmp_path):
    with pytest.raises(ValueError, match="does not match the geometry's RAS shape"):
        write_volume(volume.array[:-1], volume.geometry, tmp_path / "out.nii.gz")
    assert list(tmp_path.glob("out*")) == []


def test_write_nan_as_integer_is_a_programming_error(volume, tmp_path):
    values = volume.array.astype(np.float32)
    values[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_volume(values, volume.geometry, tmp_path / "out.nii.gz", dtype="int16")
    with pytest.raises(ValueError, match="NaN or infinite"):
        cast_values(np.array([np.inf]), "uint8")
    assert [p.name for p in tmp_path.iterdir()] == ["in.nii.gz"]


# ------------------------------------------------------------------------------------------- discovery


def test_find_volumes_missing_folder(tmp_path):
    with pytest.raises(InputError) as info:
        find_volumes(tmp_path / "nowhere")
    assert checked_line(str(info.value), tmp_path / "nowhere") == "not found"


def test_find_volumes_without_volumes(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    with pytest.raises(InputError) as info:
        find_volumes(tmp_path)
    message = checked_line(str(info.value), tmp_path)
    assert message.startswith("no volumes found (looked for .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd files")


def test_find_volumes_on_a_non_volume_file(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b")
    with pytest.raises(InputError) as info:
        find_volumes(path)
    assert checked_line(str(info.value), path).startswith("is not a volume file")


# ------------------------------------------------------------------------------ without SimpleITK


def test_without_simpleitk_nifti_works_and_itk_says_why(write_nifti, write_itk, tmp_path, monkeypatch):
    nrrd = write_itk("scan.nrrd", volume_array())
    nifti = write_nifti("scan.nii.gz", volume_array())
    (tmp_path / "dicom").mkdir()
    # A None entry makes "import SimpleITK" fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "SimpleITK", None)

    volume = read_volume(nifti)
    write_volume(volume.array, volume.geometry, tmp_path / "out.nii.gz")

    assert (
        read_error(nrrd)
        == "reading .nrrd files needs SimpleITK, which is not installed (pip install SimpleITK)"
    )
    assert read_error(tmp_path / "dicom").startswith("reading DICOM series needs SimpleITK")
    with pytest.raises(OutputError, match=r"out\.mha: writing \.mha files needs SimpleITK"):
        write_volume(volume.array, volume.geometry, tmp_path / "out.mha")


# ------------------------------------------------------------------ MetaImage headers that crash ITK


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # Each of these made ITK's MetaIO corrupt the heap and abort the whole process.
        (b"ElementDataFile = LOCAL\n", b"ElementDataFile LOCAL\n", "line 14 is not 'Key = Value'"),
        (
            b"ElementDataFile = LOCAL",
            b"ElementDataFile = LO0A",
            "ElementDataFile must be LOCAL in a .mha file",
        ),
        (b"NDims = 3", b"NDims =-3", "NDims missing or out of range"),
        (b"DimSize = 8 7 6", b"DimSize = 8 7", "DimSize needs 3 numbers"),
        (b"ElementType = MET_SHORT", b"ElementTyp = MET_SHORT", "ElementType missing or unknown"),
    ],
)
def test_malformed_metaimage_header(write_itk, tmp_path, old, new, expected):
    data = write_itk("valid.mha", volume_array()).read_bytes()
    assert old in data
    path = tmp_path / "malformed.mha"
    path.write_bytes(data.replace(old, new, 1))
    assert read_error(path) == f"has a malformed MetaImage header ({expected})"


def test_metaimage_announcing_more_compressed_bytes_than_present(write_itk, tmp_path):
    rng = np.random.default_rng(3)
    data = write_itk("valid.mha", rng.normal(size=(8, 7, 6)).astype(np.float32)).read_bytes()
    path = tmp_path / "short.mha"
    path.write_bytes(data[:-12])
    message = read_error(path)
    assert message.startswith("is truncated: ") and "bytes of compressed voxels announced" in message


def test_metaimage_detached_data_file_missing(write_itk):
    path = write_itk("case.mhd", volume_array())
    path.with_suffix(".zraw").unlink()
    assert read_error(path) == "its data file case.zraw is missing"
