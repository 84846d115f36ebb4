"""Atomic file output: write to a temporary name in the target folder, then rename.

A crash, a full disk or Ctrl-C while writing leaves either the old file or the new one, never a
partial file. Every output of the toolkit (volumes, reports, checkpoints, configs) goes through here.
Outputs written without ``--overwrite`` are published only if their name is still free at that
moment (:func:`publish`): a file another process created meanwhile is never replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medcyclegan.errors import OutputError

# The line a process gets when another one published the same output first (see publish()).
RACE_MESSAGE = "was created by another process while this one was writing; pass --overwrite to replace it"
# errno values of a file system without hard links (FAT, some network and FUSE file systems).
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _default_mode() -> int:
    """Permissions a plainly created file would get (mkstemp's 0600 would hide outputs from the group)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_can_write(path: str | Path, overwrite: bool = False) -> Path:
    """Fails fast, before any work, if ``path`` exists (without ``overwrite``) or its folder is unwritable.

    The folder is created if missing. Returns ``path`` as a :class:`Path`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError("already exists; pass --overwrite to replace it", path)
    if path.is_dir():
        raise OutputError("is a folder, expected a file path", path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder ({exc.strerror})", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", folder)
    return path


def _suffix(path: Path) -> str:
    """Keeps double extensions such as ``.nii.gz`` so that writers pick the right format."""
    name = path.name
    for ext in (".nii.gz", ".tar.gz"):
        # Case-insensitive, keeping the caller's case: "SCAN.NII.GZ" must not become a ".GZ" temp file.
        if name.lower().endswith(ext):
            return name[-len(ext) :]
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on success it is published as ``path``.

    The temporary name keeps the extension (``.nii.gz`` included), so format-by-extension writers
    work on it. On any exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: the final file.
        overwrite: replace ``path`` if it exists by then (files the toolkit itself rewrites:
            checkpoints, caches, logs). ``False`` for user outputs written without ``--overwrite``:
            ``path`` is then published only if it still does not exist (:func:`publish`), so a file
            another process created meanwhile is never replaced.

    Raises:
        OutputError: ``path`` cannot be written, or (``overwrite`` False) appeared while writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{_suffix(path)}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        publish(tmp, path, overwrite=overwrite)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # A full disk or a vanished folder is the user's to fix: one line, nothing partial left.
        raise OutputError(f"cannot be written ({exc.strerror or exc})", path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def publish(tmp: str | Path, path: str | Path, *, overwrite: bool) -> None:
    """Moves the finished file ``tmp`` to ``path`` (same folder) in one step.

    With ``overwrite`` this is :func:`os.replace`. Without it, ``path`` must not exist at the moment
    of publishing: ``os.link`` creates the name only if it is free (atomically, on every POSIX file
    system with hard links), then ``tmp`` is unlinked. Where hard links are not supported, Linux's
    ``renameat2(RENAME_NOREPLACE)`` does the same in one call; as a last resort the name is claimed
    with ``O_CREAT | O_EXCL`` (an empty file, for an instant) and then replaced. Two processes
    writing one output without ``--overwrite`` therefore never both succeed: the second one fails
    and ``tmp`` is left for its caller to remove.

    Raises:
        OutputError: ``path`` exists (``overwrite`` False).
        OSError: the file system refused the move.
    """
    tmp, path = Path(tmp), Path(path)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise OutputError(RACE_MESSAGE, path) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _rename_noreplace(tmp, path)
        return
    # The data now has both names; dropping the temporary one cannot fail in a way that matters.
    with contextlib.suppress(OSError):
        tmp.unlink()


def _rename_noreplace(tmp: Path, path: Path) -> None:
    """``rename`` that fails if ``path`` exists, for file systems without hard links."""
    if _renameat2(tmp, path):
        return
    try:
        # Claims the name (fails if taken), then fills it in one rename.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _default_mode()))
    except FileExistsError:
        raise OutputError(RACE_MESSAGE, path) from None
    os.replace(tmp, path)


def _renameat2(tmp: Path, path: Path) -> bool:
    """``renameat2(..., RENAME_NOREPLACE)`` through libc; False where the call or flag is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False  # glibc older than 2.28, or another libc
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise OutputError(RACE_MESSAGE, path)
    if err in (errno.EINVAL, errno.ENOSYS, *_NO_HARD_LINKS):
        return False  # this file system does not know the flag
    raise OSError(err, os.strerror(err), str(path))


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> None:
    """Writes ``data`` to ``path`` through :func:`atomic_path` (``overwrite`` as there)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> None:
    """Writes ``text`` as UTF-8 to ``path`` through :func:`atomic_path` (``overwrite`` as there)."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
