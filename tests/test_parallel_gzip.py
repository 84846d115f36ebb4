"""The multi-threaded gzip writer produces one standard gzip member (RFC 1952) holding exactly the data."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcyclegan.io.parallel_gzip import ParallelGzipWriter
from medcyclegan.io.readers import read_volume
from medcyclegan.io.volume import Geometry
from medcyclegan.io.writers import write_volume

BLOCK = 1 << 16


def _payload(size: int, seed: int = 0) -> bytes:
    """Half compressible (smooth int16 ramp), half random bytes."""
    rng = np.random.default_rng(seed)
    ramp = (np.arange(size // 4) // 7).astype(np.int16).tobytes()
    return (ramp + rng.integers(0, 256, size - len(ramp), dtype=np.uint8).tobytes())[:size]


def _compress(chunks: list[bytes], **kwargs: object) -> bytes:
    raw = io.BytesIO()
    with ParallelGzipWriter(raw, block_bytes=BLOCK, **kwargs) as stream:  # type: ignore[arg-type]
        for chunk in chunks:
            assert stream.write(chunk) == len(chunk)
    return raw.getvalue()


def _single_member(data: bytes) -> bytes:
    """Decompresses exactly one gzip member and checks that nothing follows it."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: checks CRC-32 and length
    out = decompressor.decompress(data) + decompressor.flush()
    assert decompressor.eof and decompressor.unused_data == b""
    return out


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 17])
@pytest.mark.parametrize("threads", [1, 3])
def test_round_trip_is_one_member_with_the_exact_data(size: int, threads: int) -> None:
    payload = _payload(size)
    # Writes of uneven sizes that straddle block boundaries.
    pieces = [payload[i : i + 5000] for i in range(0, size, 5000)]
    compressed = _compress(pieces, threads=threads)
    assert _single_member(compressed) == payload
    assert gzip.decompress(compressed) == payload


def test_same_bytes_whatever_the_thread_count_and_compression_close_to_zlib() -> None:
    payload = _payload(10 * BLOCK, seed=1)
    one, four = _compress([payload], threads=1), _compress([payload], threads=4)
    assert one == four  # blocks are independent, and written in order
    assert len(one) <= 1.02 * len(gzip.compress(payload, compresslevel=1, mtime=0)) + 64


def test_corruption_is_detected_by_the_crc() -> None:
    payload = _payload(4 * BLOCK, seed=2)
    compressed = bytearray(_compress([payload]))
    compressed[-6] ^= 0xFF  # inside the CRC-32 of the trailer
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(bytes(compressed))


def test_seek_moves_forward_only_and_tell_counts_uncompressed_bytes() -> None:
    raw = io.BytesIO()
    with ParallelGzipWriter(raw, block_bytes=BLOCK) as stream:
        stream.write(b"abc")
        assert stream.tell() == 3
        assert stream.seek(3) == 3  # where it is: nothing happens
        stream.seek(8)  # forward: zeros
        with pytest.raises(OSError):
            stream.seek(2)
        stream.write(b"z")
    assert gzip.decompress(raw.getvalue()) == b"abc" + bytes(5) + b"z"


def test_an_exception_inside_the_block_leaves_an_incomplete_stream() -> None:
    raw = io.BytesIO()
    with pytest.raises(RuntimeError), ParallelGzipWriter(raw, block_bytes=BLOCK) as stream:
        stream.write(_payload(3 * BLOCK))
        raise RuntimeError("stop")
    with pytest.raises(EOFError):
        gzip.decompress(raw.getvalue())
    with pytest.raises(ValueError):
        stream.write(b"more")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"level": 10}, "level"), ({"threads": 0}, "threads"), ({"block_bytes": 1000}, "block_bytes")],
)
def test_options_are_validated(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParallelGzipWriter(io.BytesIO(), **kwargs)  # type: ignore[arg-type]


def test_written_nii_gz_is_the_nifti_file_compressed(tmp_path: Path) -> None:
    array = (np.arange(40 * 30 * 20).reshape(40, 30, 20) % 997 - 500).astype(np.int16)
    geometry = Geometry(
        affine=np.diag([0.8, 0.9, 2.5, 1.0]), shape=array.shape, dtype="int16", source_format="nifti"
    )
    gz = write_volume(array, geometry, tmp_path / "v.nii.gz")
    plain = write_volume(array, geometry, tmp_path / "v.nii")
    assert _single_member(gz.read_bytes()) == plain.read_bytes()
    np.testing.assert_array_equal(np.asanyarray(nib.load(gz).dataobj), array)
    np.testing.assert_array_equal(read_volume(gz).array, array)
