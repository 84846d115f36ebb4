"""The run folder: what a training run writes, locked against a second process, cleaned on --overwrite.

A run folder holds :data:`RUN_ARTEFACTS` and nothing else of the run's. :class:`RunFolder` locks it
for the run's lifetime (rank 0 of a multi-process run locks for all ranks), removes what a killed
process left (atomic-write temporaries, the trash of an interrupted ``--overwrite``) and, for a fresh
start, moves every artefact of an earlier run aside - never a file no run wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

from medcyclegan.checkpoint import is_medcyclegan_checkpoint
from medcyclegan.config import config_from_yaml
from medcyclegan.errors import OutputError
from medcyclegan.io.lock import FolderLock, is_atomic_temporary, remove_stale_temporaries
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.train.data_record import DATA_FILE, ROLES

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


class RunFolder:
    """The folder of one training run, locked by this process from construction to :meth:`release`.

    Args:
        path: the run folder (need not exist yet).
        dist: the run's processes; only rank 0 locks and cleans up.

    Raises:
        OutputError: another process trains in the folder.
    """

    def __init__(self, path: str | Path, dist: DistributedContext) -> None:
        self.path = Path(path)
        self.dist = dist
        self._overwrite_interrupted = False
        self._lock = self._lock_run_dir()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, locked={self._lock is not None})"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def acquire(self) -> None:
        """Takes the lock again (after :meth:`release`); no-op on ranks other than 0."""
        if self._lock is not None:
            self._lock.acquire()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _lock_run_dir(self) -> FolderLock | None:
        """Locks the run folder for this process, then removes what a killed process left there.

        Only rank 0 of a multi-process run locks (for all ranks: they must not block each other).
        A second process training in the folder is refused with one line. Removed under the lock:
        atomic-write temporaries of a write cut short, and the trash of an interrupted --overwrite.
        """
        if not self.dist.is_main:
            return None
        lock = FolderLock(self.path, holder="training process", place="run folder").acquire()
        weakref.finalize(self, lock.release)
        # Only what _move_aside_previous_run names so (mkdtemp: 8 random characters), never a link.
        trash = [
            p
            for p in self.path.glob(TRASH_PREFIX + "*")
            if _TRASH_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
        ]
        # A trash folder means an --overwrite was cut short: the user asked for the rest to go too.
        self._overwrite_interrupted = bool(trash)
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)
        for sub in TEMPORARY_FOLDERS:
            remove_stale_temporaries(self.path / sub)
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
        present = [name for name in RUN_ARTEFACTS if os.path.lexists(self.path / name)]
        if not present:
            return
        foreign = _foreign_run_files(self.path, present)
        if foreign:
            # Even with --overwrite: it removes a run's own files, never the user's (e.g. --out ~).
            listed = ", ".join(foreign[:_FOREIGN_SHOWN]) + (
                f" and {len(foreign) - _FOREIGN_SHOWN} more" if len(foreign) > _FOREIGN_SHOWN else ""
            )
            raise OutputError(
                f"holds {listed}, which no medcyclegan run wrote; nothing was removed (--overwrite removes "
                "only a run's own files): move them away, or choose another --out",
                self.path,
            )
        shown = ", ".join(present)
        if overwrite:
            logger.info("--overwrite: removing the previous run in %s (%s)", self.path, shown)
        elif self._overwrite_interrupted:
            logger.warning(
                "%s: an interrupted --overwrite left %s of the previous run; removing them",
                self.path,
                shown,
            )
        elif _is_run_config(self.path / "config.yaml"):
            logger.warning(
                "%s: a run that stopped before its first checkpoint left %s; removing them",
                self.path,
                shown,
            )
        else:
            raise OutputError(
                f"holds {shown} but no checkpoint; pass --overwrite to start afresh (they are removed)",
                self.path,
            )
        try:
            trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=self.path))
            for name in present:
                os.rename(self.path / name, trash / name)
        except OSError as exc:
            raise OutputError(
                f"cannot move the previous run's files aside ({exc.strerror or exc})", self.path
            ) from None
        shutil.rmtree(trash, ignore_errors=True)

    def start_fresh(self, overwrite: bool) -> None:
        """Makes the folder ready for a new run: created, writable, no earlier run's artefacts left.

        Raises:
            OutputError: it holds a run (without ``overwrite``), cannot be created or written, or
                holds files no run wrote.
        """
        ckpt_dir = self.path / "checkpoints"
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")) and not overwrite:
            raise OutputError(
                "already holds a training run; continue it with --resume, or pass --overwrite to start afresh",
                self.path,
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create run folder ({exc.strerror})", self.path) from None
        # One probe per rank: processes of one run must not delete each other's probe.
        probe = self.path / f".write-test-{self.dist.rank}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            raise OutputError("run folder is not writable", self.path) from None
        if self.dist.is_main:
            self._move_aside_previous_run(overwrite)


# Names a run gives the files inside its artefact folders (atomic-write temporaries aside).
_RUN_FOLDER_FILES = {
    "checkpoints": re.compile(r"^(last|best|epoch_\d+)\.pt$"),
    "samples": re.compile(r"^epoch_\d+\.png$"),
    "tb": re.compile(r"^events\.out\.tfevents\..+"),
}
_LOG_HEADER = "step,epoch"  # how metrics.csv and val_metrics.csv begin (see _log, _end_epoch)
_FOREIGN_SHOWN = 3  # foreign files named in the refusal; more are counted


def _foreign_run_files(run_folder: Path, names: Sequence[str]) -> list[str]:
    """The files among the artefacts ``names`` of ``run_folder`` that no trainer wrote (relative paths).

    A run writes real files and folders with known names and contents: a link, a sub-folder, an
    unknown name inside ``checkpoints/``, ``samples/`` or ``tb/``, a ``.pt`` without medcyclegan's
    format marker, a ``config.yaml`` that is not a run's resolved config, CSV logs without the
    run's header, or JSON records of another shape are someone else's, and never removed.
    """
    foreign: list[str] = []
    for name in names:
        path = run_folder / name
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
    return set(record) <= set(ROLES)  # sources.json: a path (or null) per role


def _is_run_config(path: Path) -> bool:
    """True for a ``config.yaml`` a trainer wrote: a resolved config with the data's normalisation."""
    try:
        return bool(config_from_yaml(path.read_text(), source=str(path)).normalisation)
    except Exception:  # unreadable, not YAML, not a config: not a run's, so not ours to remove
        return False
