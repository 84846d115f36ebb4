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
import shutil
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
# renameat2's flag that swaps two existing paths in one step (Linux 3.15+, most local file systems).
_RENAME_EXCHANGE = 2


def _default_mode() -> int:
    """Permissions a plainly created file would get (mkstemp's 0600 would hide outputs from the group)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _default_folder_mode() -> int:
    """Permissions a plainly created folder would get (mkdtemp's 0700 would hide outputs)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


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


def _renameat2(tmp: Path, path: Path, flags: int = _RENAME_NOREPLACE) -> bool:
    """``renameat2(..., flags)`` through libc (default ``RENAME_NOREPLACE``); False where the call or
    flag is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False  # glibc older than 2.28, or another libc
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), flags) == 0:
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


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a new hidden folder next to ``path``; on success it becomes ``path`` in one rename.

    For outputs that are a folder of files (a DICOM series): the files are written into the
    temporary folder (``.<name>.<random>.tmp``, which discovery skips as hidden), each synced, and the
    folder is renamed into place, so no reader ever sees a partial folder, and two processes writing
    one output each publish a complete folder of their own (their files never mix). On any exception
    (Ctrl-C included) the temporary folder is removed and ``path`` is untouched.

    Args:
        path: the final folder.
        overwrite: replace an existing ``path`` as a whole. Where the kernel can, the two folders are
            swapped in one step (``renameat2(RENAME_EXCHANGE)``) and the old one is then deleted;
            elsewhere the old folder is moved aside first (for an instant ``path`` is missing).
            ``False``: published only if ``path`` is still missing or an empty folder at that moment
            (one ``rename``, which the kernel refuses over a non-empty folder).

    Raises:
        OutputError: ``path`` cannot be written, or (``overwrite`` False) another process published
            it first.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"cannot be written ({exc.strerror or exc})", path) from None
    try:
        yield tmp
        for entry in tmp.iterdir():
            with open(entry, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(entry, _default_mode())
        os.chmod(tmp, _default_folder_mode())
        _publish_folder(tmp, path, overwrite)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot be written ({exc.strerror or exc})", path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish_folder(tmp: Path, path: Path, overwrite: bool) -> None:
    """Renames the finished folder ``tmp`` to ``path`` (see :func:`atomic_folder`)."""
    if not overwrite or not path.exists():
        try:
            os.rename(tmp, path)  # replaces only a missing or empty folder
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputError(RACE_MESSAGE, path) from None
            raise
        _sync_folder(path.parent)
        return
    if not path.is_dir() or path.is_symlink():
        raise OutputError("is not a folder; it cannot be replaced by a folder", path)
    if _renameat2(tmp, path, _RENAME_EXCHANGE):
        # tmp now holds the old folder.
        shutil.rmtree(tmp, ignore_errors=True)
        _sync_folder(path.parent)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rename(path, aside)  # replaces the empty folder just made
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (best effort: some file systems cannot open folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
