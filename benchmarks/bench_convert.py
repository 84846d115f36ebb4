"""Conversion speed: seconds per volume from file read to file written, and where the time goes.

Trains a model for one step on tiny synthetic volumes (the weights do not matter for speed), writes
a synthetic MR volume of ``--size`` x ``--size`` x ``--depth`` voxels (float32, 0.8 x 0.8 x 2.5 mm by
default), and times :func:`medcyclegan.convert.convert_file` on it end to end (the median of
``--repeats`` runs after one warm-up run). The generator's forward passes are timed separately
(synchronised on CUDA) and reported as generator slices/s; the rest - reading, body mask and
normalisation, in-plane resampling, slice stacking and padding, resampling back, denormalisation,
writing - is the overhead outside the generator, reported as seconds and as a share of the total
with a per-stage breakdown (exclusive times of the library functions the conversion calls).

Defaults: on CUDA the reference-size generator (ngf 64, 9 blocks) at 1 mm in-plane on a
512 x 512 x 200 volume; on the CPU the quick model (ngf 16, 3 blocks) on 512 x 512 x 24 (a
reference-size generator runs at about 0.3 slices/s on 512 px slices on 2 CPU cores).

Usage:
    python benchmarks/bench_convert.py                          # CPU: quick model, 512x512x24
    python benchmarks/bench_convert.py --device cuda            # full model, 512x512x200
    python benchmarks/bench_convert.py --spacing none --format nii    # generator on the native grid
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcyclegan.runtime import resolve_device

MODELS = {"quick": {"model.ngf": 16, "model.n_blocks": 3, "model.ndf": 16}, "full": {}}

# (module, function) pairs timed for the breakdown; those missing in this version are skipped.
STAGES = (
    ("medcyclegan.io.readers", "read_volume"),
    ("medcyclegan.io.readers", "read_mask"),
    ("medcyclegan.data.prepare", "prepare_volume"),
    ("medcyclegan.data.prepare", "fit_volume"),
    ("medcyclegan.data.prepare", "normalise_slices"),
    ("medcyclegan.data.prepare", "resample_slices"),
    ("medcyclegan.data.prepare", "restore_inplane"),
    ("medcyclegan.data.mask", "body_mask"),
    ("medcyclegan.data.prepare", "body_mask"),
    ("medcyclegan.data.prepare", "fit_normalisation"),
    ("medcyclegan.data.normalise", "fit_normalisation"),
    ("medcyclegan.data.normalise", "normalise"),
    ("medcyclegan.data.normalise", "denormalise"),
    ("medcyclegan.inference", "translate_array"),
    ("medcyclegan.convert", "_translate_slab"),
    ("medcyclegan.inference", "translate_slices"),
    ("medcyclegan.io.writers", "cast_values"),
    ("medcyclegan.io.writers", "write_volume"),
)


LABELS = {
    "translate_array": "translate_array (stacking, padding, copies)",
    "_translate_slab": "slab to/from the generator (stacking, padding, copies)",
    "translate_slices": "slab to/from the generator (stacking, padding, copies)",
    "write_volume": "write_volume (incl. compression)",
    "read_volume": "read_volume (incl. decompression)",
}


class StageTimer:
    """Exclusive wall time per named stage: a stage's time excludes the timed stages it calls."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._stack: list[list[float]] = []

    @contextlib.contextmanager
    def stage(self, name: str, sync: bool = False) -> Iterator[None]:
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            if sync and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start, children = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.totals[name] = self.totals.get(name, 0.0) + elapsed - children
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return function(*args, **kwargs)

        return timed


class TimedGenerator(torch.nn.Module):
    """Times every forward pass of the wrapped generator (GPU work included on CUDA)."""

    def __init__(self, generator: torch.nn.Module, timer: StageTimer) -> None:
        super().__init__()
        self.generator = generator
        self.timer = timer
        if hasattr(generator, "forward_with_attention"):
            self.forward_with_attention = self._forward_with_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.timer.stage("generator", sync=True):
            return self.generator(x)

    def _forward_with_attention(self, x: torch.Tensor) -> Any:
        with self.timer.stage("generator", sync=True):
            return self.generator.forward_with_attention(x)


@contextlib.contextmanager
def timed_stages(timer: StageTimer) -> Iterator[None]:
    """Replaces the stage functions by timed versions, restoring them afterwards.

    Each is replaced in its own module and wherever a medcyclegan module imported it by name (e.g.
    ``medcyclegan.convert`` imports ``translate_slices`` at its top).
    """
    saved = []
    for module_name, name in STAGES:
        try:
            home = importlib.import_module(module_name)
        except ImportError:  # a module of another version
            continue
        function = getattr(home, name, None)
        if function is None:
            continue
        timed = timer.wrap(name, function)
        for module in [
            m for key, m in sys.modules.items() if key.startswith("medcyclegan") and m is not None
        ]:
            for attribute, value in list(vars(module).items()):
                if value is function:
                    saved.append((module, attribute, function))
                    setattr(module, attribute, timed)
    try:
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def train_tiny_model(run_dir: Path, model: str, spacing: float | None, device: str) -> Path:
    """One training step on small synthetic volumes: a real run folder for ``load_model``."""
    import nibabel as nib

    from medcyclegan.config import builtin_config_path, load_config
    from medcyclegan.train.trainer import Trainer

    rng = np.random.default_rng(0)
    x, y, _ = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 48), np.arange(6), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
    paths: dict[str, list[Path]] = {"mr": [], "ct": []}
    for modality in ("mr", "ct"):
        (run_dir.parent / modality).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            if modality == "ct":
                vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, body.shape)
                vol = vol.astype(np.int16)
            else:
                vol = (np.where(body, 500.0, 0.0) + np.abs(rng.normal(0, 10, body.shape))).astype(np.float32)
            path = run_dir.parent / modality / f"case{i}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.diag([4.0, 4.0, 4.0, 1.0])), path)
            paths[modality].append(path)
    overrides = {
        **MODELS[model],
        "data.spacing": spacing,
        "data.image_size": 64,
        "optim.batch_size": 1,
        "train.max_steps": 1,
        "train.device": device,
    }
    cfg = load_config(builtin_config_path("quick-cpu") if model == "quick" else None, overrides)
    Trainer(cfg, run_dir, paths["mr"], paths["ct"], show_progress=False).fit()
    return run_dir


def write_input(path: Path, size: int, depth: int, voxel_mm: float) -> Path:
    """A synthetic MR head: an ellipse of tissue with texture, air around it, float32."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    body = (x / 0.75) ** 2 + (y / 0.85) ** 2 < 1
    volume = np.empty((size, size, depth), dtype=np.float32)
    for z in range(depth):
        texture = rng.normal(400.0, 80.0, (size, size)).astype(np.float32)
        volume[:, :, z] = np.where(body, np.abs(texture), np.abs(rng.normal(0.0, 5.0, (size, size))))
    nib.save(nib.Nifti1Image(volume, np.diag([voxel_mm, voxel_mm, 2.5, 1.0])), path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--model", choices=tuple(MODELS), help="quick (ngf 16, 3 blocks) or full [CPU quick, CUDA full]"
    )
    parser.add_argument(
        "--spacing",
        default=None,
        help="in-plane mm the model works at, or 'none' for the native grid [quick: 3 (quick-cpu), full: 1]",
    )
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels of the input [512]")
    parser.add_argument("--depth", type=int, help="slices of the input [CUDA 200, CPU 24]")
    parser.add_argument("--voxel-mm", type=float, default=0.8, help="in-plane voxel size of the input [0.8]")
    parser.add_argument(
        "--format", default="nii.gz", choices=("nii.gz", "nii", "nrrd", "mha"), help="input and output format"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per generator pass [16]")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed conversions (median) after one warm-up [3]"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch default]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model_name = args.model or ("full" if cuda else "quick")
    depth = args.depth or (200 if cuda else 24)
    if args.spacing is None:
        spacing: float | None = 3.0 if model_name == "quick" else 1.0
    else:
        spacing = None if args.spacing.lower() == "none" else float(args.spacing)

    from medcyclegan.convert import convert_file, load_model

    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if cuda else f", {torch.get_num_threads()} threads")
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_tiny_model(root / "run", model_name, spacing, device.type)
        model = load_model(root / "run", device=device.type)
        source = write_input(root / f"input.{args.format}", args.size, depth, args.voxel_mm)
        if args.format != "nii.gz":
            # nibabel writes NIfTI; other formats go through the toolkit's reader and writer.
            from medcyclegan.io.readers import read_volume
            from medcyclegan.io.writers import write_volume

            nifti = write_input(root / "input.nii.gz", args.size, depth, args.voxel_mm)
            volume = read_volume(nifti)
            write_volume(volume.array, volume.geometry, source, dtype="float32", overwrite=True)
        timer = StageTimer(device)
        model.generator = TimedGenerator(model.generator, timer)
        output = root / f"output.{args.format}"
        totals, stage_runs = [], []
        for run in range(args.repeats + 1):
            timer.totals = {}
            with timed_stages(timer):
                start = time.perf_counter()
                convert_file(model, source, output, batch_size=args.batch_size, overwrite=True)
                elapsed = time.perf_counter() - start
            if run > 0:  # the first conversion is a warm-up
                totals.append(elapsed)
                stage_runs.append(dict(timer.totals))
        in_mib = source.stat().st_size / 2**20
        out_mib = output.stat().st_size / 2**20
    order = np.argsort(totals)
    median_run = stage_runs[int(order[len(order) // 2])]
    total = statistics.median(totals)
    generator = median_run.get("generator", 0.0)
    outside = total - generator
    prepared = f"{spacing:g} mm" if spacing is not None else "native grid"
    print(
        f"\nmodel {model_name} (ngf {model.cfg.model.ngf}, {model.cfg.model.n_blocks} blocks) at {prepared}; "
        f"input {args.size}x{args.size}x{depth} float32 MR at {args.voxel_mm:g} mm, .{args.format} "
        f"({in_mib:.1f} MiB in, {out_mib:.1f} MiB out, CT int16); batch {args.batch_size}; "
        f"median of {args.repeats} after 1 warm-up"
    )
    print(
        f"seconds per volume (read -> written): {total:.2f}   (all runs: {', '.join(f'{t:.2f}' for t in totals)})"
    )
    print(f"generator: {generator:.2f} s, {depth / generator:.2f} slices/s")
    print(f"outside the generator: {outside:.2f} s = {100 * outside / total:.1f} % of the total")
    print("breakdown (exclusive seconds):")
    accounted = 0.0
    for name, seconds in sorted(median_run.items(), key=lambda item: -item[1]):
        accounted += seconds
        label = LABELS.get(name, name)
        print(f"  {label:<55} {seconds:7.3f}  {100 * seconds / total:5.1f} %")
    print(
        f"  {'other (convert_file itself)':<55} {total - accounted:7.3f}  {100 * (total - accounted) / total:5.1f} %"
    )
    if args.depth is None and not cuda:
        print(
            f"(CPU default depth {depth}; a 512x512x200 volume takes about {total * 200 / depth:.0f} s at this rate)"
        )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
