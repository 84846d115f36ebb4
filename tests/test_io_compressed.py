"""Compressed ITK files (zlib .mha/.mhd+.zraw, gzip .nrrd/.nhdr+.raw.gz): damage is one error line.

ITK alone decodes a corrupted zlib stream into wrong voxels (printing only "Uncompress failed") and
ignores the gzip length field: each damaged file here was read without an error before the reader
checked the compressed stream itself.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from medcyclegan.errors import InputError
from medcyclegan.io import read_volume

SHAPE = (40, 40, 12)  # 19,200 voxels, as in the issue
# The file holding the compressed voxels of each format: the file itself, or its detached data file.
DATA_FILE = {"a.mha": "a.mha", "a.nrrd": "a.nrrd", "a.mhd": "a.zraw", "a.nhdr": "a.raw.gz"}


def phantom() -> np.ndarray:
    """A CT-like int16 volume that compresses well (long deflate matches, as real scans)."""
    x, y, _ = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    inside = (x - 20) ** 2 + (y - 20) ** 2 < 300
    return (np.where(inside, 40, -1000) + 3 * x).astype(np.int16)


def data_start(data: bytes, name: str) -> int:
    """Offset of the compressed voxels in the file ``name``'s bytes ``data``."""
    if name.endswith(".mha"):
        return data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    if name.endswith(".nrrd"):
        return data.index(b"\n\n") + 2
    return 0


def damaged(write_itk, name: str, damage: str) -> Path:
    """Writes ``name`` compressed and damages the bytes of its compressed voxels; returns the header."""
    header = write_itk(name, phantom())
    target = header.parent / DATA_FILE[name]
    data = bytearray(target.read_bytes())
    start = data_start(bytes(data), name)
    kind, _, where = damage.partition("@")
    at = start + int((len(data) - start) * float(where)) if where else len(data)
    if kind == "flip":  # 50 bytes inverted (the test)
        at = min(at, len(data) - 50)
        data[at : at + 50] = bytes(b ^ 0xFF for b in data[at : at + 50])
    elif kind == "trailer":  # the checksum/length at the end of the stream
        data[-1] ^= 0xFF
    elif kind == "cut":
        del data[at:]
    target.write_bytes(bytes(data))
    return header


@pytest.mark.parametrize("name", list(DATA_FILE))
@pytest.mark.parametrize("damage", ["flip@0", "flip@0.3", "flip@0.9", "trailer", "cut@0.5", "cut@0.99"])
def test_damaged_compressed_voxels_are_one_error_line(write_itk, capfd, name, damage) -> None:
    path = damaged(write_itk, name, damage)
    capfd.readouterr()
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "corrupted" in message or "truncated" in message, message
    if DATA_FILE[name] != name:
        assert "truncated: " in message or f"its data file {DATA_FILE[name]} " in message, message
    out, err = capfd.readouterr()
    assert out + err == ""  # ITK's "Uncompress failed" never reaches the terminal


@pytest.mark.parametrize("name", list(DATA_FILE))
def test_intact_compressed_files_still_read(write_itk, name) -> None:
    volume = read_volume(write_itk(name, phantom()))
    assert volume.array.shape == SHAPE
    np.testing.assert_array_equal(np.sort(volume.array.ravel()), np.sort(phantom().ravel()))


def test_metaimage_without_compressed_size_truncated(write_itk) -> None:
    """Without CompressedDataSize the header cannot tell the file is short: the stream must."""
    path = write_itk("a.mha", phantom())
    data = path.read_bytes()
    start = data_start(data, "a.mha")
    header = b"\n".join(
        line for line in data[:start].split(b"\n") if not line.startswith(b"CompressedDataSize")
    )
    path.write_bytes(header + data[start : start + (len(data) - start) // 2])
    with pytest.raises(InputError, match=r"a\.mha: is truncated \(its compressed voxel data ends early\)"):
        read_volume(path)


def test_metaimage_stream_holding_fewer_voxels_than_announced(write_itk) -> None:
    """A valid zlib stream of the wrong size (a header from another volume) is refused too."""
    path = write_itk("a.mha", phantom())
    data = path.read_bytes()
    start = data_start(data, "a.mha")
    stream = zlib.compress(phantom()[:, :, :6].tobytes())
    header = data[:start].replace(
        f"CompressedDataSize = {len(data) - start}".encode(), f"CompressedDataSize = {len(stream)}".encode()
    )
    path.write_bytes(header + stream)
    with pytest.raises(InputError, match="holds 19200 bytes, the header announces 38400"):
        read_volume(path)


def test_nrrd_bzip2_is_refused_clearly(tmp_path) -> None:
    import bz2

    path = tmp_path / "b.nrrd"
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nendian: little\nencoding: bzip2\n\n"
    path.write_bytes(header + bz2.compress(np.arange(60, dtype=np.int16).tobytes()))
    with pytest.raises(InputError, match="uses NRRD bzip2 encoding, which ITK cannot read"):
        read_volume(path)


def test_nrrd_saying_gzip_over_data_that_is_not(tmp_path) -> None:
    path = tmp_path / "raw.nrrd"
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nendian: little\nencoding: gzip\n\n"
    path.write_bytes(header + np.arange(60, dtype=np.int16).tobytes())
    with pytest.raises(
        InputError, match=r"raw\.nrrd: is corrupted or not gzip-compressed \(its header says gzip"
    ):
        read_volume(path)
