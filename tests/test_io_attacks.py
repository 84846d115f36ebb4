"""Hostile inputs: each gives one line naming the file (exit 2 on the CLI), never a hang or a wrong volume.

Found by attacking the readers with crafted files: FIFOs and devices given as volumes, MetaImage
slice lists with missing files, non-finite header numbers, DICOM slices with too little pixel data or
without a usable geometry, files holding more voxels than their header describes, file names with
newlines, and library lines printed straight to the terminal.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import threading
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny import assert_clean_error

from medcyclegan.errors import InputError
from medcyclegan.io import find_volumes, read_volume

SHAPE = (4, 5, 6)
VOXELS = np.arange(int(np.prod(SHAPE)), dtype=np.int16).reshape(SHAPE)
RAW = VOXELS.tobytes(order="F")
META_HEADER = "ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_SHORT\n"
NRRD_HEADER = b"NRRD0004\ntype: short\ndimension: 3\nencoding: raw\nendian: little\n"


def read_error(path: str | Path) -> str:
    """The InputError message of reading ``path`` (one line starting with the path), without the path."""
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message[len(str(path)) + 2 :]


def unblock_fifo(fifo: Path) -> threading.Event:
    """Keeps releasing readers blocked on ``fifo`` (each open for reading waits for a writer), from
    a few seconds on, so that a test of code that opens it fails instead of hanging; set the
    returned event to stop."""
    stop = threading.Event()

    def release() -> None:
        stop.wait(5.0)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # nobody is reading now
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            stop.wait(0.05)

    threading.Thread(target=release, daemon=True).start()
    return stop


# ------------------------------------------------------------------------- FIFOs, devices, sockets


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_given_as_a_volume_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    timer = unblock_fifo(fifo)
    try:
        assert "not a regular file" in read_error(fifo)
    finally:
        timer.set()


def test_a_device_given_as_a_volume_is_called_a_device(tmp_path: Path) -> None:
    link = tmp_path / "zero.nii"
    link.symlink_to("/dev/zero")
    assert "not a regular file" in read_error(link)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_folder_holding_a_fifo_is_searched_without_blocking(write_nifti, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_nifti("in/a.nii.gz", VOXELS)
    os.mkfifo(folder / "pipe")
    os.mkfifo(folder / "b.nii.gz")
    timers = [unblock_fifo(folder / "pipe"), unblock_fifo(folder / "b.nii.gz")]
    try:
        assert find_volumes(folder) == [folder / "a.nii.gz"]
        with pytest.raises(InputError, match="is a FIFO"):
            find_volumes(folder / "pipe")  # what convert and train search when given the FIFO
    finally:
        for timer in timers:
            timer.set()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_detached_data_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    header = tmp_path / "a.nhdr"
    header.write_bytes(NRRD_HEADER + b"sizes: 4 5 6\ndata file: a.raw\n\n")
    os.mkfifo(tmp_path / "a.raw")
    timer = unblock_fifo(tmp_path / "a.raw")
    try:
        message = read_error(header)
    finally:
        timer.set()
    assert "a.raw" in message and "not a regular file" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_dicom_folder_holding_a_fifo_says_so(write_dicom_series) -> None:
    """Before: GDCM found no series at all: "is a folder without a DICOM series"."""
    folder, _ = write_dicom_series("ct", np.zeros((6, 5, 4)))
    os.mkfifo(folder / "pipe")
    message = read_error(folder)
    assert "pipe" in message and "FIFO" in message


# ------------------------------------------------------------------------------ MetaImage slice lists


@pytest.mark.parametrize(
    "data_file",
    [
        "LIST\nslice1.raw\nslice2.raw",
        "LIST 2D\nslice1.raw\nslice2.raw",
        "slice%d.raw 1 2 1 2",
        "slice%d.raw 1 2 1",
    ],
)
def test_metaimage_slice_list_with_too_few_files_is_refused(tmp_path: Path, data_file: str) -> None:
    """Before: MetaIO filled the missing slices with zeros, or with whatever was in memory."""
    for name in ("slice1.raw", "slice2.raw"):
        (tmp_path / name).write_bytes(RAW[: 4 * 5 * 2])  # one 2D slice each
    header = tmp_path / "a.mhd"
    header.write_text(META_HEADER + f"ElementDataFile = {data_file}\n")
    message = read_error(header)
    assert "data file" in message and "2" in message


def test_metaimage_slice_list_with_short_files_is_refused(tmp_path: Path) -> None:
    names = [f"s{k}.raw" for k in range(6)]
    for name in names:
        (tmp_path / name).write_bytes(RAW[:10])  # a slice needs 40 bytes
    header = tmp_path / "a.mhd"
    header.write_text(META_HEADER + "ElementDataFile = LIST\n" + "\n".join(names) + "\n")
    assert "s0.raw" in read_error(header)


def test_metaimage_slice_list_of_the_right_size_still_reads(tmp_path: Path) -> None:
    names = []
    for k in range(6):
        names.append(f"s{k}.raw")
        (tmp_path / names[-1]).write_bytes(VOXELS[:, :, k].tobytes(order="F"))
    header = tmp_path / "a.mhd"
    header.write_text(META_HEADER + "ElementDataFile = LIST 2D\n" + "\n".join(names) + "\n")
    volume = read_volume(header)
    assert volume.shape == SHAPE
    assert np.array_equal(volume.array[::-1, ::-1, :], VOXELS)  # LPS file axes, RAS array


@pytest.mark.parametrize(
    "field",
    [
        "Offset = inf 0 0",
        "Offset = nan 0 0",
        "ElementSpacing = 1 nan 1",
        "TransformMatrix = 1 0 0 0 1 0 0 0 inf",
    ],
)
def test_metaimage_non_finite_geometry_is_refused(tmp_path: Path, field: str) -> None:
    """Before: MetaIO read ``Offset = inf`` (or nan) as 0 and the volume was placed at the origin."""
    path = tmp_path / "a.mha"
    path.write_bytes((META_HEADER + field + "\nElementDataFile = LOCAL\n").encode() + RAW)
    assert "non-finite" in read_error(path)


@pytest.mark.parametrize(
    ("name", "header", "expected"),
    [
        ("scaled.mha", META_HEADER + "TransformMatrix = 2 0 0 0 1 0 0 0 1\n", "lengths 2, 1, 1"),
        ("sheared.mha", META_HEADER + "TransformMatrix = 1 0.5 0 0 1 0 0 0 1\n", "lengths 1.12, 1, 1"),
        (
            "sheared.nrrd",
            "NRRD0004\ntype: short\ndimension: 3\nencoding: raw\nendian: little\nsizes: 4 5 6\n"
            "space: left-posterior-superior\nspace directions: (1,0,0) (1,1,0) (0,0,1)\n",
            "axes not perpendicular",  # NRRD's directions carry the spacing: ITK normalises them
        ),
    ],
)
def test_itk_direction_that_is_not_a_rotation_is_refused(tmp_path: Path, name, header, expected) -> None:
    """Before: read with each axis's voxel size multiplied by its column's length (ITK's own
    arithmetic) while the header's spacing said otherwise; a shear was kept as a tilted grid."""
    path = tmp_path / name
    tail = "ElementDataFile = LOCAL\n" if name.endswith(".mha") else "\n"
    path.write_bytes((header + tail).encode() + RAW)
    message = read_error(path)
    assert "invalid direction matrix" in message and expected in message


def test_itk_direction_rounded_in_the_header_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "rounded.mha"
    matrix = "0.999999 0.001 0 -0.001 0.999999 0 0 0 1"  # a rotation written with 6 digits
    path.write_bytes((META_HEADER + f"TransformMatrix = {matrix}\nElementDataFile = LOCAL\n").encode() + RAW)
    assert read_volume(path).shape == (4, 5, 6)


@pytest.mark.parametrize(
    ("name", "header"),
    [
        (
            "a.nrrd",
            NRRD_HEADER
            + b"sizes: 4 5 6\nspace: left-posterior-superior\nspace directions: none none none\n\n",
        ),
        ("b.nrrd", NRRD_HEADER + b"sizes: 4 5 6\nspacings: nan 2 3\n\n"),
        ("c.mha", (META_HEADER + "ElementDataFile = LOCAL\n").encode()),
    ],
)
def test_a_header_without_voxel_spacing_warns_that_it_is_a_guess(
    tmp_path: Path, caplog, name, header
) -> None:
    """Before: read as 1 mm without a word (a NIfTI pixdim of 0 already warned)."""
    path = tmp_path / name
    path.write_bytes(header + RAW)
    with caplog.at_level("WARNING", logger="medcyclegan"):
        volume = read_volume(path)
    assert 1.0 in volume.spacing
    assert f"{path}: the header gives no" in caplog.text and "guess (1 mm)" in caplog.text


def test_itk_files_with_spacing_give_no_spacing_warning(write_itk, caplog) -> None:
    with caplog.at_level("WARNING", logger="medcyclegan"):
        for name in ("a.nrrd", "a.mha", "a.nhdr", "a.mhd"):
            read_volume(write_itk(name, VOXELS, spacing=(0.5, 0.6, 2.0)))
    assert not caplog.records


# ----------------------------------------------------------------- more voxels than the header says


def test_nrrd_holding_more_slices_than_its_sizes_is_refused(tmp_path: Path) -> None:
    """Before: a header whose last size was lowered from 6 to 3 gave half the volume, exit 0."""
    path = tmp_path / "a.nrrd"
    path.write_bytes(NRRD_HEADER + b"sizes: 4 5 3\n\n" + RAW)
    assert "more" in read_error(path)


def test_metaimage_holding_more_slices_than_its_dimsize_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.mha"
    path.write_bytes((META_HEADER.replace("4 5 6", "4 5 3") + "ElementDataFile = LOCAL\n").encode() + RAW)
    assert "more" in read_error(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_holding_more_slices_than_its_header_is_refused(tmp_path: Path, suffix: str) -> None:
    content = nib.Nifti1Image(VOXELS[:, :, :3], np.eye(4)).to_bytes() + RAW[: 4 * 5 * 2 * 3]
    path = tmp_path / f"a{suffix}"
    path.write_bytes(gzip.compress(content) if suffix == ".nii.gz" else content)
    assert "more" in read_error(path)


def test_nifti_gzip_bomb_is_refused_without_decompressing_it_all(tmp_path: Path, monkeypatch) -> None:
    """A small .nii.gz decompressing to far more than its header describes."""
    import medcyclegan.io.gzip_io as gzip_io

    content = nib.Nifti1Image(VOXELS, np.eye(4)).to_bytes() + bytes(64 << 20)
    path = tmp_path / "a.nii.gz"
    path.write_bytes(gzip.compress(content, 9))
    read = []
    real = gzip_io._CheckedReader.readinto

    def counting(self, buffer):  # type: ignore[no-untyped-def]
        count = real(self, buffer)
        read.append(count)
        return count

    monkeypatch.setattr(gzip_io._CheckedReader, "readinto", counting)
    assert "more" in read_error(path)
    assert sum(read) < 16 << 20


def test_nifti_vox_offset_inside_the_header_is_refused(tmp_path: Path) -> None:
    """Before: nibabel read a vox_offset of 0 from byte 0, the header itself becoming voxels, exit 0."""
    header = nib.Nifti1Image(VOXELS, np.eye(4)).header  # vox_offset 0 until saved
    path = tmp_path / "a.nii"
    path.write_bytes(header.binaryblock + bytes(4) + RAW)
    assert "vox_offset 0" in read_error(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_compressed_itk_bomb_stops_decompressing_past_the_header_size(
    tmp_path: Path, monkeypatch, suffix
) -> None:
    """A .nrrd (gzip) or .mha (zlib) whose stream expands to 64 MiB for 240 bytes of voxels."""
    import zlib

    import medcyclegan.io.readers as readers

    bomb = RAW + bytes(64 << 20)
    path = tmp_path / f"a{suffix}"
    if suffix == ".nrrd":
        path.write_bytes(NRRD_HEADER.replace(b"raw", b"gzip") + b"sizes: 4 5 6\n\n" + gzip.compress(bomb, 9))
    else:
        header = META_HEADER + "CompressedData = True\nElementDataFile = LOCAL\n"
        path.write_bytes(header.encode() + zlib.compress(bomb, 9))
    out: list[int] = []
    real_gzip, real_zlib = readers._GZIP_CHUNK_BYTES, zlib.decompressobj

    class Counting:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._inner = real_zlib(*args, **kwargs)  # gzip's reader passes wbits by keyword

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            result = self._inner.decompress(data, max_length)
            out.append(len(result))
            return result

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    monkeypatch.setattr(readers.zlib, "decompressobj", Counting)
    import medcyclegan.io.gzip_io as gzip_io

    real_readinto = gzip_io._CheckedReader.readinto

    def counting(self, buffer):  # type: ignore[no-untyped-def]  # the gzip library's output
        count = real_readinto(self, buffer)
        out.append(count)
        return count

    monkeypatch.setattr(gzip_io._CheckedReader, "readinto", counting)
    assert "more than the 240 bytes" in read_error(path)
    assert sum(out) <= 2 * real_gzip + (8 << 20)


@pytest.mark.parametrize(("esize", "readable"), [(100_000, False), (-16, False), (0, False), (8, True)])
def test_nifti_extension_lying_about_its_size(tmp_path: Path, capfd, esize: int, readable: bool) -> None:
    """Before: "cannot be read as NIfTI (ValueError: read length must be non-negative or -1)", or
    nibabel's "Extension size is not a multiple of 16 bytes" warning on the terminal."""
    import struct

    header = nib.Nifti1Image(VOXELS, np.eye(4)).header
    header.set_data_offset(368)
    extension = b"\x01\x00\x00\x00" + struct.pack("<ii", esize, 4) + bytes(8)
    path = tmp_path / "a.nii"
    path.write_bytes(header.binaryblock + extension + RAW)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as records:  # what a user's terminal would show
        warnings.simplefilter("always")
        if readable:
            assert read_volume(path).shape == SHAPE
        else:
            assert read_error(path) == "has a malformed NIfTI header extension (its size field is wrong)"
    assert not records, [str(r.message) for r in records]
    assert capfd.readouterr().err == ""


def test_small_padding_after_the_voxels_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.nii"
    path.write_bytes(nib.Nifti1Image(VOXELS, np.eye(4)).to_bytes() + bytes(16))
    assert read_volume(path).shape == SHAPE


# --------------------------------------------------------------------------------------------- DICOM


def _edit_slices(folder: Path, edit, only: int | None = None) -> None:  # type: ignore[no-untyped-def]
    import pydicom

    for k, path in enumerate(sorted(folder.glob("*.dcm"))):
        if only is not None and k != only:
            continue
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)


def _hu() -> np.ndarray:
    hu = np.full((6, 5, 4), -1000.0)
    hu[2:4, 2:4, :] = 500.0
    return hu


def test_dicom_slice_with_too_little_pixel_data_is_refused(write_dicom_series) -> None:
    """Before: the slice was filled with whatever was in memory (values up to 62,000 HU), exit 0."""
    folder, _ = write_dicom_series("ct", _hu())

    def shorten(ds) -> None:  # type: ignore[no-untyped-def]
        ds.PixelData = ds.PixelData[:10]

    _edit_slices(folder, shorten, only=1)
    message = read_error(folder)
    assert "IM0001.dcm" in message and "pixel data" in message


def test_dicom_slices_of_different_sizes_are_refused_clearly(write_dicom_series) -> None:
    folder, _ = write_dicom_series("ct", _hu())

    def shrink(ds) -> None:  # type: ignore[no-untyped-def]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = bytes(ds.Rows * ds.Columns)

    _edit_slices(folder, shrink, only=2)
    message = read_error(folder)
    assert "IM0002.dcm" in message


def test_dicom_slice_of_another_size_is_named(write_dicom_series) -> None:
    """Before: "cannot be read (Size: [6, 3, 1])"."""
    folder, _ = write_dicom_series("ct", _hu())

    def crop(ds) -> None:  # type: ignore[no-untyped-def]
        ds.Rows = 3
        ds.PixelData = ds.PixelData[: 3 * ds.Columns * 2]

    _edit_slices(folder, crop, only=2)
    message = read_error(folder)
    assert "IM0002.dcm is 6x3 pixels, the first slice 6x5" in message


@pytest.mark.parametrize("spacing", [[0, 0], [-0.7, 0.8], ["nan", 0.8]])
def test_dicom_without_a_valid_pixel_spacing_is_refused(write_dicom_series, spacing) -> None:
    """Before: GDCM replaced a zero or negative PixelSpacing by 1 mm, silently."""
    folder, _ = write_dicom_series("ct", _hu())

    def respace(ds) -> None:  # type: ignore[no-untyped-def]
        ds.PixelSpacing = spacing

    _edit_slices(folder, respace)
    assert "PixelSpacing" in read_error(folder)


def test_dicom_with_non_finite_slice_positions_is_refused(write_dicom_series) -> None:
    """Before: NaN positions passed the spacing check and the slice spacing became 1 mm."""
    folder, _ = write_dicom_series("ct", _hu())

    def unplace(ds) -> None:  # type: ignore[no-untyped-def]
        ds.ImagePositionPatient = ["nan", 0, ds.InstanceNumber]

    _edit_slices(folder, unplace)
    assert "ImagePositionPatient" in read_error(folder)


def test_dicom_without_slice_positions_warns_that_the_spacing_is_a_guess(write_dicom_series, caplog) -> None:
    """Before: "slice spacing unchecked", while the spacing between slices had silently become 1 mm."""
    folder, _ = write_dicom_series("ct", _hu())

    def unplace(ds) -> None:  # type: ignore[no-untyped-def]
        del ds.ImagePositionPatient

    _edit_slices(folder, unplace)
    with caplog.at_level("WARNING", logger="medcyclegan"):
        volume = read_volume(folder)
    assert volume.spacing[2] == pytest.approx(1.0)
    assert "spacing between slices is a guess" in caplog.text


def test_dicom_with_a_degenerate_orientation_is_refused_as_such(write_dicom_series) -> None:
    """Before: blamed on "missing or duplicated slices"."""
    folder, _ = write_dicom_series("ct", _hu())

    def flatten(ds) -> None:  # type: ignore[no-untyped-def]
        ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]

    _edit_slices(folder, flatten)
    assert "ImageOrientationPatient" in read_error(folder)


def test_undecodable_jpeg2000_series_says_so_in_one_line(write_dicom_series, capfd) -> None:
    """Before: "cannot be read (Failed to change to Implicit Transfer Syntax)", then OpenJPEG's own
    "Invalid marker size" lines on the terminal at exit."""
    from pydicom.encaps import encapsulate

    folder, _ = write_dicom_series("ct", _hu())

    def j2k(ds) -> None:  # type: ignore[no-untyped-def]
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(40)])

    _edit_slices(folder, j2k)
    capfd.readouterr()
    assert "JPEG 2000-compressed" in read_error(folder)
    from medcyclegan.io.library_messages import _flush_c_streams

    _flush_c_streams()  # what OpenJPEG left in C's buffer would otherwise only show at exit
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured


def test_an_unreadable_slice_is_named(write_dicom_series) -> None:
    """Before: "unevenly spaced slices: missing or duplicated slices?" without saying which file."""
    folder, _ = write_dicom_series("ct", _hu())
    (folder / "IM0001.dcm").write_bytes(os.urandom(300))
    message = read_error(folder)
    assert "IM0001.dcm" in message


def test_non_image_dicom_files_beside_a_series_are_named_in_a_warning(write_dicom_series, caplog) -> None:
    """An RT structure set in the series folder: the series is read, the file named as ignored."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder, _ = write_dicom_series("ct", _hu())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = "RTSTRUCT", generate_uid(), "tiny"
    ds.save_as(folder / "RS.dcm", enforce_file_format=True)
    with caplog.at_level("WARNING", logger="medcyclegan"):
        assert read_volume(folder).shape == (6, 5, 4)
    assert "ignored 1 file(s) that are not DICOM images or cannot be read: RS.dcm" in caplog.text


# ------------------------------------------------------------------------------------- the terminal


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path: Path, cli) -> None:
    path = tmp_path / "bad\nname.nii.gz"
    path.write_bytes(b"")
    result = cli("evaluate", "--pred", path, "--ref", path)
    line = assert_clean_error(result)
    assert "bad\\nname.nii.gz" in line


def test_metaio_lines_do_not_reach_the_terminal(tmp_path: Path, capfd) -> None:
    """Before: "MetaImage: M_ReadElementsData: file stream is fail after read" printed by MetaIO itself."""
    path = tmp_path / "a.mha"
    path.write_bytes((META_HEADER + "BinaryData = False\nElementDataFile = LOCAL\n").encode() + b"1 2 3")
    capfd.readouterr()
    message = read_error(path)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured
    assert "M_Read" not in message


def test_huge_spacing_gives_no_numpy_warning(tmp_path: Path) -> None:
    path = tmp_path / "a.mha"
    path.write_bytes((META_HEADER + "ElementSpacing = 1e300 1 1\nElementDataFile = LOCAL\n").encode() + RAW)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert "voxel size" in read_error(path)
    assert not records, [str(r.message) for r in records]
