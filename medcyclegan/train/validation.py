"""Validation metrics and sample grids of a training run, from the model's translators.

Both go through the one slice-wise inference path (:func:`~medcyclegan.inference.translate_array`)
that conversion uses, so what validation measures is what ``convert`` produces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.metrics import structural_similarity

from medcyclegan.config import AUTO, TrainConfig
from medcyclegan.data.normalise import denormalise, output_params
from medcyclegan.errors import ConfigError
from medcyclegan.inference import translate_array
from medcyclegan.metrics import metric_names, synthrad2023
from medcyclegan.models.base import TranslationModel
from medcyclegan.train.data_module import TrainingData
from medcyclegan.train.samples import render_grid


def validate(model: TranslationModel, data: TrainingData) -> dict[str, float]:
    """Cycle consistency on validation volumes of both domains, and translation metrics on pairs.

    Cycle metrics are computed in normalised units ([-1, 1]) inside each volume's body mask:
    ``val/cycle_mae_A`` (mean absolute error), ``val/cycle_ssim_A`` (skimage SSIM, data range 2,
    7-voxel window, averaged over the mask) and likewise for B; ``val/cycle_ssim`` and
    ``val/cycle_mae`` average the two domains (only a model that translates both ways has them).
    For pairs (same case name and grid) the translation A->B is scored with the SynthRAD2023
    definitions when B is CT (HU; MAE on the window-clipped reference), otherwise in normalised units.
    """
    cfg = model.cfg

    def run(direction: str, image: np.ndarray) -> np.ndarray:
        return translate_array(
            model.translator(direction),  # type: ignore[arg-type]
            image,
            context_slices=cfg.data.context_slices,
            batch_size=max(8, cfg.optim.batch_size),
            device=model.device,
            amp=model.amp,
            canvas=cfg.data.image_size,
        )

    results: dict[str, list[float]] = {}
    for label, volumes, forward, backward in (
        ("A", data.val_src, "AB", "BA"),
        ("B", data.val_tgt, "BA", "AB"),
    ):
        if forward not in model.directions:
            continue
        for volume in volumes:
            fake = run(forward, volume.image)
            if backward in model.directions:
                rec = run(backward, fake)
                mae, ssim = masked_mae_ssim(rec, volume.image, volume.mask)
                results.setdefault(f"val/cycle_mae_{label}", []).append(mae)
                results.setdefault(f"val/cycle_ssim_{label}", []).append(ssim)
            if label != "A":
                continue
            pair = [j for i, j in data.val_pairs if data.val_src[i] is volume]
            if not pair:
                continue
            ref = data.val_tgt[pair[0]]
            if cfg.data.tgt_modality == "ct":
                params = output_params(cfg.normalisation.target)
                scores = synthrad2023(denormalise(fake, params), denormalise(ref.image, ref.params), ref.mask)
                for key, value in scores.items():
                    results.setdefault(f"val/{key}", []).append(float(value))
            else:
                mae, ssim = masked_mae_ssim(fake, ref.image, ref.mask)
                results.setdefault("val/mae", []).append(mae)
                results.setdefault("val/ssim", []).append(ssim)
    metrics = {k: float(np.mean(v)) for k, v in results.items()}
    for stat in ("mae", "ssim"):
        parts = [metrics[k] for k in (f"val/cycle_{stat}_A", f"val/cycle_{stat}_B") if k in metrics]
        if parts:
            metrics[f"val/cycle_{stat}"] = float(np.mean(parts))
    return metrics


# Every name validate() can return, for any model and data (checked against train.best_metric).
ALL_VALIDATION_METRICS = (
    *(f"val/cycle_{stat}{part}" for stat in ("mae", "ssim") for part in ("", "_A", "_B")),
    *(f"val/{key}" for key in metric_names("synthrad2023")),
)
# Metrics where lower is better (errors); the others (PSNR, SSIM) are better higher.
_ERROR_METRICS = ("mae",)


def validation_metric_names(model: TranslationModel, data: TrainingData) -> list[str]:
    """The names :func:`validate` returns for this model and data, known before any validation runs.

    Empty when the run has no validation data. Follows :func:`validate`: cycle metrics of a domain
    need both directions, translation metrics (``val/mae``, ...) need validation pairs.
    """
    names: list[str] = []
    both_ways = "AB" in model.directions and "BA" in model.directions
    for label, volumes in (("A", data.val_src), ("B", data.val_tgt)):
        if volumes and both_ways:
            names += [f"val/cycle_mae_{label}", f"val/cycle_ssim_{label}"]
    if names:
        names += ["val/cycle_mae", "val/cycle_ssim"]
    if data.val_pairs and "AB" in model.directions:
        keys = metric_names("synthrad2023") if model.cfg.data.tgt_modality == "ct" else ("mae", "ssim")
        names += [f"val/{key}" for key in keys]
    return names


def choose_best_metric(train: TrainConfig, available: list[str]) -> tuple[str, str]:
    """The metric and mode (``"max"``/``"min"``) that select ``best.pt``, from ``train.best_metric``.

    ``"auto"``: ``val/mae`` where the run computes it (validation pairs), else ``val/cycle_ssim``.
    An explicit name must be a validation metric, and one this run computes when it validates
    (``available`` not empty); a run without validation data writes no ``best.pt`` anyway.

    Raises:
        ConfigError: an explicit ``train.best_metric`` the run cannot compute (one line naming the
            metric and the available ones).
    """
    metric = train.best_metric
    if metric == AUTO:
        metric = "val/mae" if "val/mae" in available else "val/cycle_ssim"
    elif metric not in ALL_VALIDATION_METRICS or (available and metric not in available):
        have = available or list(ALL_VALIDATION_METRICS)
        raise ConfigError(
            f"train.best_metric {metric!r} is not computed by this run; it computes {', '.join(have)}"
            + ("" if available else " (when it has validation data)")
        )
    mode = train.best_mode
    if mode == AUTO:
        mode = "min" if any(key in metric.rsplit("/", 1)[-1] for key in _ERROR_METRICS) else "max"
    return metric, mode


def write_samples(model: TranslationModel, data: TrainingData, path: str | Path) -> np.ndarray:
    """A PNG grid of :meth:`~medcyclegan.models.base.TranslationModel.sample_rows` at ``path``.

    Each domain shows the slice of its sample volume with the most body (the most anatomy). CT tiles
    use a soft-tissue window; an attention generator adds its mask m as a tile (black 0 = input kept,
    white 1 = generated content). Returns the grid (H, W) uint8.
    """
    cfg = model.cfg
    k = cfg.data.context_slices
    slabs, centres = {}, {}
    for domain, volume in zip(("A", "B"), data.sample_volumes()):
        z = int(np.argmax(volume.mask.reshape(-1, volume.mask.shape[2]).sum(axis=0)))
        z_lo, z_hi = max(0, z - k), min(volume.image.shape[2], z + k + 1)
        slabs[domain], centres[domain] = volume.image[:, :, z_lo:z_hi], z - z_lo
    rows = model.sample_rows(slabs, centres)
    records = cfg.normalisation
    by_modality = (
        {cfg.data.src_modality: records.source, cfg.data.tgt_modality: records.target}
        if records is not None
        else {}
    )
    return render_grid(rows, by_modality, path)


def masked_mae_ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """MAE and mean SSIM (skimage, 7-voxel window, data range 2) inside ``mask``, normalised units."""
    if not mask.any():
        return float("nan"), float("nan")
    mae = float(np.abs(pred - ref)[mask].mean())
    win = min(7, *[s if s % 2 == 1 else s - 1 for s in pred.shape])
    if win < 3:
        return mae, float("nan")
    _, ssim_map = structural_similarity(ref, pred, data_range=2.0, win_size=win, full=True)
    return mae, float(ssim_map[mask].mean())
