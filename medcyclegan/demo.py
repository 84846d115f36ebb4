"""The built-in demo: phantom -> train -> convert -> evaluate, against two baselines.

``medcyclegan demo`` needs no data and no GPU: it writes the head phantom (unpaired MR and CT of
disjoint subjects for training, paired MR/CT of other subjects for validation and of held-out
subjects for testing), trains the ``quick-cpu`` CycleGAN (``best.pt`` is the checkpoint of the
lowest validation MAE: the test subjects are never looked at while training), converts the held-out MR volumes to synthetic CT, and scores them with the
SynthRAD2023 metrics against their CT, next to two baselines computed and scored the same way:

* **linear rescale**: the MR's robust range inside the body ([p0.5, p99.5]) mapped linearly onto the
  training CTs' robust range inside the body (pooled [p0.5, p99.5]); air outside the body.
* **histogram matching**: MR body voxels histogram-matched (``skimage.exposure.match_histograms``) to
  the pooled body voxels of the training CTs; air outside the body.

For every held-out subject it draws a panel (``figures/<case>.png``: MR | synthetic CT | CT | error,
three planes, soft-tissue and bone windows; :mod:`medcyclegan.figures`) of the CycleGAN's synthetic CT,
and ``figures/val_mae.png``: the validation MAE [HU] against the training time, where the curve
flattening shows when more training stops helping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from skimage.exposure import match_histograms

from medcyclegan.config import builtin_config_path, load_config
from medcyclegan.convert import convert_paths, load_model
from medcyclegan.data.mask import body_mask
from medcyclegan.errors import ConfigError, OutputError
from medcyclegan.evaluate import evaluate
from medcyclegan.figures import ValidationCurve, write_validation_curve
from medcyclegan.io.discovery import find_volumes
from medcyclegan.io.readers import read_mask, read_volume
from medcyclegan.io.writers import write_volume
from medcyclegan.sample_data import write_sample_dataset
from medcyclegan.train.api import train_from_folders
from medcyclegan.train.run_log import VALIDATION_LOG

BASELINES = ("linear rescale", "histogram matching")
VALIDATION_CURVE = "val_mae.png"  # in figures/: the validation MAE against the training time


@dataclass
class DemoResult:
    """Scores of the synthetic CT and the baselines, and where everything was written."""

    out_dir: Path
    reports: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    figures: list[Path] = field(default_factory=list)
    # figures/val_mae.png and what it shows (None when the run never validated).
    curve_path: Path | None = None
    curve: ValidationCurve | None = None

    def summary_rows(self) -> list[tuple[str, dict[str, float]]]:
        return [(name, report.summary) for name, report in self.reports.items()]

    def mae(self, name: str) -> float:
        return float(self.reports[name].summary["mae"]["mean"])

    def beats_baselines(self) -> bool:
        synth = self.mae("synthetic CT (CycleGAN)")
        return all(synth < self.mae(b) for b in BASELINES)

    def table(self) -> Any:

        table = Table(
            title="Held-out phantom subjects, SynthRAD2023 metrics inside the body mask (mean ± std)"
        )
        table.add_column("method")
        # Escaped: rich would read "[dB]" as markup and drop it.
        table.add_column("MAE \\[HU] ↓", justify="right")
        table.add_column("PSNR \\[dB] ↑", justify="right")
        table.add_column("SSIM ↑", justify="right")
        for name, summary in self.summary_rows():
            table.add_row(
                name,
                f"{summary['mae']['mean']:.1f} ± {summary['mae']['std']:.1f}",
                f"{summary['psnr']['mean']:.2f} ± {summary['psnr']['std']:.2f}",
                f"{summary['ssim']['mean']:.3f} ± {summary['ssim']['std']:.3f}",
            )
        return table

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        verdict = (
            "beats both baselines on MAE" if self.beats_baselines() else "does NOT beat both baselines on MAE"
        )
        return (
            f"demo finished in {total:.0f} s ({parts}); {self.steps} training steps; synthetic CT {verdict}. "
            f"Results in {self.out_dir}"
            + (f"; panels of the synthetic CT in {self.figures[0].parent}" if self.figures else "")
            + self._curve_summary()
        )

    def _curve_summary(self) -> str:
        if self.curve is None or self.curve_path is None:
            return ""
        seconds, step, mae = self.curve.best
        return (
            f"; validation MAE against training time in {self.curve_path}: best {mae:.1f} HU at step {step} "
            f"({seconds:.0f} s of training), the checkpoint convert used (best.pt)"
        )


def _body_voxels(paths: list[Path], mask_paths: list[Path] | None) -> np.ndarray:

    chunks = []
    for i, path in enumerate(paths):
        volume = read_volume(path)
        if mask_paths is not None:
            mask = read_mask(mask_paths[i], like=volume.geometry)
        else:
            mask = body_mask(volume.array, "ct")
        chunks.append(volume.array[mask].astype(np.float32))
    return np.concatenate(chunks)


def write_baselines(
    test_mr: list[Path], test_masks: list[Path], train_ct: list[Path], out_dir: Path
) -> dict[str, Path]:
    """Writes both baselines for every test MR onto the MR's grid; returns their folders."""

    ct_body = _body_voxels(train_ct, None)
    ct_lo, ct_hi = np.percentile(ct_body, [0.5, 99.5])
    rng = np.random.default_rng(0)
    # A subsample keeps histogram matching fast; 200k voxels describe the CT histogram well.
    ct_sample = rng.choice(ct_body, size=min(ct_body.size, 200_000), replace=False)
    folders = {
        "linear rescale": out_dir / "baseline_linear",
        "histogram matching": out_dir / "baseline_histmatch",
    }
    for mr_path, mask_path in zip(test_mr, test_masks):
        volume = read_volume(mr_path)
        mask = read_mask(mask_path, like=volume.geometry)
        mr = volume.array.astype(np.float32)
        lo, hi = np.percentile(mr[mask], [0.5, 99.5])
        linear = np.full(mr.shape, -1000.0, dtype=np.float32)
        linear[mask] = ct_lo + (mr[mask] - lo) * (ct_hi - ct_lo) / max(hi - lo, 1e-6)
        matched = np.full(mr.shape, -1000.0, dtype=np.float32)
        matched[mask] = match_histograms(mr[mask], ct_sample)
        for name, array in (("linear rescale", linear), ("histogram matching", matched)):
            write_volume(array, volume.geometry, folders[name] / mr_path.name, dtype="int16", overwrite=True)
    return folders


def run_demo(
    out: str | Path = "demo-out",
    *,
    max_steps: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    config: str = "quick-cpu",
    n_train: int = 6,
    n_test: int = 3,
    n_val: int = 2,
    seed: int = 0,
    phantom_shape: tuple[int, int, int] | None = None,
    phantom_spacing: tuple[float, float, float] | None = None,
) -> DemoResult:
    """Runs the whole demo in ``out`` and returns the scores (see the module docstring).

    ``phantom_shape``/``phantom_spacing`` change the phantom grid (same field of view at a coarser
    grid makes a quick version for tests); the default is the sample-data default. ``n_val`` paired
    validation subjects (at least 1) select ``best.pt`` by validation MAE.
    """
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 1:
        raise ConfigError(f"must be an integer >= 1 (validation picks best.pt); got {n_val!r}", "n_val")

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError("is a file; the demo needs a folder", out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError("is not empty; pass --overwrite to run the demo there again", out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data = out / "data"
    grid: dict[str, Any] = {}  # the sample-data default grid unless the caller gives one
    if phantom_shape is not None:
        grid["shape"] = phantom_shape
    if phantom_spacing is not None:
        grid["spacing"] = phantom_spacing
    dataset = write_sample_dataset(
        data,
        n_train_mr=n_train,
        n_train_ct=n_train,
        n_test=n_test,
        n_val=n_val,
        seed=seed,
        overwrite=True,
        **grid,
    )
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    overrides: dict[str, Any] = {"train.seed": seed}
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    cfg = load_config(builtin_config_path(config), overrides)
    run_dir = out / "run"
    result = train_from_folders(
        cfg,
        run_dir,
        src=dataset.train_mr_dir,
        tgt=dataset.train_ct_dir,
        val_src=dataset.val_mr_dir,
        val_tgt=dataset.val_ct_dir,
        overwrite=True,
        show_progress=show_progress,
    )
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    model = load_model(run_dir, to="ct", device="auto")
    convert_paths(model, dataset.test_mr_dir, out / "synth_ct", overwrite=True, mask_background=True)
    seconds["convert"] = time.perf_counter() - start

    start = time.perf_counter()
    test_mr = find_volumes(dataset.test_mr_dir)
    test_masks = find_volumes(dataset.test_masks_dir)
    baselines = write_baselines(test_mr, test_masks, find_volumes(dataset.train_ct_dir), out)
    reports = {
        "synthetic CT (CycleGAN)": evaluate(
            out / "synth_ct",
            dataset.test_ct_dir,
            dataset.test_masks_dir,
            figures=out / "figures",
            source=dataset.test_mr_dir,
            overwrite=True,
        ),
    }
    for name, folder in baselines.items():
        reports[name] = evaluate(folder, dataset.test_ct_dir, dataset.test_masks_dir)
    reports["synthetic CT (CycleGAN)"].write(out / "report.json", overwrite=True)
    seconds["evaluate"] = time.perf_counter() - start
    figures = [Path(path) for path in reports["synthetic CT (CycleGAN)"].figures]
    curve_path, curve = None, None
    if (run_dir / VALIDATION_LOG).is_file():  # validation runs at epoch ends: a short run may have none
        curve_path = out / "figures" / VALIDATION_CURVE
        curve = write_validation_curve(
            curve_path, run_dir / VALIDATION_LOG, metric="val/mae", unit="HU", overwrite=True
        )
    return DemoResult(
        out_dir=out,
        reports=reports,
        seconds=seconds,
        steps=result.step,
        figures=figures,
        curve_path=curve_path,
        curve=curve,
    )
