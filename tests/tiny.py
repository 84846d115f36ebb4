"""Tiny models, the one phantom writer and the session's trained run, shared by every test module.

Names (each means one thing):

* :data:`TINY_MODEL`: the tiny networks and crops (ngf/ndf 8, 2 residual blocks, 2 discriminator
  layers, 32 px crops, batch 2, CPU); well under a second a step on 2 CPU cores. Tests extend it with
  what they exercise, e.g. ``{**TINY_MODEL, "train.steps_per_epoch": 2}``.
* :data:`TINY_RUN`: :data:`TINY_MODEL` with a short schedule (2 + 1 epochs of 4 steps, a log row and
  a checkpoint every step); :func:`tiny_config` builds it, :func:`write_config_yaml` writes it.
* :data:`SESSION_RUN`: the config of the session's trained run (``trained_run`` in conftest.py):
  :data:`TINY_RUN`, no validation, one step.
* :data:`HEAD_SHAPE`, :data:`AFFINE`: the grid of every phantom volume :func:`write_domain` writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
import yaml

import medcyclegan.io.atomic
from medcyclegan.config import Config, load_config
from medcyclegan.io.lock import LOCK_FILE
from medcyclegan.sample_data import CT_MAX_HU, CT_MIN_HU

TINY_MODEL: dict[str, Any] = {
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
    **TINY_MODEL,
    "optim.n_epochs": 2,
    "optim.n_epochs_decay": 1,
    "optim.pool_size": 4,
    "train.steps_per_epoch": 4,
    "train.log_every": 1,
    "train.checkpoint_every": 1,
}
# The session's trained run: one step, so it writes checkpoints/last.pt only (no best.pt, no epoch_*.pt).
SESSION_RUN: dict[str, Any] = {**TINY_RUN, "data.val_fraction": 0.0, "train.max_steps": 1}
# Voxel size of every synthetic volume here, mm, and the size of a training head, voxels.
AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])
HEAD_SHAPE = (40, 44, 6)
# Formats write_domain writes through SimpleITK (compressed); .nii.gz goes through nibabel.
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")


def free_port() -> int:
    """A TCP port free on this machine now, for a test's process group (torch.distributed, gloo)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def join_process_group(rank: int, world_size: int, port: int) -> None:
    """Sets this process up as rank ``rank`` of ``world_size`` as torchrun would (environment), on
    one CPU thread: what every test rank worker does first."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def tiny_config(**overrides: Any) -> Config:
    """:data:`TINY_RUN` with ``overrides`` (dotted keys through ``**{"optim.pool_size": 2}``)."""
    return load_config(None, {**TINY_RUN, **overrides})


def write_config_yaml(path: Path, settings: dict[str, Any]) -> Path:
    """Writes dotted ``settings`` (e.g. :data:`TINY_RUN`) as a nested YAML config file; returns ``path``."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(nested))
    return path


def files(folder: Path) -> list[Path]:
    """The ``.nii.gz`` files of ``folder``, sorted."""
    return sorted(folder.glob("*.nii.gz"))


def head(
    shape: tuple[int, int, int],
    modality: str,
    seed: int | np.random.Generator = 0,
    *,
    cavity: bool = True,
) -> np.ndarray:
    """An ellipsoid 'head' with a bright or dark rim (skull) and an air cavity, plus noise.

    CT in HU (int16, within the scanners' [-1024, 3071]), MR float32. ``seed`` is a seed or a
    generator (several heads from one stream); ``cavity=False`` leaves the air cavity out (a body
    without holes, for checks of its outline).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = rng.uniform(0.65, 0.8)
    dist = np.sqrt((x / r) ** 2 + (y / (r * 1.1)) ** 2 + (z / 1.4) ** 2)
    inside, skull = dist < 1.0, (dist > 0.8) & (dist < 1.0)
    cavity = (np.sqrt(x**2 + (y - 0.2) ** 2) < 0.15) & cavity
    if modality == "ct":
        vol = np.full(shape, -1000.0)
        vol[inside] = 40.0
        vol[skull] = 1200.0
        vol[cavity & inside] = -900.0
        # Clipped to the HU range of a real scan (and of the sample-data phantom), which is also
        # what a CT -> CT identity model round-trips exactly.
        return np.clip(vol + rng.normal(0, 10, shape), CT_MIN_HU, CT_MAX_HU).astype(np.int16)
    vol = np.zeros(shape)
    vol[inside] = 600.0
    vol[skull] = 80.0
    vol[cavity & inside] = 20.0
    return np.abs(vol + rng.normal(0, 15, shape)).astype(np.float32)


def save_volume(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Writes ``array`` (voxel order x, y, z) to ``path`` in the format its suffix names; returns ``path``.

    ``.nii.gz``/``.nii`` with nibabel and ``affine``; :data:`ITK_SUFFIXES` with SimpleITK (compressed),
    with the voxel size of ``affine`` and ITK's default origin and direction.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(ITK_SUFFIXES):
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing([float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)])
        sitk.WriteImage(image, str(path), useCompression=True)
    else:
        nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_domain(
    folder: Path,
    modality: str,
    n: int,
    seed: int,
    shape: tuple[int, int, int] = HEAD_SHAPE,
    *,
    suffix: str = ".nii.gz",
) -> Path:
    """The phantom writer: ``n`` heads ``case00<suffix> ...`` of one modality in ``folder``; returns it.

    CT int16 HU, MR float32, drawn from one random stream seeded with ``seed`` (see :func:`head`).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_volume(folder / f"case{i:02d}{suffix}", head(shape, modality, rng))
    return folder


def write_domains(
    root: Path, n: int = 2, seeds: tuple[int, int] = (1, 2), shape: tuple[int, int, int] = HEAD_SHAPE
) -> tuple[Path, Path]:
    """Both training domains, ``root/mr`` and ``root/ct`` (:func:`write_domain`); returns the two folders."""
    return write_domain(root / "mr", "mr", n, seeds[0], shape), write_domain(
        root / "ct", "ct", n, seeds[1], shape
    )


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too, lock files not) with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


@dataclass(frozen=True)
class TrainedRun:
    """The session's tiny trained run (conftest.py's ``trained_run``); read-only: copy it to change it.

    Attributes:
        root: the folder holding everything below.
        mr, ct: the training folders (:func:`write_domains`: 2 heads each, seeds 1 and 2).
        run: the run folder, trained through ``train_from_folders`` with :data:`SESSION_RUN` (step 1).
        config: :data:`TINY_RUN` without validation as a YAML file, for CLI trainings on the same data.
    """

    root: Path
    mr: Path
    ct: Path
    run: Path
    config: Path


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
os.ftruncate(fd, 0)  # as medcyclegan.io.lock does: a longer pid left there would show through
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
