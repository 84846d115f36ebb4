"""gzip streams (``.nii.gz``, gzip-encoded NRRD) read and written through a maintained library.

The library is python-isal (Intel's ISA-L deflate and inflate, 2-5 times zlib's speed; wheels for
Linux, macOS and Windows on x86-64 and ARM64). Its threaded writer deflates 1 MiB blocks on several
threads, each primed with the previous block's last 32 KiB (as ``pigz`` does), into one standard
gzip member: Python's ``gzip``, zlib's ``gzread`` (ITK, FSL, AFNI), nibabel and ``gunzip`` read it
unchanged. zlib-ng can take its place (:data:`READ_LIBRARY`, :data:`WRITE_LIBRARY`); where neither
is installed (no wheel for the platform), the standard library's ``gzip`` does the job, slower.
``benchmarks/bench_gzip.py`` measures them all (and rapidgzip, which is not used: it returns a
truncated file's data without an error, and refuses zero padding after the last member).

Reading checks what ``gzip`` checks: the CRC-32 and length of every member, several members one after
the other (``cat a.gz b.gz``) and zero padding after the last one accepted. Every failure comes out
as the standard library's exception type, whatever the library (what the readers' one-line messages
are built from): ``EOFError`` for a stream that ends early, ``gzip.BadGzipFile`` for data that is
not gzip or a trailer that does not match ("CRC check failed", "Incorrect length"), ``zlib.error``
for corrupted deflate data. One difference with ``gzip``: fewer than 10 bytes of junk after the last
member read as a truncated second member (``EOFError``) rather than as "Not a gzipped file".
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import io
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Final

from medcyclegan.parallel import worker_threads

try:
    from isal import igzip as isal_igzip
    from isal import igzip_threaded as isal_threaded
    from isal import isal_zlib
except ImportError:  # no isal wheel for this platform: the standard library's gzip below
    isal_igzip = isal_threaded = isal_zlib = None
try:
    from zlib_ng import gzip_ng, gzip_ng_threaded, zlib_ng
except ImportError:  # zlib-ng is optional (benchmarks/bench_gzip.py compares it)
    gzip_ng = gzip_ng_threaded = zlib_ng = None

LIBRARIES: Final = ("isal", "zlib-ng", "stdlib")
# The libraries used when installed (else "stdlib"); benchmarks/bench_gzip.py measured the choice.
READ_LIBRARY = "isal"
WRITE_LIBRARY = "isal"
# Each library's level closest in size to zlib level 1 (nibabel's, and this writer's until issue 16)
# on CT: on a 512 x 512 chest CT, isal level 2 is 3.9 % larger (level 1: 5.5 %), zlib-ng level 2
# 0.2 % larger (its level 1 is a different, much weaker algorithm: 40 % larger).
WRITE_LEVELS: Final = {"isal": 2, "zlib-ng": 2, "stdlib": 1}
_BLOCK_BYTES = 1 << 20


def available_libraries() -> tuple[str, ...]:
    """The libraries of :data:`LIBRARIES` installed here (``"stdlib"`` always is)."""
    installed = {"isal": isal_igzip is not None, "zlib-ng": gzip_ng is not None, "stdlib": True}
    return tuple(name for name in LIBRARIES if installed[name])


def _library(choice: str | None, default: str) -> str:
    name = default if choice is None else choice
    if name not in LIBRARIES:
        raise ValueError(f"gzip library must be one of {', '.join(LIBRARIES)}; got {name!r}")
    return name if name in available_libraries() else "stdlib"


def _library_errors(library: str) -> tuple[type[BaseException], ...]:
    """The library's own exception for corrupted deflate data (turned into ``zlib.error``)."""
    if library == "isal":
        return (isal_zlib.error,)
    if library == "zlib-ng":
        return (zlib_ng.error,)
    return ()


class _CheckedReader(io.RawIOBase):
    """A library's gzip stream with forward seeks and the standard library's exception types.

    ``seek`` moves forward by decompressing (nibabel seeks to the voxel offset); a backward seek raises
    ``OSError``, except within the buffer of the buffered reader :func:`open_gzip_read` returns.
    """

    def __init__(
        self, stream: BinaryIO, errors: tuple[type[BaseException], ...], owned: BinaryIO | None = None
    ) -> None:
        super().__init__()
        self._stream = stream
        self._errors = errors
        self._owned = owned  # the file opened for the caller, closed with the stream
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # forward only: what io.BufferedReader needs to pass seeks through

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._position + offset}.get(whence)
        if target is None or target < self._position:
            raise OSError("a gzip stream can only be read forward")
        skip = bytearray(max(1, min(_BLOCK_BYTES, target - self._position)))
        while self._position < target:
            if self.readinto(memoryview(skip)[: min(len(skip), target - self._position)]) == 0:
                break
        return self._position

    def readinto(self, buffer: Any) -> int:
        try:
            count = self._stream.readinto(buffer)
        except self._errors as exc:
            raise zlib.error(str(exc)) from None
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            finally:
                if self._owned is not None:
                    self._owned.close()
        super().close()


def open_gzip_read(
    source: str | Path | BinaryIO, *, threads: int | None = None, library: str | None = None
) -> io.BufferedReader:
    """``source`` opened for reading its decompressed data; closing the result closes what it opened.

    Args:
        source: a path, or a binary file positioned where the gzip data starts (left open on close).
        threads: with more than one (default :func:`medcyclegan.parallel.worker_threads`), isal and
            zlib-ng decompress on a thread of their own while the caller consumes the data (a gzip
            member is decompressed on one thread: each block depends on the one before).
        library: one of :data:`LIBRARIES` (default :data:`READ_LIBRARY`; ``"stdlib"`` if absent).

    Example:
        >>> import gzip, io
        >>> data = gzip.compress(b"voxels" * 1000) + gzip.compress(b"!")
        >>> open_gzip_read(io.BytesIO(data)).read() == b"voxels" * 1000 + b"!"
        True
    """
    name = _library(library, READ_LIBRARY)
    threads = worker_threads() if threads is None else threads
    # Closed by the returned reader (or below if the library refuses to start).
    fileobj = source if hasattr(source, "read") else builtins.open(source, "rb")  # type: ignore[arg-type]  # noqa: SIM115
    try:
        stream: Any
        if name == "stdlib":
            stream = gzip.GzipFile(fileobj=fileobj, mode="rb")
        elif threads > 1:
            # The threaded readers take the thread count of a writer; reading uses one.
            module = isal_threaded if name == "isal" else gzip_ng_threaded
            stream = module.open(fileobj, "rb", threads=1, block_size=_BLOCK_BYTES)
        else:
            stream = (isal_igzip if name == "isal" else gzip_ng).GzipFile(fileobj=fileobj, mode="rb")
    except BaseException:
        if fileobj is not source:
            fileobj.close()
        raise
    owned = None if fileobj is source else fileobj
    return io.BufferedReader(_CheckedReader(stream, _library_errors(name), owned), buffer_size=_BLOCK_BYTES)


class GzipWriter(io.RawIOBase):
    """A write-only binary stream that gzip-compresses what is written, in one gzip member.

    ``tell`` counts the uncompressed bytes; ``seek`` to the current position is accepted (nibabel asks
    for it), a forward seek writes zeros, a backward seek raises ``OSError``. ``close`` (or leaving the
    ``with`` block) ends the stream; the underlying file object is not closed. Leaving the ``with``
    block on an exception also closes the stream, and the exception is the one raised: the caller
    discards the output (writers write to a temporary file, see :mod:`medcyclegan.io.atomic`).
    """

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self._position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self._position + offset}.get(whence)
        if target is None or target < self._position:
            raise OSError("a gzip stream being written can only move forward")
        if target > self._position:
            self.write(bytes(target - self._position))
        return self._position

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed gzip stream")
        count = memoryview(data).nbytes
        self._stream.write(data)
        self._position += count
        return count

    def close(self) -> None:
        """Writes what is left and the gzip trailer (raises what writing raised, e.g. disk full)."""
        if self.closed:
            return
        try:
            self._stream.close()
        finally:
            super().close()

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the exception that stopped the writing is the one to report
            self.close()


def open_gzip_write(
    target: BinaryIO,
    *,
    level: int | None = None,
    threads: int | None = None,
    library: str | None = None,
) -> GzipWriter:
    """A :class:`GzipWriter` writing one gzip member to ``target`` (a binary file, left open).

    Args:
        target: a binary file opened for writing, positioned where the gzip data starts.
        level: the library's compression level (default :data:`WRITE_LEVELS`: about zlib level 1's size;
            isal has levels 0-3, zlib-ng and the standard library 0-9).
        threads: compression threads (default :func:`medcyclegan.parallel.worker_threads`); isal writes
            the same bytes whatever the count.
        library: one of :data:`LIBRARIES` (default :data:`WRITE_LIBRARY`; ``"stdlib"`` if absent).

    Example:
        >>> import gzip, io
        >>> raw = io.BytesIO()
        >>> with open_gzip_write(raw, threads=2) as stream:
        ...     _ = stream.write(b"voxels" * 100_000)
        >>> gzip.decompress(raw.getvalue()) == b"voxels" * 100_000
        True
    """
    name = _library(library, WRITE_LIBRARY)
    level = WRITE_LEVELS[name] if level is None else level
    top = 3 if name == "isal" else 9
    if not 0 <= level <= top:
        raise ValueError(f"{name} gzip level must be in 0..{top}; got {level}")
    threads = worker_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    stream: Any
    if name == "stdlib":
        # No file name in the header (it would be the temporary file's), mtime 0: the same bytes for
        # the same data, as the other libraries write.
        stream = gzip.GzipFile(filename="", fileobj=target, mode="wb", compresslevel=level, mtime=0)
    else:
        module = isal_threaded if name == "isal" else gzip_ng_threaded
        stream = module.open(target, "wb", compresslevel=level, threads=threads, block_size=_BLOCK_BYTES)
    return GzipWriter(stream)
