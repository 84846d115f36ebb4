"""Atomic file output: write to a temporary name in the target folder, then rename.

A crash, a full disk or Ctrl-C while writing leaves either the old file or the new one, never a
partial file. Every output of the toolkit (volumes, reports, checkpoints, configs) goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medcyclegan.errors import OutputError


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
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the extension (``.nii.gz`` included), so format-by-extension writers
    work on it. On any exception the temporary file is removed and ``path`` is untouched.
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
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # A full disk or a vanished folder is the user's to fix: one line, nothing partial left.
        raise OutputError(f"cannot be written ({exc.strerror or exc})", path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
