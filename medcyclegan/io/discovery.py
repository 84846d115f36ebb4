"""Finding volumes on disk: file types by extension, DICOM series folders, case names and pairing.

A volume is a NIfTI file (``.nii.gz``, ``.nii``), an ITK file (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``)
or a folder holding one DICOM series. Extensions are matched case-insensitively.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from medcyclegan.errors import InputError
from medcyclegan.io.headers import data_layout

logger = logging.getLogger("medcyclegan")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# Longest first, so that ``.nii.gz`` wins over a plain ``.gz`` match.
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# Data files of detached headers (.mhd -> .raw/.zraw, .nhdr -> .raw/.raw.gz): not volumes by themselves.
DETACHED_DATA_SUFFIXES = (".raw", ".zraw", ".raw.gz")
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
DICOM_SUFFIX = ".dcm"
# Separator between a DICOM folder and a series UID, as in ``FOLDER::SERIES_UID``.
SERIES_SEPARATOR = "::"

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_WARNING_EXAMPLES = 3


def volume_suffix(path: str | Path) -> str | None:
    """The volume extension of ``path`` in lower case (``".nii.gz"``, ``".nrrd"``...), or ``None``."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words, from its ``st_mode``."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((text for test, text in kinds if test(mode)), "a special file")


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (links followed); False for FIFOs, devices, sockets, folders, nothing.

    Checked before opening a file found in a folder: opening a FIFO blocks until someone writes to it.
    """
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_special_file(path: Path) -> bool:
    """True for an existing FIFO, device or socket (a broken link or a link loop is not: reading it
    says what is wrong)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm`` file or a file with the ``DICM`` magic at byte 128 (DICOM Part 10)."""
    path = Path(path)
    if not is_regular_file(path):
        return False
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(_DICOM_MAGIC_OFFSET)
            return handle.read(len(_DICOM_MAGIC)) == _DICOM_MAGIC
    except OSError:
        return False


def is_dicom_folder(path: str | Path) -> bool:
    """True if ``path`` is a folder holding at least one DICOM file directly (not in subfolders)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return False
    return any(
        not entry.name.startswith(".") and entry.is_file() and is_dicom_file(entry) for entry in entries
    )


def split_series(path: str | Path) -> tuple[Path, str | None]:
    """Splits ``FOLDER::SERIES_UID`` into the folder and the UID; other paths give ``(path, None)``.

    A path that exists as written is never split, so a file whose name contains ``::`` still works.
    """
    text = str(path)
    if SERIES_SEPARATOR not in text or Path(text).exists():
        return Path(text), None
    folder, _, uid = text.rpartition(SERIES_SEPARATOR)
    return Path(folder), uid.strip()


def is_volume_path(path: str | Path) -> bool:
    """True if ``path`` is a volume file (by extension) or a DICOM series folder (``FOLDER::UID`` too)."""
    folder, uid = split_series(path)
    if uid is not None:
        return is_dicom_folder(folder)
    path = Path(path)
    if path.is_dir():
        return is_dicom_folder(path)
    return volume_suffix(path) is not None


def case_name(path: str | Path) -> str:
    """The case identifier of a volume: its file name without the volume extension.

    ``case_001.nii.gz`` -> ``case_001``; a DICOM folder gives the folder's name; ``FOLDER::UID`` gives
    ``FOLDER_UID`` so that two series of one folder get different names.
    """
    folder, uid = split_series(path)
    if uid is not None:
        return f"{folder.name}_{uid}"
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None or path.is_dir():
        return path.name
    return path.name[: -len(suffix)]


S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class CasePairs(Generic[S, T]):
    """Sources and targets matched by case name (:func:`pair_by_case`).

    Attributes:
        pairs: ``(case name, source, target)`` for every source that has a target, in the order of
            the sources (a duplicated source name gives one pair per source).
        unmatched_sources: sources without a target, in their order.
        unmatched_targets: targets without a source, in their order.
        duplicate_source: the first source name met twice, as ``(name, first, second)``, or ``None``.
        duplicate_target: the same for the targets; the first of two same-named targets is the one
            paired.
    """

    pairs: list[tuple[str, S, T]]
    unmatched_sources: list[S]
    unmatched_targets: list[T]
    duplicate_source: tuple[str, S, S] | None
    duplicate_target: tuple[str, T, T] | None


def pair_by_case(
    sources: Iterable[S], targets: Iterable[T], name: Callable[[S | T], str] = case_name
) -> CasePairs[S, T]:
    """Pairs two collections by case name: the one pairing rule of train, evaluate and augment.

    Nothing is refused here: each caller decides what a duplicate or an unmatched case means
    (an error naming its folder, or a case left out) and words it for its own inputs.

    Args:
        sources: the items of one side (paths, or anything ``name`` takes).
        targets: the items of the other side.
        name: the case name of an item; :func:`case_name` of a path by default (for prepared
            volumes, e.g. ``lambda v: case_name(v.source)``).

    Returns:
        The :class:`CasePairs`.
    """
    sources, targets = list(sources), list(targets)
    target_names = [name(target) for target in targets]
    target_by_name: dict[str, T] = {}
    duplicate_target: tuple[str, T, T] | None = None
    for key, target in zip(target_names, targets):
        if key not in target_by_name:
            target_by_name[key] = target
        elif duplicate_target is None:
            duplicate_target = (key, target_by_name[key], target)
    pairs: list[tuple[str, S, T]] = []
    unmatched_sources: list[S] = []
    source_by_name: dict[str, S] = {}
    duplicate_source: tuple[str, S, S] | None = None
    for source in sources:
        key = name(source)
        if key not in source_by_name:
            source_by_name[key] = source
        elif duplicate_source is None:
            duplicate_source = (key, source_by_name[key], source)
        if key in target_by_name:
            pairs.append((key, source, target_by_name[key]))
        else:
            unmatched_sources.append(source)
    unmatched_targets = [target for key, target in zip(target_names, targets) if key not in source_by_name]
    return CasePairs(pairs, unmatched_sources, unmatched_targets, duplicate_source, duplicate_target)


def find_volumes(folder: str | Path) -> list[Path]:
    """All volumes under ``folder`` (recursive), sorted by path.

    Hidden files and folders (name starting with ``.``) are skipped, including the temporary files of
    interrupted atomic writes. A folder holding DICOM files counts as one volume (the folder itself);
    its subfolders are still searched. Other files are ignored, with one warning that counts them.
    Symbolic links to folders and files are followed; what is reached twice (a link to a folder or
    file also found directly, a link loop) is listed once, with one warning naming what was skipped.

    Args:
        folder: a folder to search, or a single volume file (returned as ``[folder]``).

    Returns:
        Volume paths: files, and folders for DICOM series.

    Raises:
        InputError: ``folder`` does not exist, is a file that is not a volume, or holds no volume.
    """
    folder, uid = split_series(folder)
    if uid is not None:
        if not is_dicom_folder(folder):
            raise InputError("is not a folder holding DICOM files", folder)
        return [Path(f"{folder}{SERIES_SEPARATOR}{uid}")]
    if not folder.exists():
        raise InputError("not found", folder)
    if is_special_file(folder):
        raise InputError(f"is {file_kind(os.stat(folder).st_mode)}, not a regular file or a folder", folder)
    if folder.is_file():
        if volume_suffix(folder) is None:
            raise InputError(f"is not a volume file (expected one of {', '.join(VOLUME_SUFFIXES)})", folder)
        return [folder]

    volumes: list[Path] = []
    ignored: list[Path] = []
    # Symbolic links to folders are followed; a folder reached twice (a loop, or a link to a folder
    # that is also found directly) is searched once, through its real path where it has one.
    real_folders = set()
    for root, dirs, _ in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        real_folders.add(_inode(root))
    visited = {_inode(folder)}
    skipped: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        root_path = Path(root)
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            key = _inode(root_path / name)
            if key is None:
                continue
            linked = (root_path / name).is_symlink()
            if key in visited or (linked and key in real_folders):
                skipped.append(root_path / name)
                continue
            visited.add(key)
            kept.append(name)
        # Pruning in place stops os.walk from descending into hidden and already searched folders.
        dirs[:] = kept
        names = sorted(f for f in files if not f.startswith("."))
        lower_names = [name.lower() for name in names]
        has_detached_header = any(name.endswith(DETACHED_HEADER_SUFFIXES) for name in lower_names)
        dicom_here = False
        for name, lower in zip(names, lower_names):
            path = root_path / name
            if is_special_file(path):
                ignored.append(path)  # a FIFO, device or socket: never opened (a FIFO would block)
            elif volume_suffix(path) is not None:
                volumes.append(path)
            elif has_detached_header and lower.endswith(DETACHED_DATA_SUFFIXES):
                continue
            elif is_dicom_file(path):
                dicom_here = True
            else:
                ignored.append(path)
        if dicom_here:
            volumes.append(root_path)
    volumes, duplicates = _distinct_files(volumes)
    skipped += duplicates
    if skipped:
        examples = ", ".join(str(p.relative_to(folder)) for p in skipped[:_WARNING_EXAMPLES])
        more = ", ..." if len(skipped) > _WARNING_EXAMPLES else ""
        logger.warning(
            "%s: skipped %d path(s) that are symbolic links to a file or folder already found: %s%s",
            folder,
            len(skipped),
            examples,
            more,
        )

    if ignored:
        examples = ", ".join(str(p.relative_to(folder)) for p in ignored[:_WARNING_EXAMPLES])
        more = ", ..." if len(ignored) > _WARNING_EXAMPLES else ""
        logger.warning("%s: ignored %d non-image file(s): %s%s", folder, len(ignored), examples, more)
    if not volumes:
        raise InputError(
            f"no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} files and DICOM series folders)",
            folder,
        )
    return sorted(volumes, key=lambda p: str(p))


def _distinct_files(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """``paths`` without those naming a file or folder already in it (kept: its link-free path, or
    the first); and the paths left out."""

    def links_in(path: Path) -> bool:
        try:
            return path.resolve() != Path(os.path.abspath(path))
        except (OSError, RuntimeError):  # a link loop
            return True

    kept: dict[tuple[int, int] | Path, Path] = {}
    left_out = []
    for path in sorted(paths, key=lambda p: (links_in(p), str(p))):
        key = _inode(path) or path
        if key in kept:
            left_out.append(path)
        else:
            kept[key] = path
    return list(kept.values()), left_out


def files_of_volume(path: str | Path) -> list[Path]:
    """Every file the volume at ``path`` consists of, ``path`` first.

    A ``.mhd``/``.nhdr`` (or a ``.nrrd`` with a ``data file`` line) adds the data files its header
    names (``.raw``, ``.zraw``, ``.raw.gz``, lists and file patterns included); a DICOM series folder
    (``FOLDER`` or ``FOLDER::SERIES_UID``) gives the folder, then the DICOM files directly in it. Used
    to refuse an output that would replace any part of an input. A header that cannot be parsed
    gives only ``path``: reading it fails anyway, before anything is written.
    """
    folder, uid = split_series(path)
    if uid is not None or folder.is_dir():
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            entries = []
        slices = [e for e in entries if not e.name.startswith(".") and e.is_file() and is_dicom_file(e)]
        return [folder, *slices]
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in ITK_SUFFIXES or not path.is_file():
        return [path]
    try:
        layout = data_layout(path, suffix)
    except (InputError, OSError):
        return [path]
    if layout is None:
        return [path]
    return [path, *(f for f, name in zip(layout.data_files, layout.data_names) if name.strip())]


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` (existing or not) is ``folder`` or lies below it, links resolved.

    Used to refuse outputs written into an input folder (a run folder in ``--src``, a convert
    output folder in its input folder), where the next discovery would take them for inputs.
    """
    inner, outer = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return inner == outer or outer in inner.parents


def path_key(path: str | Path) -> str:
    """A key that is equal for two paths naming the same file: absolute, links resolved, case folded.

    Case is folded on every file system: on a case-insensitive one ``a.mhd`` and ``a.MHD`` are one
    file, and on a case-sensitive one treating them as one only refuses a confusing output name.
    """
    try:
        resolved = str(Path(path).resolve())
    except (OSError, RuntimeError):  # a symbolic link loop
        resolved = os.path.abspath(path)
    return os.path.normcase(resolved).casefold()


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name (or, once created, would name) the same file (see :func:`path_key`).

    Existing files are also compared by device and inode, which catches hard links and bind mounts.
    """
    if path_key(a) == path_key(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def shared_file(written: Iterable[str | Path], read: Iterable[str | Path]) -> tuple[Path, Path] | None:
    """The first pair (file to be written, file read) that are the same file (:func:`same_file`), or ``None``.

    Args:
        written: the files an output consists of (:func:`~medcyclegan.io.writers.files_written_by`).
        read: the files the inputs consist of (:func:`files_of_volume`).
    """
    by_key: dict[str, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for name in read:
        by_key.setdefault(path_key(name), Path(name))
        if (inode := _inode(name)) is not None:
            by_inode.setdefault(inode, Path(name))
    for out in written:
        clash = by_key.get(path_key(out))
        if clash is None and (inode := _inode(out)) is not None:
            clash = by_inode.get(inode)
        if clash is not None:
            return Path(out), clash
    return None


def _inode(path: str | Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
