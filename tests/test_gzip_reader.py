"""The block-wise gzip reader gives what Python's gzip gives, and refuses what it refuses, alike."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medcyclegan.io.gzip_reader import GzipReader, open_gzip

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()  # more than two 1 MiB blocks
RAMP = (np.arange(1_500_000) // 9).astype(np.int32).tobytes()


def _read(data: bytes, sizes: tuple[int, ...] = ()) -> bytes:
    """Reads through GzipReader: in pieces of ``sizes`` (cycled) or all at once."""
    stream = io.BufferedReader(GzipReader(io.BytesIO(data)), buffer_size=1 << 16)
    if not sizes:
        return stream.read()
    out, i = bytearray(), 0
    while piece := stream.read(sizes[i % len(sizes)]):
        out += piece
        i += 1
    return bytes(out)


VALID: dict[str, bytes] = {
    "noise": gzip.compress(NOISE),
    "ramp, level 9": gzip.compress(RAMP, compresslevel=9),
    "two members": gzip.compress(RAMP[:1000]) + gzip.compress(NOISE),
    "member of nothing, then one": gzip.compress(b"") + gzip.compress(b"abc"),
    "zero padding after the last member": gzip.compress(RAMP) + bytes(5000),
    "empty file": b"",
}


@pytest.mark.parametrize("name", VALID)
@pytest.mark.parametrize("sizes", [(), (1, 7, 4096, 1 << 20, 3 << 20)])
def test_valid_streams_read_as_gzip_reads_them(name: str, sizes: tuple[int, ...]) -> None:
    assert _read(VALID[name], sizes) == gzip.decompress(VALID[name])


def _flip_crc(data: bytes) -> bytes:
    return data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]


def _flip_length(data: bytes) -> bytes:
    return data[:-4] + bytes([data[-4] ^ 1]) + data[-3:]


def _corrupt_deflate(data: bytes) -> bytes:
    return data[:20] + b"\xff" * 50 + data[70:]


INVALID: dict[str, Callable[[], bytes]] = {
    "truncated": lambda: gzip.compress(NOISE)[:-100_000],
    "truncated trailer": lambda: gzip.compress(RAMP)[:-3],
    "bad CRC": lambda: _flip_crc(gzip.compress(RAMP)),
    "bad length": lambda: _flip_length(gzip.compress(RAMP)),
    "corrupted deflate data": lambda: _corrupt_deflate(gzip.compress(NOISE)),
    "not gzip": lambda: b"NIfTI is not gzip" * 10,
    "garbage after a member": lambda: gzip.compress(RAMP) + b"garbage",
    "second header cut after one byte": lambda: gzip.compress(RAMP) + b"\x1f",
}


@pytest.mark.parametrize("name", INVALID)
def test_invalid_streams_fail_with_gzips_exception_type(name: str) -> None:
    data = INVALID[name]()
    with pytest.raises(Exception) as expected:
        gzip.decompress(data)
    with pytest.raises(Exception) as ours:
        _read(data)
    # The readers' one-line messages depend on the type (and on "CRC" for checksum errors).
    assert type(ours.value) is type(expected.value) or (
        isinstance(ours.value, zlib.error) and isinstance(expected.value, zlib.error)
    ), (ours.value, expected.value)
    if "CRC" in str(expected.value) or "length" in str(expected.value):
        assert "CRC" in str(ours.value)


def test_seek_forward_and_tell(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(RAMP))
    with open_gzip(path) as stream:
        assert stream.read(10) == RAMP[:10]
        stream.seek(5)  # backward, but within the buffered block
        assert stream.read(5) == RAMP[5:10]
        stream.seek(2_000_000)  # forward, beyond the buffer: decompressed and skipped
        assert stream.tell() == 2_000_000
        assert stream.read(8) == RAMP[2_000_000:2_000_008]
    assert stream.closed
    raw = GzipReader(io.BytesIO(gzip.compress(RAMP)))
    raw.read(3_000_000)
    with pytest.raises(OSError, match="forward"):
        raw.seek(10)
