"""Folder locks, and removal of what a killed writer left in a folder.

A :class:`FolderLock` is an exclusive ``fcntl.flock`` on a hidden lock file in the folder, held
while a process works there. The kernel drops a flock when its holder dies (even by SIGKILL), so a
lock left by a killed process never blocks the next one, and there is no stale-lock heuristic to get
wrong. The holder writes its pid into the lock file, for the message the next process prints.

Within one process the lock is re-entrant: several holders of the same folder share one flock (a
second ``open`` + ``flock`` of the same file by the same process would otherwise refuse itself).

:func:`remove_stale_temporaries` deletes the temporaries of :func:`medcyclegan.io.atomic.atomic_path`
that a killed process left behind; call it only while holding the folder's lock, so that no live
writer's temporary is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from pathlib import Path

from medcyclegan.errors import OutputError
from medcyclegan.io.atomic import _suffix

logger = logging.getLogger("medcyclegan")

LOCK_FILE = ".medcyclegan.lock"

# flock errors of file systems without locks (the lock is then skipped with a warning).
_NO_LOCKS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}

# Per process: resolved lock file -> (file descriptor of the flocked lock file, number of holders).
_HELD: dict[Path, tuple[int, int]] = {}

# A blocked waiter retries this often (flock has no timeout of its own).
_RETRY_S = 0.05

# atomic_path's temporaries: "." + target name + "." + mkstemp's 8 random characters + ".tmp" + suffix.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>.*)$")


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (created if missing), e.g. a training run folder.

    Args:
        folder: the folder to lock.
        holder: who holds it, for the refusal message (e.g. ``"training process"``).
        place: what the folder is, for the refusal message (e.g. ``"run folder"``).
        name: the lock file's name in the folder: locks of different names are independent (a
            report written into a run folder does not wait for the training that holds the folder).
        wait_s: how long to wait for a holder to let go before refusing; 0 refuses at once. For
            short critical sections (writing the two files of one report), not for whole runs.
        remove: delete the lock file on release (for a lock in a folder the user owns, e.g. a
            report's). Safe: the file is unlinked while locked, and a waiter that then gets the
            lock on the unlinked file sees it is no longer the folder's and tries again.
    """

    def __init__(
        self,
        folder: str | Path,
        holder: str = "process",
        place: str = "folder",
        *,
        name: str = LOCK_FILE,
        wait_s: float = 0.0,
        remove: bool = False,
    ) -> None:
        if not name.startswith(".") or "/" in name or name in (".", ".."):
            raise ValueError(f"a lock file name is hidden and has no folder part; got {name!r}")
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0; got {wait_s!r}")
        self.folder = Path(folder)
        self.holder = holder
        self.place = place
        self.name = name
        self.wait_s = float(wait_s)
        self.remove = remove
        self.held = False
        self._key: Path | None = None

    def __repr__(self) -> str:
        return (
            f"FolderLock({str(self.folder)!r}, holder={self.holder!r}, place={self.place!r}, "
            f"name={self.name!r}, wait_s={self.wait_s}, held={self.held})"
        )

    def acquire(self) -> FolderLock:
        """Takes the lock (a no-op when this object holds it already); returns ``self``.

        Raises:
            OutputError: another process holds the lock ("<folder>: another training process (pid
                N) is using this run folder"), or the folder cannot be created or written.
        """
        if self.held:
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"is a file, not a {self.place}: give a folder", self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            key = self.folder.resolve() / self.name
        except OSError as exc:
            raise OutputError(f"cannot create {self.place} ({exc.strerror or exc})", self.folder) from None
        if key in _HELD:
            fd, count = _HELD[key]
            _HELD[key] = (fd, count + 1)
            self.held, self._key = True, key
            return self
        path = self.folder / self.name
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                raise OutputError(f"{self.place} is not writable", self.folder) from None
            try:
                _flock_within(fd, max(0.0, deadline - time.monotonic()))
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"another {self.holder}" + (f" (pid {pid})" if pid else "")
                raise OutputError(f"{who} is using this {self.place}", self.folder) from None
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise OutputError(
                        f"cannot lock {self.place} ({exc.strerror or exc})", self.folder
                    ) from None
                # e.g. Lustre mounted without -o flock: working unlocked beats refusing to work at all.
                logger.warning(
                    "%s: this file system cannot lock files (%s); nothing stops another %s from using this %s",
                    self.folder,
                    exc.strerror or exc,
                    self.holder,
                    self.place,
                )
                break
            if not self.remove or _is_current(fd, path):
                break
            os.close(fd)  # locked a file its holder removed on release: lock the folder's new one
        # The pid is only for the message of a refused process: a failed write must not stop the run.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = (fd, 1)
        self.held, self._key = True, key
        return self

    def release(self) -> None:
        """Gives the lock up (the last holder of this process unlocks); a no-op when not held."""
        if not self.held or self._key is None:
            return
        self.held, key = False, self._key
        fd, count = _HELD.pop(key, (-1, 0))
        if count > 1:
            _HELD[key] = (fd, count - 1)
            return
        if fd >= 0:
            if self.remove:
                # Unlinked while still locked: a waiter that gets this file's lock next sees it is
                # gone from the folder and locks the folder's new one (see acquire).
                with contextlib.suppress(OSError):
                    (self.folder / self.name).unlink()
            # Otherwise the lock file stays: without acquire's check, unlinking it would let a
            # waiting process lock a file nobody sees.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _is_current(fd: int, path: Path) -> bool:
    """True when ``fd`` is still the file at ``path`` (not one its holder unlinked meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _flock_within(fd: int, wait_s: float) -> None:
    """An exclusive flock on ``fd``, retried for up to ``wait_s`` seconds; BlockingIOError after that."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_S)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


def is_atomic_temporary(name: str) -> bool:
    """True for a name :func:`~medcyclegan.io.atomic.atomic_path` gives its temporaries.

    E.g. ``.last.pt.k3j_9x0a.tmp.pt`` (target ``last.pt``) or ``.ct.nii.gz.0a1b2c3d.tmp.nii.gz``.
    """
    match = _TEMPORARY.match(name)
    return bool(match) and _suffix(Path(match["target"])) == match["suffix"]


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes the atomic-write temporaries directly in ``folder``; returns what was removed.

    Only files named as :func:`~medcyclegan.io.atomic.atomic_path` names them are touched. The caller
    must hold the folder's lock (no live writer may be using one of them).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if is_atomic_temporary(path.name) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) left by a killed process in %s", len(removed), folder)
    return removed
