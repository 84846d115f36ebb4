"""Slices per second: naive per-item loading versus the cached ``SliceDataset``.

Writes synthetic NIfTI volumes (with nibabel directly, independent of the toolkit's writer) to a
temporary folder and, in one run, measures:

(a) naive per-item loading, the way the reference CycleGAN re-reads its images: every item opens
    its volume file, decompresses it, reorients it to RAS, fits the normalisation, normalises the
    slice(s) it needs and pads/crops them;
(b) our pipeline: ``load_prepared`` reads and prepares every volume once (time reported separately,
    and once more through the memory-mapped disk cache), then ``SliceDataset`` is iterated.

Both are iterated through a ``DataLoader`` with batch size 1 and shuffling, over the same list of
(volume, slice) items.

Usage:
    python benchmarks/bench_loader.py [--volumes 4 --shape 256 256 48 --modality ct --workers 0 --threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcyclegan.config import DataConfig
from medcyclegan.data.cache import load_prepared
from medcyclegan.data.normalise import fit_normalisation, normalise
from medcyclegan.data.slices import SliceDataset, pad_or_crop, slice_with_context


def write_volumes(
    folder: Path, count: int, shape: tuple[int, int, int], modality: str, seed: int
) -> list[Path]:
    """Synthetic heads (an ellipse per slice with noise), gzipped NIfTI, 0.8 x 0.8 x 3 mm."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.35)) ** 2 <= 1
    paths = []
    for index in range(count):
        if modality == "ct":
            array = rng.normal(-1000, 10, shape)
            array[body] = rng.normal(40, 50, (int(body.sum()), shape[2]))
            array = np.round(array).astype(np.int16)
        else:
            array = np.abs(rng.normal(0, 10, shape))
            array[body] = rng.uniform(100, 900, (int(body.sum()), shape[2]))
            array = array.astype(np.float32)
        path = folder / f"case{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 3.0, 1.0])), path)
        paths.append(path)
    return paths


class NaiveSliceDataset(Dataset):
    """Re-reads and re-normalises the volume file for every item (the reference's per-item loading)."""

    def __init__(self, paths: list[Path], items: list[tuple[int, int]], modality: str, data_cfg: DataConfig):
        self.paths, self.items, self.modality, self.data_cfg = paths, items, modality, data_cfg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        v, z = self.items[index]
        image = nib.as_closest_canonical(nib.load(str(self.paths[v])))
        array = np.asanyarray(image.dataobj)
        params = fit_normalisation(array, self.modality, None, self.data_cfg)
        stack = normalise(slice_with_context(array, z, self.data_cfg.context_slices), params)
        return {"image": pad_or_crop(stack, self.data_cfg.image_size)}


def slices_per_second(
    dataset: Dataset, workers: int, budget_s: float, seed: int, warmup: int = 3
) -> tuple[float, int]:
    """Iterates a shuffled DataLoader (batch 1) for up to ``budget_s`` seconds; returns (rate, slices).

    The first ``warmup`` batches (worker start, first-call costs) are not timed.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers, generator=generator)
    count = 0
    start = time.perf_counter()
    for seen, batch in enumerate(loader):
        if seen < warmup:
            start = time.perf_counter()
            continue
        count += batch["image"].shape[0]
        if time.perf_counter() - start > budget_s:
            break
    elapsed = time.perf_counter() - start
    return count / elapsed, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=4, help="number of synthetic volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 48), metavar=("X", "Y", "Z"))
    parser.add_argument("--modality", choices=("ct", "mr"), default="ct")
    parser.add_argument("--image-size", type=int, default=256, help="training slice side in pixels")
    parser.add_argument("--context-slices", type=int, default=0, help="2.5D neighbours each side")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for both loaders")
    parser.add_argument("--naive-seconds", type=float, default=20.0, help="time budget of the naive loader")
    parser.add_argument("--repeats", type=int, default=3, help="epochs of (b); the median rate is reported")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the main process (items are small; DataLoader workers use 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    cfg = DataConfig(
        src_modality=args.modality,
        image_size=args.image_size,
        context_slices=args.context_slices,
        min_body_fraction=0.0,
    )
    _ensure_reader()
    with tempfile.TemporaryDirectory(prefix="medcyclegan-bench-") as tmp:
        folder = Path(tmp)
        paths = write_volumes(folder, args.volumes, shape, args.modality, args.seed)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.volumes} {args.modality.upper()} volumes {shape[0]}x{shape[1]}x{shape[2]}", end=" ")
        print(f"(.nii.gz, {size_mb:.1f} MB)")
        print(
            f"image_size {args.image_size}, context_slices {args.context_slices}, workers {args.workers}, "
            f"torch threads {torch.get_num_threads()}"
        )

        start = time.perf_counter()
        volumes = load_prepared(paths, args.modality, cfg)
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        load_prepared(paths, args.modality, cfg, cache_dir=folder / "cache")
        cache_write_s = time.perf_counter() - start
        start = time.perf_counter()
        cached = load_prepared(paths, args.modality, cfg, cache_dir=folder / "cache")
        cache_read_s = time.perf_counter() - start

        dataset = SliceDataset(volumes, cfg, train=True, seed=args.seed)
        items = [dataset.item_location(i) for i in range(len(dataset))]
        naive = NaiveSliceDataset(paths, items, args.modality, cfg)
        naive_rate, naive_count = slices_per_second(naive, args.workers, args.naive_seconds, args.seed)
        ours_rate, ours_count = _median_rate(dataset, args)
        mapped = SliceDataset(cached, cfg, train=True, seed=args.seed)
        mapped_rate, mapped_count = _median_rate(mapped, args)

    print(
        f"one-time preparation (read + mask + normalise): {prepare_s:.2f} s "
        f"({prepare_s / args.volumes * 1e3:.0f} ms/volume); with cache write {cache_write_s:.2f} s; "
        f"memory-mapped cache reload {cache_read_s * 1e3:.0f} ms"
    )
    print(f"(a) naive per-item loading : {naive_rate:9.1f} slices/s ({naive_count} slices)")
    print(f"(b) cached SliceDataset    : {ours_rate:9.1f} slices/s ({ours_count} slices/epoch, in memory)")
    print(f"    memory-mapped cache    : {mapped_rate:9.1f} slices/s ({mapped_count} slices/epoch)")
    print(f"ratio (b)/(a): {ours_rate / naive_rate:.1f}x")
    return 0


def _median_rate(dataset: SliceDataset, args: argparse.Namespace) -> tuple[float, int]:
    """Median slices/s over ``args.repeats`` epochs (the machine may be shared), and slices per epoch."""
    runs = []
    for epoch in range(args.repeats):
        dataset.set_epoch(epoch)
        runs.append(slices_per_second(dataset, args.workers, float("inf"), args.seed + epoch))
    return float(np.median([rate for rate, _ in runs])), runs[0][1]


def _ensure_reader() -> None:
    """Falls back to a plain nibabel reader while ``medcyclegan.io.readers`` is not available."""
    try:
        import medcyclegan.io.readers  # noqa: F401
    except ImportError:
        import types

        from medcyclegan.io.volume import Geometry, Volume

        def read_volume(path: str | Path, **_: object) -> Volume:
            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj)
            geometry = Geometry(image.affine, array.shape, str(array.dtype), "nifti", source_path=str(path))
            return Volume(geometry.array_to_ras(array), geometry)

        sys.modules["medcyclegan.io.readers"] = types.SimpleNamespace(read_volume=read_volume)  # type: ignore[assignment]
        print("note: medcyclegan.io.readers not available; (b) reads with a plain nibabel reader")


if __name__ == "__main__":
    sys.exit(main())
