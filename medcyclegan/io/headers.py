"""Headers of the ITK formats whose voxels may live elsewhere: MetaImage (``.mha``/``.mhd``), NRRD (``.nrrd``/``.nhdr``).

Parsed here, before ITK sees a file, to know where its voxel data is (in the header file after the
header, or in data files it names), whether it is compressed, and which data files it names: a
detached header naming ``../../etc/passwd`` is refused (see :func:`check_data_files_inside`), and
:func:`~medcyclegan.io.discovery.files_of_volume` lists a volume's files for the "output would
replace its input" check. Only structure is checked here; ITK still reads the fields that matter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from medcyclegan.errors import InputError

# Environment variable that lets a detached header name data files outside its own folder.
ALLOW_EXTERNAL_DATA_ENV = "MEDCYCLEGAN_ALLOW_EXTERNAL_DATA_FILES"
# MetaImage header: "Key = Value" lines, ending with ElementDataFile (data follows for LOCAL).
_META_HEADER_MAX_BYTES = 1 << 16
_META_LINE = re.compile(r"^([^=]+?)\s*=\s*(.*)$")
# A NRRD header (a .nhdr with a LIST of data files included) is text; larger means something else.
_NRRD_HEADER_MAX_BYTES = 1 << 22
# More data files than this in a LIST or a file pattern can only come from a corrupted header.
_MAX_DATA_FILES = 100_000
_NRRD_GZIP_ENCODINGS = ("gzip", "gz")
_NRRD_BZIP2_ENCODINGS = ("bzip2", "bz2")


@dataclass(frozen=True)
class DataLayout:
    """Where a MetaImage or NRRD file keeps its voxels.

    Attributes:
        header: the header file.
        fields: header fields (MetaImage keys, NRRD field names in lower case) and their values.
        data_files: the detached data files in reading order; empty when the voxels follow the header.
        data_names: the same files as the header spells them (relative to its folder, or absolute).
        data_offset: the byte offset of the voxels in ``header`` (attached data) or in each data file
            (MetaImage ``HeaderSize``; else 0).
        compression: ``"zlib"`` (MetaImage), ``"gzip"`` or ``"bzip2"`` (NRRD), or ``None``.
        line_skip: NRRD ``line skip``: text lines to skip in each data file before its data.
        byte_skip: NRRD ``byte skip``: bytes to skip (after decompression) in each data file.
    """

    header: Path
    fields: dict[str, str]
    data_files: tuple[Path, ...]
    data_names: tuple[str, ...]
    data_offset: int
    compression: str | None
    line_skip: int = 0
    byte_skip: int = 0


def read_metaimage_header(path: Path) -> tuple[dict[str, str], int, list[str]]:
    """The fields of a MetaImage header, the byte offset just after it, and the lines after it.

    The lines after the header are the file names of ``ElementDataFile = LIST``.

    Raises:
        InputError: a line that is not ``Key = Value``, or no ``ElementDataFile`` line.
    """
    with open(path, "rb") as handle:
        head = handle.read(_META_HEADER_MAX_BYTES)
    fields: dict[str, str] = {}
    position = 0
    lines = head.split(b"\n")
    for number, raw_line in enumerate(lines, start=1):
        line_end = position + len(raw_line) + 1
        text = raw_line.decode("latin-1").strip()
        position = line_end
        if not text:
            continue
        match = _META_LINE.match(text)
        if match is None or not match.group(1).isprintable():
            raise InputError(f"has a malformed MetaImage header (line {number} is not 'Key = Value')", path)
        fields[match.group(1)] = match.group(2)
        if match.group(1) == "ElementDataFile":
            rest = [line.decode("latin-1").strip() for line in lines[number:]]
            return fields, min(line_end, len(head)), rest
    raise InputError("has a malformed MetaImage header (no ElementDataFile line)", path)


def read_nrrd_header(path: Path) -> tuple[dict[str, str], int, list[str]] | None:
    """The fields of a NRRD header (names in lower case), the offset of the data after it, and the
    lines after the ``data file: LIST`` line (its file names); ``None`` if it is not a NRRD header.

    ITK reports problems with an unrecognisable header in its own words, so nothing is raised here.
    """
    with open(path, "rb") as handle:
        head = handle.read(_NRRD_HEADER_MAX_BYTES)
    if not head.startswith(b"NRRD"):
        return None
    fields: dict[str, str] = {}
    position = 0
    list_lines: list[str] | None = None
    data_offset = len(head)
    for raw_line in head.split(b"\n"):
        position += len(raw_line) + 1
        text = raw_line.decode("latin-1").rstrip("\r")
        if not text.strip():
            data_offset = min(position, len(head))  # a blank line ends the header; data follows
            break
        if list_lines is not None:
            list_lines.append(text.strip())
            continue
        if text.startswith("#") or ":=" in text or ":" not in text:
            continue  # comments, key/value pairs and the magic line
        name, _, value = text.partition(":")
        name = name.strip().lower()
        fields[name] = value.strip()
        if name in ("data file", "datafile") and value.split()[:1] == ["LIST"]:
            list_lines = []
    return fields, data_offset, list_lines or []


def data_layout(path: Path, suffix: str) -> DataLayout | None:
    """Where the voxels of the MetaImage or NRRD file ``path`` are (``suffix`` in lower case).

    Returns:
        The layout; ``None`` for a file that is not recognisably NRRD (ITK then says what is wrong).

    Raises:
        InputError: a malformed MetaImage header, or a data file pattern that cannot be expanded.
    """
    layout = _data_layout(path, suffix)
    if layout is not None and any("\0" in name for name in layout.data_names):
        raise InputError("names a data file with a NUL character in its name", path)
    return layout


def _data_layout(path: Path, suffix: str) -> DataLayout | None:
    if suffix in (".mha", ".mhd"):
        fields, header_end, rest = read_metaimage_header(path)
        compressed = fields.get("CompressedData", "False").lower() == "true"
        data_file = fields["ElementDataFile"]
        if data_file.upper() == "LOCAL":
            names: tuple[str, ...] = ()
        elif data_file.upper().split()[:1] == ["LIST"]:
            names = tuple(name for name in rest if name)
        else:
            names = _expanded(path, data_file)
        return DataLayout(
            path,
            fields,
            tuple(path.parent / name for name in names),
            names,
            header_end if not names else max(_int_field(fields, "HeaderSize"), 0),
            "zlib" if compressed else None,
        )
    parsed = read_nrrd_header(path)
    if parsed is None:
        return None
    fields, data_offset, list_lines = parsed
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        names = ()
    elif data_file.split()[:1] == ["LIST"]:
        names = tuple(name for name in list_lines if name)
    else:
        names = _expanded(path, data_file)
    encoding = fields.get("encoding", "raw").lower()
    compression = (
        "gzip" if encoding in _NRRD_GZIP_ENCODINGS else "bzip2" if encoding in _NRRD_BZIP2_ENCODINGS else None
    )
    return DataLayout(
        path,
        fields,
        tuple(path.parent / name for name in names),
        names,
        data_offset if not names else 0,
        compression,
        line_skip=_int_field(fields, "line skip", "lineskip"),
        byte_skip=_int_field(fields, "byte skip", "byteskip"),
    )


def _int_field(fields: dict[str, str], *names: str) -> int:
    for name in names:
        if name in fields:
            try:
                return int(fields[name])
            except ValueError:
                return 0  # ITK reports the malformed field itself
    return 0


def _expanded(header: Path, spec: str) -> tuple[str, ...]:
    """One data file name, or a printf-style pattern ``name%03d.raw MIN MAX STEP [SUBDIM]``."""
    parts = spec.split()
    if "%" not in spec or len(parts) < 4:
        return (spec,)
    try:
        first, last, step = (int(v) for v in parts[1:4])
        if step == 0 or (last - first) // step + 1 > _MAX_DATA_FILES:
            raise ValueError
        names = [parts[0] % i for i in range(first, last + (1 if step > 0 else -1), step)]
    except (ValueError, TypeError):
        raise InputError(f"has a data file pattern that cannot be expanded ({spec})", header) from None
    return tuple(names)


def external_data_allowed(allow: bool | None = None) -> bool:
    """``allow`` if given, else whether ``MEDCYCLEGAN_ALLOW_EXTERNAL_DATA_FILES`` is set to a true value."""
    if allow is not None:
        return allow
    return os.environ.get(ALLOW_EXTERNAL_DATA_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_data_files_inside(layout: DataLayout, allow_external: bool | None = None) -> None:
    """Refuses a detached header naming a data file outside its own folder (and its subfolders).

    Symbolic links are resolved, so a data file that is a link to a file outside counts as outside.
    Without this, ``ElementDataFile = ../../../../etc/passwd`` would be read as voxel data and could
    end up in a dataset meant to be shared.

    Raises:
        InputError: a data file outside the header's folder, unless ``allow_external`` (or the
            environment variable :data:`ALLOW_EXTERNAL_DATA_ENV`) allows it.
    """
    if not layout.data_files or external_data_allowed(allow_external):
        return
    folder = layout.header.parent.resolve()
    for data_file, shown in zip(layout.data_files, layout.data_names):
        try:
            inside = data_file.resolve().is_relative_to(folder)
        except (OSError, RuntimeError):
            raise InputError(f"its data file {shown} is a symbolic link loop", layout.header) from None
        if not inside:
            link = " (through a symbolic link)" if _is_relative(data_file, layout.header.parent) else ""
            raise InputError(
                f"names a data file outside its own folder{link}: {shown}; a detached header may only "
                f"name files in its folder or below (set {ALLOW_EXTERNAL_DATA_ENV}=1 to allow it)",
                layout.header,
            )


def _is_relative(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` by its name alone (``..`` collapsed, links not followed)."""
    return Path(os.path.normpath(os.path.abspath(path))).is_relative_to(
        os.path.normpath(os.path.abspath(folder))
    )
