"""``medcyclegan info``: what a run folder or checkpoint holds, for people and for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcyclegan.checkpoint import (
    checkpoint_config,
    find_checkpoint,
    load_checkpoint,
    load_state_strict,
    same_run,
)
from medcyclegan.config import Config
from medcyclegan.errors import CheckpointError
from medcyclegan.models import model_class


def _check_architecture(data: dict[str, Any], cfg: Config, path: Path) -> None:
    """Builds the networks of the stored config's model and loads the stored weights into them.

    The translators conversion would load (a weight average, with ``model.ema_decay``) too.
    """
    model_type = model_class(cfg.model.kind)
    networks = model_type.build_networks(cfg)
    for direction in model_type.directions:
        key = model_type.translator_state_key(cfg, direction)
        if key not in networks:
            networks[key] = model_type.build_translator(cfg, direction)
    for name, net in networks.items():
        if name not in data:
            raise CheckpointError(f"checkpoint has no {name} weights", path)
        load_state_strict(net, data[name], name, path)


def describe(path: str | Path) -> dict[str, Any]:
    """Summary of a run folder (its ``last.pt``, plus ``best.pt`` if any) or of one checkpoint file.

    Returns:
        A JSON-ready dict: checkpoint, version, modalities, networks with parameter counts, epoch and
        step, training time, normalisation, best validation metric, and the list of checkpoints of a run folder
        (with ``best_error``, the reason, when that folder's ``best.pt`` cannot be loaded).
    """
    path = Path(path)
    ckpt_path = find_checkpoint(path, prefer=("last.pt", "best.pt"))
    data = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(data, ckpt_path)
    _check_architecture(data, cfg, ckpt_path)
    # Per network, as training counted them (state key -> parameters).
    stored = data.get("parameters")
    parameters = {str(k): int(v) for k, v in stored.items()} if isinstance(stored, dict) else {}
    info: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "medcyclegan_version": data.get("version"),
        "model": cfg.model.kind,
        "direction": f"{cfg.data.src_modality} -> {cfg.data.tgt_modality}",
        "epoch": int(data.get("epoch", 0)),
        "step": int(data.get("step", 0)),
        # A step-based schedule (optim.n_steps) has no fixed epoch count.
        "total_epochs": None if cfg.optim.n_steps is not None else cfg.optim.total_epochs,
        "total_steps": cfg.optim.n_steps,
        "max_steps": cfg.train.max_steps,
        "networks": {
            **model_class(cfg.model.kind).describe_networks(cfg, parameters),
            "parameters": parameters,
            "in_channels": cfg.data.in_channels,
        },
        "data": {
            "image_size": cfg.data.image_size,
            "spacing_mm": cfg.data.spacing,
            "context_slices": cfg.data.context_slices,
        },
        "normalisation": cfg.to_dict()["normalisation"],  # as stored: {src: ..., tgt: ...}
        "best": data.get("best"),
        # Training wall time to this checkpoint, validation excluded (None: written before 0.x kept it).
        "train_seconds": data.get("train_seconds"),
    }
    folder = ckpt_path.parent
    if path.is_dir():
        info["run_dir"] = str(path)
        info["checkpoints"] = sorted(p.name for p in folder.glob("*.pt"))
        best = folder / "best.pt"
        # A best.pt of another run (left by an earlier run in this folder) says nothing of this one.
        if best.is_file() and same_run(best, folder / "last.pt"):
            try:
                info["best"] = load_checkpoint(best).get("best")
            except CheckpointError as exc:
                # The run is still described (from last.pt); convert refuses best.pt with this message.
                info["best_error"] = str(exc)
    return info
