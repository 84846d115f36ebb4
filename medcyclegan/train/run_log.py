"""Run logging: the CSV logs, TensorBoard and the progress bar of a training run.

``metrics.csv`` gets a row per logged step (``step, epoch, lr`` and the model's loss columns),
``val_metrics.csv`` a row per validation (``step, epoch, train_seconds`` and the metrics); both are cut back to a checkpoint's step on resume, so a
resumed run's logs read as an uninterrupted run's. Only rank 0 writes; the others log nothing.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.tensorboard import SummaryWriter

from medcyclegan.io.atomic import atomic_path, atomic_write_text

TRAINING_LOG = "metrics.csv"
VALIDATION_LOG = "val_metrics.csv"


class RunLog:
    """The logs of a run folder: CSV rows and TensorBoard scalars and images (rank 0 only).

    Args:
        run_dir: the run folder.
        enabled: False on processes other than rank 0: every call is then a no-op.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer: SummaryWriter | None = None

    def __repr__(self) -> str:
        return f"RunLog({str(self.run_dir)!r}, enabled={self.enabled})"

    def open(self) -> None:
        """Opens TensorBoard's event file (``tb/``)."""
        if self.enabled and self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def training_row(self, row: dict[str, float], scalars: dict[str, float]) -> None:
        """Appends ``row`` to ``metrics.csv`` and ``scalars`` to TensorBoard at ``row["step"]``."""
        if not self.enabled:
            return
        _append_csv(self.run_dir / TRAINING_LOG, row)
        for key, value in scalars.items():
            self.scalar(key, value, int(row["step"]))

    def validation_row(self, row: dict[str, float], metrics: dict[str, float]) -> None:
        """Appends ``row`` to ``val_metrics.csv`` and ``metrics`` to TensorBoard at ``row["step"]``."""
        if not self.enabled:
            return
        _append_csv(self.run_dir / VALIDATION_LOG, row)
        for key, value in metrics.items():
            self.scalar(key, value, int(row["step"]))

    def scalar(self, key: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(key, value, step)

    def image(self, key: str, image: Any, step: int) -> None:
        """A greyscale image (H, W) in TensorBoard."""
        if self._writer is not None:
            self._writer.add_image(key, image, step, dataformats="HW")

    def truncate(self, step: int) -> None:
        """Drops log rows written after ``step`` (a resumed run computes them again)."""
        if not self.enabled:
            return
        for name in (TRAINING_LOG, VALIDATION_LOG):
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


class ProgressBar:
    """A rich progress bar with epoch, step, the ``shown`` losses, it/s and ETA (silent when disabled)."""

    def __init__(self, enabled: bool, total: int, completed: int, shown: tuple[str, ...] = ()) -> None:
        self.enabled = enabled
        self.shown = shown
        if not enabled:
            return
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
            # e.g. "G 1.234  D_A 0.250  D_B 0.251" for loss_G, loss_D_A, loss_D_B
            losses = "  ".join(f"{name.removeprefix('loss_')} {row[name]:.3f}" for name in self.shown)
            self.progress.update(self.task, losses=losses)
            self.advance(step, epoch)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
