"""What a run trained on: a record of its input files in every checkpoint (and ``data.json``), checked on resume.

For each role (``--src``, ``--tgt``, ``--val-src``, ``--val-tgt``, ``--src-masks``, ``--tgt-masks``) the
record lists the files in the order training used them, each with ``name`` (path relative to the
role's common folder), ``path`` (absolute, when recorded), ``size`` (bytes), ``mtime_ns`` and the
``sha256`` of its content. Two records describe the same data when every role has the same digests in
the same order: content identity is what matters, so a data folder mounted elsewhere (a requeued job on
another node) or a touched file resumes, while an added, removed, changed, renamed or reordered
file is refused with one line naming it.

A volume made of several files is hashed as a whole: a DICOM series folder (its files, not its
subfolders, which are volumes of their own) and a detached header (``X.mhd`` / ``X.nhdr`` with its
``X.raw``, ``X.zraw`` or ``X.raw.gz``).

Why a full content hash rather than size and mtime: a size+mtime rule would both refuse a touched
file and miss a rewrite that keeps both. The cost is one sequential read of each input: sha256 runs
at several hundred MB/s per core without the SHA instructions and faster with them (most current
x86 and ARM CPUs), and ``hashlib`` releases the GIL, so the files are hashed on parallel threads
(:func:`medcyclegan.parallel.map_threads`), on rank 0 only. That is cheaper than the decompression
and preparation that every start (fresh or resumed) does on the same files anyway, and it happens
before them, so a wrong ``--resume`` fails before the data is prepared.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medcyclegan.errors import CheckpointError, InputError
from medcyclegan.io.discovery import files_of_volume, split_series
from medcyclegan.parallel import map_threads

logger = logging.getLogger("medcyclegan")

RECORD_FORMAT = 1
DATA_FILE = "data.json"
# The roles of the record, with the option a user knows them by.
ROLES = {
    "src": "--src",
    "tgt": "--tgt",
    "val_src": "--val-src",
    "val_tgt": "--val-tgt",
    "src_masks": "--src-masks",
    "tgt_masks": "--tgt-masks",
}
_SHOWN = 3  # differences named per role; more are counted


def _member_files(path: Path) -> list[Path]:
    """The files whose bytes make up the volume at ``path`` (a file, a DICOM folder, ``FOLDER::UID``).

    A detached header brings the data files it names; a DICOM folder its DICOM files
    (:func:`~medcyclegan.io.discovery.files_of_volume`, which convert also uses).
    """
    folder, _uid = split_series(path)
    if folder.is_dir():
        return [p for p in files_of_volume(path) if not p.is_dir()]
    return files_of_volume(path)


def _sha256(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", path) from None


def _entry(path: Path, name: str) -> dict[str, Any]:
    """Name, absolute path, size, mtime and content digest of one volume."""
    members = _member_files(path)
    try:
        stats = [m.stat() for m in members]
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", path) from None
    if len(members) == 1 and members[0] == path:
        digest = _sha256(path)
    else:
        # Several files: a digest of the members' names, sizes and digests.
        lines = [f"{m.name}\0{s.st_size}\0{_sha256(m)}\n" for m, s in zip(members, stats)]
        digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    return {
        "name": name,
        "path": os.path.abspath(path),
        "size": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        "sha256": digest,
    }


def _names(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the common folder of the list (the name alone for one path)."""
    if not paths:
        return []
    parents = [os.path.abspath(split_series(p)[0].parent) for p in paths]
    root = os.path.commonpath(parents)
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def record_data(roles: Mapping[str, Sequence[Path] | None]) -> dict[str, Any]:
    """The record of the files given for each role (see the module docstring), hashed in parallel."""
    jobs: list[tuple[str, Path, str]] = []
    for role in ROLES:
        paths = [Path(p) for p in (roles.get(role) or [])]
        jobs.extend((role, p, n) for p, n in zip(paths, _names(paths)))
    entries = map_threads(lambda i: _entry(jobs[i][1], jobs[i][2]), len(jobs))
    record: dict[str, Any] = {"format": RECORD_FORMAT, "roles": {role: [] for role in ROLES}}
    for (role, _path, _name), entry in zip(jobs, entries):
        record["roles"][role].append(entry)
    return record


def _size_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old["size"] == new["size"]:
        return "same size, other content"
    return f"{old['size']} -> {new['size']} bytes"


def _role_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """What differs between two lists of entries of one role, in words (empty when identical)."""
    if [e["sha256"] for e in old] == [e["sha256"] for e in new]:
        return []
    old_by_name = {e["name"]: e for e in old}
    new_by_name = {e["name"]: e for e in new}
    removed = [n for n in old_by_name if n not in new_by_name]
    added = [n for n in new_by_name if n not in old_by_name]
    parts: list[str] = []
    for name in list(removed):
        twin = next((a for a in added if new_by_name[a]["sha256"] == old_by_name[name]["sha256"]), None)
        if twin is not None:
            parts.append(f"{name} renamed to {twin}")
            removed.remove(name)
            added.remove(twin)
    parts += [
        f"{n} changed ({_size_change(old_by_name[n], new_by_name[n])})"
        for n in new_by_name
        if n in old_by_name and new_by_name[n]["sha256"] != old_by_name[n]["sha256"]
    ]
    parts += [f"{n} removed" for n in removed] + [f"{n} added" for n in added]
    if not parts:
        parts = ["the same files in another order"]
    if len(parts) > _SHOWN:
        parts = [*parts[:_SHOWN], f"and {len(parts) - _SHOWN} more"]
    return parts


def data_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Differences between two records, one ``"--src: a changed (...), b added"`` item per role."""
    changes = []
    for role, flag in ROLES.items():
        parts = _role_changes(stored["roles"].get(role, []), current["roles"].get(role, []))
        if parts:
            changes.append(f"{flag}: {', '.join(parts)}")
    return changes


def check_same_data(stored: Mapping[str, Any] | None, current: Mapping[str, Any], checkpoint: Path) -> None:
    """Refuses to resume a run on other data than it was trained on (same content moved is fine).

    Raises:
        CheckpointError: one line naming each added, removed, changed, renamed or reordered file.
    """
    if not stored or "roles" not in stored:
        logger.warning(
            "%s has no record of its training data (an older medcyclegan wrote it): the data cannot be "
            "checked against it",
            checkpoint,
        )
        return
    changes = data_changes(stored, current)
    if changes:
        raise CheckpointError(
            f"the training data differs from what this run was trained on: {'; '.join(changes)}; "
            "resume with the same data, or start a new run in another --out",
            checkpoint,
        )
    moved = [
        (old.get("path"), new.get("path"))
        for role in ROLES
        for old, new in zip(stored["roles"].get(role, []), current["roles"].get(role, []))
        if old.get("path") != new.get("path")
    ]
    if moved:
        logger.info(
            "resume: the same training data (by content) is now read from another place, e.g. %s (was %s)",
            moved[0][1],
            moved[0][0],
        )
