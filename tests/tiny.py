"""Tiny models and synthetic volumes shared by the training, conversion and CLI tests.

Every model here trains in well under a second a step on 2 CPU cores: ngf/ndf 8, 2 residual blocks,
2 discriminator layers, 32 px crops. Tests extend :data:`TINY` with what they exercise, e.g.
``{**TINY, "optim.pool_size": 4}``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import medcyclegan.io.atomic
from medcyclegan.config import Config, load_config

TINY: dict[str, Any] = {
    "data.image_size": 32,
    "data.min_body_fraction": 0.05,
    "model.ngf": 8,
    "model.n_blocks": 2,
    "model.ndf": 8,
    "model.n_layers_d": 2,
    "optim.batch_size": 2,
    "train.device": "cpu",
}
# A short schedule with a log line and a checkpoint every step (training and resume tests).
TINY_RUN: dict[str, Any] = {
    **TINY,
    "optim.n_epochs": 2,
    "optim.n_epochs_decay": 1,
    "optim.pool_size": 4,
    "train.steps_per_epoch": 4,
    "train.log_every": 1,
    "train.checkpoint_every": 1,
}
# Voxel size of every synthetic volume here, mm.
AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])


def tiny_config(**overrides: Any) -> Config:
    """:data:`TINY_RUN` with ``overrides`` (dotted keys through ``**{"optim.pool_size": 2}``)."""
    return load_config(None, {**TINY_RUN, **overrides})


def files(folder: Path) -> list[Path]:
    """The ``.nii.gz`` files of ``folder``, sorted."""
    return sorted(folder.glob("*.nii.gz"))


def head(shape: tuple[int, int, int], rng: np.random.Generator, modality: str) -> np.ndarray:
    """An ellipsoid 'head' with a bright or dark rim (skull) and a cavity, plus noise."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = rng.uniform(0.65, 0.8)
    dist = np.sqrt((x / r) ** 2 + (y / (r * 1.1)) ** 2 + (z / 1.4) ** 2)
    inside, skull, cavity = dist < 1.0, (dist > 0.8) & (dist < 1.0), np.sqrt(x**2 + (y - 0.2) ** 2) < 0.15
    if modality == "ct":
        vol = np.full(shape, -1000.0)
        vol[inside] = 40.0
        vol[skull] = 1200.0
        vol[cavity & inside] = -900.0
        return (vol + rng.normal(0, 10, shape)).astype(np.int16)
    vol = np.zeros(shape)
    vol[inside] = 600.0
    vol[skull] = 80.0
    vol[cavity & inside] = 20.0
    return np.abs(vol + rng.normal(0, 15, shape)).astype(np.float32)


def write_domain(folder: Path, modality: str, n: int, seed: int, shape=(40, 44, 6)) -> Path:
    """``n`` heads ``case00.nii.gz ...`` (CT int16 HU, MR float32) in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        nib.save(nib.Nifti1Image(head(shape, rng, modality), AFFINE), folder / f"case{i:02d}.nii.gz")
    return folder


def write_ring_domain(folder: Path, modality: str, n: int, seed: int, shape=(36, 40, 5)) -> Path:
    """``n`` elliptic cylinders with a rim (skull-like), CT in HU (int16) or MR (float32); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    for i in range(n):
        r = np.sqrt((x / rng.uniform(0.6, 0.8)) ** 2 + (y / 0.8) ** 2)
        if modality == "ct":
            vol = np.where(r < 1, np.where(r > 0.8, 1200.0, 40.0), -1000.0) + rng.normal(0, 10, shape)
            vol = vol.astype(np.int16)
        else:
            vol = np.where(r < 1, np.where(r > 0.8, 80.0, 600.0), 0.0) + np.abs(rng.normal(0, 15, shape))
            vol = vol.astype(np.float32)
        nib.save(nib.Nifti1Image(vol, AFFINE), folder / f"case{i:02d}.nii.gz")
    return folder


@dataclass
class CliResult:
    """What ``medcyclegan ARGS`` gave (from the ``cli`` fixture of conftest.py, or a subprocess)."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr as one line of single-spaced words (rich wraps long lines)."""
        return " ".join((self.out + self.err).split())


def assert_clean_error(result: CliResult, *names: object, notices_allowed: bool = False) -> str:
    """A non-zero exit and exactly one ``error:`` line naming ``names``; no traceback. Returns the line.

    With ``notices_allowed`` log lines (warnings, progress) may come first; the error line is last.
    """
    assert result.code not in (0, None), (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.err
    if not notices_allowed:
        assert lines == errors, f"expected only the error line on stderr, got: {result.err!r}"
    else:
        assert lines[-1] == errors[0], result.err
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def race_at_temporary(monkeypatch: Any) -> list[Path]:
    """Lets "another process" create each final file as soon as its temporary exists.

    That is after every existence check and before the temporary is published; returns the paths
    it created.
    """
    created: list[Path] = []
    real = medcyclegan.io.atomic.tempfile.mkstemp

    def mkstemp(*args: object, prefix: str, dir: Path, **kwargs: object) -> tuple[int, str]:
        result = real(*args, prefix=prefix, dir=dir, **kwargs)
        final = Path(dir) / prefix[1:-1]  # atomic_path's temporaries are ".{name}.{random}.tmp..."
        final.write_text("the other process's file")
        created.append(final)
        return result

    monkeypatch.setattr(medcyclegan.io.atomic.tempfile, "mkstemp", mkstemp)
    return created


def one_error_line(result: CliResult, *, notices_allowed: bool = False) -> str:
    """Exit status 2 and exactly one ``error:`` line (see :func:`assert_clean_error`); returns it."""
    assert result.code == 2, (result.code, result.out, result.err)
    return assert_clean_error(result, notices_allowed=notices_allowed)


# Another process working in a folder, as the kernel sees it: an exclusive flock on the folder's lock
# file (medcyclegan.io.lock.LOCK_FILE), with its pid inside.
_HOLD_LOCK = """\
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".medcyclegan.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def folder_locked_by_another_process(folder: Path) -> Iterator[subprocess.Popen]:
    """A subprocess holding ``folder``'s lock while the block runs; SIGKILLed (its lock dropped) after."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=60)
