"""Errors that the command line reports as one clear line (no traceback).

Every error raised for bad user input derives from :class:`MedCycleGANError`. Its message must name
the file (or option) and the problem, e.g. ``"scan.nii.gz: file is truncated (gzip stream ended
early)"``. The CLI catches these, prints the message on one line and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class MedCycleGANError(Exception):
    """Base class of all user-facing errors."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        full = f"{path}: {message}" if path is not None else message
        super().__init__(one_line(full))


def one_line(text: str) -> str:
    """``text`` with newlines and other unprintable characters escaped (``\\n``), so that an error
    naming a file called ``"a\\nb.nii.gz"`` still prints as one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class InputError(MedCycleGANError):
    """An input file or folder cannot be used (unreadable, wrong dimensionality, NaN, ...)."""


class ConfigError(MedCycleGANError):
    """A configuration file or option is invalid."""


class OutputError(MedCycleGANError):
    """An output cannot be written (exists without --overwrite, unwritable folder, ...)."""


class CheckpointError(MedCycleGANError):
    """A checkpoint is corrupted, unsafe, or does not match the requested model."""


class TrainingError(MedCycleGANError):
    """Training cannot continue (non-finite loss, out of memory, ...)."""


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the training checkpoint is safely written (CLI exit 130)."""

    def __init__(self, step: int, checkpoint: str | Path, signal_name: str) -> None:
        self.step = step
        self.checkpoint = Path(checkpoint)
        super().__init__(
            f"{signal_name} received: stopped at step {step}, checkpoint saved to {checkpoint}; "
            "continue with --resume"
        )
