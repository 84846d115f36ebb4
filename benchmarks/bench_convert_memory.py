"""Peak memory (RSS) of ``convert`` on a large volume: slab by slab versus the former whole-volume path.

Writes a synthetic head (default 512 x 512 x 600 voxels, int16 MR, 0.8 x 0.8 x 0.5 mm) and a tiny
trained model (the quick-cpu architecture, a few steps on small phantoms: the weights do not matter
for memory), then converts the volume in separate child processes; each child reports its own peak
resident set size, ``VmHWM`` of ``/proc/self/status`` (``ru_maxrss`` would not do: Linux carries the
parent's RSS at fork time over into the child's ``ru_maxrss``, here the parent's 600 MiB):

* ``idle``: imports and model loading only (the fixed cost: torch, MONAI, the network);
* ``stats``: ``idle`` + reading the input + its whole-volume statistics (for MR the body mask, whose
  connected-component labelling needs int32 labels: 4 bytes a voxel, transiently);
* ``slab``: :func:`medcyclegan.convert.convert_file` (read once, whole-volume statistics once,
  then slabs of ``--batch-size`` slices written into one preallocated int16/float32 array);
* ``whole``: the former implementation, every step on the whole volume (prepare_volume ->
  translate_array -> restore_inplane -> denormalise -> float32 -> write_volume casting to int16),
  reproduced here from the same library functions.

Peaks are reported in MiB and as multiples of the input array's size in bytes, with and without
the ``idle`` baseline. Both conversions' outputs are compared (they must be equal).

Usage:
    python benchmarks/bench_convert_memory.py [--shape 512 512 600] [--to ct] [--batch-size 16]
        [--suffix .nii] [--impl idle stats slab whole] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING_MM = (0.8, 0.8, 0.5)


def write_head(path: Path, shape: tuple[int, int, int], modality: str, seed: int = 0) -> int:
    """A synthetic head (ellipsoid, skull rim, noise) written with nibabel; returns the array's bytes."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    dtype = np.int16
    array = np.empty(shape, dtype=dtype)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    for z in range(shape[2]):
        zz = np.linspace(-1, 1, shape[2])[z]
        dist = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (zz / 1.1) ** 2)
        inside, skull = dist < 1.0, (dist > 0.85) & (dist < 1.0)
        if modality == "ct":
            plane = np.where(inside, 40.0, -1000.0)
            plane[skull] = 1200.0
            noise = 10.0
        else:
            plane = np.where(inside, 600.0, 0.0)
            plane[skull] = 80.0
            noise = 15.0
        array[:, :, z] = np.abs(plane + rng.normal(0, noise, plane.shape)) if modality == "mr" else plane
    image = nib.Nifti1Image(array, np.diag([*SPACING_MM, 1.0]))
    image.header.set_data_dtype(dtype)
    nib.save(image, str(path))
    return int(array.nbytes)


def train_tiny_model(folder: Path) -> Path:
    """The quick-cpu architecture (ngf 16, 3 blocks, 3 mm in-plane) trained for 2 steps on small heads."""
    import nibabel as nib

    from medcyclegan.config import builtin_config_path, load_config
    from medcyclegan.train.api import train_from_folders

    rng = np.random.default_rng(1)
    for modality in ("mr", "ct"):
        (folder / modality).mkdir(parents=True, exist_ok=True)
        for index in range(2):
            shape = (96, 96, 12)
            x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
            inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.3) ** 2 < 1
            if modality == "ct":
                array = (np.where(inside, 40.0, -1000.0) + rng.normal(0, 10, shape)).astype(np.int16)
            else:
                array = np.abs(np.where(inside, 600.0, 0.0) + rng.normal(0, 15, shape)).astype(np.float32)
            nib.save(
                nib.Nifti1Image(array, np.diag([2.0, 2.0, 4.0, 1.0])), folder / modality / f"c{index}.nii.gz"
            )
    cfg = load_config(builtin_config_path("quick-cpu"), {"train.max_steps": 2, "train.device": "cpu"})
    run = folder / "run"
    train_from_folders(cfg, run, src=folder / "mr", tgt=folder / "ct", show_progress=False, overwrite=True)
    return run


# ---------------------------------------------------------------------------------- child process


def whole_volume_convert(model: object, input_path: Path, output_path: Path, batch_size: int) -> None:
    """The pre-slab implementation of ``convert_file`` (medcyclegan 0.1.0), step for step."""
    from medcyclegan.convert import OUTPUT_DTYPE
    from medcyclegan.data.normalise import denormalise, output_params
    from medcyclegan.data.prepare import prepare_volume, restore_inplane
    from medcyclegan.inference import translate_array
    from medcyclegan.io.readers import read_volume
    from medcyclegan.io.writers import write_volume

    cfg = model.cfg  # type: ignore[attr-defined]
    volume = read_volume(input_path)
    records = cfg.normalisation
    produced = records.target if model.source_modality == cfg.data.src_modality else records.source  # type: ignore[attr-defined]
    prepared = prepare_volume(volume, model.source_modality, cfg.data)  # type: ignore[attr-defined]
    translated = translate_array(
        model.generator,  # type: ignore[attr-defined]
        prepared.image,
        context_slices=cfg.data.context_slices,
        batch_size=batch_size,
        device=model.device,  # type: ignore[attr-defined]
    )
    translated = restore_inplane(translated, prepared, mode="bilinear")
    out = denormalise(translated, output_params(produced))
    out = out.astype(np.float32)
    write_volume(out, volume.geometry, output_path, dtype=OUTPUT_DTYPE[model.target_modality])  # type: ignore[attr-defined]


def child(impl: str, run: Path, input_path: Path, output_path: Path, to: str, batch_size: int) -> None:
    from medcyclegan.convert import convert_file, load_model

    model = load_model(run, to=to, device="cpu")
    start = time.perf_counter()
    if impl == "slab":
        convert_file(model, input_path, output_path, batch_size=batch_size)
    elif impl == "whole":
        whole_volume_convert(model, input_path, output_path, batch_size)
    elif impl == "stats":
        from medcyclegan.data.prepare import fit_volume
        from medcyclegan.io.readers import read_volume

        fit_volume(read_volume(input_path), model.source_modality, model.cfg.data, need_mask=False)
    elif impl != "idle":
        raise SystemExit(f"unknown implementation {impl!r}")
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak resident set size since its exec (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux; an upper bound


# --------------------------------------------------------------------------------- parent process


def measure(impl: str, run: Path, input_path: Path, output_path: Path, to: str, batch_size: int) -> dict:
    """Runs one child; returns its peak RSS (MiB) and its conversion time (s)."""
    command = [
        sys.executable, __file__, "--child", impl, "--run", str(run), "--input", str(input_path),
        "--output", str(output_path), "--to", to, "--batch-size", str(batch_size),
    ]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{impl}: child failed with status {done.returncode}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"impl": impl, "peak_mib": report["peak_mib"], "seconds": report["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 600), help="volume size in voxels")
    parser.add_argument(
        "--to", default="ct", choices=("ct", "mr"), help="target modality (input is the other)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--suffix", default=".nii", choices=(".nii", ".nii.gz"), help="input file format")
    parser.add_argument(
        "--impl", nargs="+", default=["idle", "stats", "slab", "whole"], help="what to measure"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: temporary)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.run, args.input, args.output, args.to, args.batch_size)
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_convert_memory."))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = train_tiny_model(work / "train")
    source = "mr" if args.to == "ct" else "ct"
    input_path = work / f"input{args.suffix}"
    input_bytes = write_head(input_path, tuple(args.shape), source)
    print(f"setup {time.perf_counter() - start:.0f} s: {source} input {'x'.join(map(str, args.shape))} int16, "
          f"{input_bytes / 2**20:.0f} MiB array, {input_path.stat().st_size / 2**20:.0f} MiB file ({args.suffix})")  # fmt: skip
    results = []
    for impl in args.impl:
        output = work / f"out_{impl}.nii.gz"
        output.unlink(missing_ok=True)
        results.append(measure(impl, run, input_path, output, args.to, args.batch_size))
        print(json.dumps(results[-1]))
    idle = next((r["peak_mib"] for r in results if r["impl"] == "idle"), 0.0)
    input_mib = input_bytes / 2**20
    print(f"\ninput array: {input_mib:.0f} MiB; output array ({'int16' if args.to == 'ct' else 'float32'}): "
          f"{input_mib * (1 if args.to == 'ct' else 2):.0f} MiB; batch size {args.batch_size}")  # fmt: skip
    print(
        f"{'impl':<6} {'peak RSS MiB':>13} {'x input':>8} {'above idle MiB':>15} {'x input':>8} {'time s':>7}"
    )
    for r in results:
        above = r["peak_mib"] - idle
        print(
            f"{r['impl']:<6} {r['peak_mib']:>13.0f} {r['peak_mib'] / input_mib:>8.2f} "
            f"{above:>15.0f} {above / input_mib:>8.2f} {r['seconds']:>7.1f}"
        )
    outputs = [work / f"out_{impl}.nii.gz" for impl in ("slab", "whole") if impl in args.impl]
    if len(outputs) == 2:
        import nibabel as nib

        a, b = (np.asarray(nib.load(str(p)).dataobj) for p in outputs)
        print(
            f"slab == whole: {np.array_equal(a, b)} (max |difference| {np.abs(a.astype(np.int64) - b).max()})"
        )
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
