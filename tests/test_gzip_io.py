"""gzip through the libraries of gzip_io: read as Python's gzip reads, refused as it refuses; written as
one standard gzip member that gzip, gzip -t, nibabel and ITK read; and the standard-library fallback."""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medcyclegan.io.gzip_io as gzip_io
from medcyclegan.errors import InputError
from medcyclegan.io.gzip_io import available_libraries, open_gzip_read, open_gzip_write
from medcyclegan.io.readers import read_volume
from medcyclegan.io.volume import Geometry
from medcyclegan.io.writers import write_volume

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()  # more than two 1 MiB blocks
RAMP = (np.arange(1_500_000) // 9).astype(np.int32).tobytes()
NOISE_GZ, RAMP_GZ = gzip.compress(NOISE, mtime=0), gzip.compress(RAMP, mtime=0)  # compressed once
LIBRARIES = available_libraries()
# (library, threads): single-threaded and threaded readers/writers of each installed library.
MODES = [(name, threads) for name in LIBRARIES for threads in (1, 3)]


def test_the_libraries_are_installed_here() -> None:
    """isal (the default) must be in the test environment, or the tests only test the fallback."""
    assert LIBRARIES[0] == "isal" and "stdlib" in LIBRARIES
    assert gzip_io.READ_LIBRARY in LIBRARIES and gzip_io.WRITE_LIBRARY in LIBRARIES


def _read(data: bytes, library: str, threads: int, sizes: tuple[int, ...] = ()) -> bytes:
    """Reads through open_gzip_read: in pieces of ``sizes`` (cycled) or all at once."""
    with open_gzip_read(io.BytesIO(data), library=library, threads=threads) as stream:
        if not sizes:
            return stream.read()
        out, i = bytearray(), 0
        while piece := stream.read(sizes[i % len(sizes)]):
            out += piece
            i += 1
        return bytes(out)


VALID: dict[str, bytes] = {
    "noise": NOISE_GZ,
    "ramp, level 9": gzip.compress(RAMP, compresslevel=9),
    "two members": gzip.compress(RAMP[:1000]) + NOISE_GZ,
    "member of nothing, then one": gzip.compress(b"") + gzip.compress(b"abc"),
    "zero padding after the last member": RAMP_GZ + bytes(5000),
    "empty file": b"",
}


@pytest.mark.parametrize(("library", "threads"), MODES)
@pytest.mark.parametrize("name", VALID)
@pytest.mark.parametrize("sizes", [(), (1, 7, 4096, 1 << 20, 3 << 20)])
def test_valid_streams_read_as_gzip_reads_them(
    name: str, sizes: tuple[int, ...], library: str, threads: int
) -> None:
    assert _read(VALID[name], library, threads, sizes) == gzip.decompress(VALID[name])


def _flip_crc(data: bytes) -> bytes:
    return data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]


def _flip_length(data: bytes) -> bytes:
    return data[:-4] + bytes([data[-4] ^ 1]) + data[-3:]


def _corrupt_deflate(data: bytes) -> bytes:
    return data[:20] + b"\xff" * 50 + data[70:]


def _bad_block_type(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] | 0x06]) + data[11:]  # BTYPE 11: reserved, invalid


INVALID: dict[str, Callable[[], bytes]] = {
    "truncated": lambda: NOISE_GZ[:-100_000],
    "truncated trailer": lambda: RAMP_GZ[:-3],
    "bad CRC": lambda: _flip_crc(RAMP_GZ),
    "bad length": lambda: _flip_length(RAMP_GZ),
    "corrupted deflate data": lambda: _corrupt_deflate(NOISE_GZ),
    "invalid deflate block": lambda: _bad_block_type(RAMP_GZ),
    "not gzip": lambda: b"NIfTI is not gzip" * 10,
    "garbage after a member": lambda: RAMP_GZ + b"garbage" * 3,
    "zero padding, then garbage": lambda: RAMP_GZ + bytes(100) + b"garbage" * 3,
}
# Fewer than 10 bytes after a member: isal and zlib-ng read a truncated second header (EOFError),
# gzip "Not a gzipped file". Refused alike; only the wording of the message differs.
SHORT_JUNK: dict[str, Callable[[], bytes]] = {
    "7 bytes of garbage after a member": lambda: RAMP_GZ + b"garbage",
    "second header cut after one byte": lambda: RAMP_GZ + b"\x1f",
}


@pytest.mark.parametrize(("library", "threads"), MODES)
@pytest.mark.parametrize("name", INVALID)
def test_invalid_streams_fail_with_gzips_exception_type(name: str, library: str, threads: int) -> None:
    data = INVALID[name]()
    with pytest.raises(Exception) as expected:
        gzip.decompress(data)
    with pytest.raises(Exception) as ours:
        _read(data, library, threads)
    # The readers' one-line messages depend on the type (and on "CRC"/"length" for checksum errors).
    assert type(ours.value) is type(expected.value) or (
        isinstance(ours.value, zlib.error) and isinstance(expected.value, zlib.error)
    ), (ours.value, expected.value)
    if "CRC" in str(expected.value) or "length" in str(expected.value):
        assert "CRC" in str(ours.value) or "length" in str(ours.value)


@pytest.mark.parametrize(("library", "threads"), MODES)
@pytest.mark.parametrize("name", SHORT_JUNK)
def test_short_junk_after_the_last_member_is_refused(name: str, library: str, threads: int) -> None:
    with pytest.raises((EOFError, gzip.BadGzipFile)):
        _read(SHORT_JUNK[name](), library, threads)


@pytest.mark.parametrize(("library", "threads"), MODES)
def test_seek_forward_and_tell(tmp_path: Path, library: str, threads: int) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(RAMP_GZ)
    with open_gzip_read(path, library=library, threads=threads) as stream:
        assert stream.read(10) == RAMP[:10]
        stream.seek(5)  # backward, but within the buffered block
        assert stream.read(5) == RAMP[5:10]
        stream.seek(4_000_000)  # forward, beyond the buffer: decompressed and skipped
        assert stream.tell() == 4_000_000
        assert stream.read(8) == RAMP[4_000_000:4_000_008]
        with pytest.raises(OSError, match="forward"):
            stream.seek(10)
    assert stream.closed


def test_a_file_object_is_read_from_its_position_and_left_open(tmp_path: Path) -> None:
    path = tmp_path / "x.nrrd"
    path.write_bytes(b"header\n\n" + RAMP_GZ)
    with open(path, "rb") as handle:
        handle.readline()
        handle.readline()
        with open_gzip_read(handle) as stream:
            assert stream.read() == RAMP
        assert not handle.closed


def _payload(size: int, seed: int = 0) -> bytes:
    """Half compressible (smooth int16 ramp), half random bytes."""
    rng = np.random.default_rng(seed)
    ramp = (np.arange(size // 4) // 7).astype(np.int16).tobytes()
    return (ramp + rng.integers(0, 256, size - len(ramp), dtype=np.uint8).tobytes())[:size]


def _compress(chunks: list[bytes], **kwargs: object) -> bytes:
    raw = io.BytesIO()
    with open_gzip_write(raw, **kwargs) as stream:  # type: ignore[arg-type]
        for chunk in chunks:
            assert stream.write(chunk) == len(chunk)
    return raw.getvalue()


def _single_member(data: bytes) -> bytes:
    """Decompresses exactly one gzip member and checks that nothing follows it."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: checks CRC-32 and length
    out = decompressor.decompress(data) + decompressor.flush()
    assert decompressor.eof and decompressor.unused_data == b""
    return out


BLOCK = 1 << 20  # the libraries' block size


@pytest.mark.parametrize(("library", "threads"), MODES)
@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 17])
def test_round_trip_is_one_member_with_the_exact_data(size: int, library: str, threads: int) -> None:
    payload = _payload(size)
    # Writes of uneven sizes that straddle block boundaries.
    pieces = [payload[i : i + 300_000] for i in range(0, size, 300_000)]
    compressed = _compress(pieces, library=library, threads=threads)
    assert _single_member(compressed) == payload
    assert gzip.decompress(compressed) == payload


@pytest.mark.parametrize("library", [name for name in ("isal", "stdlib") if name in LIBRARIES])
def test_same_bytes_whatever_the_thread_count_and_size_close_to_zlib_level_1(library: str) -> None:
    payload = _payload(6 * BLOCK, seed=1)
    one, four = (
        _compress([payload], library=library, threads=1),
        _compress([payload], library=library, threads=4),
    )
    assert one == four  # reproducible output: --threads does not change the file
    assert len(one) <= 1.06 * len(gzip.compress(payload, compresslevel=1, mtime=0)) + 64


def test_corruption_is_detected_by_the_crc() -> None:
    payload = _payload(4 * BLOCK, seed=2)
    compressed = bytearray(_compress([payload]))
    compressed[-6] ^= 0xFF  # inside the CRC-32 of the trailer
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(bytes(compressed))
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        _read(bytes(compressed), gzip_io.READ_LIBRARY, 2)


@pytest.mark.parametrize("library", LIBRARIES)
def test_seek_moves_forward_only_and_tell_counts_uncompressed_bytes(library: str) -> None:
    raw = io.BytesIO()
    with open_gzip_write(raw, library=library) as stream:
        stream.write(b"abc")
        assert stream.tell() == 3
        assert stream.seek(3) == 3  # where it is: nothing happens
        stream.seek(8)  # forward: zeros
        with pytest.raises(OSError):
            stream.seek(2)
        stream.write(b"z")
    assert gzip.decompress(raw.getvalue()) == b"abc" + bytes(5) + b"z"
    with pytest.raises(ValueError):
        stream.write(b"more")


def test_an_exception_inside_the_block_is_the_one_raised() -> None:
    raw = io.BytesIO()
    with pytest.raises(RuntimeError, match="stop"), open_gzip_write(raw) as stream:
        stream.write(_payload(3 * BLOCK))
        raise RuntimeError("stop")
    assert stream.closed  # the threads are stopped; the writers discard the temporary file


def test_an_exception_inside_write_volume_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    array = np.zeros((8, 8, 4), dtype=np.int16)
    geometry = Geometry(affine=np.eye(4), shape=array.shape, dtype="int16", source_format="nifti")
    real_write = gzip_io.GzipWriter.write

    def full_disk(self: gzip_io.GzipWriter, data: object) -> int:
        real_write(self, data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gzip_io.GzipWriter, "write", full_disk)
    with pytest.raises(Exception, match="No space left"):
        write_volume(array, geometry, tmp_path / "v.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": 4}, "level"),  # isal has levels 0-3
        ({"level": 10, "library": "stdlib"}, "level"),
        ({"threads": 0}, "threads"),
        ({"library": "lz4"}, "library"),
    ],
)
def test_options_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_gzip_write(io.BytesIO(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def stdlib_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform without isal and zlib-ng wheels: what gzip_io sees when their imports fail."""
    for name in ("isal_igzip", "isal_threaded", "isal_zlib", "gzip_ng", "gzip_ng_threaded", "zlib_ng"):
        monkeypatch.setattr(gzip_io, name, None)


def test_without_the_libraries_the_standard_library_does_the_job(stdlib_only: None, tmp_path: Path) -> None:
    assert available_libraries() == ("stdlib",)
    payload = _payload(2 * BLOCK + 5)
    compressed = _compress([payload], threads=4)  # isal asked for (the default), stdlib used
    assert compressed == _compress([payload], library="stdlib", threads=1)
    assert _single_member(compressed) == payload
    assert _read(compressed + bytes(10), "isal", 4) == payload
    array = (np.arange(20 * 16 * 6).reshape(20, 16, 6) % 701 - 300).astype(np.int16)
    geometry = Geometry(
        affine=np.diag([0.8, 0.9, 2.5, 1.0]), shape=array.shape, dtype="int16", source_format="nifti"
    )
    path = write_volume(array, geometry, tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(read_volume(path).array, array)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputError, match=r"v\.nii\.gz: is truncated \(gzip stream ended early\)$"):
        read_volume(path)


@pytest.mark.parametrize("library", LIBRARIES)
def test_written_nii_gz_is_the_nifti_file_compressed_and_read_by_every_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    monkeypatch.setattr(gzip_io, "WRITE_LIBRARY", library)
    array = (np.arange(40 * 30 * 20).reshape(40, 30, 20) % 997 - 500).astype(np.int16)
    geometry = Geometry(
        affine=np.diag([0.8, 0.9, 2.5, 1.0]), shape=array.shape, dtype="int16", source_format="nifti"
    )
    gz = write_volume(array, geometry, tmp_path / "v.nii.gz")
    plain = write_volume(array, geometry, tmp_path / "v.nii")
    assert _single_member(gz.read_bytes()) == plain.read_bytes()
    np.testing.assert_array_equal(np.asanyarray(nib.load(gz).dataobj), array)
    np.testing.assert_array_equal(read_volume(gz).array, array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(gz))).transpose(2, 1, 0), array)
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", str(gz)], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-5], r"is truncated \(gzip stream ended early\)"),
        (lambda data: data[:-8] + bytes([data[-8] ^ 1]) + data[-7:], r"is corrupted \(its gzip checksum"),
        (lambda data: data[:-3] + bytes([data[-3] ^ 1]) + data[-2:], r"is corrupted \(its gzip checksum"),
        (_bad_block_type, r"is corrupted \(gzip data error: "),
        (lambda data: data + b"junk" * 5, r"is not a valid gzip file"),
    ],
)
@pytest.mark.parametrize("library", LIBRARIES)
def test_damaged_nii_gz_is_one_line_whatever_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd, library: str, damage, message: str
) -> None:
    monkeypatch.setattr(gzip_io, "READ_LIBRARY", library)
    array = (np.arange(30 * 20 * 8).reshape(30, 20, 8) % 97).astype(np.int16)
    path = tmp_path / "v.nii.gz"
    path.write_bytes(damage(gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes())))
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # no library chatter


class _FullDisk(io.BytesIO):
    """A file on a disk that fills after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: object) -> int:
        if self.tell() + memoryview(data).nbytes > self.room:  # type: ignore[arg-type]
            raise OSError(28, "No space left on device")
        return super().write(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(("library", "threads"), MODES)
def test_a_full_disk_is_an_oserror_in_the_caller(library: str, threads: int) -> None:
    """The threaded writers write on their own threads: the error must still reach the caller."""
    # Raised by a write, or by the close that ends the with block.
    disk = _FullDisk(100_000)
    with (
        pytest.raises(OSError, match="No space left"),
        open_gzip_write(disk, library=library, threads=threads) as stream,
    ):
        stream.write(NOISE)  # three blocks
