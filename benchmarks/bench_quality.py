"""Translation quality of MR -> CT recipes at a fixed training budget, on a phantom and on a real CT.

The benchmark recipes are judged by (issue 14). Each recipe is a named set of config overrides on
``--config`` (default ``quick-cpu``); the built-in ``baseline`` is that config unchanged. Every
recipe trains once per seed (``--seeds``, 2 by default) with the same budget, one run after the
other (never two at once: they would share the CPU cores), through the public API
(``medcyclegan.train.api.train_from_folders``), converts the test MR (``medcyclegan.convert``) and
is scored against the real CT (``medcyclegan.metrics``).

Datasets:
    phantom  the built-in head phantom (``medcyclegan.sample_data.write_sample_dataset``, seed 0) at
             its native grid (128 x 128 x 48 at 1.5 x 1.5 x 3 mm): 6 MR and 6 CT training subjects
             (disjoint, unpaired), 3 held-out test subjects with their true CT.
    lung1    a real chest CT (``--lung1``, 512 x 512 x 48 at 0.57 x 0.57 x 5 mm) and its pseudo-MR
             (``medcyclegan.pseudo_mr``: a fixed non-monotonic T1-like map of HU, bias field and
             Rician noise, seed 0). The axial slices are cut into disjoint blocks: a central test
             block (a quarter of the slices, at least 8; its pseudo-MR is converted and scored
             against its CT), and the rest in blocks of ``--block-slices`` given in turn to MR and
             to CT training (unpaired: no training slice is in both domains, none is in the test).

A paired model (``TranslationModel.paired``: pix2pix) trains on the same MR as the unpaired ones,
each with its own CT on its grid (phantom: the true CT of each MR training subject; lung1: the CT of
each MR training block): the upper bound an unpaired model can approach.

Budget: the learning-rate schedule spans ``--budget-steps`` steps (``optim.n_steps``: constant, then
linear decay over the last half); ``--budget-minutes`` stops a run earlier if its wall time (data
preparation included) runs out first; the table says how many steps each run made.

Scores, per test case and then averaged over the cases of a dataset: SynthRAD2023 MAE [HU], PSNR
[dB] and SSIM inside the body mask, and the MAE per tissue class of the reference
(``medcyclegan.metrics.tissue_mae``: air/lung, soft tissue, bone; ``--tissue-edges``). The body mask
is ``medcyclegan.metrics.synthrad_body_mask`` of the reference CT (the SynthRAD preprocessing),
for both datasets. Conversion runs without ``--mask-background``.

Conversion options (every recipe and seed alike; they change no training): ``--flip-average`` and
``--planes axial,coronal,sagittal`` are convert's test-time averaging (``medcyclegan.convert.convert_file``
``flip_average`` / ``planes``). To compare them, run the benchmark once per setting with the same
recipes, seeds and budget.

Cost, per run: seconds per training step (the trainer's own training time over its steps), the
translator's parameters (the network ``convert`` runs), and memory: the peak resident size of the
process during the run over its size at the start (CPU; Linux).

Pictures: per dataset and seed, the first test case's synthetic CT of every recipe side by side
(``<out-json stem>_<dataset>_seed<S>.png``: MR, synthetic CT and CT in two windows, error).

Output: a markdown table per dataset (one row per recipe and seed, then mean +- sample standard
deviation over the seeds per recipe) and a JSON file with every number, the exact command, the
machine and the settings.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_quality.py --budget-steps 300 --seeds 0,1
    python benchmarks/bench_quality.py --budget-minutes 10 --budget-steps 3000 \\
        --recipe ema=model.ngf=32,model.n_blocks=6 --datasets lung1
    python benchmarks/bench_quality.py --budget-steps 300 --flip-average --planes axial,coronal,sagittal
    python benchmarks/bench_quality.py --tiny   # a few steps of a tiny model, seconds (the test)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# medcyclegan is imported inside the functions that use it: --help and a bad argument answer at
# once, without importing torch (about 2 s).

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LUNG1 = REPO.parent / "shared" / "data" / "real" / "lung1_image.nrrd"
DATASETS = ("phantom", "lung1")
BASELINE = "baseline"
# Keys the benchmark sets itself: a recipe changing them would change the budget or the seed.
BUDGET_KEYS = ("train.seed", "optim.n_steps", "train.max_steps", "train.device")
# Run control that changes no result: no sample grids, no epoch checkpoints (only last.pt).
RUN_CONTROL: dict[str, Any] = {
    "train.sample_every": 1_000_000,
    "train.checkpoint_every": 1_000_000,
    "train.keep_epoch_checkpoints": 0,
    "train.save_every_steps": 0,
    "data.val_fraction": 0.0,
}
# --tiny: a tiny model and a few steps on small data, seconds end to end (tests/test_bench_quality.py).
TINY_MODEL: dict[str, Any] = {
    "data.image_size": 32,
    "model.ngf": 4,
    "model.n_blocks": 1,
    "model.ndf": 4,
    "model.n_layers_d": 2,
    "optim.batch_size": 2,
    "optim.pool_size": 4,
}
TINY_STEPS = 3
TINY_PHANTOM = {
    "n_train_mr": 1,
    "n_train_ct": 1,
    "n_test": 1,
    "shape": (48, 48, 12),
    "spacing": (4.0, 4.0, 8.0),
}
FULL_PHANTOM: dict[str, Any] = {"n_train_mr": 6, "n_train_ct": 6, "n_test": 3}
TINY_LUNG1_SLICES = 24  # the central slices only
TINY_LUNG1_STEP = 8  # every 8th voxel in-plane: 64 x 64 at 4.6 mm
TINY_BLOCK_SLICES = 4
MIN_TEST_SLICES = 8  # SSIM's 7-voxel window is cropped by 3 voxels at each border: 8 leaves 2 slices
METRIC_COLUMNS = (
    ("mae", "MAE [HU]", "{:.1f}"),
    ("psnr", "PSNR [dB]", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("mae_air_lung", "MAE air/lung", "{:.1f}"),
    ("mae_soft_tissue", "MAE soft", "{:.1f}"),
    ("mae_bone", "MAE bone", "{:.1f}"),
    ("train_seconds", "train [s]", "{:.0f}"),
    ("steps", "steps", "{:.0f}"),
    ("seconds_per_step", "s/step", "{:.3f}"),
    ("translator_parameters", "params G", "{:,.0f}"),
    ("memory_mib", "memory [MiB]", "{:.0f}"),
)


class BenchError(Exception):
    """A bad argument or input: printed as one line, exit status 2."""


@dataclass
class Recipe:
    name: str
    overrides: dict[str, Any]


@dataclass
class Dataset:
    """Training folders and test pairs of one dataset, written under the work folder."""

    name: str
    train_mr: Path
    train_ct: Path
    test_pairs: list[tuple[Path, Path]]  # (MR, reference CT) per test case
    # The CT of each training MR, on the MR's grid, with the MR's file name: what a paired model
    # (pix2pix) trains on instead of train_ct. Same MR input as the unpaired models get.
    paired_ct: Path
    description: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ arguments
def parse_recipe(text: str) -> Recipe:
    """``NAME=key=value,key=value`` -> Recipe (values in YAML syntax; a value may hold commas)."""
    from medcyclegan.config import parse_override

    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise BenchError(f"--recipe {text!r}: expected NAME=section.key=value,section.key=value")
    if name == BASELINE:
        raise BenchError(
            f"--recipe {text!r}: {BASELINE!r} is built in (the --config unchanged); choose another name"
        )
    overrides: dict[str, Any] = {}
    # Split before every "section.key=", so that a value such as [-1000,2000] keeps its comma.
    for item in re.split(r",(?=\s*[A-Za-z_]+\.[A-Za-z_0-9]+=)", body) if body.strip() else []:
        try:
            key, value = parse_override(item)
        except Exception as exc:  # ConfigError: one line
            raise BenchError(f"--recipe {name}: {exc}") from None
        if key in BUDGET_KEYS:
            raise BenchError(f"--recipe {name}: {key} is set by the benchmark (budget, seeds, device)")
        overrides[key] = value
    return Recipe(name, overrides)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise BenchError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1")
    return seeds


def parse_edges(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise BenchError(f"--tissue-edges {text!r}: expected two HU values, e.g. -400,250") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise BenchError(f"--tissue-edges {text!r}: expected two increasing finite HU values")
    return low, high


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from medcyclegan.config import check_planes

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE,...",
        help="a recipe: config overrides on --config (repeatable); 'baseline' (no override) runs first",
    )
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="do not run 'baseline' (a screening run whose baseline was measured before with the same settings)",
    )
    parser.add_argument(
        "--config", default="quick-cpu", help="base config of every recipe (built-in name or YAML)"
    )
    parser.add_argument(
        "--budget-steps", type=int, default=None, help="training steps per run (default 1500)"
    )
    parser.add_argument("--budget-minutes", type=float, default=None, help="wall-time cap per run, minutes")
    parser.add_argument("--seeds", default="0,1", help="training seeds, comma-separated (default 0,1)")
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}"
    )
    parser.add_argument("--lung1", type=Path, default=DEFAULT_LUNG1, help="the real chest CT (HU)")
    parser.add_argument("--block-slices", type=int, default=None, help="slices per lung1 training block (6)")
    parser.add_argument(
        "--pseudo-mr-seed", type=int, default=0, help="seed of the pseudo-MR's bias and noise"
    )
    parser.add_argument(
        "--tissue-edges", default="-400,250", help="HU edges air/lung | soft tissue | bone (default -400,250)"
    )
    parser.add_argument("--device", default="cpu", help="training and conversion device (default cpu)")
    parser.add_argument(
        "--flip-average",
        action="store_true",
        help="convert with test-time flip averaging (convert --flip-average)",
    )
    parser.add_argument(
        "--planes",
        default="axial",
        help="slice planes convert averages over (convert --planes; default axial)",
    )
    parser.add_argument("--out-json", type=Path, default=Path("/tmp/bench_quality.json"))
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="data, runs, synthetic CTs (default: temporary)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model, small data, 3 steps: seconds (tests)"
    )
    args = parser.parse_args(argv)
    args.recipes = ([] if args.skip_baseline else [Recipe(BASELINE, {})]) + [
        parse_recipe(text) for text in args.recipe
    ]
    if not args.recipes:
        raise BenchError("--skip-baseline needs at least one --recipe")
    names = [r.name for r in args.recipes]
    if len(set(names)) != len(names):
        raise BenchError(f"--recipe: two recipes share a name ({', '.join(names)})")
    args.seed_list = parse_seeds(args.seeds)
    args.edges = parse_edges(args.tissue_edges)
    args.plane_list = check_planes(args.planes, "--planes")  # a ConfigError: one line, exit 2
    args.dataset_list = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(args.dataset_list) - set(DATASETS)) or (["(none)"] if not args.dataset_list else [])
    if unknown:
        raise BenchError(f"--datasets: unknown {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    if args.budget_steps is None:
        args.budget_steps = TINY_STEPS if args.tiny else 1500
    if args.budget_steps < 1:
        raise BenchError(f"--budget-steps must be >= 1; got {args.budget_steps}")
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise BenchError(f"--budget-minutes must be > 0; got {args.budget_minutes}")
    if args.block_slices is None:
        args.block_slices = TINY_BLOCK_SLICES if args.tiny else 6
    if args.block_slices < 1:
        raise BenchError(f"--block-slices must be >= 1; got {args.block_slices}")
    if "lung1" in args.dataset_list and not args.lung1.is_file():
        raise BenchError(f"{args.lung1}: lung1 CT not found; give --lung1 PATH or --datasets phantom")
    for recipe in args.recipes:  # a wrong key or value is refused now, not after an hour of training
        run_config(args, recipe, args.seed_list[0])
    return args


# ------------------------------------------------------------------------------------------- datasets
def make_phantom(root: Path, tiny: bool) -> Dataset:
    from medcyclegan.sample_data import write_sample_dataset

    settings = TINY_PHANTOM if tiny else FULL_PHANTOM
    data = write_sample_dataset(root, seed=0, **settings)
    pairs = list(zip(data.test_mr, data.test_ct))
    paired_ct = root / "paired_ct"
    for mr_path in data.train_mr:
        write_phantom_ct(
            mr_path, data.subject_seeds[mr_path.name.removesuffix(".nii.gz")], paired_ct, settings
        )
    description = {
        "source": "medcyclegan.sample_data.write_sample_dataset(seed=0)",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "grid": "native (the phantom's own grid; the model's data.spacing resamples inside training/convert)",
        "paired": "paired models train on the training MR subjects and their own CT (same grid)",
    }
    return Dataset("phantom", data.train_mr_dir, data.train_ct_dir, pairs, paired_ct, description)


def write_phantom_ct(mr_path: Path, subject_seed: int, folder: Path, settings: dict[str, Any]) -> Path:
    """The true CT of a phantom MR training subject, on the MR's grid, as ``folder/<MR file name>``."""
    from medcyclegan.io.readers import read_volume
    from medcyclegan.io.writers import write_volume
    from medcyclegan.sample_data import DEFAULT_SHAPE, DEFAULT_SPACING, make_head_phantom

    shape = settings.get("shape", DEFAULT_SHAPE)
    spacing = settings.get("spacing", DEFAULT_SPACING)
    subject = make_head_phantom(subject_seed, shape=shape, spacing=spacing)
    mr = read_volume(mr_path)
    if not np.allclose(mr.affine, subject.affine) or mr.shape != subject.ct.shape:
        raise BenchError(f"{mr_path}: the phantom MR is not on the grid of its subject's CT")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / mr_path.name
    geometry = dataclasses.replace(mr.geometry, dtype="int16")
    write_volume(subject.ct.astype(np.int16), geometry, out, description="phantom CT HU (paired)")
    return out


def lung1_blocks(
    n_slices: int, block_slices: int
) -> tuple[tuple[int, int], list[tuple[int, int]], list[tuple[int, int]]]:
    """(test block, MR training blocks, CT training blocks) as [z0, z1) slice ranges; all disjoint.

    The test block is the central quarter of the slices (at least :data:`MIN_TEST_SLICES`); the
    slices below and above it are cut into blocks of ``block_slices`` (the last of a side may be
    shorter) given in turn to MR and to CT, from the bottom up.
    """
    n_test = max(MIN_TEST_SLICES, n_slices // 4)
    if n_slices < n_test + 2:
        raise BenchError(
            f"lung1: {n_slices} slices; need at least {n_test + 2} (a test block and two training blocks)"
        )
    t0 = (n_slices - n_test) // 2
    test = (t0, t0 + n_test)
    blocks = [(z, min(z + block_slices, t0)) for z in range(0, t0, block_slices)]
    blocks += [(z, min(z + block_slices, n_slices)) for z in range(t0 + n_test, n_slices, block_slices)]
    mr, ct = blocks[0::2], blocks[1::2]
    if not ct:
        raise BenchError(f"lung1: --block-slices {block_slices} leaves no CT training block; lower it")
    return test, mr, ct


def write_block(
    array: np.ndarray, affine: np.ndarray, z0: int, z1: int, step: int, path: Path, dtype: str
) -> None:
    """Writes slices [z0, z1) of a RAS array (every ``step``-th voxel in-plane) as NIfTI on its own grid."""
    from medcyclegan.io.volume import Geometry
    from medcyclegan.io.writers import write_volume

    block = np.ascontiguousarray(array[::step, ::step, z0:z1])
    block_affine = affine.copy()
    block_affine[:3, :2] *= step
    block_affine[:3, 3] += affine[:3, 2] * z0
    geometry = Geometry(affine=block_affine, shape=block.shape, dtype=dtype, source_format="nifti")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(block, geometry, path, description=f"lung1 slices {z0}-{z1 - 1}")


def make_lung1(root: Path, ct_path: Path, block_slices: int, pseudo_mr_seed: int, tiny: bool) -> Dataset:
    from medcyclegan.errors import MedCycleGANError
    from medcyclegan.io.readers import read_volume
    from medcyclegan.pseudo_mr import (
        DEFAULT_BIAS_SCALE_MM,
        DEFAULT_BIAS_STRENGTH,
        DEFAULT_NOISE_FRACTION,
        pseudo_mr_volume,
    )

    try:
        ct = read_volume(ct_path)
    except MedCycleGANError as exc:
        raise BenchError(str(exc)) from None
    z_offset = 0
    if tiny:
        z_offset = max(0, (ct.shape[2] - TINY_LUNG1_SLICES) // 2)
    mr = pseudo_mr_volume(ct, seed=pseudo_mr_seed)  # over the whole scan: one bias field for all blocks
    step = TINY_LUNG1_STEP if tiny else 1
    n_slices = min(ct.shape[2], TINY_LUNG1_SLICES) if tiny else ct.shape[2]
    test, mr_blocks, ct_blocks = lung1_blocks(n_slices, block_slices)

    def shift(block: tuple[int, int]) -> tuple[int, int]:
        return block[0] + z_offset, block[1] + z_offset

    def write(array: np.ndarray, affine: np.ndarray, block: tuple[int, int], folder: str, dtype: str) -> Path:
        path = root / folder / f"lung1_z{block[0]:03d}-{block[1] - 1:03d}.nii.gz"
        write_block(array, affine, *block, step, path, dtype)
        return path

    for block in map(shift, mr_blocks):
        write(mr.array, mr.affine, block, "train_mr", "float32")
        write(ct.array, ct.affine, block, "paired_ct", "int16")  # the same block's CT (paired models)
    for block in map(shift, ct_blocks):
        write(ct.array, ct.affine, block, "train_ct", "int16")
    pairs = [
        (
            write(mr.array, mr.affine, shift(test), "test_mr", "float32"),
            write(ct.array, ct.affine, shift(test), "test_ct", "int16"),
        )
    ]
    description = {
        "source": str(ct_path),
        "shape": list(ct.shape),
        "spacing_mm": [round(s, 4) for s in ct.spacing],
        "in_plane_step": step,
        "slices_used": [z_offset, z_offset + n_slices],
        "test_block": list(shift(test)),
        "mr_train_blocks": [list(shift(b)) for b in mr_blocks],
        "ct_train_blocks": [list(shift(b)) for b in ct_blocks],
        "pseudo_mr": {
            "function": "medcyclegan.pseudo_mr.pseudo_mr_volume",
            "seed": pseudo_mr_seed,
            "bias_strength": DEFAULT_BIAS_STRENGTH,
            "bias_scale_mm": DEFAULT_BIAS_SCALE_MM,
            "noise_fraction": DEFAULT_NOISE_FRACTION,
        },
    }
    description["paired"] = "paired models train on the MR training blocks and the same blocks' CT"
    return Dataset("lung1", root / "train_mr", root / "train_ct", pairs, root / "paired_ct", description)


# ------------------------------------------------------------------------------------ train and score
class Deadline:
    """Stops a training run after ``seconds`` of wall time, through the trainer's own SIGTERM stop.

    The trainer saves ``last.pt`` and raises ``TrainingInterrupted`` on SIGTERM. Until its handler is
    installed (data preparation) and after it is removed, a no-op handler absorbs the signal, which
    is repeated every 0.1 s until the run is over, so that a deadline during data preparation
    stops the run at its first step.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None

    def _run(self) -> None:
        assert self.seconds is not None
        if self._done.wait(self.seconds):
            return
        self.fired = True
        while not self._done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            self._done.wait(0.1)

    def __enter__(self) -> Deadline:
        if self.seconds is not None:
            self._previous = signal.signal(signal.SIGTERM, lambda *_: None)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            signal.signal(signal.SIGTERM, self._previous)


def run_config(args: argparse.Namespace, recipe: Recipe, seed: int) -> Any:
    from medcyclegan.config import load_config, resolve_config_path

    overrides = {
        **RUN_CONTROL,
        **(TINY_MODEL if args.tiny else {}),
        **recipe.overrides,
        "train.seed": seed,
        "optim.n_steps": args.budget_steps,
        "train.device": args.device,
        "train.log_every": min(50, args.budget_steps),
    }
    return load_config(resolve_config_path(args.config), overrides)


def is_paired(cfg: Any) -> bool:
    """Whether the recipe's model trains on registered pairs (``TranslationModel.paired``: pix2pix)."""
    from medcyclegan.models import model_class

    return bool(getattr(model_class(cfg.model.kind), "paired", False))


def memory_status(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``: the peak), None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def train_one(
    args: argparse.Namespace, data: Dataset, recipe: Recipe, seed: int, run_dir: Path
) -> dict[str, Any]:
    """Trains one recipe and seed; returns wall time, steps, seconds per step and memory.

    ``seconds_per_step`` is the trainer's own training time (``train_seconds`` of ``last.pt``: no data
    preparation, no validation) over the steps. ``memory_mib`` is the peak resident size of this
    process (``VmHWM``; NaN off Linux): meant for a fresh process per run (:func:`train_isolated`),
    with ``imports_mib``, its size before the training began.
    """
    from medcyclegan.checkpoint import load_checkpoint
    from medcyclegan.errors import TrainingInterrupted
    from medcyclegan.train.api import train_from_folders

    cfg = run_config(args, recipe, seed)
    tgt = data.paired_ct if is_paired(cfg) else data.train_ct
    deadline_s = None if args.budget_minutes is None else 60.0 * args.budget_minutes
    start_rss = memory_status("VmRSS")
    start = time.perf_counter()
    with Deadline(deadline_s) as deadline:
        try:
            result = train_from_folders(cfg, run_dir, src=data.train_mr, tgt=tgt, show_progress=False)
            steps, stopped_by = result.step, "steps"
        except TrainingInterrupted as stop:
            if not deadline.fired:
                raise
            steps, stopped_by = stop.step, "minutes"
    wall = time.perf_counter() - start
    peak = memory_status("VmHWM")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    train_seconds = state.get("train_seconds")
    per_step = float(train_seconds) / steps if train_seconds is not None and steps else float("nan")
    return {
        "train_seconds": wall,
        "steps": steps,
        "stopped_by": stopped_by,
        "seconds_per_step": per_step,
        "memory_mib": float("nan") if peak is None else peak / 1024,
        "imports_mib": float("nan") if start_rss is None else start_rss / 1024,
        "paired": tgt == data.paired_ct,
        "network_parameters": {str(k): int(v) for k, v in state.get("parameters", {}).items()},
    }


def _train_child(queue: Any, *arguments: Any) -> None:
    """:func:`train_one` in a child process; its result (or its error as one line) goes to ``queue``."""
    from medcyclegan.errors import MedCycleGANError

    try:
        queue.put(("ok", train_one(*arguments)))
    except (BenchError, MedCycleGANError) as exc:
        queue.put(("error", str(exc)))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


def train_isolated(
    args: argparse.Namespace, data: Dataset, recipe: Recipe, seed: int, run_dir: Path
) -> dict[str, Any]:
    """:func:`train_one` in a fresh process (spawned, so no state of an earlier run is shared), for a
    peak memory of this run alone; the runs still go one after the other."""
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    # A benchmark that stops (an error, Ctrl-C, SIGTERM: see main) takes its training process with it.
    child = context.Process(
        target=_train_child, args=(results, args, data, recipe, seed, run_dir), daemon=True
    )
    child.start()
    try:
        while True:
            try:
                status, value = results.get(timeout=1.0)
                break
            except queues.Empty:
                if not child.is_alive():  # killed (e.g. out of memory) before it could answer
                    raise BenchError(
                        f"{recipe.name} seed {seed}: the training process died (exit code {child.exitcode})"
                    ) from None
    except BaseException:
        child.terminate()  # SIGTERM: its trainer writes last.pt and stops
        child.join()
        raise
    child.join()
    if status != "ok":
        raise BenchError(f"{recipe.name} seed {seed}: {value}")
    return value


def score_one(args: argparse.Namespace, data: Dataset, run_dir: Path, pred_dir: Path) -> dict[str, Any]:
    from medcyclegan.convert import convert_file, load_model
    from medcyclegan.io.readers import read_volume
    from medcyclegan.metrics import synthrad2023, synthrad_body_mask, tissue_mae

    model = load_model(run_dir, to="ct", device=args.device)
    translator_parameters = sum(p.numel() for p in model.generator.parameters())
    cases: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for mr_path, ct_path in data.test_pairs:
        pred_path = convert_file(
            model, mr_path, pred_dir / mr_path.name, flip_average=args.flip_average, planes=args.plane_list
        )
        pred, ref = read_volume(pred_path), read_volume(ct_path)
        if not pred.geometry.same_grid(ref.geometry):
            raise BenchError(f"{pred_path}: the synthetic CT is not on the grid of {ct_path}")
        mask = synthrad_body_mask(ref.array)
        cases[mr_path.name] = {
            **synthrad2023(pred.array, ref.array, mask),
            **tissue_mae(pred.array, ref.array, mask, args.edges),
        }
    mean = {key: float(np.mean([case[key] for case in cases.values()])) for key in next(iter(cases.values()))}
    return {
        **mean,
        "convert_seconds": time.perf_counter() - start,
        "translator_parameters": translator_parameters,
        "cases": cases,
    }


def write_comparisons(
    name: str, data: Dataset, rows: list[dict[str, Any]], pred_root: Path, out_json: Path
) -> list[Path]:
    """Per seed, the first test case's synthetic CT of every recipe side by side (axial, through the
    body's centre; :func:`medcyclegan.figures.comparison_panel`) as ``<out-json stem>_<dataset>_seed<S>.png``.

    Rows are the recipes, labelled with that case's MAE; the columns are the MR, synthetic CT and CT
    in the soft-tissue and bone windows, and the error.
    """
    from medcyclegan.figures import comparison_panel, write_case_panel
    from medcyclegan.io.readers import read_volume
    from medcyclegan.metrics import synthrad_body_mask

    mr_path, ct_path = data.test_pairs[0]
    mr, ct = read_volume(mr_path), read_volume(ct_path)
    written = []
    for seed in sorted({row["seed"] for row in rows}):
        synthetic = {
            f"{row['recipe']}\nMAE {row['cases'][mr_path.name]['mae']:.0f} HU": read_volume(
                pred_root / f"{row['recipe']}_seed{seed}" / mr_path.name
            ).array
            for row in rows
            if row["seed"] == seed
        }
        panel = comparison_panel(
            ct.array,
            synthetic,
            synthrad_body_mask(ct.array),
            ct.spacing,
            mr=mr.array,
            title=f"{name}: {mr_path.name}, seed {seed}",
        )
        path = out_json.with_name(f"{out_json.stem}_{name}_seed{seed}.png")
        written.append(write_case_panel(path, panel, overwrite=True))
    return written


def summarise(rows: list[dict[str, Any]], recipes: list[Recipe]) -> dict[str, dict[str, dict[str, float]]]:
    """Per recipe and column: mean and sample standard deviation (ddof 1; NaN for one seed) over seeds."""
    summary = {}
    for recipe in recipes:
        mine = [row for row in rows if row["recipe"] == recipe.name]
        summary[recipe.name] = {
            key: {
                "mean": float(np.mean([row[key] for row in mine])),
                "std": float(np.std([row[key] for row in mine], ddof=1)) if len(mine) > 1 else float("nan"),
            }
            for key, _, _ in METRIC_COLUMNS
        }
    return summary


def table(name: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    header = ["recipe", "seed", *(title for _, title, _ in METRIC_COLUMNS)]
    lines = [f"### {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["recipe"], str(row["seed"]), *(fmt.format(row[key]) for key, _, fmt in METRIC_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    for recipe, stats in summary.items():
        cells = [f"**{recipe}**", "mean ± std"]
        for key, _, fmt in METRIC_COLUMNS:
            mean, std = stats[key]["mean"], stats[key]["std"]
            cells.append(fmt.format(mean) + ("" if math.isnan(std) else " ± " + fmt.format(std)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    from medcyclegan.io.atomic import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"{path.parent}: cannot create the --out-json folder ({exc.strerror})") from None
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from medcyclegan.metrics import BODY_MASK_METHOD, TISSUE_CLASSES

    report: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": args.config,
        "tiny": args.tiny,
        "budget": {"steps": args.budget_steps, "minutes": args.budget_minutes},
        "seeds": args.seed_list,
        "device": args.device,
        "convert": {"flip_average": args.flip_average, "planes": list(args.plane_list)},
        "recipes": {r.name: r.overrides for r in args.recipes},
        "run_control": RUN_CONTROL,
        "tiny_model": TINY_MODEL if args.tiny else None,
        "standard": "synthrad2023",
        "body_mask": f"medcyclegan.metrics.synthrad_body_mask of the reference CT ({BODY_MASK_METHOD})",
        "tissue_edges_hu": list(args.edges),
        "tissue_classes": list(TISSUE_CLASSES),
        "datasets": {},
    }
    write_json(args.out_json, report)  # an unwritable --out-json is found now, not after the training
    tables = []
    for name in args.dataset_list:
        if name == "phantom":
            data = make_phantom(work / "phantom" / "data", args.tiny)
        else:
            data = make_lung1(
                work / "lung1" / "data", args.lung1, args.block_slices, args.pseudo_mr_seed, args.tiny
            )
        rows = []
        for recipe in args.recipes:
            for seed in args.seed_list:
                label = f"{recipe.name}_seed{seed}"
                print(f"[bench_quality] {name}: training {label} ...", file=sys.stderr, flush=True)
                run_dir = work / name / "runs" / label
                trained = train_isolated(args, data, recipe, seed, run_dir)
                scores = score_one(args, data, run_dir, work / name / "pred" / label)
                rows.append({"recipe": recipe.name, "seed": seed, **trained, **scores})
                report["datasets"][name] = {"description": data.description, "runs": rows, "partial": True}
                write_json(
                    args.out_json, report
                )  # after every run: a long benchmark stopped keeps its numbers
                print(
                    f"[bench_quality] {name}: {label}: MAE {scores['mae']:.1f} HU, {trained['steps']} steps "
                    f"in {trained['train_seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        summary = summarise(rows, args.recipes)
        pictures = write_comparisons(name, data, rows, work / name / "pred", args.out_json)
        report["datasets"][name] = {
            "description": data.description,
            "runs": rows,
            "summary": summary,
            "pictures": [str(path) for path in pictures],
        }
        tables.append(table(name, rows, summary))
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report["tables"] = tables
    return report


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    from medcyclegan.errors import MedCycleGANError

    try:
        args = parse_args(argv)
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-quality-"))
        if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
            raise BenchError(f"{args.work_dir}: --work-dir must be new or empty")
        try:
            report = run(args, work)
        finally:
            if args.work_dir is None and not args.keep_work:
                shutil.rmtree(work, ignore_errors=True)
        write_json(args.out_json, report)
    except (BenchError, MedCycleGANError) as exc:
        print(f"bench_quality: {exc}", file=sys.stderr)
        return 2
    header = (
        f"Translation quality ({args.config}; budget {args.budget_steps} steps"
        + (f" or {args.budget_minutes:g} min" if args.budget_minutes else "")
        + f"; seeds {args.seeds}; {report['machine']['torch_threads']} torch thread(s); body mask: SynthRAD "
        f"mask of the reference CT; tissue edges {args.edges[0]:g}, {args.edges[1]:g} HU"
        + ("; convert --flip-average" if args.flip_average else "")
        + (f"; convert --planes {','.join(args.plane_list)}" if args.plane_list != ("axial",) else "")
        + ")"
    )
    print(header + "\n\n" + "\n\n".join(report["tables"]))
    print(
        f"\ncommand: {report['command']}\nJSON: {args.out_json}"
        + (f"\nwork: {work}" if args.keep_work or args.work_dir else "")
    )
    return 0


if __name__ == "__main__":
    # SIGTERM ends the benchmark through an exception, so that the training process it runs is
    # stopped too (train_isolated); the default action would leave it running.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
