"""The CycleGAN trainer: the reference training loop, resumable exactly, with validation.

Notation as in Zhu et al. (2017): domain A is the source modality (e.g. MR), B the target (e.g. CT);
``G_AB`` translates A to B, ``G_BA`` B to A; ``D_A`` judges images of A, ``D_B`` images of B.

One step, in the reference's order:
    1. fake_B = G_AB(A), rec_A = G_BA(fake_B), fake_A = G_BA(B), rec_B = G_AB(fake_A)
    2. G update (discriminators frozen): adversarial terms + lambda_cycle * (|rec_A - A| + |rec_B - B|)
       + lambda_cycle * lambda_identity * (|G_AB(B) - B| + |G_BA(A) - A|) [+ mask / outline terms]
    3. D update: 0.5 * (loss(D(real)) + loss(D(pool(fake)))) for D_A and D_B.

Exact resume: the batches of an epoch are a pure function of (seed, epoch), augmentation of an item a
pure function of (seed, epoch, index), the image pools have their own generators, and a checkpoint
holds networks, optimisers, schedulers, pools, RNG states and counters. A run of n steps stopped
after k and resumed ends with the same weights as an uninterrupted run of n steps (on CPU).

Schedule: the reference's epochs (``optim.n_epochs`` constant, then ``optim.n_epochs_decay`` of linear
decay; the schedulers step at epoch ends), or with ``optim.n_steps`` the same rule counted in steps
(the schedulers step after every step) while epochs continue as needed. ``train.max_steps`` only
stops a run early; asking for more steps than the schedule has is refused before training.

Every checkpoint records the input files (:mod:`medcyclegan.train.data_record`); a resume on other
data is refused before the data is prepared.

Speed (see ``train.channels_last``, ``train.compile``, ``train.amp``): on CUDA the step runs in bf16
autocast with channels-last tensors, fused Adam, cuDNN autotuning, pinned memory and non-blocking
copies, and never waits for the GPU: the losses are read back (and checked for NaN) only every
``train.log_every`` steps.

Several processes (``torchrun``, see :mod:`medcyclegan.train.distributed`): each process takes every
``world_size``-th batch of the epoch's batch list (a global step uses ``world_size`` consecutive
batches), the networks are wrapped in ``DistributedDataParallel`` (gradients averaged), every
process keeps its own image pools, and rank 0 alone logs, validates, draws samples and writes
checkpoints (holding every rank's pools) while the others wait. Counters and the learning-rate
schedule count global steps and epochs, identical on every process.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medcyclegan import __version__
from medcyclegan.config import Config, Normalisation, config_to_yaml, save_config
from medcyclegan.errors import CheckpointError, ConfigError, OutputError, TrainingError, TrainingInterrupted
from medcyclegan.io.atomic import atomic_path, atomic_write_text
from medcyclegan.io.lock import FolderLock, remove_stale_temporaries
from medcyclegan.runtime import resolve_device
from medcyclegan.train import distributed
from medcyclegan.train import resume as resume_rules
from medcyclegan.train.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    load_state_strict,
    prune_epoch_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medcyclegan.train.data_record import DATA_FILE

logger = logging.getLogger("medcyclegan")

# Everything a run writes into its folder (sources.json is api.SOURCES_FILE). Overwriting a run moves
# each of these aside, checkpoints/ first; add any new file of the run here.
RUN_ARTEFACTS = (
    "checkpoints",
    "config.yaml",
    "metrics.csv",
    "val_metrics.csv",
    "samples",
    "tb",
    "sources.json",
    DATA_FILE,
)
# Hidden folder of a run being removed by --overwrite (deleted at the next start if a crash left it).
TRASH_PREFIX = ".previous-run."
_TRASH_NAME = re.compile(re.escape(TRASH_PREFIX) + r"[a-z0-9_]{8}")
# Sub-folders of a run folder where atomic writes leave their temporaries.
TEMPORARY_FOLDERS = (".", "checkpoints", "samples")

LOSS_COLUMNS = (
    "loss_G",
    "loss_D_A",
    "loss_D_B",
    "G_adv_AB",
    "G_adv_BA",
    "cycle_A",
    "cycle_B",
    "idt_A",
    "idt_B",
    "mask_A",
    "mask_B",
    "attention",
)


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    run_dir: Path
    step: int
    epoch: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_value: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms, unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def epoch_batches(
    n_items: int, batch_size: int, steps: int, seed: int, epoch: int, domain: int
) -> list[list[int]]:
    """The batches of one epoch: shuffled indices, cycled as needed, a pure function of its arguments."""
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, domain))
    need = steps * batch_size
    order: list[int] = []
    while len(order) < need:
        order.extend(torch.randperm(n_items, generator=generator).tolist())
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Reference schedule: constant for ``n_epochs``, then linear decay towards 0 over ``n_epochs_decay``.

    The step-based schedule (``optim.n_steps``) is the same rule counted in steps.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def set_requires_grad(modules: Sequence[torch.nn.Module], flag: bool) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(flag)


class _GeneratorStep(torch.nn.Module):
    """A generator as the training step calls it: ``forward(x, with_attention)``.

    ``DistributedDataParallel`` and ``torch.compile`` wrap only ``forward``; this gives the attention
    output of an attention generator a path through ``forward`` (``(output, mask)``; ``(output,
    None)`` for a plain generator) while ``forward(x)`` stays the plain translation.
    """

    def __init__(self, generator: torch.nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, with_attention: bool = False) -> Any:
        if with_attention:
            from medcyclegan.nets.slicewise import forward_with_attention

            return forward_with_attention(self.generator, x)
        return self.generator(x)


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter on processes other than rank 0."""

    def add_scalar(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def add_image(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """Trains a CycleGAN between two folders (lists) of volumes and writes a run folder.

    Args:
        cfg: the resolved configuration (``cfg.normalisation`` is filled here).
        run_dir: output folder: ``config.yaml``, ``checkpoints/``, ``metrics.csv``,
            ``val_metrics.csv``, ``tb/`` (TensorBoard) and ``samples/``.
        src_paths: volumes of domain A (``cfg.data.src_modality``).
        tgt_paths: volumes of domain B.
        val_src_paths: validation volumes of A; with ``val_tgt_paths`` of the same case names (and
            grids), translation metrics are computed too.
        val_tgt_paths: validation volumes of B.
        src_mask_paths: optional body masks for ``src_paths`` (same order, same grids).
        tgt_mask_paths: optional body masks for ``tgt_paths``.
        resume: a checkpoint (or run folder) to continue from; its stored config is used.
        show_progress: draw a rich progress bar.
        overwrite: allow starting afresh in a run folder that already holds a run (every artefact
            of the old run, :data:`RUN_ARTEFACTS`, is removed first).

    The run folder is locked from here to the end of :meth:`fit` (rank 0 of a multi-process run
    holds the lock for all ranks): another process starting in it is refused.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        src_paths: Sequence[Path],
        tgt_paths: Sequence[Path],
        *,
        val_src_paths: Sequence[Path] | None = None,
        val_tgt_paths: Sequence[Path] | None = None,
        src_mask_paths: Sequence[Path] | None = None,
        tgt_mask_paths: Sequence[Path] | None = None,
        resume: str | Path | None = None,
        show_progress: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.dist = distributed.detect()
        self._run_lock = self._lock_run_dir()
        self.show_progress = show_progress and self.dist.is_main
        self.resume_data: dict[str, Any] | None = None
        if resume is not None:
            resume_path = Path(resume)
            if resume_path.is_dir():
                resume_path = resume_path / "checkpoints" / "last.pt"
            self.resume_path: Path | None = resume_path
            self.resume_data = load_checkpoint(resume_path)
            saved_world = int(self.resume_data.get("world_size", 1))
            if saved_world != self.dist.world_size:
                # Each process has its own image pools and share of the batches: resuming is exact
                # only with as many processes as wrote the checkpoint.
                raise CheckpointError(
                    f"written by a run of {saved_world} process(es), resumed with {self.dist.world_size}; "
                    f"resume with the same number (--gpus {saved_world} or torchrun --nproc_per_node "
                    f"{saved_world})",
                    resume_path,
                )
            stored = checkpoint_config(self.resume_data, resume_path)
            cfg = self._merge_resume_config(stored, cfg)
        else:
            self.resume_path = None
            self._check_fresh_run_dir(overwrite)
        self.cfg = cfg
        self.device = distributed.setup(self.dist, resolve_device(cfg.train.device))
        self.amp = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and self.device.type == "cuda")
        self.channels_last = (
            self.device.type == "cuda" if cfg.train.channels_last is None else bool(cfg.train.channels_last)
        )
        self._seed_everything(cfg.train.seed)
        self.data_record = self._record_data(
            src_paths, tgt_paths, val_src_paths, val_tgt_paths, src_mask_paths, tgt_mask_paths
        )
        self._prepare_data(src_paths, tgt_paths, val_src_paths, val_tgt_paths, src_mask_paths, tgt_mask_paths)
        self._build_models()
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        # Drawn at a fresh start, kept on resume: tells this run's checkpoints from an earlier run's.
        self.run_id = uuid.uuid4().hex
        if self.resume_data is not None:
            self._restore(self.resume_data)
        self._build_step_networks()
        self._stop_signal: str | None = None
        self.history: list[dict[str, float]] = []
        self.val_history: list[dict[str, float]] = []

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0; always in a single-process run)."""
        return self.dist.is_main

    # ------------------------------------------------------------------ setup
    def _lock_run_dir(self) -> FolderLock | None:
        """Locks the run folder for this process, then removes what a killed process left there.

        Only rank 0 of a multi-process run locks (for all ranks: they must not block each other).
        A second process training in the folder is refused with one line. Removed under the lock:
        atomic-write temporaries of a write cut short, and the trash of an interrupted --overwrite.
        """
        if not self.dist.is_main:
            return None
        lock = FolderLock(self.run_dir, holder="training process", place="run folder").acquire()
        weakref.finalize(self, lock.release)
        # Only what _move_aside_previous_run names so (mkdtemp: 8 random characters), never a link.
        trash = [
            p
            for p in self.run_dir.glob(TRASH_PREFIX + "*")
            if _TRASH_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
        ]
        # A trash folder means an --overwrite was cut short: the user asked for the rest to go too.
        self._overwrite_interrupted = bool(trash)
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)
        for sub in TEMPORARY_FOLDERS:
            remove_stale_temporaries(self.run_dir / sub)
        return lock

    def _move_aside_previous_run(self, overwrite: bool) -> None:
        """Removes every artefact of an earlier run (:data:`RUN_ARTEFACTS`) from the run folder.

        Each is renamed into one hidden trash folder, ``checkpoints/`` first, and the trash is then
        deleted: a crash part-way leaves no checkpoint that convert, info or --resume would take
        for a run, and the next start finishes the removal. Without ``overwrite`` (called only when
        the folder has no checkpoint) what an interrupted --overwrite, or a run stopped before its
        first checkpoint (its ``config.yaml`` tells), left is removed with a warning; files of those
        names in any other folder are someone else's, and refused.
        """
        present = [name for name in RUN_ARTEFACTS if os.path.lexists(self.run_dir / name)]
        if not present:
            return
        foreign = _foreign_run_files(self.run_dir, present)
        if foreign:
            # Even with --overwrite: it removes a run's own files, never the user's (e.g. --out ~).
            listed = ", ".join(foreign[:_FOREIGN_SHOWN]) + (
                f" and {len(foreign) - _FOREIGN_SHOWN} more" if len(foreign) > _FOREIGN_SHOWN else ""
            )
            raise OutputError(
                f"holds {listed}, which no medcyclegan run wrote; nothing was removed (--overwrite removes "
                "only a run's own files): move them away, or choose another --out",
                self.run_dir,
            )
        shown = ", ".join(present)
        if overwrite:
            logger.info("--overwrite: removing the previous run in %s (%s)", self.run_dir, shown)
        elif self._overwrite_interrupted:
            logger.warning(
                "%s: an interrupted --overwrite left %s of the previous run; removing them",
                self.run_dir,
                shown,
            )
        elif _is_run_config(self.run_dir / "config.yaml"):
            logger.warning(
                "%s: a run that stopped before its first checkpoint left %s; removing them",
                self.run_dir,
                shown,
            )
        else:
            raise OutputError(
                f"holds {shown} but no checkpoint; pass --overwrite to start afresh (they are removed)",
                self.run_dir,
            )
        try:
            trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=self.run_dir))
            for name in present:
                os.rename(self.run_dir / name, trash / name)
        except OSError as exc:
            raise OutputError(
                f"cannot move the previous run's files aside ({exc.strerror or exc})", self.run_dir
            ) from None
        shutil.rmtree(trash, ignore_errors=True)

    def _check_fresh_run_dir(self, overwrite: bool) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")) and not overwrite:
            raise OutputError(
                "already holds a training run; continue it with --resume, or pass --overwrite to start afresh",
                self.run_dir,
            )
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create run folder ({exc.strerror})", self.run_dir) from None
        # One probe per rank: processes of one run must not delete each other's probe.
        probe = self.run_dir / f".write-test-{self.dist.rank}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            raise OutputError("run folder is not writable", self.run_dir) from None
        if self.dist.is_main:
            self._move_aside_previous_run(overwrite)

    @staticmethod
    def _merge_resume_config(stored: Config, requested: Config) -> Config:
        """The stored config with the run-control changes of ``requested``; any other difference is
        refused naming key, stored and given value (see :mod:`medcyclegan.train.resume`)."""
        return resume_rules.merge_resume_config(stored, requested)

    def _record_data(self, *lists: Sequence[Path] | None) -> dict[str, Any]:
        """The record of the input files (rank 0 hashes them); on resume, refuses other data.

        ``lists`` are the files of :data:`~medcyclegan.train.data_record.ROLES`, in that order.
        """
        from medcyclegan.train.data_record import ROLES, check_same_data, record_data

        record = record_data(dict(zip(ROLES, lists))) if self.dist.is_main else None
        record = distributed.broadcast_object(record, self.dist)
        if self.resume_data is not None:
            check_same_data(self.resume_data.get("data"), record, self.resume_path or self.run_dir)
        return record

    def _seed_everything(self, seed: int) -> None:
        import random

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _prepare_data(
        self,
        src_paths: Sequence[Path],
        tgt_paths: Sequence[Path],
        val_src_paths: Sequence[Path] | None,
        val_tgt_paths: Sequence[Path] | None,
        src_mask_paths: Sequence[Path] | None,
        tgt_mask_paths: Sequence[Path] | None,
    ) -> None:
        from medcyclegan.data.cache import load_prepared
        from medcyclegan.data.normalise import domain_record
        from medcyclegan.data.slices import SliceDataset
        from medcyclegan.io.discovery import case_name

        data_cfg = self.cfg.data
        src_paths, tgt_paths = list(src_paths), list(tgt_paths)
        src_masks = list(src_mask_paths) if src_mask_paths else None
        tgt_masks = list(tgt_mask_paths) if tgt_mask_paths else None
        if val_src_paths is None and val_tgt_paths is None and data_cfg.val_fraction > 0:
            src_paths, val_src_list, src_masks = self._hold_out(src_paths, src_masks, 0)
            tgt_paths, val_tgt_list, tgt_masks = self._hold_out(tgt_paths, tgt_masks, 1)
        else:
            val_src_list = list(val_src_paths or [])
            val_tgt_list = list(val_tgt_paths or [])
        cache_dir = data_cfg.cache_dir
        self.src_volumes = load_prepared(
            src_paths, data_cfg.src_modality, data_cfg, masks=src_masks, cache_dir=cache_dir
        )
        self.tgt_volumes = load_prepared(
            tgt_paths, data_cfg.tgt_modality, data_cfg, masks=tgt_masks, cache_dir=cache_dir
        )
        self.val_src = load_prepared(val_src_list, data_cfg.src_modality, data_cfg, cache_dir=cache_dir)
        self.val_tgt = load_prepared(val_tgt_list, data_cfg.tgt_modality, data_cfg, cache_dir=cache_dir)
        tgt_by_case = {case_name(Path(v.source)): j for j, v in enumerate(self.val_tgt)}
        self.val_pairs = [
            (i, tgt_by_case[case_name(Path(v.source))])
            for i, v in enumerate(self.val_src)
            if case_name(Path(v.source)) in tgt_by_case
            and self.val_tgt[tgt_by_case[case_name(Path(v.source))]].image.shape == v.image.shape
        ]
        if self.resume_data is None:
            self.cfg.normalisation = Normalisation(
                source=domain_record([v.params for v in self.src_volumes], data_cfg.src_modality, data_cfg),
                target=domain_record([v.params for v in self.tgt_volumes], data_cfg.tgt_modality, data_cfg),
            )
        self.cfg.version = __version__
        seed = self.cfg.train.seed
        self.src_dataset = SliceDataset(self.src_volumes, data_cfg, train=True, seed=derived_seed(seed, 0))
        self.tgt_dataset = SliceDataset(self.tgt_volumes, data_cfg, train=True, seed=derived_seed(seed, 1))
        for name, dataset in (("source", self.src_dataset), ("target", self.tgt_dataset)):
            if len(dataset) == 0:
                raise ConfigError(
                    f"no {name} slice has enough body (data.min_body_fraction={data_cfg.min_body_fraction}); "
                    "lower it or check the body masks"
                )
        # A global step takes batch_size slices on each of world_size processes.
        global_batch = self.cfg.optim.batch_size * self.dist.world_size
        if self.dist.is_main:
            _warn_if_batches_repeat(
                self.cfg.optim.batch_size, self.dist.world_size, self.src_dataset, self.tgt_dataset
            )
        self.steps_per_epoch = self.cfg.train.steps_per_epoch or math.ceil(
            max(len(self.src_dataset), len(self.tgt_dataset)) / global_batch
        )
        self.total_steps = self._schedule_steps()

    def _schedule_steps(self) -> int:
        """Steps this run makes: the schedule's, or ``train.max_steps`` when that stops it earlier.

        Raises:
            ConfigError: ``train.max_steps`` is more than the epoch schedule has (the config refuses
                that for ``optim.n_steps``): the user would silently get fewer steps than asked for;
                the message says how to get them.
        """
        optim, max_steps = self.cfg.optim, self.cfg.train.max_steps
        if optim.n_steps is not None:
            total = optim.n_steps
        else:
            total = self.steps_per_epoch * optim.total_epochs
            if max_steps is not None and max_steps > total:
                raise ConfigError(
                    f"train.max_steps {max_steps} is more than the {total} steps of the epoch schedule "
                    f"({optim.n_epochs} + {optim.n_epochs_decay} epochs of {self.steps_per_epoch} steps); "
                    f"use --steps {max_steps} for a step-based schedule of {max_steps} steps (constant, "
                    "then linear decay; epochs continue as needed), or more --epochs / --epochs-decay"
                )
        return min(total, max_steps) if max_steps is not None else total

    @property
    def step_schedule(self) -> bool:
        """True when the learning rate follows steps (``optim.n_steps``), False for epochs."""
        return self.cfg.optim.n_steps is not None

    def _hold_out(
        self, paths: list[Path], masks: list[Path] | None, domain: int
    ) -> tuple[list[Path], list[Path], list[Path] | None]:
        """Moves a seeded share of the volumes (at least one, never all) to validation."""
        n = len(paths)
        n_val = min(n - 1, max(1, round(n * self.cfg.data.val_fraction)))
        if n_val <= 0:
            logger.warning("too few volumes to hold out validation data (%d); validation is off", n)
            return paths, [], masks
        rng = np.random.default_rng(derived_seed(self.cfg.train.seed, 99, domain))
        val_idx = set(rng.choice(n, size=n_val, replace=False).tolist())
        train = [p for i, p in enumerate(paths) if i not in val_idx]
        val = [p for i, p in enumerate(paths) if i in val_idx]
        train_masks = [m for i, m in enumerate(masks) if i not in val_idx] if masks else None
        return train, val, train_masks

    def _build_models(self) -> None:
        from medcyclegan.losses import AdversarialLoss
        from medcyclegan.nets import build_discriminator_from_config, build_generator
        from medcyclegan.train.pool import ImagePool

        cfg = self.cfg
        channels = cfg.data.in_channels
        self.G_AB = build_generator(cfg.model, channels, channels).to(self.device)
        self.G_BA = build_generator(cfg.model, channels, channels).to(self.device)
        self.D_A = build_discriminator_from_config(cfg.model, channels).to(self.device)
        self.D_B = build_discriminator_from_config(cfg.model, channels).to(self.device)
        if self.channels_last:
            for net in (self.G_AB, self.G_BA, self.D_A, self.D_B):
                net.to(memory_format=torch.channels_last)  # in place: the optimisers keep the same tensors
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        fused = self.device.type == "cuda"
        self.opt_G = torch.optim.Adam(
            list(self.G_AB.parameters()) + list(self.G_BA.parameters()),
            lr=cfg.optim.lr,
            betas=betas,
            fused=fused,
        )
        self.opt_D = torch.optim.Adam(
            list(self.D_A.parameters()) + list(self.D_B.parameters()),
            lr=cfg.optim.lr,
            betas=betas,
            fused=fused,
        )

        if cfg.optim.n_steps is not None:
            # Step-based: the schedulers count optimisation steps (stepped after every step).
            decay = cfg.optim.decay_steps
            constant = cfg.optim.n_steps - decay

            def rule(step: int) -> float:
                return lr_factor(step, constant, decay)

        else:

            def rule(epoch: int) -> float:
                return lr_factor(epoch, cfg.optim.n_epochs, cfg.optim.n_epochs_decay)

        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, rule)
        # One pair of pools per process; rank 0 keeps the seeds of a single-process run.
        rank = self.dist.rank
        self.pool_A = ImagePool(
            cfg.optim.pool_size, seed=derived_seed(cfg.train.seed, 10, *([rank] if rank else []))
        )
        self.pool_B = ImagePool(
            cfg.optim.pool_size, seed=derived_seed(cfg.train.seed, 11, *([rank] if rank else []))
        )
        self.adversarial = AdversarialLoss(cfg.loss.gan_mode)

    def _build_step_networks(self) -> None:
        """The networks as the training step calls them: DDP-wrapped and/or compiled when asked.

        ``self.G_AB`` etc. stay the plain modules (checkpoints, validation, samples). The generators
        and the discriminators' own update go through DistributedDataParallel in a multi-process run;
        the frozen discriminators of the generator update are called unwrapped (they get no gradient,
        so DDP must not wait for one).
        """
        compile_ = self.cfg.train.compile

        def compiled(module: torch.nn.Module) -> torch.nn.Module:
            return torch.compile(module) if compile_ else module

        def trained(module: torch.nn.Module) -> torch.nn.Module:
            return compiled(distributed.wrap_ddp(module, self.dist, self.device))

        self._step_G_AB = trained(_GeneratorStep(self.G_AB))
        self._step_G_BA = trained(_GeneratorStep(self.G_BA))
        self._step_D_A = trained(self.D_A)
        self._step_D_B = trained(self.D_B)
        if self.dist.is_distributed:
            self._frozen_D_A = compiled(self.D_A)
            self._frozen_D_B = compiled(self.D_B)
        else:
            self._frozen_D_A, self._frozen_D_B = self._step_D_A, self._step_D_B

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds. In a multi-process run every process must call it together
        (the image pools of all ranks are gathered); only rank 0's result is complete.
        """
        extra: dict[str, Any] = {"world_size": self.dist.world_size}
        if self.dist.is_distributed:
            pools = distributed.all_gather_objects(
                {"A": _to_cpu(self.pool_A.state_dict()), "B": _to_cpu(self.pool_B.state_dict())}, self.dist
            )
            extra["pools"] = {"A": [p["A"] for p in pools], "B": [p["B"] for p in pools]}
        return {
            "config_yaml": config_to_yaml(self.cfg),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "G_AB": self.G_AB.state_dict(),
            "G_BA": self.G_BA.state_dict(),
            "D_A": self.D_A.state_dict(),
            "D_B": self.D_B.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "sched_G": self.sched_G.state_dict(),
            "sched_D": self.sched_D.state_dict(),
            # bf16 autocast needs no loss scaler; the slot is kept so fp16 can be added compatibly.
            "scaler": {},
            "pool_A": self.pool_A.state_dict(),
            "pool_B": self.pool_B.state_dict(),
            "rng": rng_state(),
            "run_id": self.run_id,
            "best": {
                "metric": self.cfg.train.best_metric,
                "mode": self.cfg.train.best_mode,
                "value": self.best_value,
                "epoch": self.best_epoch,
            },
            "parameters": {
                name: sum(p.numel() for p in getattr(self, name).parameters())
                for name in ("G_AB", "G_BA", "D_A", "D_B")
            },
            "data": self.data_record,
            **extra,
        }

    def _restore(self, data: dict[str, Any]) -> None:
        path = self.resume_path or Path("checkpoint")
        for name in ("G_AB", "G_BA", "D_A", "D_B"):
            load_state_strict(getattr(self, name), data[name], name, path)
        try:
            self.opt_G.load_state_dict(data["opt_G"])
            self.opt_D.load_state_dict(data["opt_D"])
            self.sched_G.load_state_dict(data["sched_G"])
            self.sched_D.load_state_dict(data["sched_D"])
            if self.dist.is_distributed:
                self.pool_A.load_state_dict(data["pools"]["A"][self.dist.rank])
                self.pool_B.load_state_dict(data["pools"]["B"][self.dist.rank])
            else:
                self.pool_A.load_state_dict(data["pool_A"])
                self.pool_B.load_state_dict(data["pool_B"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot restore training state ({str(exc).splitlines()[0][:120]})", path
            ) from None
        if int(data.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            raise CheckpointError(
                f"the training data changed: {self.steps_per_epoch} steps per epoch now, "
                f"{data['steps_per_epoch']} when the checkpoint was written; resume with the same --src/--tgt",
                path,
            )
        for optimizer in (self.opt_G, self.opt_D):
            _match_state_layout(optimizer)
        set_rng_state(data["rng"])
        self.epoch = int(data["epoch"])
        self.step_in_epoch = int(data["step_in_epoch"])
        self.global_step = int(data["step"])
        # A checkpoint from before run ids keeps the id drawn for it in __init__.
        self.run_id = str(data.get("run_id") or self.run_id)
        best = data.get("best") or {}
        self.best_value = best.get("value")
        self.best_epoch = best.get("epoch")
        if self.dist.is_main:
            self._truncate_logs(self.global_step)
            logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)

    def _truncate_logs(self, step: int) -> None:
        """Drops log rows written after the checkpoint (they will be computed again)."""
        for name in ("metrics.csv", "val_metrics.csv"):
            path = self.run_dir / name
            if not path.is_file():
                continue
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
            if not rows:
                continue
            header, body = rows[0], rows[1:]
            kept = [r for r in body if r and int(float(r[0])) <= step]
            lines = [",".join(header)] + [",".join(r) for r in kept]
            atomic_write_text(path, "\n".join(lines) + "\n")

    def save(self, *names: str) -> Path:
        """Writes the checkpoint under ``checkpoints/<name>`` for each name; returns the last path.

        In a multi-process run every process calls it together: the pools are gathered, rank 0
        writes, and the others wait until the files exist.
        """
        state = self.state()
        paths = [self.run_dir / "checkpoints" / name for name in names]
        if self.dist.is_main:
            for path in paths:
                save_checkpoint(state, path)
        distributed.barrier(self.dist)
        return paths[-1]

    # ------------------------------------------------------------------ loop
    def _loader(self, dataset: Any, batches: list[list[int]]) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        )

    def _epoch_iterator(
        self, epoch: int, start: int
    ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        seed, batch, steps = self.cfg.train.seed, self.cfg.optim.batch_size, self.steps_per_epoch
        rank, world = self.dist.rank, self.dist.world_size
        # Global step s uses batches s * world ... s * world + world - 1 of the epoch's list, one per rank.
        batches_a = distributed.shard(
            epoch_batches(len(self.src_dataset), batch, steps * world, seed, epoch, 0), rank, world
        )[start:]
        batches_b = distributed.shard(
            epoch_batches(len(self.tgt_dataset), batch, steps * world, seed, epoch, 1), rank, world
        )[start:]
        self.src_dataset.set_epoch(epoch)
        self.tgt_dataset.set_epoch(epoch)
        return zip(self._loader(self.src_dataset, batches_a), self._loader(self.tgt_dataset, batches_b))

    def train_step(
        self, batch_a: dict[str, torch.Tensor], batch_b: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One reference CycleGAN step. Returns the loss terms as 0-d tensors (not synchronised)."""
        from medcyclegan.losses import attention_regulariser, l1_loss, masked_l1, outline_loss
        from medcyclegan.nets.slicewise import autocast_context

        cfg = self.cfg.loss
        real_a = batch_a["image"].to(self.device, non_blocking=True)
        real_b = batch_b["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            # After the copy: converting first would copy from unpinned memory, i.e. synchronously.
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        mask_a = batch_a["mask"].to(self.device, non_blocking=True)
        mask_b = batch_b["mask"].to(self.device, non_blocking=True)

        def recon(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            if cfg.mask_loss:
                return masked_l1(pred, target, mask, background_weight=cfg.background_weight)
            return l1_loss(pred, target)

        losses: dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=self.device)
        g_ab, g_ba = self._step_G_AB, self._step_G_BA
        with autocast_context(self.device, self.amp):
            fake_b, att_ab = g_ab(real_a, with_attention=True)
            rec_a = g_ba(fake_b)
            fake_a, att_ba = g_ba(real_b, with_attention=True)
            rec_b = g_ab(fake_a)

            set_requires_grad([self.D_A, self.D_B], False)
            losses["G_adv_AB"] = self.adversarial.generator_loss(self._frozen_D_B(fake_b))
            losses["G_adv_BA"] = self.adversarial.generator_loss(self._frozen_D_A(fake_a))
            losses["cycle_A"] = recon(rec_a, real_a, mask_a) * cfg.lambda_cycle
            losses["cycle_B"] = recon(rec_b, real_b, mask_b) * cfg.lambda_cycle
            if cfg.lambda_identity > 0:
                weight = cfg.lambda_cycle * cfg.lambda_identity
                losses["idt_A"] = recon(g_ba(real_a), real_a, mask_a) * weight
                losses["idt_B"] = recon(g_ab(real_b), real_b, mask_b) * weight
            else:
                losses["idt_A"] = losses["idt_B"] = zero
            if cfg.lambda_mask > 0:
                # The translation keeps the input's body: background stays air, outline stays put.
                losses["mask_A"] = outline_loss(fake_b, mask_a) * cfg.lambda_mask
                losses["mask_B"] = outline_loss(fake_a, mask_b) * cfg.lambda_mask
            else:
                losses["mask_A"] = losses["mask_B"] = zero
            if att_ab is not None and att_ba is not None and cfg.lambda_attention > 0:
                losses["attention"] = (
                    attention_regulariser(att_ab) + attention_regulariser(att_ba)
                ) * cfg.lambda_attention
            else:
                losses["attention"] = zero
            loss_g = sum(losses[k] for k in LOSS_COLUMNS if k in losses)
        losses["loss_G"] = loss_g
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()

        set_requires_grad([self.D_A, self.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp):
            pooled_a = self.pool_A.query(fake_a.detach())
            pooled_b = self.pool_B.query(fake_b.detach())
        # One discriminator at a time, as the reference does: the two have no parameter in common, so
        # the gradients are those of the summed loss exactly, and only one graph is held at a time.
        d_a, d_b = self._step_D_A, self._step_D_B
        with autocast_context(self.device, self.amp):
            loss_d_a = self.adversarial.discriminator_loss(d_a(real_a), d_a(pooled_a))
        loss_d_a.backward()
        with autocast_context(self.device, self.amp):
            loss_d_b = self.adversarial.discriminator_loss(d_b(real_b), d_b(pooled_b))
        loss_d_b.backward()
        self.opt_D.step()
        losses["loss_D_A"] = loss_d_a
        losses["loss_D_B"] = loss_d_b
        return {k: v.detach() for k, v in losses.items()}

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handler(signum: int, _frame: Any) -> None:
            self._stop_signal = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                previous[sig] = signal.signal(sig, handler)
        return previous

    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
        """Runs until all epochs or ``train.max_steps`` are done; resumable at any point.

        In a multi-process run every process calls it; the processes agree on stopping (signals,
        NaN) at the steps where losses are read back, so all of them save and stop together.

        Raises:
            TrainingInterrupted: after SIGINT/SIGTERM, once ``last.pt`` is written.
            TrainingError: a loss became NaN or Inf (the last good checkpoint is kept), or CUDA ran
                out of memory.
        """
        main = self.dist.is_main
        if self._run_lock is not None:
            self._run_lock.acquire()  # again, if an earlier fit() of this trainer released it
        if main:
            from torch.utils.tensorboard import SummaryWriter

            save_config(self.cfg, self.run_dir / "config.yaml")
            atomic_write_text(self.run_dir / DATA_FILE, json.dumps(self.data_record, indent=2) + "\n")
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            writer: Any = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        else:
            writer = _NullWriter()
        if main and self.resume_data is not None and self.global_step >= self.total_steps:
            # e.g. --resume --max-steps 1 on a run at step 3: exit 0 with no step made, said so.
            logger.warning(
                "%s: the run is already at step %d, and this run makes %d step(s) in all; nothing to train",
                self.run_dir,
                self.global_step,
                self.total_steps,
            )
        previous_handlers = self._install_signal_handlers()
        progress = _Progress(self.show_progress, self.total_steps, self.global_step)
        last_path = self.run_dir / "checkpoints" / "last.pt"
        log_every = self.cfg.train.log_every
        # Reading a loss back waits for the GPU: on CUDA only at logging steps. On the CPU it is free.
        check_every = 1 if self.device.type == "cpu" else log_every
        try:
            while self.global_step < self.total_steps and (
                self.step_schedule or self.epoch < self.cfg.optim.total_epochs
            ):
                epoch_start = time.perf_counter()
                for batch_a, batch_b in self._epoch_iterator(self.epoch, self.step_in_epoch):
                    try:
                        losses = self.train_step(batch_a, batch_b)
                    except torch.cuda.OutOfMemoryError:
                        raise TrainingError(
                            f"CUDA ran out of memory at batch size {self.cfg.optim.batch_size} and image size "
                            f"{self.cfg.data.image_size}; lower --batch-size or --image-size "
                            f"(the last checkpoint is kept at {last_path})"
                        ) from None
                    self.step_in_epoch += 1
                    self.global_step += 1
                    is_log = self.global_step % log_every == 0 or self.global_step == self.total_steps
                    # Processes agree on stopping only where they exchange the losses anyway.
                    stop = None
                    if is_log or self.global_step % check_every == 0:
                        values, stop = self._read_back(losses)
                        self._check_finite(values, last_path)
                    if is_log:
                        row = self._log(values, writer)
                        progress.update(self.global_step, self.epoch, row)
                        if on_step is not None:
                            on_step(self.global_step, row)
                    else:
                        progress.advance(self.global_step, self.epoch)
                    if self.step_schedule:
                        # After the log row (which shows this step's rate), before any checkpoint.
                        self.sched_G.step()
                        self.sched_D.step()
                    if not self.dist.is_distributed:
                        stop = self._stop_signal
                    if stop is not None:
                        path = self.save("last.pt")
                        raise TrainingInterrupted(self.global_step, path, stop)
                    every = self.cfg.train.save_every_steps
                    if every and self.global_step % every == 0:
                        self.save("last.pt")
                    if self.global_step >= self.total_steps:
                        break
                if self.step_in_epoch >= self.steps_per_epoch:
                    self._end_epoch(writer, time.perf_counter() - epoch_start)
                else:
                    break  # max_steps reached inside the epoch
            last = self.save("last.pt")
        finally:
            progress.close()
            writer.close()
            for sig, old in previous_handlers.items():
                signal.signal(sig, old)
            if self._run_lock is not None:
                self._run_lock.release()
        best = self.run_dir / "checkpoints" / "best.pt"
        return TrainResult(
            run_dir=self.run_dir,
            step=self.global_step,
            epoch=self.epoch,
            last_checkpoint=last,
            best_checkpoint=best if best.is_file() else None,
            best_value=self.best_value,
            history=self.history,
            val_history=self.val_history,
        )

    def _read_back(self, losses: dict[str, torch.Tensor]) -> tuple[dict[str, float], str | None]:
        """The loss terms as floats (averaged over the processes) and whether to stop: one host sync.

        In a multi-process run the losses and a stop flag travel in one all-reduce, so every process
        sees the same values and takes the same decision.
        """
        names = [k for k in LOSS_COLUMNS if k in losses]
        if not self.dist.is_distributed:
            values = torch.stack([losses[k].float() for k in names]).tolist()
            return dict(zip(names, values)), self._stop_signal
        flag = (
            torch.ones((), device=self.device) if self._stop_signal else torch.zeros((), device=self.device)
        )
        packed = torch.stack([losses[k].float() for k in names] + [flag])
        packed = distributed.all_reduce_sum(packed, self.dist) / self.dist.world_size
        *values, stop = packed.tolist()
        return dict(zip(names, values)), (self._stop_signal or "SIGTERM") if stop > 0 else None

    def _check_finite(self, values: dict[str, float], last_path: Path) -> None:
        bad = [k for k in ("loss_G", "loss_D_A", "loss_D_B") if not math.isfinite(values.get(k, 0.0))]
        if bad:
            kept = (
                f"the last good checkpoint is kept at {last_path}"
                if last_path.is_file()
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"{', '.join(bad)} became NaN or Inf at step {self.global_step} (epoch {self.epoch}); "
                f"training stopped and {kept}; lower optim.lr or check the input data"
            )

    def _log(self, values: dict[str, float], writer: Any) -> dict[str, float]:
        row: dict[str, float] = {
            "step": self.global_step,
            "epoch": self.epoch,
            "lr": self.opt_G.param_groups[0]["lr"],
            **{k: values.get(k, 0.0) for k in LOSS_COLUMNS},
        }
        self.history.append(row)
        if self.dist.is_main:
            _append_csv(self.run_dir / "metrics.csv", row)
            for key in LOSS_COLUMNS:
                writer.add_scalar(f"loss/{key}", row[key], self.global_step)
            writer.add_scalar("lr", row["lr"], self.global_step)
        return row

    def _end_epoch(self, writer: Any, seconds: float) -> None:
        epoch = self.epoch
        if not self.step_schedule:
            self.sched_G.step()
            self.sched_D.step()
        self.epoch += 1
        self.step_in_epoch = 0
        improved = False
        if self.dist.is_main:
            # Rank 0 alone draws samples and validates (on the plain networks); the others wait in save().
            writer.add_scalar("time/epoch_seconds", seconds, self.global_step)
            if (epoch + 1) % self.cfg.train.sample_every == 0:
                self.write_samples(epoch, writer)
            if (self.val_src or self.val_tgt) and (epoch + 1) % self.cfg.train.val_every == 0:
                metrics = self.validate()
                row = {"step": self.global_step, "epoch": epoch, **metrics}
                self.val_history.append(row)
                _append_csv(self.run_dir / "val_metrics.csv", row)
                for key, value in metrics.items():
                    writer.add_scalar(key, value, self.global_step)
                improved = self._maybe_best(metrics)
        improved = distributed.broadcast_object(improved, self.dist)
        names = ["best.pt"] if improved else []
        keep = self.cfg.train.keep_epoch_checkpoints
        if keep > 0 and (epoch + 1) % self.cfg.train.checkpoint_every == 0:
            names.append(f"epoch_{epoch + 1:04d}.pt")
        self.save(*names, "last.pt")
        if self.dist.is_main:
            # Only now that the new checkpoints are written: the older epoch checkpoints beyond keep.
            prune_epoch_checkpoints(self.run_dir / "checkpoints", keep)

    def _maybe_best(self, metrics: dict[str, float]) -> bool:
        """Records a new best validation value; True when the caller should write ``best.pt``."""
        name = self.cfg.train.best_metric
        if name not in metrics:
            if self.best_epoch is None:
                logger.warning(
                    "best_metric %s is not computed here (have: %s)", name, ", ".join(sorted(metrics))
                )
            return False
        value = metrics[name]
        better = (
            self.best_value is None
            or (self.cfg.train.best_mode == "max" and value > self.best_value)
            or (self.cfg.train.best_mode == "min" and value < self.best_value)
        )
        if better and math.isfinite(value):
            self.best_value = value
            self.best_epoch = self.epoch - 1
            return True
        return False

    # ------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Cycle consistency on validation volumes of both domains, and translation metrics on pairs.

        Cycle metrics are computed in normalised units ([-1, 1]) inside each volume's body mask:
        ``val/cycle_mae_A`` (mean absolute error), ``val/cycle_ssim_A`` (skimage SSIM, data range 2,
        7-voxel window, averaged over the mask) and likewise for B; ``val/cycle_ssim`` and
        ``val/cycle_mae`` average the two domains. For pairs (same case name and grid) the
        translation A->B is scored with the SynthRAD2023 definitions when B is CT (HU; MAE on the
        window-clipped reference), otherwise in normalised units.
        """
        from medcyclegan.data.normalise import denormalise, output_params
        from medcyclegan.metrics import synthrad2023
        from medcyclegan.nets.slicewise import translate_array

        def run(generator: torch.nn.Module, image: np.ndarray) -> np.ndarray:
            return translate_array(
                generator,
                image,
                context_slices=self.cfg.data.context_slices,
                batch_size=max(8, self.cfg.optim.batch_size),
                device=self.device,
                amp=self.amp,
            )

        results: dict[str, list[float]] = {}
        for label, volumes, forward, backward in (
            ("A", self.val_src, self.G_AB, self.G_BA),
            ("B", self.val_tgt, self.G_BA, self.G_AB),
        ):
            for volume in volumes:
                fake = run(forward, volume.image)
                rec = run(backward, fake)
                mae, ssim = _masked_mae_ssim(rec, volume.image, volume.mask)
                results.setdefault(f"val/cycle_mae_{label}", []).append(mae)
                results.setdefault(f"val/cycle_ssim_{label}", []).append(ssim)
                if label == "A":
                    volume_fake = fake
                    pair = [j for i, j in self.val_pairs if self.val_src[i] is volume]
                    if pair:
                        ref = self.val_tgt[pair[0]]
                        if self.cfg.data.tgt_modality == "ct":
                            params = output_params(self.cfg.normalisation.target)
                            scores = synthrad2023(
                                denormalise(volume_fake, params), denormalise(ref.image, ref.params), ref.mask
                            )
                            for key, value in scores.items():
                                results.setdefault(f"val/{key}", []).append(float(value))
                        else:
                            mae, ssim = _masked_mae_ssim(volume_fake, ref.image, ref.mask)
                            results.setdefault("val/mae", []).append(mae)
                            results.setdefault("val/ssim", []).append(ssim)
        metrics = {k: float(np.mean(v)) for k, v in results.items()}
        for stat in ("mae", "ssim"):
            parts = [metrics[k] for k in (f"val/cycle_{stat}_A", f"val/cycle_{stat}_B") if k in metrics]
            if parts:
                metrics[f"val/cycle_{stat}"] = float(np.mean(parts))
        return metrics

    # --------------------------------------------------------------- samples
    def write_samples(self, epoch: int, writer: Any | None = None) -> Path:
        """A PNG grid: rows A, G_AB(A), G_BA(G_AB(A)) and B, G_BA(B), G_AB(G_BA(B)).

        CT tiles use a soft-tissue window; an attention generator adds its mask m as a fourth tile
        (black 0 = input kept, white 1 = generated content).
        """
        from medcyclegan.nets.slicewise import context_stack, translate_array
        from medcyclegan.train.samples import render_grid

        vols_a = self.val_src or self.src_volumes
        vols_b = self.val_tgt or self.tgt_volumes
        k = self.cfg.data.context_slices
        attention = self.cfg.model.generator == "resnet-attention"
        rows = []
        with torch.no_grad():
            for volumes, forward, backward, modalities in (
                (vols_a, self.G_AB, self.G_BA, (self.cfg.data.src_modality, self.cfg.data.tgt_modality)),
                (vols_b, self.G_BA, self.G_AB, (self.cfg.data.tgt_modality, self.cfg.data.src_modality)),
            ):
                volume = volumes[0]
                # The slice with the most body shows the most anatomy.
                z = int(np.argmax(volume.mask.reshape(-1, volume.mask.shape[2]).sum(axis=0)))
                z_lo, z_hi = max(0, z - k), min(volume.image.shape[2], z + k + 1)
                chunk = volume.image[:, :, z_lo:z_hi]
                fake, mask = translate_array(
                    forward, chunk, context_slices=k, device=self.device, amp=self.amp, return_attention=True
                )
                rec = translate_array(backward, fake, context_slices=k, device=self.device, amp=self.amp)
                centre = np.array([z - z_lo])
                arrays = [chunk, fake, rec] + ([mask] if attention else [])
                images = [context_stack(a, centre, 0)[0, 0] for a in arrays]
                names = [modalities[0], modalities[1], modalities[0]] + (["attention"] if attention else [])
                rows.append((images, names))
        records = self.cfg.normalisation
        params = (
            {self.cfg.data.src_modality: records.source, self.cfg.data.tgt_modality: records.target}
            if records is not None
            else {}
        )
        path = self.run_dir / "samples" / f"epoch_{epoch + 1:04d}.png"
        grid = render_grid(rows, params, path)
        if writer is not None:
            writer.add_image("samples", grid, self.global_step, dataformats="HW")
        return path


# Names a run gives the files inside its artefact folders (atomic-write temporaries aside).
_RUN_FOLDER_FILES = {
    "checkpoints": re.compile(r"^(last|best|epoch_\d+)\.pt$"),
    "samples": re.compile(r"^epoch_\d+\.png$"),
    "tb": re.compile(r"^events\.out\.tfevents\..+"),
}
_LOG_HEADER = "step,epoch"  # how metrics.csv and val_metrics.csv begin (see _log, _end_epoch)
_FOREIGN_SHOWN = 3  # foreign files named in the refusal; more are counted


def _foreign_run_files(run_dir: Path, names: Sequence[str]) -> list[str]:
    """The files among the artefacts ``names`` of ``run_dir`` that no trainer wrote (relative paths).

    A run writes real files and folders with known names and contents: a link, a sub-folder, an
    unknown name inside ``checkpoints/``, ``samples/`` or ``tb/``, a ``.pt`` without medcyclegan's
    format marker, a ``config.yaml`` that is not a run's resolved config, CSV logs without the
    run's header, or JSON records of another shape are someone else's, and never removed.
    """
    from medcyclegan.io.lock import is_atomic_temporary
    from medcyclegan.train.checkpoint import is_medcyclegan_checkpoint

    foreign: list[str] = []
    for name in names:
        path = run_dir / name
        if path.is_symlink():
            foreign.append(name)
        elif name in _RUN_FOLDER_FILES:
            if not path.is_dir():
                foreign.append(name)
                continue
            pattern = _RUN_FOLDER_FILES[name]
            for entry in sorted(path.iterdir()):
                ours = entry.is_file() and not entry.is_symlink()
                if ours and not is_atomic_temporary(entry.name):
                    ours = bool(pattern.match(entry.name)) and (
                        name != "checkpoints" or is_medcyclegan_checkpoint(entry)
                    )
                if not ours:
                    foreign.append(f"{name}/{entry.name}")
        elif not path.is_file() or not _is_run_file(path):
            foreign.append(name)
    return foreign


def _is_run_file(path: Path) -> bool:
    """True for a top-level file of a run folder with the content a trainer writes under its name."""
    name = path.name
    if name == "config.yaml":
        return _is_run_config(path)
    try:
        if name.endswith(".csv"):
            with open(path, encoding="utf-8") as handle:
                first = handle.readline()
            # A kill while the first row was appended may leave an empty or cut header: still ours.
            return first.startswith(_LOG_HEADER) or _LOG_HEADER.startswith(first)
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    if name == DATA_FILE:
        return "roles" in record
    from medcyclegan.train.data_record import ROLES

    return set(record) <= set(ROLES)  # sources.json: a path (or null) per role


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the trainer.

    Ctrl-C and a batch system's SIGTERM reach the whole process group: a worker that died of them
    made the trainer fail with "DataLoader worker ... is killed by signal" (a traceback, and the
    steps since the last checkpoint lost) instead of saving ``last.pt`` and stopping. The trainer
    shuts its workers down itself; a worker whose trainer died exits on its own (PyTorch's watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _is_run_config(path: Path) -> bool:
    """True for a ``config.yaml`` a trainer wrote: a resolved config with the data's normalisation."""
    from medcyclegan.config import config_from_yaml

    try:
        return bool(config_from_yaml(path.read_text(), source=str(path)).normalisation)
    except Exception:  # unreadable, not YAML, not a config: not a run's, so not ours to remove
        return False


def _warn_if_batches_repeat(batch_size: int, world_size: int, *datasets: Any) -> None:
    """One warning line when a batch is larger than a domain's slice count.

    The batches cycle through the slices, and a slice's augmentation depends only on (seed, epoch,
    index): such a batch holds identical copies, so it costs more and teaches nothing more than a
    batch of the distinct slices. Not an error: the training is still correct, only slower.
    """
    global_batch = batch_size * world_size
    counts = {name: len(ds) for name, ds in zip(("source", "target"), datasets) if len(ds) < global_batch}
    if not counts:
        return
    per = f"batch size {batch_size}" + (f" x {world_size} processes" if world_size > 1 else "")
    slices = " and ".join(f"{n} {name}" for name, n in counts.items())
    fewest = min(counts.values())
    logger.warning(
        "%s is larger than the %s training slices: each batch repeats the same slices (about %d times each), "
        "which costs time and adds nothing; use --batch-size %d or less",
        per,
        slices,
        math.ceil(global_batch / fewest),
        max(1, fewest // world_size),
    )


def _to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with its tensors on the CPU (so that it can be gathered between processes)."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Gives restored optimiser moments the memory layout of their parameters (e.g. channels-last).

    A checkpoint written by a run in another layout loads with contiguous moments; fused Adam wants
    moments laid out like the parameters.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _masked_mae_ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """MAE and mean SSIM (skimage, 7-voxel window, data range 2) inside ``mask``, normalised units."""
    from skimage.metrics import structural_similarity

    if not mask.any():
        return float("nan"), float("nan")
    mae = float(np.abs(pred - ref)[mask].mean())
    win = min(7, *[s if s % 2 == 1 else s - 1 for s in pred.shape])
    if win < 3:
        return mae, float("nan")
    _, ssim_map = structural_similarity(ref, pred, data_range=2.0, win_size=win, full=True)
    return mae, float(ssim_map[mask].mean())


def _append_csv(path: Path, row: dict[str, float]) -> None:
    """Appends a row; writes the header first. New columns start a new header-compatible file."""
    exists = path.is_file() and path.stat().st_size > 0
    if exists:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
        if header != list(row):
            merged = header + [k for k in row if k not in header]
            with open(path, newline="") as handle:
                old = list(csv.DictReader(handle))
            lines = [",".join(merged)] + [",".join(str(r.get(k, "")) for k in merged) for r in old]
            lines.append(",".join(_fmt(row.get(k, "")) for k in merged))
            with atomic_path(path) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
            return
    with open(path, "a", newline="") as handle:
        if not exists:
            handle.write(",".join(row) + "\n")
        handle.write(",".join(_fmt(v) for v in row.values()) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class _Progress:
    """A rich progress bar with epoch, step, losses, it/s and ETA (silent when disabled)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=total, completed=completed, epoch=0, losses="", speed=""
        )
        self.start = time.perf_counter()
        self.start_step = completed

    def advance(self, step: int, epoch: int) -> None:
        if self.enabled:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            speed = f"{(step - self.start_step) / elapsed:.2f} it/s"
            self.progress.update(self.task, completed=step, epoch=epoch + 1, speed=speed)

    def update(self, step: int, epoch: int, row: dict[str, float]) -> None:
        if self.enabled:
            losses = f"G {row['loss_G']:.3f}  D_A {row['loss_D_A']:.3f}  D_B {row['loss_D_B']:.3f}"
            self.progress.update(self.task, losses=losses)
            self.advance(step, epoch)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
