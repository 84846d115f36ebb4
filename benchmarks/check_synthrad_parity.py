"""Parity of medcyclegan's SynthRAD metrics with the challenges' own evaluation code.

Imports the official ``image_metrics.py`` from checkouts given on the command line (nothing of it is
copied here), scores a set of synthetic cases with it and with :mod:`medcyclegan.metrics`, and prints
the largest absolute and relative difference per metric, with the case where it occurs. Exit status 1
when a relative difference exceeds ``--tolerance`` (default 1e-4).

Cases: random HU volumes of odd sizes below 97 voxels (17 x 23 x 31), a body phantom with HU beyond
both clip ranges, a mask touching the volume border, masks with label values (2, -1), sizes at and
above 97, an inverted (anti-correlated) prediction, identical volumes (PSNR inf), an int16 reference
with a float32 prediction (as files are loaded by the official evaluation). With ``--files``, one
case also goes end to end through :func:`medcyclegan.evaluate.evaluate` on files with flipped axes
(``.mha`` and ``.nii.gz``), against the official 2025 code on the arrays SimpleITK reads from the same
files, as the official evaluation loads them (this checks the voxel order, which MS-SSIM's padding
and offset downsampling depend on).

The SynthRAD2023 code casts every image to float32 first (and skimage then computes SSIM in float32),
while medcyclegan computes in float64: the two differ by that rounding (relative 1e-9 to 1e-6 here,
the largest on an SSIM near 0). The SynthRAD2025 code keeps the input dtype.

How the official code is called:
    * SynthRAD2025 (``SynthRAD2025/evaluation``, ``image_metrics.py`` at the checkout root):
      ``ImageMetrics().score_patient(gt, pred, mask)`` on the arrays as given.
    * SynthRAD2023 (``SynthRAD2023/metrics``, ``functions/image_metrics.py``): ``mae``, ``psnr(...,
      use_population_range=True)`` and ``ssim`` on float32 arrays, as its ``score_patient`` casts the
      images to float32. Its ``score_patient`` passes the SimpleITK mask image (not the array) to
      ``ssim``, which current SimpleITK/numpy turn into a flat array that does not broadcast; the mask
      array is passed instead. ``evalutils`` (imported by that file, not used by these methods) is
      replaced by an empty stand-in when it is not installed.

Usage:
    python benchmarks/check_synthrad_parity.py --synthrad2025 ~/src/SynthRAD2025-evaluation \\
        --synthrad2023 ~/src/SynthRAD2023-metrics [--files]

Needs numpy, scipy, scikit-image and SimpleITK (the official code's own dependencies for these
functions) besides medcyclegan.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from medcyclegan.metrics import synthrad2023, synthrad2025

Case = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # name, ref, pred, mask


def _load_module(path: Path, name: str) -> types.ModuleType:
    """Imports one official file under a private module name."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found (give the root of the official checkout)")
    if "evalutils" not in sys.modules and importlib.util.find_spec("evalutils") is None:
        # SynthRAD2023's file imports evalutils.io.SimpleITKLoader for score_patient only.
        stand_in = types.ModuleType("evalutils")
        stand_in_io = types.ModuleType("evalutils.io")
        stand_in_io.SimpleITKLoader = object  # type: ignore[attr-defined]
        stand_in.io = stand_in_io  # type: ignore[attr-defined]
        sys.modules.setdefault("evalutils", stand_in)
        sys.modules.setdefault("evalutils.io", stand_in_io)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _phantom(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Air around an ellipsoidal body with soft tissue texture, a bone rod above 3071 HU and lung air."""
    grids = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij")
    centre = [s / 2 for s in shape]
    radius = [0.42 * s for s in shape]
    body = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius, strict=True)) <= 1.0
    ct = np.where(body, 40.0 + rng.normal(0, 30, shape), -1000.0 + rng.normal(0, 10, shape))
    x, y = grids[0], grids[1]
    ct[(np.abs(x - centre[0]) < 3) & (np.abs(y - centre[1]) < 3) & body] = 3500.0  # clipped bone
    ct[(np.abs(x - centre[0] - radius[0] / 2) < 4) & body] = -850.0  # lung-like air inside
    ct[:, :2, :] = -3024.0  # out-of-field padding below both clip ranges
    return ct, body


def cases(rng: np.random.Generator) -> Iterator[Case]:
    """The synthetic test cases (reference, prediction, mask), in HU."""
    shape = (17, 23, 31)
    ref = rng.normal(0, 400, shape)
    mask = np.zeros(shape)
    mask[2:-3, 1:-2, 4:-2] = 1
    yield "random 17x23x31, box mask", ref, ref + rng.normal(0, 120, shape), mask

    ct, body = _phantom((40, 36, 24), rng)
    pred = ct + rng.normal(20, 90, ct.shape)
    pred[5:9, 10:14, 6:9] = 4200.0  # prediction above both clip ranges
    yield "phantom 40x36x24, beyond clip ranges", ct, pred, body.astype(np.float64)

    border = np.zeros((30, 50, 20))
    border[:, 10:45, :] = 1  # touches four faces: edge padding extends it
    ref = rng.normal(100, 500, border.shape)
    yield "mask touching the border 30x50x20", ref, ref + rng.normal(0, 60, ref.shape), border

    labels = np.zeros((24, 20, 26))
    labels[3:20, 3:17, 3:23] = 2
    labels[5:10, 5:10, 5:10] = -1  # negative label: outside (> 0 rule)
    ref = rng.normal(0, 300, labels.shape)
    yield "label mask 2 / -1, 24x20x26", ref, ref + rng.normal(0, 80, ref.shape), labels

    ct, body = _phantom((120, 40, 33), rng)
    yield "phantom 120x40x33", ct, ct + rng.normal(-15, 70, ct.shape), body.astype(np.float64)

    ct, body = _phantom((100, 101, 97), rng)
    yield "phantom 100x101x97", ct, ct + rng.normal(0, 50, ct.shape), body.astype(np.float64)

    ct, body = _phantom((33, 29, 35), rng)
    yield "inverted prediction 33x29x35", ct, 1000.0 - ct, body.astype(np.float64)

    ct, body = _phantom((26, 31, 19), rng)
    yield "identical volumes 26x31x19", ct, ct.copy(), body.astype(np.float64)

    ct, body = _phantom((45, 38, 21), rng)
    ref16 = np.clip(np.round(ct), -32768, 32767).astype(np.int16)
    pred32 = (ct + rng.normal(0, 60, ct.shape)).astype(np.float32)
    yield "int16 ref, float32 pred 45x38x21", ref16, pred32, body.astype(np.uint8)


def official_2025(module: types.ModuleType, ref: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict:
    return dict(module.ImageMetrics().score_patient(ref, pred, mask))


def official_2023(module: types.ModuleType, ref: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict:
    metrics = module.ImageMetrics()
    gt, sct, m = (np.asarray(a, dtype=np.float32) for a in (ref, pred, mask))
    return {
        "mae": metrics.mae(gt, sct, m),
        "psnr": metrics.psnr(gt, sct, m, use_population_range=True),
        "ssim": float(metrics.ssim(gt, sct, m)),
    }


def _differences(ours: float, theirs: float) -> tuple[float, float]:
    """(absolute, relative) difference; equal infinities (PSNR of identical volumes) differ by 0."""
    if ours == theirs:
        return 0.0, 0.0
    if not (math.isfinite(ours) and math.isfinite(theirs)):
        return math.inf, math.inf
    absolute = abs(ours - theirs)
    return absolute, absolute / max(abs(theirs), 1e-300)


def file_cases(module: types.ModuleType, rng: np.random.Generator) -> list[tuple[str, dict, dict]]:
    """Cases through ``evaluate`` on flipped-axis files vs the official code on the SimpleITK arrays."""
    import SimpleITK as sitk

    from medcyclegan.evaluate import evaluate

    ct, body = _phantom((37, 30, 22), rng)
    pred = ct + rng.normal(10, 80, ct.shape)
    results = []
    for suffix in (".mha", ".nii.gz"):
        with tempfile.TemporaryDirectory() as folder:
            paths = {}
            volumes = (("ref", ct, np.int16), ("pred", pred, np.float32), ("mask", body, np.uint8))
            for name, array, pixel in volumes:
                # SimpleITK arrays are (z, y, x); the official evaluation transposes them to (x, y, z).
                image = sitk.GetImageFromArray(np.transpose(array.astype(pixel), (2, 1, 0)))
                image.SetSpacing((0.9, 1.1, 2.5))
                image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
                paths[name] = Path(folder) / f"{name}{suffix}"
                sitk.WriteImage(image, str(paths[name]))
            arrays = {
                name: np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))
                for name, path in paths.items()
            }
            theirs = official_2025(module, arrays["ref"], arrays["pred"], arrays["mask"])
            report = evaluate(paths["pred"], paths["ref"], paths["mask"], standard="synthrad2025")
        results.append((f"files: {suffix} with flipped axes 37x30x22", report.cases[0].metrics, theirs))
    return results


def compare(
    label: str,
    official: Callable[[np.ndarray, np.ndarray, np.ndarray], dict],
    ours: Callable[[np.ndarray, np.ndarray, np.ndarray], dict],
    case_list: list[Case],
    extra: list[tuple[str, dict, dict]],
) -> list[tuple[str, str, float, str, float, str]]:
    """Rows (standard, metric, max abs difference, its case, max relative difference, its case)."""
    results = [
        (name, ours(pred, ref, mask), official(ref, pred, mask)) for name, ref, pred, mask in case_list
    ]
    largest: dict[str, list] = {}
    for name, mine, theirs in [*results, *extra]:
        for metric, value in mine.items():
            absolute, relative = _differences(float(value), float(theirs[metric]))
            print(f"  {label} {name:40s} {metric:8s} ours {value:.10g} official {theirs[metric]:.10g}")
            row = largest.setdefault(metric, [-1.0, "", -1.0, ""])
            if absolute > row[0]:
                row[0:2] = [absolute, name]
            if relative > row[2]:
                row[2:4] = [relative, name]
    return [(label, metric, *row) for metric, row in largest.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthrad2025", type=Path, help="root of a SynthRAD2025/evaluation checkout")
    parser.add_argument("--synthrad2023", type=Path, help="root of a SynthRAD2023/metrics checkout")
    parser.add_argument(
        "--files", action="store_true", help="also cases end to end through .mha / .nii.gz files"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference accepted")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.synthrad2025 is None and args.synthrad2023 is None:
        parser.error("give --synthrad2025 and/or --synthrad2023")

    case_list = list(cases(np.random.default_rng(args.seed)))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the official PSNR divides by zero on identical
        if args.synthrad2025 is not None:
            module25 = _load_module(args.synthrad2025 / "image_metrics.py", "synthrad2025_official")
            extra = file_cases(module25, np.random.default_rng(args.seed + 1)) if args.files else []
            rows += compare(
                "2025", lambda r, p, m: official_2025(module25, r, p, m), synthrad2025, case_list, extra
            )
        if args.synthrad2023 is not None:
            module23 = _load_module(
                args.synthrad2023 / "functions" / "image_metrics.py", "synthrad2023_official"
            )
            rows += compare(
                "2023", lambda r, p, m: official_2023(module23, r, p, m), synthrad2023, case_list, []
            )

    print(
        f"\n{'standard':8s} {'metric':8s} {'max abs diff':>12s} {'max rel diff':>12s}  (case of max abs / max rel)"
    )
    failed = False
    for label, metric, absolute, abs_case, relative, rel_case in rows:
        print(f"{label:8s} {metric:8s} {absolute:12.3e} {relative:12.3e}  ({abs_case} / {rel_case})")
        failed |= relative > args.tolerance
    print(f"\n{len(case_list)} cases; tolerance {args.tolerance:g} relative: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
