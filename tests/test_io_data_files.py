"""Detached headers (.mhd, .nhdr): which data files they may name, and the files a volume consists of."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medcyclegan.errors import InputError
from medcyclegan.io import read_volume
from medcyclegan.io.headers import ALLOW_EXTERNAL_DATA_ENV

SHAPE = (6, 5, 4)
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
