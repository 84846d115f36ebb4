"""The training loop: steps and epochs, schedule, resume, signals, NaN stop, checkpoint cadence.

The loop knows no network: it builds the model named by ``model.kind`` (:mod:`medcyclegan.models`),
feeds it the batches of :class:`~medcyclegan.train.data_module.TrainingData` and calls its
``train_step``; run logging (:mod:`~medcyclegan.train.run_log`), validation and samples
(:mod:`~medcyclegan.train.validation`) and the run folder (:mod:`~medcyclegan.train.run_folder`) are
separate pieces it calls.

Exact resume: the batches of an epoch are a pure function of (seed, epoch), augmentation of an item a
pure function of (seed, epoch, index), the model's state (networks, optimisers, schedulers, pools)
and the RNG states and counters are in every checkpoint. A run of n steps stopped after k and resumed
ends with the same weights as an uninterrupted run of n steps (on CPU).

Schedule: the reference's epochs (``optim.n_epochs`` constant, then ``optim.n_epochs_decay`` of linear
decay; the schedulers step at epoch ends), or with ``optim.n_steps`` the same rule counted in steps
(the schedulers step after every step) while epochs continue as needed. ``train.max_steps`` only
stops a run early; asking for more steps than the schedule has is refused before training.

Validation (at epoch ends, ``train.val_every``) writes a row of ``val_metrics.csv`` with the training
wall time so far (``train_seconds``: validation and sample grids excluded, continued on resume) and
selects ``best.pt`` by ``train.best_metric`` (``"auto"``: validation MAE where the validation data has
pairs, else cycle SSIM); an explicit metric this run cannot compute is refused before training.

Every checkpoint records the input files (:mod:`medcyclegan.train.data_record`); a resume on other
data is refused before the data is prepared.

Speed (see ``train.channels_last``, ``train.compile``, ``train.amp``): on CUDA the step runs in bf16
autocast with channels-last tensors, fused Adam, cuDNN autotuning, pinned memory and non-blocking
copies, and never waits for the GPU: the losses are read back (and checked for NaN) only every
``train.log_every`` steps.

Several processes (``torchrun``, see :mod:`medcyclegan.runtime.distributed`): each process takes every
``world_size``-th batch of the epoch's batch list (a global step uses ``world_size`` consecutive
batches), the model wraps its networks in ``DistributedDataParallel`` (gradients averaged), every
process keeps its own image pools, and rank 0 alone logs, validates, draws samples and writes
checkpoints (holding every rank's pools) while the others wait. Counters and the learning-rate
schedule count global steps and epochs, identical on every process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcyclegan import __version__
from medcyclegan.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    prune_epoch_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medcyclegan.config import Config, config_to_yaml, save_config
from medcyclegan.errors import CheckpointError, TrainingError, TrainingInterrupted
from medcyclegan.io.atomic import atomic_write_text
from medcyclegan.models import TranslationModel, model_class
from medcyclegan.runtime import distributed, resolve_device
from medcyclegan.runtime.precision import use_bf16, use_channels_last
from medcyclegan.runtime.threads import adjust_threads
from medcyclegan.train import resume as resume_rules
from medcyclegan.train.data_module import TrainingData, pair_files
from medcyclegan.train.data_record import DATA_FILE, ROLES, check_same_data, record_data
from medcyclegan.train.run_folder import RUN_ARTEFACTS, TEMPORARY_FOLDERS, TRASH_PREFIX, RunFolder
from medcyclegan.train.run_log import ProgressBar, RunLog
from medcyclegan.train.schedule import lr_rule, schedule_steps
from medcyclegan.train.validation import (
    choose_best_metric,
    validate,
    validation_metric_names,
    write_samples,
)

__all__ = ["RUN_ARTEFACTS", "TEMPORARY_FOLDERS", "TRASH_PREFIX", "TrainResult", "Trainer"]

logger = logging.getLogger("medcyclegan")


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
    # The metric that selected best.pt (train.best_metric, "auto" resolved), e.g. "val/mae".
    best_metric: str | None = None


class Trainer:
    """Trains the model of ``cfg.model.kind`` between two lists of volumes and writes a run folder.

    Args:
        cfg: the resolved configuration (copied: the caller's is never changed; the run's, with
            the measured normalisation, is :attr:`cfg`).
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
            of the old run, :data:`~medcyclegan.train.run_folder.RUN_ARTEFACTS`, is removed first).

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
        self.folder = RunFolder(self.run_dir, self.dist)
        self.show_progress = show_progress and self.dist.is_main
        self.resume_data: dict[str, Any] | None = None
        self.resume_path: Path | None = None
        files = dict(
            zip(ROLES, (src_paths, tgt_paths, val_src_paths, val_tgt_paths, src_mask_paths, tgt_mask_paths))
        )
        if resume is not None:
            self.resume_path = Path(resume)
            if self.resume_path.is_dir():
                self.resume_path = self.resume_path / "checkpoints" / "last.pt"
            self.resume_data = self._load_resume(self.resume_path)
            cfg = resume_rules.merge_resume_config(checkpoint_config(self.resume_data, self.resume_path), cfg)
        else:
            # A misspelt train.best_metric is refused before --overwrite empties the run folder.
            choose_best_metric(cfg.train, [])
        model_type = model_class(cfg.model.kind)
        if model_type.paired:
            # Bad pairs are refused before --overwrite empties the run folder and before any hashing.
            files = pair_files(files, cfg.model.kind)
        if resume is None:
            self.folder.start_fresh(overwrite)
        self.cfg = cfg = copy.deepcopy(cfg)
        self.device = distributed.setup(self.dist, resolve_device(cfg.train.device))
        self.amp = use_bf16(cfg.train.amp, self.device)
        self.channels_last = use_channels_last(cfg.train.channels_last, self.device)
        self._seed_everything(cfg.train.seed)
        self.data_record = self._record_data(files)
        self.data = TrainingData(
            cfg, files, self.dist, pin_memory=self.device.type == "cuda", paired=model_type.paired
        )
        if self.resume_data is None:
            cfg.normalisation = self.data.normalisation()
        cfg.version = __version__
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = schedule_steps(cfg.optim, cfg.train.max_steps, self.steps_per_epoch)
        self.model: TranslationModel = model_type(
            cfg,
            self.device,
            lr_rule(cfg.optim),
            amp=self.amp,
            channels_last=self.channels_last,
            dist=self.dist,
        )
        # Refused here, before any step, when the run cannot compute an explicit train.best_metric.
        self.val_metric_names = validation_metric_names(self.model, self.data)
        self.best_metric, self.best_mode = choose_best_metric(cfg.train, self.val_metric_names)
        if (self.data.val_src or self.data.val_tgt) and not self.val_metric_names and self.dist.is_main:
            # A one-way model (CUT) without validation pairs: no cycle to score, no target to compare.
            logger.warning(
                "validation skipped: a %s model is scored on validation pairs only (same case names); "
                "no best.pt is written, last.pt is the model",
                cfg.model.kind,
            )
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        # Wall time spent training (validation and sample grids excluded), over resumes:
        # val_metrics.csv's train_seconds, for plotting validation against training time.
        self.train_seconds = 0.0
        self._clock_start = time.perf_counter()
        # Drawn at a fresh start, kept on resume: tells this run's checkpoints from an earlier run's.
        self.run_id = uuid.uuid4().hex
        self.log = RunLog(self.run_dir, enabled=self.dist.is_main)
        if self.resume_data is not None:
            self._restore(self.resume_data)
        self.model.wrap_for_training(cfg.train.compile)
        self._stop_signal: str | None = None
        self.history: list[dict[str, float]] = []
        self.val_history: list[dict[str, float]] = []

    def __repr__(self) -> str:
        return (
            f"Trainer({self.model!r}, run_dir={str(self.run_dir)!r}, step {self.global_step}/{self.total_steps}, "
            f"device={self.device})"
        )

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0; always in a single-process run)."""
        return self.dist.is_main

    @property
    def step_schedule(self) -> bool:
        """True when the learning rate follows steps (``optim.n_steps``), False for epochs."""
        return self.cfg.optim.n_steps is not None

    # ------------------------------------------------------------------ setup
    def _load_resume(self, path: Path) -> dict[str, Any]:
        data = load_checkpoint(path)
        saved_world = int(data.get("world_size", 1))
        if saved_world != self.dist.world_size:
            # Each process has its own image pools and share of the batches: resuming is exact
            # only with as many processes as wrote the checkpoint.
            raise CheckpointError(
                f"written by a run of {saved_world} process(es), resumed with {self.dist.world_size}; "
                f"resume with the same number (--gpus {saved_world} or torchrun --nproc_per_node "
                f"{saved_world})",
                path,
            )
        return data

    def _record_data(self, files: dict[str, Sequence[Path] | None]) -> dict[str, Any]:
        """The record of the input files (rank 0 hashes them); on resume, refuses other data."""
        record = record_data(files) if self.dist.is_main else None
        record = distributed.broadcast_object(record, self.dist)
        if self.resume_data is not None:
            check_same_data(self.resume_data.get("data"), record, self.resume_path or self.run_dir)
        return record

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds: the loop's counters and records plus the model's state.

        The model's entries are top-level keys (CycleGAN: ``G_AB``, ..., ``opt_G``, ..., ``pool_A``),
        as medcyclegan 0.1.0 wrote them. In a multi-process run every process must call it together
        (the per-process state of all ranks is gathered); only rank 0's result is complete.
        """
        extra: dict[str, Any] = {"world_size": self.dist.world_size}
        if self.dist.is_distributed:
            gathered = distributed.all_gather_objects(self.model.process_state(), self.dist)
            extra["pools"] = {key: [g[key] for g in gathered] for key in gathered[0]}
        return {
            "config_yaml": config_to_yaml(self.cfg),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            **self.model.state_dict(),
            # bf16 autocast needs no loss scaler; the slot is kept so fp16 can be added compatibly.
            "scaler": {},
            "rng": rng_state(),
            "run_id": self.run_id,
            "best": {
                "metric": self.best_metric,
                "mode": self.best_mode,
                "value": self.best_value,
                "epoch": self.best_epoch,
                "step": self.best_step,
            },
            "train_seconds": self.train_seconds,
            "parameters": {
                name: sum(p.numel() for p in net.parameters()) for name, net in self.model.networks().items()
            },
            "data": self.data_record,
            **extra,
        }

    def _restore(self, data: dict[str, Any]) -> None:
        path = self.resume_path or Path("checkpoint")
        try:
            self.model.load_state_dict(data, source=path)
            if self.dist.is_distributed:
                self.model.load_process_state(
                    {key: states[self.dist.rank] for key, states in data["pools"].items()}
                )
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
        set_rng_state(data["rng"])
        self.epoch = int(data["epoch"])
        self.step_in_epoch = int(data["step_in_epoch"])
        self.global_step = int(data["step"])
        # A checkpoint from before run ids keeps the id drawn for it in __init__.
        self.run_id = str(data.get("run_id") or self.run_id)
        best = data.get("best") or {}
        self.best_value = best.get("value")
        self.best_epoch = best.get("epoch")
        self.best_step = best.get("step")
        # Checkpoints from before the clock count from 0 here.
        self.train_seconds = float(data.get("train_seconds", 0.0))
        if self.dist.is_main:
            self.log.truncate(self.global_step)
            logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)

    def save(self, *names: str) -> Path:
        """Writes the checkpoint under ``checkpoints/<name>`` for each name; returns the last path.

        In a multi-process run every process calls it together: the pools are gathered, rank 0
        writes, and the others wait until the files exist.
        """
        state = self.state()
        paths = [self.folder.checkpoints / name for name in names]
        if self.dist.is_main:
            for path in paths:
                save_checkpoint(state, path)
        distributed.barrier(self.dist)
        return paths[-1]

    # ------------------------------------------------------------------ loop
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
        self.folder.acquire()  # again, if an earlier fit() of this trainer released it
        if main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            atomic_write_text(self.run_dir / DATA_FILE, json.dumps(self.data_record, indent=2) + "\n")
            self.folder.checkpoints.mkdir(parents=True, exist_ok=True)
            self.log.open()
        if main and self.resume_data is not None and self.global_step >= self.total_steps:
            # e.g. --resume --max-steps 1 on a run at step 3: exit 0 with no step made, said so.
            logger.warning(
                "%s: the run is already at step %d, and this run makes %d step(s) in all; nothing to train",
                self.run_dir,
                self.global_step,
                self.total_steps,
            )
        previous_handlers = self._install_signal_handlers()
        progress = ProgressBar(
            self.show_progress, self.total_steps, self.global_step, shown=self.model.watched_losses
        )
        last_path = self.folder.checkpoints / "last.pt"
        log_every = self.cfg.train.log_every
        # Reading a loss back waits for the GPU: on CUDA only at logging steps. On the CPU it is free.
        check_every = 1 if self.device.type == "cpu" else log_every
        self._clock_start = time.perf_counter()
        try:
            while self.global_step < self.total_steps and (
                self.step_schedule or self.epoch < self.cfg.optim.total_epochs
            ):
                epoch_start = time.perf_counter()
                for batch in self.data.epoch(self.epoch, self.step_in_epoch):
                    try:
                        losses = self.model.train_step(batch)
                    except torch.cuda.OutOfMemoryError:
                        raise TrainingError(
                            f"CUDA ran out of memory at batch size {self.cfg.optim.batch_size} and image size "
                            f"{self.cfg.data.image_size}; lower --batch-size or --image-size "
                            f"(the last checkpoint is kept at {last_path})"
                        ) from None
                    self.step_in_epoch += 1
                    self.global_step += 1
                    adjust_threads()  # --threads auto: follow the machine's load between steps
                    is_log = self.global_step % log_every == 0 or self.global_step == self.total_steps
                    # Processes agree on stopping only where they exchange the losses anyway.
                    stop = None
                    if is_log or self.global_step % check_every == 0:
                        values, stop = self._read_back(losses)
                        self._check_finite(values, last_path)
                    if is_log:
                        row = self._log(values)
                        progress.update(self.global_step, self.epoch, row)
                        if on_step is not None:
                            on_step(self.global_step, row)
                    else:
                        progress.advance(self.global_step, self.epoch)
                    if self.step_schedule:
                        # After the log row (which shows this step's rate), before any checkpoint.
                        self.model.step_schedulers()
                    if not self.dist.is_distributed:
                        stop = self._stop_signal
                    if stop is not None:
                        self._count_training_time()
                        path = self.save("last.pt")
                        raise TrainingInterrupted(self.global_step, path, stop)
                    every = self.cfg.train.save_every_steps
                    if every and self.global_step % every == 0:
                        self._count_training_time()
                        self.save("last.pt")
                    if self.global_step >= self.total_steps:
                        break
                if self.step_in_epoch >= self.steps_per_epoch:
                    self._end_epoch(time.perf_counter() - epoch_start)
                else:
                    break  # max_steps reached inside the epoch
            self._count_training_time()
            last = self.save("last.pt")
        finally:
            progress.close()
            self.log.close()
            for sig, old in previous_handlers.items():
                signal.signal(sig, old)
            self.folder.release()
        best = self.folder.checkpoints / "best.pt"
        return TrainResult(
            run_dir=self.run_dir,
            step=self.global_step,
            epoch=self.epoch,
            last_checkpoint=last,
            best_checkpoint=best if best.is_file() else None,
            best_value=self.best_value,
            history=self.history,
            val_history=self.val_history,
            best_metric=self.best_metric,
        )

    def _count_training_time(self) -> None:
        """Adds the wall time since the last count to :attr:`train_seconds`."""
        now = time.perf_counter()
        self.train_seconds += now - self._clock_start
        self._clock_start = now

    def _read_back(self, losses: dict[str, torch.Tensor]) -> tuple[dict[str, float], str | None]:
        """The loss terms as floats (averaged over the processes) and whether to stop: one host sync.

        In a multi-process run the losses and a stop flag travel in one all-reduce, so every process
        sees the same values and takes the same decision.
        """
        names = [k for k in self.model.loss_columns if k in losses]
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
        bad = [k for k in self.model.watched_losses if not math.isfinite(values.get(k, 0.0))]
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

    def _log(self, values: dict[str, float]) -> dict[str, float]:
        columns = self.model.loss_columns
        row: dict[str, float] = {
            "step": self.global_step,
            "epoch": self.epoch,
            "lr": self.model.learning_rate(),
            **{k: values.get(k, 0.0) for k in columns},
        }
        self.history.append(row)
        self.log.training_row(row, {**{f"loss/{k}": row[k] for k in columns}, "lr": row["lr"]})
        return row

    def _end_epoch(self, seconds: float) -> None:
        epoch = self.epoch
        if not self.step_schedule:
            self.model.step_schedulers()
        self.epoch += 1
        self.step_in_epoch = 0
        improved = False
        self._count_training_time()
        if self.dist.is_main:
            # Rank 0 alone draws samples and validates (on the plain networks); the others wait in save().
            self.log.scalar("time/epoch_seconds", seconds, self.global_step)
            if (epoch + 1) % self.cfg.train.sample_every == 0:
                self.write_samples(epoch)
            if self.val_metric_names and (epoch + 1) % self.cfg.train.val_every == 0:
                metrics = self.validate()
                row = {
                    "step": self.global_step,
                    "epoch": epoch,
                    "train_seconds": round(self.train_seconds, 3),
                    **metrics,
                }
                self.val_history.append(row)
                self.log.validation_row(row, metrics)
                improved = self._maybe_best(metrics)
        improved = distributed.broadcast_object(improved, self.dist)
        # Validation and sample grids are not training time (nor the other ranks' wait for them).
        self._clock_start = time.perf_counter()
        names = ["best.pt"] if improved else []
        keep = self.cfg.train.keep_epoch_checkpoints
        if keep > 0 and (epoch + 1) % self.cfg.train.checkpoint_every == 0:
            names.append(f"epoch_{epoch + 1:04d}.pt")
        self.save(*names, "last.pt")
        if self.dist.is_main:
            # Only now that the new checkpoints are written: the older epoch checkpoints beyond keep.
            prune_epoch_checkpoints(self.folder.checkpoints, keep)

    def _maybe_best(self, metrics: dict[str, float]) -> bool:
        """Records a new best validation value; True when the caller should write ``best.pt``."""
        name = self.best_metric
        if name not in metrics:
            if self.best_epoch is None:
                logger.warning(
                    "best_metric %s is not computed here (have: %s)", name, ", ".join(sorted(metrics))
                )
            return False
        value = metrics[name]
        better = (
            self.best_value is None
            or (self.best_mode == "max" and value > self.best_value)
            or (self.best_mode == "min" and value < self.best_value)
        )
        if better and math.isfinite(value):
            self.best_value = value
            self.best_epoch = self.epoch - 1
            self.best_step = self.global_step
            return True
        return False

    # ------------------------------------------------------ validation, samples
    def validate(self) -> dict[str, float]:
        """Validation metrics of the model now (see :func:`medcyclegan.train.validation.validate`)."""
        return validate(self.model, self.data)

    def write_samples(self, epoch: int) -> Path:
        """The sample grid of ``epoch`` (0-based) as ``samples/epoch_NNNN.png``, also in TensorBoard."""
        path = self.run_dir / "samples" / f"epoch_{epoch + 1:04d}.png"
        grid = write_samples(self.model, self.data, path)
        self.log.image("samples", grid, self.global_step)
        return path
