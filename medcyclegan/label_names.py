"""Names of segmentation label values, read from a dataset description (``evaluate --label-names``).

Two layouts are read, both from the ``"labels"`` entry of a ``dataset.json``:

* nnU-Net v2: name -> value, ``{"labels": {"background": 0, "skull": 1, "brain": 2}}``. Region labels
  (a name mapped to a list of values, for region-based training) are refused: a region is not one
  value of the map.
* Medical Segmentation Decathlon (MSD): value (as a string) -> name,
  ``{"labels": {"0": "background", "1": "skull"}}``.

Value 0 is background and gets no name here. A value without a name is called ``label_<value>``
(:func:`default_label_name`), so a name of that form must belong to that very value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcyclegan.errors import InputError
from medcyclegan.io.discovery import file_kind, is_special_file

NNUNET_LAYOUT = "nnU-Net v2 dataset.json"
MSD_LAYOUT = "MSD dataset.json"
# A dataset.json of a large MSD task lists every case; anything bigger is not a label description.
MAX_LABEL_NAMES_BYTES = 64 * 1024 * 1024
_EXAMPLES = '{"labels": {"background": 0, "skull": 1}} (nnU-Net v2) or {"labels": {"0": "background", "1": "skull"}} (MSD)'
_DEFAULT_NAME = re.compile(r"label_(\d+)")
_MSD_KEY = re.compile(r"\d+")


def default_label_name(value: int) -> str:
    """The name of a label value that no file names: ``label_<value>``."""
    return f"label_{value}"


@dataclass(frozen=True)
class LabelNames:
    """Names of label values and where they came from.

    Attributes:
        names: label value -> name, background (0) left out.
        path: the file read, or ``None`` (every label is called ``label_<value>``).
        layout: :data:`NNUNET_LAYOUT`, :data:`MSD_LAYOUT`, or ``None`` without a file.
    """

    names: dict[int, str] = field(default_factory=dict)
    path: Path | None = None
    layout: str | None = None

    @property
    def source(self) -> str:
        """In words, for reports: ``"file: PATH (nnU-Net v2 dataset.json)"`` or the default rule."""
        if self.path is None:
            return "label_<value> (no label names file)"
        return f"file: {self.path} ({self.layout})"

    def name_of(self, value: int) -> str:
        """The name of ``value``: from the file, else ``label_<value>``."""
        return self.names.get(value, default_label_name(value))


def read_label_names(path: str | Path) -> LabelNames:
    """Reads the label names of an nnU-Net v2 or MSD ``dataset.json`` (see the module docstring).

    Raises:
        InputError: the file is missing, not a regular file, too large, not UTF-8 JSON, has a key
            twice in one object, lacks an object ``"labels"``, mixes or breaks both layouts (a region,
            a non-integer or negative value, an empty or unprintable name), names one value twice or
            gives one name to two values, or names a value ``label_<other value>``.
    """
    path = Path(path)
    data = read_json_object(path)
    if "labels" not in data:
        raise InputError(f'has no "labels" entry; expected a dataset.json such as {_EXAMPLES}', path)
    return label_names_of(data, path)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object read as label files are: UTF-8, at most :data:`MAX_LABEL_NAMES_BYTES`, no key twice.

    Raises:
        InputError: the file is missing, not a regular file, too large, not UTF-8, not valid JSON,
            has a key twice in one object, or is not a JSON object.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKeyError as exc:
        raise InputError(f"key {exc.key!r} appears twice in one JSON object", path) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise InputError(f"is not a JSON object; expected a dataset.json such as {_EXAMPLES}", path)
    return data


def label_names_of(data: dict[str, Any], path: str | Path) -> LabelNames:
    """The label names of a parsed ``dataset.json`` (``data["labels"]``, either layout); ``path`` for messages.

    Raises:
        InputError: as :func:`read_label_names`.
    """
    path = Path(path)
    labels = data["labels"]
    if not isinstance(labels, dict) or not labels:
        raise InputError(f'"labels" must be a non-empty object such as {_EXAMPLES}', path)
    if all(isinstance(value, str) for value in labels.values()):
        names, layout = _msd_names(labels, path), MSD_LAYOUT
    else:
        names, layout = _nnunet_names(labels, path), NNUNET_LAYOUT
    for value, name in names.items():
        if not name.strip() or not name.isprintable():
            raise InputError(f"label {value} has an empty or unprintable name {name!r}", path)
        default = _DEFAULT_NAME.fullmatch(name)
        if default and int(default.group(1)) != value:
            raise InputError(
                f"label {value} is named {name!r}, the name of unnamed label {int(default.group(1))}; rename it",
                path,
            )
    return LabelNames(names={value: names[value] for value in sorted(names)}, path=path, layout=layout)


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's ``object_pairs_hook``: a key given twice would silently keep only its last value."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _read_text(path: Path) -> str:
    if is_special_file(path):  # reading a FIFO would wait for a writer forever
        raise InputError(f"is {file_kind(path.stat().st_mode)}, not a JSON file", path)
    if path.is_dir():
        raise InputError("is a folder; give a dataset.json file", path)
    try:
        if path.stat().st_size > MAX_LABEL_NAMES_BYTES:
            raise InputError(
                f"is larger than {MAX_LABEL_NAMES_BYTES // (1024 * 1024)} MiB: not a label description", path
            )
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("label names file not found", path) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None


def _msd_names(labels: dict[str, str], path: Path) -> dict[int, str]:
    """``{"0": "background", "1": "skull"}`` -> ``{1: "skull"}``."""
    names: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for key, name in labels.items():
        if not _MSD_KEY.fullmatch(key):
            raise InputError(
                f'label key {key!r} is not a label value: MSD labels are keyed by values such as "1"', path
            )
        value = int(key)
        if value in by_name.values():  # "1" and "01"
            raise InputError(f"label value {value} is named twice", path)
        if name in by_name:
            raise InputError(f"name {name!r} is given to two label values: {by_name[name]} and {value}", path)
        by_name[name] = value
        if value != 0:
            names[value] = name
    return names


def _nnunet_names(labels: dict[str, Any], path: Path) -> dict[int, str]:
    """``{"background": 0, "skull": 1}`` -> ``{1: "skull"}``."""
    names: dict[int, str] = {}
    by_value: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, str):
            raise InputError(
                f"mixes the two layouts (label {name!r} -> {value!r} but others map to numbers); expected {_EXAMPLES}",
                path,
            )
        if isinstance(value, (list, tuple)):
            raise InputError(
                f"label {name!r} is a region (the values {value}), which is not one value of a label map; "
                "give a dataset.json naming single values",
                path,
            )
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"label {name!r} has the value {value!r}, not an integer", path)
        if value < 0:
            raise InputError(f"label {name!r} has the negative value {value}; labels are 0, 1, 2, ...", path)
        if value in by_value:
            raise InputError(f"label value {value} is named twice: {by_value[value]!r} and {name!r}", path)
        by_value[value] = name
        if value != 0:
            names[value] = name
    return names
