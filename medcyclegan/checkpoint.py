"""Checkpoints: everything needed to resume exactly, saved atomically, loaded without unpickling code.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts written with
``torch.save`` to a temporary file and renamed, and read back with ``torch.load(weights_only=True)``
so that a malicious or foreign file can never execute code. It holds the four networks (and the
generators' weight averages with ``model.ema_decay``), both optimisers and schedulers, the AMP
scaler state, both image pools, the random generator states, the epoch and step counters, the best
validation value and the fully resolved config (YAML text).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcyclegan import __version__
from medcyclegan.config import Config, config_from_yaml
from medcyclegan.errors import CheckpointError, ConfigError, OutputError
from medcyclegan.io.atomic import atomic_path

FORMAT = "medcyclegan-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# An exported model (medcyclegan export): run by onnxruntime, read by medcyclegan.onnx_model.
ONNX_SUFFIX = ".onnx"

logger = logging.getLogger("medcyclegan")


def rng_state() -> dict[str, Any]:
    """Random generator states of Python, NumPy and torch (CPU and CUDA), as safe-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Writes ``payload`` (plus format markers) atomically: a crash never leaves a partial file."""
    path = Path(path)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__, **payload}
    try:
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
    except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "write failed"
        raise OutputError(f"cannot be written ({first})", path) from None
    return path


# How torch.save files begin: a zip archive (the default since torch 1.6) or a pickle (protocol 2+).
_TORCH_HEADS = (b"PK\x03\x04", b"\x80")


def _not_a_torch_file(head: bytes) -> str | None:
    """What a file that cannot be a torch checkpoint looks like, from its first bytes; None if it may be one.

    Checked before unpickling so that an image given where a checkpoint belongs gets a message that
    says so, instead of the weights-only unpickler's confusing complaint about its bytes.
    """
    if head.startswith(_TORCH_HEADS):
        return None
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (e.g. a .nii.gz image)"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "a NIfTI image"
    if head.startswith(b"NRRD"):
        return "an NRRD image"
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if b"ObjectType" in head[:64] or b"NDims" in head[:64]:
        return "a MetaImage (.mha/.mhd) file"
    if head[8:10] == b'{"':  # safetensors: an 8-byte header length, then the JSON header
        return "a safetensors file"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 3:  # a character cut by the 4 KiB read
                return "a text file"
    return "neither a zip archive nor a pickle"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint safely (``weights_only=True``) and checks that it is one of ours.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted, needs arbitrary unpickling,
            or is not a medcyclegan checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    if path.stat().st_size == 0:
        raise CheckpointError("checkpoint is empty (0 bytes)", path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise CheckpointError(f"cannot be read ({exc.strerror or type(exc).__name__})", path) from None
    looks_like = _not_a_torch_file(head)
    if looks_like is not None:
        raise CheckpointError(
            f"not a medcyclegan checkpoint: it is {looks_like} (checkpoints are the .pt files a "
            "training run writes, e.g. run/checkpoints/best.pt)",
            path,
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                "refused: loading it would need arbitrary unpickling (only weights-only checkpoints are loaded)",
                path,
            ) from None
        raise CheckpointError(f"corrupted checkpoint ({first})", path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # torch's zip reader goes on with advice for its own developers: its first sentence says it.
        first = first.split(". ")[0]
        raise CheckpointError(f"corrupted or truncated checkpoint ({first[:160]})", path) from None
    except Exception as exc:  # the weights-only unpickler raises KeyError etc. on arbitrary bytes
        raise CheckpointError(f"corrupted checkpoint ({type(exc).__name__} while reading it)", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError("not a medcyclegan checkpoint (no format marker)", path)
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {data['format_version']} is newer than this medcyclegan ({FORMAT_VERSION}); upgrade",
            path,
        )
    return data


def checkpoint_config(data: dict[str, Any], path: str | Path) -> Config:
    """The resolved run config stored in a checkpoint."""
    try:
        return config_from_yaml(data["config_yaml"], source=f"{path} (stored config)")
    except KeyError:
        raise CheckpointError("checkpoint has no stored config", path) from None
    except ConfigError as exc:
        raise CheckpointError(f"stored config is invalid: {exc}", path) from None


def load_state_strict(module: torch.nn.Module, state: dict[str, Any], name: str, path: str | Path) -> None:
    """``load_state_dict`` that reports an architecture mismatch as one clear line."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        text = str(exc)
        detail = "missing or unexpected layers" if "key(s)" in text else "tensor shapes differ"
        raise CheckpointError(
            f"network {name} does not match this model's architecture ({detail}); "
            "was it trained with another generator, ngf, n_blocks or context_slices?",
            path,
        ) from None


def is_onnx_path(path: str | Path | None) -> bool:
    """True for a path named ``*.onnx`` (any case): an exported model, not a run or a checkpoint."""
    return path is not None and Path(path).name.lower().endswith(ONNX_SUFFIX)


def find_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.pt", "last.pt")) -> Path:
    """A checkpoint file from a run folder (``best.pt``, else ``last.pt``) or the file itself.

    A ``best.pt`` of another run than the folder's ``last.pt`` (see :func:`same_run`) is never
    picked: it is skipped with a warning.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        for name in prefer:
            if (folder / name).is_file():
                if name == "best.pt" and not same_run(folder / name, folder / "last.pt"):
                    continue
                return folder / name
        raise CheckpointError(f"no checkpoint ({' or '.join(prefer)}) in this run folder", path)
    raise CheckpointError("no such run folder or checkpoint", path)


def _peek(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint's dictionary, memory-mapped (weights not read), or ``None`` when unreadable.

    Cheap even for a checkpoint of hundreds of MB; loaded weights-only like every checkpoint.
    """
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable file is reported by the load that actually uses it
        return None
    return data if isinstance(data, dict) else None


def checkpoint_run_id(path: str | Path) -> str | None:
    """The run id stored in a checkpoint (``None``: written before run ids, or unreadable)."""
    run_id = (_peek(path) or {}).get("run_id")
    return run_id if isinstance(run_id, str) else None


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """Which model a checkpoint holds, for records of what made an output: run id and step.

    ``run_id`` is ``None`` for a checkpoint from before run ids (or an unreadable one); the resolved
    path then stands in for it.
    """
    data = _peek(path) or {}
    run_id = data.get("run_id")
    step = data.get("step")
    return {
        "checkpoint": str(Path(path).resolve()),
        "run_id": run_id if isinstance(run_id, str) else None,
        "step": int(step) if isinstance(step, int) else None,
    }


def is_medcyclegan_checkpoint(path: str | Path) -> bool:
    """True for a readable file with medcyclegan's checkpoint format marker (cheap, see :func:`_peek`)."""
    return (_peek(path) or {}).get("format") == FORMAT


def same_run(best: str | Path, last: str | Path) -> bool:
    """False (with a warning) when ``best`` and ``last`` carry different run ids.

    Each run draws an id at its fresh start and keeps it on resume; a ``best.pt`` with another id
    than ``last.pt`` was left by an earlier run in the same folder. A missing ``last.pt`` or id
    (checkpoints from before run ids) cannot tell, and counts as the same run.
    """
    best, last = Path(best), Path(last)
    if not last.is_file():
        return True
    best_id, last_id = checkpoint_run_id(best), checkpoint_run_id(last)
    if best_id is None or last_id is None or best_id == last_id:
        return True
    logger.warning(
        "%s: belongs to another run than %s (left by an earlier run in this folder); ignoring it",
        best,
        last.name,
    )
    return False


def prune_epoch_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Deletes all but the ``keep`` newest ``epoch_XXXX.pt`` of ``folder``; returns what was deleted.

    Call it after the newest checkpoint is written: the folder is synced first, so a crash cannot
    lose the old files before the new one is on disk. ``best.pt`` and ``last.pt`` are never touched.
    """
    folder = Path(folder)
    numbered = []
    for path in folder.glob("epoch_*.pt"):
        digits = path.stem[len("epoch_") :]
        if digits.isdigit():
            numbered.append((int(digits), path))
    numbered.sort()
    stale = [path for _, path in numbered[: max(0, len(numbered) - keep)]]
    if not stale:
        return []
    _fsync_folder(folder)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_folder(folder: Path) -> None:
    """Makes the folder's entries durable (the renames of the new checkpoints) where the OS allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the file itself was synced before its rename
    finally:
        os.close(fd)


def newest_run(runs_dir: str | Path = "runs") -> Path:
    """The most recently modified run folder with a checkpoint under ``runs_dir``."""
    runs_dir = Path(runs_dir)
    candidates = [
        p
        for p in (runs_dir.iterdir() if runs_dir.is_dir() else [])
        if p.is_dir() and any((p / "checkpoints" / n).is_file() for n in ("best.pt", "last.pt"))
    ]
    if not candidates:
        raise CheckpointError(f"no trained run found under {runs_dir}/; pass --model RUN_DIR or CHECKPOINT")
    return max(candidates, key=lambda p: max(f.stat().st_mtime for f in (p / "checkpoints").iterdir()))
