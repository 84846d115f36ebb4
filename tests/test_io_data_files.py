"""Detached headers (.mhd, .nhdr): which data files they may name, and the files a volume consists of."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medcyclegan.errors import InputError
from medcyclegan.io import read_volume, write_volume

SHAPE = (6, 5, 4)
# The documented opt-in (medcyclegan.io.headers.ALLOW_EXTERNAL_DATA_ENV).
ALLOW_EXTERNAL_DATA_ENV = "MEDCYCLEGAN_ALLOW_EXTERNAL_DATA_FILES"
# The data file ITK writes beside each detached header, uncompressed and compressed.
DATA_NAME = {
    (".mhd", False): "raw",
    (".mhd", True): "zraw",
    (".nhdr", False): "raw",
    (".nhdr", True): "raw.gz",
}


def voxels() -> np.ndarray:
    return np.arange(int(np.prod(SHAPE)), dtype=np.int16).reshape(SHAPE)


def header_naming(write_itk, tmp_path: Path, suffix: str, data_file: str, *, compress: bool = False) -> Path:
    """``case/a{suffix}`` whose data file line names ``data_file`` (relative to ``case/``).

    The voxels ITK wrote are moved to where ``data_file`` points, so that the volume reads correctly
    whenever its data file is allowed.
    """
    header = write_itk(f"case/a{suffix}", voxels(), compress=compress)
    written = header.parent / f"a.{DATA_NAME[suffix, compress]}"
    target = header.parent / data_file
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(written, target)
    key = b"ElementDataFile = " if suffix == ".mhd" else b"data file: "
    text = header.read_bytes().replace(key + written.name.encode(), key + data_file.encode())
    header.write_bytes(text)
    return header


def outside_file(tmp_path: Path, name: str = "secret.raw") -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    return folder / name


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_data_file_outside_the_header_folder_is_refused(
    write_itk, tmp_path, monkeypatch, suffix, how
) -> None:
    monkeypatch.delenv(ALLOW_EXTERNAL_DATA_ENV, raising=False)
    secret = outside_file(tmp_path)
    if how == "parent":
        header = header_naming(write_itk, tmp_path, suffix, "../elsewhere/secret.raw")
        shown = "../elsewhere/secret.raw"
    elif how == "absolute":
        header = header_naming(write_itk, tmp_path, suffix, str(secret))
        shown = str(secret)
    else:
        header = header_naming(write_itk, tmp_path, suffix, "a.raw")
        os.replace(header.parent / "a.raw", secret)
        (header.parent / "a.raw").symlink_to(secret)
        shown = "a.raw"
    with pytest.raises(InputError) as info:
        read_volume(header)
    message = str(info.value)
    assert message.startswith(f"{header}: names a data file outside its own folder")
    assert f": {shown}; a detached header may only name files in its folder or below" in message
    assert f"{ALLOW_EXTERNAL_DATA_ENV}=1" in message and "\n" not in message
    assert ("symbolic link" in message) == (how == "symlink")

    # The explicit opt-in: a keyword of read_volume, or the environment variable.
    np.testing.assert_array_equal(read_volume(header, allow_external_data=True).array.shape, SHAPE)
    monkeypatch.setenv(ALLOW_EXTERNAL_DATA_ENV, "1")
    assert read_volume(header).array.shape == SHAPE
    with pytest.raises(InputError, match="outside its own folder"):
        read_volume(header, allow_external_data=False)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_data_file_in_a_subfolder_is_allowed(write_itk, tmp_path, suffix) -> None:
    header = header_naming(write_itk, tmp_path, suffix, "data/a.raw")
    assert read_volume(header).array.shape == SHAPE


def test_etc_passwd_is_not_read_as_voxels(write_itk, tmp_path) -> None:
    """The issue's attack: a header sized to read /etc/passwd as bytes."""
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    header = write_itk("case/a.mhd", voxels(), compress=False)
    text = header.read_text().replace("DimSize = 6 5 4", "DimSize = 1 1 1").replace("MET_SHORT", "MET_UCHAR")
    header.write_text(
        text.replace("ElementDataFile = a.raw", "ElementDataFile = ../../../../../../../etc/passwd")
    )
    with pytest.raises(InputError, match="names a data file outside its own folder"):
        read_volume(header)


# ------------------------------------------------------------------- the files a volume consists of


def test_files_of_each_kind_of_volume(write_itk, write_nifti, write_dicom_series, tmp_path) -> None:
    from medcyclegan.io.discovery import files_of_volume

    assert files_of_volume(write_nifti("n.nii.gz", voxels())) == [tmp_path / "n.nii.gz"]
    assert files_of_volume(write_itk("m.mha", voxels())) == [tmp_path / "m.mha"]
    assert files_of_volume(write_itk("m.mhd", voxels())) == [tmp_path / "m.mhd", tmp_path / "m.zraw"]
    assert files_of_volume(write_itk("r.mhd", voxels(), compress=False)) == [
        tmp_path / "r.mhd",
        tmp_path / "r.raw",
    ]
    assert files_of_volume(write_itk("h.nhdr", voxels())) == [tmp_path / "h.nhdr", tmp_path / "h.raw.gz"]
    folder, uid = write_dicom_series("ct", voxels() + 100)
    slices = sorted(folder.glob("*.dcm"))
    assert len(slices) == SHAPE[2]
    assert files_of_volume(folder) == [folder, *slices]
    assert files_of_volume(f"{folder}::{uid}") == [folder, *slices]


def test_files_of_list_and_pattern_headers(tmp_path) -> None:
    from medcyclegan.io.discovery import files_of_volume

    mhd = tmp_path / "list.mhd"
    mhd.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
        "ElementDataFile = LIST 2D\ns0.raw\nsub/s1.raw\n"
    )
    assert files_of_volume(mhd) == [mhd, tmp_path / "s0.raw", tmp_path / "sub" / "s1.raw"]
    nhdr = tmp_path / "pattern.nhdr"
    nhdr.write_text(
        "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 3\nencoding: raw\ndata file: z%02d.raw 1 5 2 2\n"
    )
    assert files_of_volume(nhdr) == [nhdr, *(tmp_path / f"z{i:02d}.raw" for i in (1, 3, 5))]
    listed = tmp_path / "listed.nhdr"
    listed.write_text(
        "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: gzip\ndata file: LIST\na.raw.gz\nb.raw.gz\n"
    )
    assert files_of_volume(listed) == [listed, tmp_path / "a.raw.gz", tmp_path / "b.raw.gz"]


def test_files_written_by_an_output_include_its_data_file(write_nifti, tmp_path) -> None:
    from medcyclegan.io.writers import files_written_by

    volume = read_volume(write_nifti("in/n.nii.gz", voxels()))
    for name, data in (("A.MHD", "A.zraw"), ("b.nhdr", "b.raw.gz"), ("c.mha", None), ("d.nii.gz", None)):
        out = tmp_path / "out" / name
        expected = [out] if data is None else [out, out.parent / data]
        assert files_written_by(out) == expected
        write_volume(volume.array, volume.geometry, out)
        assert sorted((tmp_path / "out").glob(f"{name[0]}.*")) == sorted(expected)  # exactly those


def test_same_file_ignores_case_and_follows_links(tmp_path) -> None:
    from medcyclegan.io.discovery import same_file, shared_file

    (tmp_path / "a.zraw").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path)
    os.link(tmp_path / "a.zraw", tmp_path / "hard.zraw")
    assert same_file(tmp_path / "a.mhd", tmp_path / "a.MHD")  # neither exists: the name decides
    assert same_file(tmp_path / "link" / "a.zraw", tmp_path / "a.zraw")
    assert same_file(tmp_path / "hard.zraw", tmp_path / "a.zraw")
    assert same_file(tmp_path / "x" / ".." / "a.zraw", tmp_path / "a.zraw")
    assert not same_file(tmp_path / "a.zraw", tmp_path / "b.zraw")
    inputs = [tmp_path / "a.mhd", tmp_path / "a.zraw"]
    assert shared_file([tmp_path / "a.MHD", tmp_path / "a.zraw"], inputs) == (
        tmp_path / "a.MHD",
        tmp_path / "a.mhd",
    )
    assert shared_file([tmp_path / "hard.zraw"], inputs) == (tmp_path / "hard.zraw", tmp_path / "a.zraw")
    assert shared_file([tmp_path / "b.mhd", tmp_path / "b.zraw"], inputs) is None


def test_data_file_that_is_a_link_loop_is_refused(write_itk, tmp_path) -> None:
    header = header_naming(write_itk, tmp_path, ".mhd", "a.raw")
    (header.parent / "a.raw").unlink()
    (header.parent / "a.raw").symlink_to(header.parent / "a.raw")
    with pytest.raises(InputError) as info:
        read_volume(header)
    assert str(info.value) == f"{header}: its data file a.raw is a symbolic link loop"
