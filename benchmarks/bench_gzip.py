""".nii.gz read and write through each gzip library: seconds, MB/s, size and correctness, in one run.

The volume is real CT: ``lung1_image.nrrd`` (a 512 x 512 x 48 int16 chest CT in HU, pyradiomics'
test data) mirrored along z (slices 0..47, 47..0, ...) to ``--slices`` slices (200 by default, the
512 x 512 x 200 volume of issue 16); its noise makes it compress about 1.9:1, as CT does. ``--phantom``
takes a synthetic CT instead (an ellipse of soft tissue and bone in air, with 15 HU of noise).

The NIfTI file (348-byte header and int16 voxels, as ``write_volume`` writes it) is, for every library:

* read: a ``.nii.gz`` (written by Python's gzip at level 1, as nibabel writes) decompressed into a
  numpy array, then read to its end so the CRC-32 is checked, as ``read_volume`` does; checked: the
  bytes are the original ones, and copies cut short (by 9 bytes, 1000 bytes, half; and two small
  files, 3 MiB of the CT and a 6 MB ramp, by 9 and 1000 bytes) and a copy with a wrong CRC are refused by the library itself (each read to
  its end, with no length check of ours);
* write: the NIfTI bytes compressed to a ``.nii.gz`` file; checked: one gzip member whose CRC and
  content are right (Python's zlib), ``gzip -t``, nibabel and SimpleITK read the original voxels.

Libraries: ours (``medcyclegan/io/gzip_reader.py`` and ``parallel_gzip.py``, taken from the git
history where this checkout no longer has them), Python's gzip, isal (``igzip`` on one thread,
``igzip_threaded`` on ``--threads``), zlib-ng (``gzip_ng``, ``gzip_ng_threaded``) and rapidgzip (read
only, ``--threads``). Then the project API, before (ours) and after (each library ``gzip_io`` can use):
``readers.read_volume`` and ``writers.write_volume`` of the same volume.

Each figure is the median of ``--repeats`` runs after one checked warm-up run; "x ours" is ours'
time divided by the library's (above 1: faster than ours), "size/ours" the compressed size ratio.

Usage:
    python benchmarks/bench_gzip.py                              # 512x512x200, 3 repeats, all cores
    python benchmarks/bench_gzip.py --slices 64 --repeats 1      # a quick check that it works
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
import SimpleITK as sitk

import medcyclegan.io.gzip_io as gzip_io
import medcyclegan.io.readers as readers
import medcyclegan.io.writers as writers
from medcyclegan.io.volume import Geometry
from medcyclegan.parallel import set_worker_threads

try:
    import isal.igzip as isal_igzip
    import isal.igzip_threaded as isal_threaded
except ImportError:
    isal_igzip = isal_threaded = None
try:
    import zlib_ng.gzip_ng as gzip_ng
    import zlib_ng.gzip_ng_threaded as gzip_ng_threaded
except ImportError:
    gzip_ng = gzip_ng_threaded = None
try:
    import rapidgzip
except ImportError:
    rapidgzip = None

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CT = REPO.parent / "shared" / "data" / "real" / "lung1_image.nrrd"
# The last commit holding our own gzip modules (issue 16 replaced them with gzip_io).
OURS_COMMIT = "de4bd45cfb0ddf9a905cd3dc5e7e80ca95efca71"
MB = 1e6


# ------------------------------------------------------------------------------------------ volume


def ct_volume(source: Path | None, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """The int16 CT (RAS order) and its affine: ``source`` mirrored along z, or a noisy phantom."""
    if source is not None:
        volume = readers.read_volume(source)
        array, affine = volume.array, volume.geometry.affine
        if array.dtype != np.int16:
            raise SystemExit(f"{source}: expected an int16 CT, got {array.dtype}")
        period = np.concatenate([np.arange(array.shape[2]), np.arange(array.shape[2])[::-1]])
        index = np.resize(period, slices)
        return np.ascontiguousarray(array[:, :, index]), affine
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    radius = (x / 0.8) ** 2 + (y / 0.6) ** 2
    plane = np.where(radius <= 1, 40.0, -1000.0)
    plane[(radius > 0.85) & (radius <= 1)] = 1000.0  # a ring of bone
    array = plane[:, :, None] + rng.normal(0, 15, (512, 512, slices))
    return np.round(array).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1.0])


# ------------------------------------------------------------------------------------------ ours


def load_ours() -> tuple[Any, Any] | None:
    """Our gzip_reader and parallel_gzip modules: from this checkout, else from the git history."""
    modules = []
    for name in ("gzip_reader", "parallel_gzip"):
        relative = f"medcyclegan/io/{name}.py"
        if (REPO / relative).is_file():
            source = (REPO / relative).read_text()
        else:
            try:
                source = subprocess.run(
                    ["git", "-C", str(REPO), "show", f"{OURS_COMMIT}:{relative}"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"ours left out: {relative} not found in {OURS_COMMIT[:7]} ({exc})")
                return None
        module = types.ModuleType(f"ours_{name}")
        exec(compile(source, f"{relative}@{OURS_COMMIT[:7]}", "exec"), module.__dict__)
        modules.append(module)
    return modules[0], modules[1]


# ------------------------------------------------------------------------------------------ variants

Opener = Callable[[Path, int], Any]  # (path, threads) -> a readable binary stream
Compressor = Callable[[BinaryIO, int], Any]  # (raw file, threads) -> a writable binary stream


def read_variants(ours: tuple[Any, Any] | None) -> dict[str, Opener]:
    variants: dict[str, Opener] = {}
    if ours is not None:
        variants["ours (gzip_reader)"] = lambda path, threads: ours[0].open_gzip(path)
    variants["stdlib gzip"] = lambda path, threads: gzip.open(path, "rb")  # noqa: SIM115 - the caller closes it
    if isal_igzip is not None:
        variants["isal igzip (1 thread)"] = lambda path, threads: isal_igzip.open(path, "rb")
        variants["isal igzip_threaded"] = lambda path, threads: isal_threaded.open(
            path, "rb", threads=threads
        )
    if gzip_ng is not None:
        variants["zlib-ng gzip_ng (1 thread)"] = lambda path, threads: gzip_ng.open(path, "rb")
        variants["zlib-ng gzip_ng_threaded"] = lambda path, threads: gzip_ng_threaded.open(
            path, "rb", threads=threads
        )
    if rapidgzip is not None:
        variants["rapidgzip (N threads)"] = lambda path, threads: rapidgzip.open(
            str(path), parallelization=threads
        )
    return variants


def write_variants(ours: tuple[Any, Any] | None) -> dict[str, Compressor]:
    variants: dict[str, Compressor] = {}
    if ours is not None:
        variants["ours (parallel_gzip) L1"] = lambda raw, threads: ours[1].ParallelGzipWriter(
            raw, level=1, threads=threads
        )
    variants["stdlib gzip L1 (nibabel)"] = lambda raw, threads: gzip.GzipFile(
        filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0
    )
    for level in (1, 2, 3):
        if isal_igzip is None:
            break
        variants[f"isal igzip L{level} (1 thread)"] = lambda raw, threads, level=level: isal_igzip.GzipFile(
            fileobj=raw, mode="wb", compresslevel=level, mtime=0
        )
        variants[f"isal igzip_threaded L{level}"] = lambda raw, threads, level=level: isal_threaded.open(
            raw, "wb", compresslevel=level, threads=threads
        )
    for level in (1, 2):
        if gzip_ng is None:
            break
        variants[f"zlib-ng gzip_ng L{level} (1 thread)"] = lambda raw, threads, level=level: gzip_ng.GzipFile(
            fileobj=raw, mode="wb", compresslevel=level, mtime=0
        )
        variants[f"zlib-ng gzip_ng_threaded L{level}"] = lambda raw, threads, level=level: (
            gzip_ng_threaded.open(raw, "wb", compresslevel=level, threads=threads)
        )
    return variants


# ------------------------------------------------------------------------------------------ runs


def read_into_array(opener: Opener, path: Path, threads: int, offset: int, voxel_bytes: int) -> np.ndarray:
    """Header skipped, voxels decompressed into an array, then the stream read to its end (CRC)."""
    array = np.empty(voxel_bytes, dtype=np.uint8)
    view = memoryview(array)
    with opener(path, threads) as stream:
        if len(stream.read(offset)) != offset:
            raise EOFError("header cut short")
        filled = 0
        while filled < voxel_bytes:
            count = stream.readinto(view[filled:])
            if not count:
                raise EOFError("voxels cut short")
            filled += count
        if stream.read(1 << 16):
            raise ValueError("data after the voxels")
        stream.read()  # to the end: the CRC check
    return array


def compress_to(compressor: Compressor, path: Path, payload: bytes, threads: int) -> None:
    with open(path, "wb") as raw:
        stream = compressor(raw, threads)
        stream.write(payload)
        stream.close()


def refuses(opener: Opener, path: Path, threads: int) -> bool:
    """Whether the library itself raises on reading the whole of a damaged file (no length check of ours)."""
    try:
        with opener(path, threads) as stream:
            while stream.read(1 << 22):
                pass
    except Exception:
        return True
    return False


def truncation_check(opener: Opener, truncated: dict[str, Path], threads: int) -> str:
    accepted = [cut for cut, path in truncated.items() if not refuses(opener, path, threads)]
    return "refuses truncated" if not accepted else f"ACCEPTS TRUNCATED (cut by {', '.join(accepted)} bytes)"


def write_checks(path: Path, payload: bytes, array: np.ndarray) -> str:
    """Which of the written file's checks fail ('ok' when none); ``array`` in the file's voxel order."""
    failed = []
    data = path.read_bytes()
    try:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        one_member = decompressor.decompress(data) + decompressor.flush()
        if not (decompressor.eof and decompressor.unused_data == b"" and one_member == payload):
            failed.append("not one member")
    except zlib.error:
        failed.append("zlib")
    if gzip.decompress(data) != payload:
        failed.append("gzip")
    if shutil.which("gzip") and subprocess.run(["gzip", "-t", str(path)], capture_output=True).returncode:
        failed.append("gzip -t")
    if not np.array_equal(np.asanyarray(nib.load(path).dataobj), array):
        failed.append("nibabel")
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    if not np.array_equal(itk, array):
        failed.append("SimpleITK")
    return "ok" if not failed else "FAILED: " + ", ".join(failed)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def project_gzip(library: str, ours: tuple[Any, Any] | None) -> Iterator[None]:
    """readers/writers through ``library`` of gzip_io, or through our old modules (``"ours"``)."""
    saved = (
        readers.open_gzip_read,
        writers.open_gzip_write,
        gzip_io.READ_LIBRARY,
        gzip_io.WRITE_LIBRARY,
    )
    if library == "ours":
        assert ours is not None

        def old_read(source: Any, **_: object) -> Any:
            if hasattr(source, "read"):
                return io.BufferedReader(ours[0].GzipReader(source), buffer_size=1 << 20)
            return ours[0].open_gzip(source)

        readers.open_gzip_read = old_read  # type: ignore[assignment]
        writers.open_gzip_write = lambda target, **_: ours[1].ParallelGzipWriter(target, level=1)  # type: ignore[assignment]
    else:
        gzip_io.READ_LIBRARY = gzip_io.WRITE_LIBRARY = library
    try:
        yield
    finally:
        readers.open_gzip_read, writers.open_gzip_write, gzip_io.READ_LIBRARY, gzip_io.WRITE_LIBRARY = saved


# ------------------------------------------------------------------------------------------ report


def table(
    title: str,
    rows: list[tuple[str, float, float, str]],
    mbytes: float,
    ours_s: float | None,
    ours_size: float | None,
) -> None:
    print(f"\n{title}")
    print(f"{'':34} {'s':>7} {'MB/s':>7} {'x ours':>7} {'gz MB':>7} {'size/ours':>9}  checks")
    for name, seconds, size, checks in rows:
        speed = f"{ours_s / seconds:7.2f}" if ours_s else f"{'-':>7}"
        ratio = f"{size / ours_size:9.3f}" if ours_size else f"{'-':>9}"
        print(f"{name:34} {seconds:7.3f} {mbytes / seconds:7.0f} {speed} {size / MB:7.2f} {ratio}  {checks}")


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ct", type=Path, default=DEFAULT_CT, help="the int16 CT to stack [lung1_image.nrrd]"
    )
    parser.add_argument("--phantom", action="store_true", help="a synthetic CT with noise instead of --ct")
    parser.add_argument("--slices", type=int, default=200, help="slices of the 512 x 512 volume [200]")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median) after one warm-up [3]")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    parser.add_argument(
        "--threads", type=int, default=cores, help=f"threads [{cores}: the cores this process may use]"
    )
    args = parser.parse_args(argv)
    if not args.phantom and not args.ct.is_file():
        raise SystemExit(f"{args.ct}: CT not found; give --ct PATH or --phantom")
    set_worker_threads(args.threads)
    threads = args.threads

    array, affine = ct_volume(None if args.phantom else args.ct, args.slices)
    geometry = Geometry(affine=affine, shape=array.shape, dtype="int16", source_format="nifti")
    ours = load_ours()
    print(
        f"volume {'x'.join(map(str, array.shape))} int16 ({'phantom' if args.phantom else args.ct.name}), "
        f"threads {threads}, repeats {args.repeats}, python {sys.version.split()[0]}, "
        f"isal {version('isal')}, zlib-ng {version('zlib-ng')}, rapidgzip {version('rapidgzip')}, "
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_gzip_") as tmp:
        folder = Path(tmp)
        plain = writers.write_volume(array, geometry, folder / "volume.nii")
        payload = plain.read_bytes()
        offset = int(nib.load(plain).dataobj.offset)
        voxel_bytes = len(payload) - offset
        file_array = np.asanyarray(nib.load(plain).dataobj)  # the file's voxel order (not RAS)
        mbytes = len(payload) / MB
        print(f"NIfTI {mbytes:.1f} MB ({offset}-byte header)")

        # ---- read
        source = folder / "source.nii.gz"
        source.write_bytes(gzip.compress(payload, compresslevel=1, mtime=0))
        compressed = source.read_bytes()
        truncated = {}
        for cut in (9, 1000, len(compressed) // 2):  # trailer gone, last blocks gone, half gone
            truncated[str(cut)] = folder / f"truncated_{cut}.nii.gz"
            truncated[str(cut)].write_bytes(compressed[:-cut])
        # Small files too: rapidgzip 0.16 returns some files' data cut short without an error.
        ramp = (np.arange(1_500_000) // 9).astype(np.int32).tobytes()
        for label, data in (("3 MiB of the CT", payload[: 3 << 20]), ("a 6 MB ramp", ramp)):
            small = gzip.compress(data, compresslevel=1, mtime=0)
            for cut in (9, 1000):
                truncated[f"{cut} ({label})"] = folder / f"truncated_{len(truncated)}.nii.gz"
                truncated[f"{cut} ({label})"].write_bytes(small[:-cut])
        bad_crc = folder / "bad_crc.nii.gz"
        data = bytearray(source.read_bytes())
        data[-8] ^= 1
        bad_crc.write_bytes(bytes(data))
        expected = np.frombuffer(payload, dtype=np.uint8, offset=offset)
        read_rows = []
        for name, opener in read_variants(ours).items():
            try:
                same = np.array_equal(read_into_array(opener, source, threads, offset, voxel_bytes), expected)
            except Exception as exc:
                read_rows.append(
                    (name, float("nan"), source.stat().st_size, f"FAILED: {type(exc).__name__}: {exc}")
                )
                continue
            checks = [
                "same bytes" if same else "WRONG BYTES",
                truncation_check(opener, truncated, threads),
                "refuses bad CRC" if refuses(opener, bad_crc, threads) else "ACCEPTS BAD CRC",
            ]
            seconds = median_seconds(
                lambda opener=opener: read_into_array(opener, source, threads, offset, voxel_bytes),
                args.repeats,
            )
            read_rows.append((name, seconds, source.stat().st_size, ", ".join(checks)))
        ours_read = read_rows[0][1] if ours is not None else None
        table(
            f"read: {source.stat().st_size / MB:.2f} MB .nii.gz (stdlib gzip L1) -> array",
            read_rows,
            mbytes,
            ours_read,
            None,
        )

        # ---- write
        write_rows = []
        for name, compressor in write_variants(ours).items():
            out = folder / "written.nii.gz"
            compress_to(compressor, out, payload, threads)
            checks = write_checks(out, payload, file_array)
            seconds = median_seconds(
                lambda compressor=compressor, out=out: compress_to(compressor, out, payload, threads),
                args.repeats,
            )
            write_rows.append((name, seconds, out.stat().st_size, checks))
        ours_write = write_rows[0] if ours is not None else None
        table(
            "write: NIfTI bytes -> .nii.gz",
            write_rows,
            mbytes,
            ours_write[1] if ours_write else None,
            ours_write[2] if ours_write else None,
        )

        # ---- the project API, before (ours) and after (gzip_io's libraries)
        libraries = (["ours"] if ours is not None else []) + list(gzip_io.available_libraries())
        api_read, api_write = [], []
        for library in libraries:
            label = "before: ours" if library == "ours" else f"gzip_io {library}"
            with project_gzip(library, ours):
                out = folder / f"api_{library}.nii.gz"
                writers.write_volume(array, geometry, out, overwrite=True)
                same = np.array_equal(readers.read_volume(out).array, array)
                checks = write_checks(out, payload, file_array) if same else "WRONG VOXELS"
                seconds = median_seconds(
                    lambda out=out: writers.write_volume(array, geometry, out, overwrite=True), args.repeats
                )
                api_write.append((label, seconds, out.stat().st_size, checks))
                read_ok = np.array_equal(readers.read_volume(source).array, array)
                seconds = median_seconds(lambda: readers.read_volume(source), args.repeats)
                api_read.append(
                    (label, seconds, source.stat().st_size, "same voxels" if read_ok else "WRONG VOXELS")
                )
        before_read = api_read[0][1] if ours is not None else None
        table("readers.read_volume(.nii.gz)", api_read, mbytes, before_read, None)
        before = api_write[0] if ours is not None else None
        table(
            "writers.write_volume(.nii.gz)",
            api_write,
            mbytes,
            before[1] if before else None,
            before[2] if before else None,
        )
        print(
            f"\ngzip_io now: READ_LIBRARY {gzip_io.READ_LIBRARY!r}, WRITE_LIBRARY {gzip_io.WRITE_LIBRARY!r}, "
            f"WRITE_LEVELS {gzip_io.WRITE_LEVELS}"
        )


if __name__ == "__main__":
    main()
