"""Segmentation-dataset augmentation: labelled scans in, synthetic scans on the labels' exact grids out.

Every image of a labelled dataset (e.g. MR with organ labels) is translated by a trained model (e.g.
into synthetic CT) and written next to a copy of its label as a ready-to-train dataset:

* nnU-Net v2 (``fmt="nnunetv2"``): ``DatasetXXX_NAME/`` with ``dataset.json``, ``imagesTr/{CASE}_0000.nii.gz``,
  ``labelsTr/{CASE}.nii.gz`` and ``splits_final.json`` (nnU-Net's planner copies it into the
  preprocessed folder, so a synthetic case and its source patient always share a fold).
* Medical Segmentation Decathlon (``fmt="msd"``): ``TaskXX_NAME/`` with ``dataset.json``,
  ``imagesTr/{CASE}.nii.gz``, ``labelsTr/{CASE}.nii.gz`` and an empty ``imagesTs/``.

Synthetic cases are named ``{case}_synth``. The image and its label must already share a grid; the
synthetic image is then written with the *label's* geometry (same header, affine, qform/sform), so
nnU-Net's shape/spacing/origin/direction checks pass bit for bit.

With ``include_originals`` the source scans are added too (as ``{case}``). They are of the *source*
modality, while nnU-Net normalises each channel as one modality ("CT" selects its CT normalisation,
fitted on the foreground HU of the whole dataset). Real MR under a "CT" channel would be clipped to HU
percentiles, which is meaningless, so a mixed dataset declares its channel ``"zscore"`` (per-image
z-score normalisation, right for both modalities) and a warning says so.

:func:`check_dataset` re-implements nnU-Net's ``--verify_dataset_integrity`` (read with SimpleITK, as
nnU-Net does) for both layouts, and is run on every dataset written here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from medcyclegan.config import DATASET_FORMATS, MODALITIES, check_planes
from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.io.atomic import atomic_write_text
from medcyclegan.io.discovery import (
    case_name,
    find_volumes,
    pair_by_case,
)
from medcyclegan.io.lock import FolderLock
from medcyclegan.io.readers import read_geometry, read_volume
from medcyclegan.io.volume import Geometry, format_numbers
from medcyclegan.io.writers import OUTPUT_DTYPES, write_volume
from medcyclegan.label_names import label_names_of, read_json_object
from medcyclegan.runtime import resolve_device

if TYPE_CHECKING:  # convert imports torch: only for the type hint
    from medcyclegan.convert import ConversionModel

logger = logging.getLogger("medcyclegan")

# nnU-Net reads the channel name: "CT" selects CTNormalization, anything else is a z-score per image.
CHANNEL_NAMES = {"ct": "CT", "mr": "MR"}
MIXED_CHANNEL_NAME = "zscore"
SYNTHETIC_SUFFIX = "_synth"
FILE_ENDING = ".nii.gz"
N_FOLDS = 5
# nnU-Net's own default split seed (KFold random_state), so folds are as reproducible as nnU-Net's.
SPLIT_SEED = 12345
MAX_DATASET_ID = {"nnunetv2": 999, "msd": 99}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_UNSAFE_CASE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
_CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# Temporary names of medcyclegan.io.atomic.atomic_path: ".{final name}.{random}.tmp.nii.gz".
# Hidden record of the model that made the dataset's synthetic cases (nnU-Net ignores it).
MODEL_FILE = ".medcyclegan-model.json"
_TEMPORARY_FILE = re.compile(r"^\..+\.nii\.gz\.[^.]+\.tmp\.nii\.gz$")
_SUMMARY_ITEMS = 3
_MAX_BINCOUNT_LABEL = 1_000_000
# Label values that never occur but would be declared to make the labels consecutive: beyond this,
# the maps are refused (a stray huge value, or not label maps at all).
_MAX_UNUSED_LABELS = 1000


# ----------------------------------------------------------------------------------------------- results


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`.

    Attributes:
        folder: the dataset folder checked.
        layout: ``"nnunetv2"``, ``"msd"``, or ``"unknown"`` when ``dataset.json`` is missing or unreadable.
        n_cases: training cases found.
        problems: one line per problem, naming the file (relative to ``folder``) and what is wrong.
    """

    folder: Path
    layout: str = "unknown"
    n_cases: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: ``"3 problems: a; b; c"`` (first three shown), or ``"OK: 12 cases (nnunetv2)"``."""
        if self.ok:
            return f"OK: {self.n_cases} case{_plural(self.n_cases)} ({self.layout})"
        n = len(self.problems)
        shown = "; ".join(self.problems[:_SUMMARY_ITEMS])
        more = f"; ... ({n - _SUMMARY_ITEMS} more)" if n > _SUMMARY_ITEMS else ""
        return f"{n} problem{_plural(n)}: {shown}{more}"

    def raise_if_problems(self) -> None:
        """Raises :class:`InputError` with :meth:`summary` if any problem was found."""
        if not self.ok:
            raise InputError(self.summary(), self.folder)


@dataclass
class AugmentResult:
    """What :func:`augment_dataset` produced.

    Attributes:
        dataset_dir: the dataset folder (``DatasetXXX_NAME`` or ``TaskXX_NAME``).
        fmt: ``"nnunetv2"`` or ``"msd"``.
        cases: every case identifier of the dataset, sorted.
        written: files written by this call.
        skipped: outputs that already existed and were kept (no ``overwrite``).
        labels: label name -> integer value, as declared in ``dataset.json``.
        channel_name: the name of image channel 0 (``"CT"``, ``"MR"`` or ``"zscore"``).
        dataset_json: path of ``dataset.json``.
        splits: path of ``splits_final.json`` (nnU-Net v2 only, else ``None``).
        check: the integrity check of the finished dataset (always OK, else an error was raised).
    """

    dataset_dir: Path
    fmt: str
    cases: list[str]
    written: list[Path]
    skipped: list[Path]
    labels: dict[str, int]
    channel_name: str
    dataset_json: Path
    splits: Path | None
    check: CheckReport


@dataclass(frozen=True)
class _Translation:
    """How each synthetic image is made: :func:`medcyclegan.convert.translate_volume`'s options."""

    batch_size: int = 16
    flip_average: bool = False
    planes: tuple[str, ...] = ("axial",)

    def record(self) -> dict[str, Any]:
        """The settings a dataset's model record keeps: a rerun with others would mix two translations."""
        return {"flip_average": self.flip_average, "planes": list(self.planes)}


@dataclass
class _Pair:
    """One source case: its image and label files and its (file-name safe) name."""

    name: str
    image: Path
    label: Path


# ------------------------------------------------------------------------------------------ the builder


def augment_dataset(
    images: str | Path,
    labels: str | Path,
    model: str | Path | ConversionModel | None,
    out: str | Path,
    *,
    fmt: str = "nnunetv2",
    to: str | None = None,
    include_originals: bool = False,
    dataset_id: int | None = None,
    name: str | None = None,
    labels_json: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    flip_average: bool = False,
    planes: str | Sequence[str] = ("axial",),
) -> AugmentResult:
    """Translates every labelled image and writes an nnU-Net v2 or MSD training dataset.

    Images and labels are paired by case name (file name without extension). Everything is checked
    before the first translation: pairing, grids (image vs label), label values, names, outputs.
    Existing case files are kept (resumable) unless ``overwrite``; ``dataset.json`` and
    ``splits_final.json`` are always rewritten at the end, then :func:`check_dataset` runs.

    Args:
        images: folder of images (any format :func:`~medcyclegan.io.read_volume` reads), or one file.
        labels: folder of integer label maps, one per image, each on its image's grid.
        model: a run folder or checkpoint (see :func:`~medcyclegan.convert.load_model`), ``None`` for
            the newest run under ``./runs``, or an already loaded ``ConversionModel``.
        out: parent folder of the dataset (e.g. ``$nnUNet_raw``); a path already ending in the dataset
            folder's name (``Dataset005_SynthCT``) is used as the dataset folder itself.
        fmt: ``"nnunetv2"`` or ``"msd"``.
        to: target modality (``"ct"`` or ``"mr"``); default the model's training target.
        include_originals: add the source images as cases too (same labels); the channel is then
            declared ``"zscore"`` because it mixes two modalities.
        dataset_id: dataset number, 1-999 for nnU-Net v2, 1-99 for MSD (required).
        name: dataset name (letters, digits, ``_``, ``-``; default ``SynthCT``/``SynthMR``).
        labels_json: JSON file mapping label name -> integer, with ``"background": 0`` and consecutive
            values; default ``{"background": 0, "label_1": 1, ...}`` up to the largest value found.
        overwrite: rewrite existing case files.
        batch_size: axial slices per generator call.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (ignored for a loaded model).
        flip_average: test-time flip averaging, as ``convert --flip-average``.
        planes: slice planes translated and averaged, as ``convert --planes`` (names or one
            comma-separated string). A rerun keeps existing cases only if they were made with the
            same ``flip_average`` and ``planes`` (and model).

    Returns:
        The :class:`AugmentResult`.

    Raises:
        ConfigError: invalid option (format, id, name, modality, batch size).
        InputError: unpaired cases, image/label grid mismatch, non-integer or negative labels, label
            values missing from ``labels_json``, unreadable inputs.
        OutputError: the dataset would be written inside an input folder (or the reverse), another
            dataset already uses this id, the folder holds cases not among the inputs, or the
            finished dataset fails :func:`check_dataset`.
        CheckpointError: the model cannot be loaded or cannot produce ``to``.
    """
    # lazy: convert imports torch (about 2 s, python -X importtime), which `augment --check` does not need.
    from medcyclegan.convert import ConversionModel, load_model  # noqa: PLC0415 (see the comment above)

    fmt = _check_choice("format", fmt, DATASET_FORMATS)
    if not isinstance(model, ConversionModel):
        resolve_device(device)  # a device this machine lacks fails before any input is read
    if to is not None:
        to = _check_choice("to", to, sorted(MODALITIES))  # listed "ct, mr", as augment always has
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    translation = _Translation(batch_size, bool(flip_average), check_planes(planes))
    dataset_id = _check_dataset_id(dataset_id, fmt)
    if name is not None and not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"dataset name {name!r} is invalid: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )

    pairs = pair_cases(images, labels)
    declared = load_labels_json(labels_json) if labels_json is not None else None
    if isinstance(model, ConversionModel):
        if to is not None and to != model.target_modality:
            raise ConfigError(f"the loaded model produces {model.target_modality}, not {to}")
        translator = model
    else:
        translator = load_model(model, to=to, device=device)
    source, target = translator.source_modality, translator.target_modality
    name = name if name is not None else f"Synth{CHANNEL_NAMES[target]}"
    dataset_dir = _dataset_folder(Path(out), fmt, dataset_id, name)
    _check_no_overlap(dataset_dir, [Path(images), Path(labels)])
    _check_id_free(dataset_dir, fmt, dataset_id)

    # Everything about the inputs and outputs is checked before the first (slow) translation.
    found_values, label_dtypes = _scan_labels(pairs)
    label_map = _resolve_labels(declared, found_values, labels_json, labels)
    plan = _plan_cases(pairs, include_originals)
    _check_no_stale_cases(dataset_dir, fmt, set(plan))
    mixed = include_originals and source != target
    channel_name = MIXED_CHANNEL_NAME if mixed else CHANNEL_NAMES[target]
    if mixed:
        logger.warning(
            "%s: originals are %s and synthetic images %s: channel 0 mixes modalities, so it is declared %r "
            "(per-image z-score) instead of %r; leave out --include-originals for a pure %s dataset",
            dataset_dir,
            source.upper(),
            target.upper(),
            MIXED_CHANNEL_NAME,
            CHANNEL_NAMES[target],
            target.upper(),
        )
    # One augment at a time per dataset folder: another one would take this one's temporaries for
    # a killed run's (and delete them), or mix its cases into this dataset.
    with FolderLock(dataset_dir, holder="augment process", place="dataset folder"):
        return _build_dataset(
            pairs, plan, translator, dataset_dir, fmt, name, channel_name, label_map, label_dtypes,
            include_originals=include_originals, translation=translation, overwrite=overwrite,
        )  # fmt: skip


def _build_dataset(
    pairs: Sequence[_Pair],
    plan: dict[str, tuple[_Pair, bool]],
    translator: Any,
    dataset_dir: Path,
    fmt: str,
    name: str,
    channel_name: str,
    label_map: dict[str, int],
    label_dtypes: dict[str, str],
    *,
    include_originals: bool,
    translation: _Translation,
    overwrite: bool,
) -> AugmentResult:
    """The writing half of :func:`augment_dataset`, every check done, under the dataset folder's lock."""
    source, target = translator.source_modality, translator.target_modality
    _make_folders(dataset_dir, fmt)
    _remove_interrupted_writes(dataset_dir)
    _record_model(dataset_dir, fmt, translator, translation, overwrite)

    written: list[Path] = []
    skipped: list[Path] = []
    for index, pair in enumerate(pairs, start=1):
        outputs = {
            case_id: (
                _image_path(dataset_dir, fmt, case_id),
                dataset_dir / "labelsTr" / f"{case_id}{FILE_ENDING}",
            )
            for case_id, (owner, _) in plan.items()
            if owner is pair
        }
        synthetic = {case_id: plan[case_id][1] for case_id in outputs}
        new, kept = _write_pair(
            pair, outputs, synthetic, translator, label_dtypes[pair.name], translation, overwrite
        )
        written.extend(new)
        skipped.extend(kept)
        logger.info(
            "[%d/%d] %s -> %s%s",
            index,
            len(pairs),
            pair.name,
            ", ".join(outputs),
            " (kept)" if not new else "",
        )

    cases = sorted(plan)
    description = (
        f"synthetic {target.upper()} made by medcyclegan from {source.upper()} (model {translator.checkpoint})"
        + (f", plus the original {source.upper()} scans" if include_originals else "")
        + ", with the source scans' labels"
    )
    dataset_json = dataset_dir / "dataset.json"
    splits_path = None
    if fmt == "nnunetv2":
        _write_json(
            dataset_json, _nnunet_dataset_json(name, channel_name, label_map, len(cases), description)
        )
        splits_path = dataset_dir / "splits_final.json"
        groups = {pair.name: sorted(c for c, (owner, _) in plan.items() if owner is pair) for pair in pairs}
        _write_json(splits_path, cross_validation_splits(groups))
    else:
        _write_json(dataset_json, _msd_dataset_json(name, channel_name, label_map, cases, description))

    report = check_dataset(dataset_dir)
    if not report.ok:
        raise OutputError(f"the written dataset fails its integrity check: {report.summary()}", dataset_dir)
    logger.info(
        "%s: %d files written, %d kept; %s", dataset_dir, len(written), len(skipped), report.summary()
    )
    return AugmentResult(
        dataset_dir=dataset_dir,
        fmt=fmt,
        cases=cases,
        written=written,
        skipped=skipped,
        labels=label_map,
        channel_name=channel_name,
        dataset_json=dataset_json,
        splits=splits_path,
        check=report,
    )


def _dataset_folder(out: Path, fmt: str, dataset_id: int, name: str) -> Path:
    """``out/DatasetXXX_NAME`` (``TaskXX_NAME`` for MSD), or ``out`` itself if it already is that folder."""
    folder_name = f"Dataset{dataset_id:03d}_{name}" if fmt == "nnunetv2" else f"Task{dataset_id:02d}_{name}"
    return out if out.name == folder_name else out / folder_name


def _scan_labels(pairs: Sequence[_Pair]) -> tuple[set[int], dict[str, str]]:
    """Reads every label: its values (non-negative integers), its storage type, and its grid vs the image's."""

    found: set[int] = set()
    dtypes: dict[str, str] = {}
    for pair in pairs:
        label = read_volume(pair.label)
        values = label_values(label.array, pair.label)
        found.update(values)
        dtypes[pair.name] = _label_dtype(max(values))
        _check_same_grid(pair.image, read_geometry(pair.image), pair.label, label.geometry)
    return found, dtypes


def _plan_cases(pairs: Sequence[_Pair], include_originals: bool) -> dict[str, tuple[_Pair, bool]]:
    """Output case id -> (source pair, is synthetic): ``{case}_synth`` always, ``{case}`` with originals."""
    plan: dict[str, tuple[_Pair, bool]] = {}
    for pair in pairs:
        ids = [(pair.name + SYNTHETIC_SUFFIX, True)] + ([(pair.name, False)] if include_originals else [])
        for case_id, synthetic in ids:
            if case_id in plan:
                raise InputError(
                    f"case name {case_id!r} is used twice (an input named '*{SYNTHETIC_SUFFIX}' collides with "
                    "a synthetic case); rename it",
                    pair.image,
                )
            plan[case_id] = (pair, synthetic)
    return plan


def _write_pair(
    pair: _Pair,
    outputs: dict[str, tuple[Path, Path]],
    synthetic: dict[str, bool],
    translator: Any,
    label_dtype: str,
    translation: _Translation,
    overwrite: bool,
) -> tuple[list[Path], list[Path]]:
    """Writes the missing (or, with ``overwrite``, all) image and label files of one source case.

    Every file is written on the label's geometry: nnU-Net compares image and label headers to float
    precision, and one geometry written twice is equal bit for bit.

    Returns:
        (files written, existing files kept).
    """
    # lazy: convert imports torch (about 2 s), which `augment --check` does not need.
    from medcyclegan.convert import OUTPUT_DTYPE, synthetic_description, translate_volume  # noqa: PLC0415 (see the comment above)

    every = [path for paths in outputs.values() for path in paths]
    todo = {path for path in every if overwrite or not path.exists()}
    kept = [path for path in every if path not in todo]
    if not todo:
        return [], kept
    label = read_volume(pair.label)
    written = []
    for case_id, (image_out, label_out) in outputs.items():
        if image_out in todo:
            if synthetic[case_id]:
                array, _, _ = translate_volume(
                    translator,
                    pair.image,
                    batch_size=translation.batch_size,
                    flip_average=translation.flip_average,
                    planes=translation.planes,
                )
                dtype = OUTPUT_DTYPE[translator.target_modality]
                # Written on the label's header: its description must not stay on a synthetic image.
                description = synthetic_description(
                    translator, flip_average=translation.flip_average, planes=translation.planes
                )
            else:
                original = read_volume(pair.image)
                array, dtype = original.array, _image_dtype(original.geometry.dtype)
                description = None
            written.append(
                write_volume(
                    array,
                    label.geometry,
                    image_out,
                    dtype=dtype,
                    overwrite=overwrite,
                    description=description,
                )
            )
        if label_out in todo:
            written.append(
                write_volume(label.array, label.geometry, label_out, dtype=label_dtype, overwrite=overwrite)
            )
    return written, kept


# ---------------------------------------------------------------------------------------------- pairing


def pair_cases(images: str | Path, labels: str | Path) -> list[_Pair]:
    """Pairs image and label volumes by case name; every image needs a label and vice versa.

    Names are made safe for nnU-Net file names (characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_``, with a warning).

    Raises:
        InputError: missing folders, no volumes, two volumes of one folder with the same case name,
            names colliding once made safe, or unmatched cases (all listed, both directions).
    """
    images, labels = Path(images), Path(labels)
    pairing = pair_by_case(find_volumes(images), find_volumes(labels))
    for duplicate, folder in ((pairing.duplicate_source, images), (pairing.duplicate_target, labels)):
        if duplicate is not None:
            name, first, second = duplicate
            raise InputError(f"two volumes are named {name!r}: {first} and {second}; rename one", folder)
    no_label = sorted(case_name(path) for path in pairing.unmatched_sources)
    no_image = sorted(case_name(path) for path in pairing.unmatched_targets)
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"{len(no_label)} image(s) in {images} without a label: {_listing(no_label)}")
        if no_image:
            parts.append(f"{len(no_image)} label(s) in {labels} without an image: {_listing(no_image)}")
        raise InputError(
            "; ".join(parts) + " (images and labels are paired by file name without extension)", images
        )
    pairs: list[_Pair] = []
    safe_names: dict[str, str] = {}
    for raw, image, label in sorted(pairing.pairs, key=lambda pair: pair[0]):
        safe = _UNSAFE_CASE_CHARACTERS.sub("_", raw)
        if safe in safe_names:
            raise InputError(
                f"cases {safe_names[safe]!r} and {raw!r} both become {safe!r} in nnU-Net file names; rename one",
                image,
            )
        if safe != raw:
            logger.warning("%s: case %r is written as %r (nnU-Net-safe file name)", image, raw, safe)
        safe_names[safe] = raw
        pairs.append(_Pair(safe, image, label))
    return pairs


# ---------------------------------------------------------------------------------------------- labels


def load_labels_json(path: str | Path) -> dict[str, int]:
    """Reads the label names of the dataset to write: name -> value, ``"background": 0``, consecutive values.

    Either a bare object (``{"background": 0, "liver": 1}``) or a dataset description whose
    ``"labels"`` entry names them, as :func:`medcyclegan.label_names.read_label_names` reads it (an
    nnU-Net v2 ``dataset.json``, whose labels are name -> value, or an MSD one, value -> name): the
    real CT dataset's own ``dataset.json`` can be given as it is.

    Raises:
        InputError: missing or invalid file, or values nnU-Net would refuse.
    """
    path = Path(path)
    data = read_json_object(path)
    if not data:
        raise InputError(
            'must be a JSON object of label name -> integer, e.g. {"background": 0, "liver": 1}', path
        )
    if isinstance(data.get("labels"), dict):
        names = label_names_of(data, path).names
        data = {"background": 0, **{name: value for value, name in names.items()}}
    problems = label_map_problems(data)
    if problems:
        raise InputError(problems[0], path)
    return {str(k): int(v) for k, v in data.items()}


def label_map_problems(label_map: Mapping[str, Any]) -> list[str]:
    """What nnU-Net would refuse in a ``labels`` mapping (name -> int): background 0, unique, consecutive."""
    problems = []
    bad = [k for k, v in label_map.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        return [f"label values must be integers (regions are not supported here): {_listing(bad)}"]
    if label_map.get("background") != 0:
        problems.append('labels must declare "background": 0')
    values = sorted(v for k, v in label_map.items() if k != "ignore")
    if len(set(values)) != len(values):
        problems.append(
            f"label values are declared twice: {sorted({v for v in values if values.count(v) > 1})}"
        )
    elif values and values != list(range(len(values))):
        problems.append(f"label values must be consecutive 0, 1, 2, ... as nnU-Net requires; got {values}")
    if "ignore" in label_map and values and label_map["ignore"] != max(values) + 1:
        problems.append(f'the "ignore" label must be the largest value + 1 ({max(values) + 1})')
    return problems


def label_values(array: np.ndarray, path: str | Path) -> list[int]:
    """The distinct values of a label map, checked to be non-negative integers.

    Raises:
        InputError: non-integer or negative values.
    """
    if array.size == 0:
        return [0]
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.rint(array)):
        raise InputError("label map has non-integer values; labels must be integers (0 = background)", path)
    low, high = array.min(), array.max()
    if low < 0:
        raise InputError(
            f"label map has negative values (min {low}); labels must be 0 (background), 1, 2, ...", path
        )
    if high <= _MAX_BINCOUNT_LABEL:
        # bincount is linear time; np.unique sorts the whole volume.
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel().astype(np.int64)))]
    return [int(v) for v in np.unique(array)]


def _resolve_labels(
    declared: dict[str, int] | None, found: set[int], labels_json: Any, labels_folder: Any = None
) -> dict[str, int]:
    if declared is not None:
        known = set(declared.values())
        undeclared = sorted(found - known)
        if undeclared:
            raise InputError(
                f"label values {undeclared} occur in the labels but are not declared here", labels_json
            )
        return dict(declared)
    highest = max(found | {0})
    if highest - len(found) > _MAX_UNUSED_LABELS:
        # Declaring 0..highest would list millions of labels (or never end for a value like 10^12).
        raise InputError(
            f"label values go up to {highest} but only {len(found)} distinct values occur; nnU-Net needs "
            "consecutive labels 0, 1, 2, ...: relabel the maps (or are these not label maps?)",
            labels_folder,
        )
    missing = sorted(set(range(1, highest + 1)) - found)
    if missing:
        logger.warning(
            "label values %s never occur but are declared anyway (nnU-Net needs consecutive labels 0..%d); "
            "pass a labels JSON to name them",
            _listing([str(v) for v in missing]),
            highest,
        )
    return {"background": 0, **{f"label_{v}": v for v in range(1, highest + 1)}}


def _label_dtype(highest: int) -> str:
    for dtype in ("uint8", "uint16", "int32"):
        if highest <= np.iinfo(dtype).max:
            return dtype
    return "int64"


def _image_dtype(dtype: str) -> str:

    return dtype if dtype in OUTPUT_DTYPES else "float32"


# ------------------------------------------------------------------------------------------------ grids


def _check_same_grid(image: Path, image_grid: Geometry, label: Path, label_grid: Geometry) -> None:
    """Image and label must cover the same voxels (:meth:`Geometry.same_grid`); else what differs."""
    fix = "resample one onto the other's grid first"
    if image_grid.ras_shape != label_grid.ras_shape:
        raise InputError(
            f"shape {format_numbers(image_grid.ras_shape)} (RAS) differs from its label {label} "
            f"{format_numbers(label_grid.ras_shape)}; {fix}",
            image,
        )
    differences = image_grid.grid_differences(label_grid)
    if differences:
        raise InputError(f"grid differs from its label {label}: {', '.join(differences)}; {fix}", image)


# ---------------------------------------------------------------------------------------------- outputs


def _check_choice(option: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    return value.lower()


def _check_dataset_id(dataset_id: Any, fmt: str) -> int:
    highest = MAX_DATASET_ID[fmt]
    if dataset_id is None:
        raise ConfigError(f"a dataset id is required (1-{highest}) for {fmt}")
    if (
        isinstance(dataset_id, bool)
        or not isinstance(dataset_id, (int, np.integer))
        or not 1 <= dataset_id <= highest
    ):
        raise ConfigError(f"dataset id must be an integer from 1 to {highest} for {fmt}; got {dataset_id!r}")
    return int(dataset_id)


def _check_no_overlap(dataset_dir: Path, inputs: Sequence[Path]) -> None:
    """The dataset may not be written inside an input folder, nor may an input lie inside the dataset."""
    target = dataset_dir.resolve()
    for source in inputs:
        source = source.resolve()
        if (
            target == source
            or (source.is_dir() and target.is_relative_to(source))
            or source.is_relative_to(target)
        ):
            raise OutputError(
                f"the dataset folder and the input {source} overlap; write the dataset elsewhere", dataset_dir
            )


def _check_id_free(dataset_dir: Path, fmt: str, dataset_id: int) -> None:
    """nnU-Net finds a dataset by its number: two folders with one number would be ambiguous."""
    parent = dataset_dir.parent
    if not parent.is_dir():
        return
    pattern = f"Dataset{dataset_id:03d}_*" if fmt == "nnunetv2" else f"Task{dataset_id:02d}_*"
    others = sorted(p.name for p in parent.glob(pattern) if p.is_dir() and p.name != dataset_dir.name)
    if others:
        raise OutputError(
            f"{others[0]} already uses dataset id {dataset_id}; choose another id or remove it",
            parent / others[0],
        )


def _image_path(dataset_dir: Path, fmt: str, case_id: str) -> Path:
    channel = "_0000" if fmt == "nnunetv2" else ""
    return dataset_dir / "imagesTr" / f"{case_id}{channel}{FILE_ENDING}"


def _check_no_stale_cases(dataset_dir: Path, fmt: str, planned: set[str]) -> None:
    """Cases left from another run would be counted by nnU-Net and break numTraining: refuse them."""
    found: set[str] = set()
    for sub in ("imagesTr", "labelsTr"):
        folder = dataset_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") or not path.name.endswith(FILE_ENDING):
                continue
            stem = path.name[: -len(FILE_ENDING)]
            if sub == "imagesTr" and fmt == "nnunetv2":
                match = _CHANNEL_PATTERN.fullmatch(stem)
                stem = match.group("case") if match else stem
            found.add(stem)
    stale = sorted(found - planned)
    if stale:
        raise OutputError(
            f"holds {len(stale)} case(s) that are not among the inputs: {_listing(stale)}; remove them or "
            "write to a new dataset id",
            dataset_dir,
        )


def _model_identity(translator: Any, translation: _Translation) -> dict[str, Any]:
    # lazy: checkpoint imports torch (about 2 s), which `augment --check` does not need.
    from medcyclegan.checkpoint import checkpoint_identity  # noqa: PLC0415 (see the comment above)

    return {
        **checkpoint_identity(translator.checkpoint),
        "to": translator.target_modality,
        **translation.record(),
    }


def _same_model(stored: Any, current: dict[str, Any]) -> bool:
    """Same run, step and target modality (the checkpoint path, for checkpoints without a run id)."""
    if not isinstance(stored, dict):
        return False
    key = ("run_id", "step", "to") if current["run_id"] and stored.get("run_id") else ("checkpoint", "to")
    return all(stored.get(k) == current[k] for k in key)


def _recorded_translation(stored: dict[str, Any]) -> dict[str, Any]:
    """The test-time averaging of a model record; a record from before it was recorded means none."""
    defaults = _Translation().record()
    return {k: stored.get(k, v) for k, v in defaults.items()}


def _describe_translation(record: dict[str, Any]) -> str:
    """``"planes axial+coronal, flip-average"`` for messages."""
    planes = "+".join(str(p) for p in record.get("planes") or ())
    return f"planes {planes}" + (", flip-average" if record.get("flip_average") else "")


def _record_model(
    dataset_dir: Path, fmt: str, translator: Any, translation: _Translation, overwrite: bool
) -> None:
    """Records which model (and test-time averaging) makes this dataset's synthetic cases; refuses to keep another's.

    A rerun keeps existing cases (a killed run resumes): with another model that would silently mix
    two models' cases in one dataset, under a dataset.json naming only the last; likewise with other
    ``--flip-average``/``--planes``. Datasets written before this record cannot be told apart: they
    are kept with a warning.

    Raises:
        OutputError: the existing cases were made by another model or with other test-time averaging
            (without ``overwrite``).
    """

    record = dataset_dir / MODEL_FILE
    current = _model_identity(translator, translation)
    existing = [
        p
        for p in (dataset_dir / "imagesTr").iterdir()
        if p.name.endswith(FILE_ENDING) and not p.name.startswith(".")
    ]
    if existing and not overwrite:
        if not record.exists():
            logger.warning(
                "%s: %d existing case(s) have no record of the model that made them; they are kept as they are",
                dataset_dir,
                len(existing),
            )
        else:
            try:
                stored = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = None  # unreadable: which model made them is unknown, so they are not kept
            if not _same_model(stored, current):
                made_by = stored.get("checkpoint") if isinstance(stored, dict) else None
                raise OutputError(
                    f"holds {len(existing)} case(s) made by another model ({made_by or 'unknown'}); "
                    "pass --overwrite to rewrite them with this model, or use another --dataset-id",
                    dataset_dir,
                )
            before = _recorded_translation(stored)
            if before != translation.record():
                raise OutputError(
                    f"holds {len(existing)} case(s) made by this model with other test-time averaging "
                    f"({_describe_translation(before)}, not {_describe_translation(translation.record())}); "
                    "give the same options, pass --overwrite to rewrite them, or use another --dataset-id",
                    dataset_dir,
                )
    atomic_write_text(record, json.dumps(current, indent=2) + "\n")


def _make_folders(dataset_dir: Path, fmt: str) -> None:
    """Creates imagesTr, labelsTr (and imagesTs for MSD) up front, so an unwritable place fails before any work."""
    for sub in ("imagesTr", "labelsTr", *(("imagesTs",) if fmt == "msd" else ())):
        folder = dataset_dir / sub
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder ({exc.strerror or exc})", folder) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError("output folder is not writable", folder)


def _remove_interrupted_writes(dataset_dir: Path) -> None:
    """Deletes temporary files of a killed earlier run (``.NAME.XXXX.tmp.nii.gz``): nnU-Net would count them."""
    for sub in ("imagesTr", "labelsTr"):
        folder = dataset_dir / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and _TEMPORARY_FILE.fullmatch(path.name):
                logger.info("%s: removing the temporary file of an interrupted write", path)
                path.unlink()


def _nnunet_dataset_json(
    name: str, channel_name: str, label_map: dict[str, int], n_cases: int, description: str
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "channel_names": {"0": channel_name},
        "labels": label_map,
        "numTraining": n_cases,
        "file_ending": FILE_ENDING,
    }


def _msd_dataset_json(
    name: str, channel_name: str, label_map: dict[str, int], cases: list[str], description: str
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "tensorImageSize": "3D",
        "modality": {"0": channel_name},
        "labels": {str(v): k for k, v in sorted(label_map.items(), key=lambda item: item[1])},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{case}{FILE_ENDING}", "label": f"./labelsTr/{case}{FILE_ENDING}"}
            for case in cases
        ],
        "test": [],
    }


def _write_json(path: Path, data: Any) -> None:

    atomic_write_text(path, json.dumps(data, indent=4) + "\n")


def cross_validation_splits(
    groups: Mapping[str, Sequence[str]], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED
) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` content with folds drawn per patient, not per case.

    Args:
        groups: source patient -> its case identifiers (e.g. ``{"p1": ["p1", "p1_synth"]}``); all the
            cases of one patient land in the same validation fold, so no fold validates on a patient
            it trained on.
        n_folds: number of folds; fewer patients than folds gives one fold per patient (a warning),
            and a single patient gives one fold validating on its own training cases.
        seed: seed of the patient shuffle (deterministic for given patients).

    Returns:
        A list of ``{"train": [...], "val": [...]}`` (sorted identifiers), one per fold.
    """
    patients = sorted(groups)
    if not patients:
        return []
    folds = min(n_folds, len(patients))
    if folds < n_folds:
        logger.warning("only %d patient(s): writing %d fold(s) instead of %d", len(patients), folds, n_folds)
    everything = sorted(case for p in patients for case in groups[p])
    if len(patients) == 1:
        return [{"train": everything, "val": everything}]
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[i]: position % folds for position, i in enumerate(order)}
    splits = []
    for fold in range(folds):
        val = sorted(case for p in patients if fold_of[p] == fold for case in groups[p])
        splits.append({"train": [c for c in everything if c not in set(val)], "val": val})
    return splits


# ------------------------------------------------------------------------------------------------ check


def check_dataset(folder: str | Path, *, strict: bool = False) -> CheckReport:
    """Checks a dataset folder as nnU-Net's ``--verify_dataset_integrity`` does (nnU-Net v2 or MSD layout).

    Checks: ``dataset.json`` present, valid and complete; labels declare background 0 and consecutive
    values; every case has all its image channels and its label; no stray or unlisted files (leftover
    temporary files included, which nnU-Net would count as cases); ``numTraining`` equals the cases
    found; each image's shape, spacing, origin and direction equal its label's (``np.allclose``, read with
    SimpleITK as nnU-Net does); label values are integers and all declared; no NaN in images or labels.
    Origin and direction mismatches are only warnings in nnU-Net; here they are problems, since they
    mean the label does not lie on the image.

    Args:
        folder: the dataset folder (``DatasetXXX_NAME`` or ``TaskXX_NAME``).
        strict: raise instead of returning a report with problems.

    Returns:
        The :class:`CheckReport`.

    Raises:
        InputError: ``folder`` is not a folder; with ``strict``, one line summarising the problems.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a dataset folder", folder)
    report = CheckReport(folder)
    meta_path = folder / "dataset.json"
    meta = _read_dataset_json(meta_path, report)
    if meta is not None:
        if "training" in meta:
            report.layout = "msd"
            cases, declared = _msd_cases(folder, meta, report)
        else:
            report.layout = "nnunetv2"
            cases, declared = _nnunet_cases(folder, meta, report)
        report.n_cases = len(cases)
        for images, label in cases.values():
            _check_case(folder, images, label, declared, report)
    if strict:
        report.raise_if_problems()
    return report


def _read_dataset_json(path: Path, report: CheckReport) -> dict[str, Any] | None:
    if not path.is_file():
        report.problems.append("dataset.json: missing")
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problems.append(f"dataset.json: cannot be read ({_one_line(exc)})")
        return None
    if not isinstance(meta, dict):
        report.problems.append("dataset.json: not a JSON object")
        return None
    return meta


def _nnunet_cases(
    folder: Path, meta: dict[str, Any], report: CheckReport
) -> tuple[dict[str, tuple[list[Path], Path]], set[int] | None]:
    problems = report.problems
    missing = [k for k in ("labels", "channel_names", "numTraining", "file_ending") if k not in meta]
    if missing:
        problems.append(f"dataset.json: missing required key(s) {', '.join(missing)}")
    declared = _nnunet_declared_labels(meta.get("labels"), problems)
    channels = meta.get("channel_names")
    if "channel_names" in meta and (not isinstance(channels, dict) or not channels):
        problems.append('dataset.json: channel_names must be a non-empty object such as {"0": "CT"}')
        channels = None
    file_ending = meta.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending:
        if "file_ending" in meta:
            problems.append('dataset.json: file_ending must be a string such as ".nii.gz"')
        return {}, declared
    n_channels = len(channels) if channels else 1

    cases: dict[str, tuple[list[Path], Path]] = {}
    if "dataset" in meta:
        entries = meta["dataset"]
        if not isinstance(entries, dict):
            problems.append("dataset.json: 'dataset' must map case -> {images, label}")
            entries = {}
        for case, entry in entries.items():
            try:
                images = [_resolve(folder, p) for p in entry["images"]]
                label = _resolve(folder, entry["label"])
            except (KeyError, TypeError):
                problems.append(f"dataset.json: entry {case!r} needs 'images' (list) and 'label'")
                continue
            cases[case] = (images, label)
    else:
        cases = _nnunet_folder_cases(folder, file_ending, n_channels, problems)
    _check_count(meta.get("numTraining"), len(cases), "numTraining", problems)
    return cases, declared


def _nnunet_folder_cases(
    folder: Path, file_ending: str, n_channels: int, problems: list[str]
) -> dict[str, tuple[list[Path], Path]]:
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for sub in (images_dir, labels_dir):
        if not sub.is_dir():
            problems.append(f"{sub.name}/: missing")
    if not images_dir.is_dir():
        return {}
    channels: dict[str, set[int]] = {}
    for path in sorted(images_dir.iterdir()):
        if not path.is_file() or not path.name.endswith(file_ending):
            continue
        if path.name.startswith("."):
            problems.append(
                f"imagesTr/{path.name}: leftover temporary or hidden file; nnU-Net would read it, delete it"
            )
            continue
        match = _CHANNEL_PATTERN.fullmatch(path.name[: -len(file_ending)])
        if match is None:
            problems.append(
                f"imagesTr/{path.name}: name must end in a 4-digit channel, e.g. CASE_0000{file_ending}"
            )
            continue
        channels.setdefault(match.group("case"), set()).add(int(match.group("channel")))
    cases: dict[str, tuple[list[Path], Path]] = {}
    expected = set(range(n_channels))
    for case, found in sorted(channels.items()):
        if found != expected:
            lacking, extra = sorted(expected - found), sorted(found - expected)
            detail = "; ".join(
                part
                for part in (
                    f"missing channel(s) {lacking}" if lacking else "",
                    f"unexpected channel(s) {extra}" if extra else "",
                )
                if part
            )
            problems.append(f"imagesTr/{case}: {detail} (dataset.json declares {n_channels} channel(s))")
        images = [images_dir / f"{case}_{c:04d}{file_ending}" for c in sorted(found & expected)]
        cases[case] = (images, labels_dir / f"{case}{file_ending}")
    if labels_dir.is_dir():
        for path in sorted(labels_dir.iterdir()):
            if not path.is_file() or not path.name.endswith(file_ending):
                continue
            if path.name.startswith("."):
                problems.append(f"labelsTr/{path.name}: leftover temporary or hidden file; delete it")
            elif path.name[: -len(file_ending)] not in cases:
                problems.append(f"labelsTr/{path.name}: label without an image in imagesTr")
    return cases


def _nnunet_declared_labels(labels: Any, problems: list[str]) -> set[int] | None:
    if labels is None:
        return None
    if not isinstance(labels, dict) or not labels:
        problems.append('dataset.json: labels must be an object such as {"background": 0, "tumour": 1}')
        return None
    declared: set[int] = set()
    simple: dict[str, int] = {}
    for key, value in labels.items():
        # nnU-Net also accepts regions (lists of labels) for region-based training.
        members = value if isinstance(value, (list, tuple)) else [value]
        if not members or any(isinstance(v, bool) or not isinstance(v, int) for v in members):
            problems.append(f"dataset.json: label {key!r} has a non-integer value {value!r}")
            continue
        declared.update(members)
        if not isinstance(value, (list, tuple)):
            simple[key] = value
    if simple:
        problems.extend(f"dataset.json: {problem}" for problem in label_map_problems(simple))
    return declared


def _msd_cases(
    folder: Path, meta: dict[str, Any], report: CheckReport
) -> tuple[dict[str, tuple[list[Path], Path]], set[int] | None]:
    problems = report.problems
    missing = [k for k in ("modality", "labels", "numTraining", "training") if k not in meta]
    if missing:
        problems.append(f"dataset.json: missing required key(s) {', '.join(missing)}")
    declared: set[int] | None = None
    labels = meta.get("labels")
    if isinstance(labels, dict) and labels:
        try:
            by_value = {str(name): int(index) for index, name in labels.items()}
            declared = set(by_value.values())
        except (TypeError, ValueError):
            problems.append('dataset.json: labels must be keyed by index strings, e.g. {"0": "background"}')
            by_value = {}
        if by_value and 0 not in declared:  # type: ignore[operator]
            problems.append('dataset.json: labels must declare index "0" (background)')
        elif by_value and sorted(declared) != list(range(len(declared))):  # type: ignore[arg-type]
            problems.append(
                f"dataset.json: label indices must be consecutive 0, 1, 2, ...; got {sorted(declared)}"
            )  # type: ignore[arg-type]
    elif "labels" in meta:
        problems.append("dataset.json: labels must be an object keyed by index strings")

    cases: dict[str, tuple[list[Path], Path]] = {}
    training = meta.get("training", [])
    if not isinstance(training, list):
        problems.append('dataset.json: training must be a list of {"image", "label"}')
        training = []
    for entry in training:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("image"), str)
            or not isinstance(entry.get("label"), str)
        ):
            problems.append(f"dataset.json: training entry {entry!r} needs 'image' and 'label' paths")
            continue
        image = _resolve(folder, entry["image"])
        case = image.name[: -len(FILE_ENDING)] if image.name.endswith(FILE_ENDING) else image.stem
        if case in cases:
            problems.append(f"dataset.json: case {case!r} is listed twice in training")
        cases[case] = ([image], _resolve(folder, entry["label"]))
    _check_count(meta.get("numTraining"), len(cases), "numTraining", problems)
    test = meta.get("test", [])
    if isinstance(test, list):
        if "numTest" in meta:
            _check_count(meta.get("numTest"), len(test), "numTest", problems)
        for entry in test:
            path = _resolve(folder, entry) if isinstance(entry, str) else None
            if path is None or not path.is_file():
                problems.append(f"dataset.json: test image {entry!r} not found")
    listed = {p.resolve() for images, label in cases.values() for p in [*images, label]}
    for sub in ("imagesTr", "labelsTr"):
        if not (folder / sub).is_dir():
            problems.append(f"{sub}/: missing")
            continue
        for path in sorted((folder / sub).iterdir()):
            if path.is_file() and path.name.endswith(FILE_ENDING) and path.resolve() not in listed:
                problems.append(f"{sub}/{path.name}: not listed in dataset.json training")
    return cases, declared


def _resolve(folder: Path, relative: str) -> Path:
    path = Path(relative)
    return path if path.is_absolute() else folder / path


def _check_count(value: Any, found: int, key: str, problems: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"dataset.json: {key} must be an integer, got {value!r}")
    elif value != found:
        problems.append(f"dataset.json: {key} is {value} but {found} case(s) were found")


def _check_case(
    folder: Path, images: list[Path], label: Path, declared: set[int] | None, report: CheckReport
) -> None:
    problems = report.problems
    label_image = _read_sitk(folder, label, problems)
    if label_image is not None:
        _check_label_values(folder, label, label_image, declared, problems)
    for image_path in images:
        image = _read_sitk(folder, image_path, problems)
        if image is None:
            continue
        n_nan = _nan_count(image_path, image)
        if n_nan:
            problems.append(f"{_rel(folder, image_path)}: {n_nan} NaN voxel(s)")
        if label_image is not None:
            differences = _geometry_differences(image, label_image)
            if differences:
                problems.append(
                    f"{_rel(folder, image_path)}: differs from its label {_rel(folder, label)}: {'; '.join(differences)}"
                )


def _check_label_values(
    folder: Path, label: Path, image: Any, declared: set[int] | None, problems: list[str]
) -> None:
    array = _sitk_array(image)
    where = _rel(folder, label)
    if np.issubdtype(array.dtype, np.floating):
        n_nan = _nan_count(label, image)
        if n_nan:
            problems.append(f"{where}: {n_nan} NaN voxel(s)")
            return
        if not np.array_equal(array, np.rint(array)):
            problems.append(f"{where}: non-integer label values")
            return
    values = np.unique(array)
    if declared is not None:
        undeclared = [v.item() for v in values if int(v) not in declared]
        if undeclared:
            problems.append(f"{where}: label value(s) {undeclared} not declared in dataset.json labels")


def _read_sitk(folder: Path, path: Path, problems: list[str]) -> Any:
    import SimpleITK as sitk  # noqa: PLC0415 - lazy: optional at run time (see readers.import_simpleitk)

    if not path.is_file():
        problems.append(f"{_rel(folder, path)}: missing")
        return None
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        problems.append(f"{_rel(folder, path)}: cannot be read ({_one_line(exc)})")
        return None


def _nan_count(path: Path, image: Any) -> int:
    """NaN voxels of a file. SimpleITK 2.5 (ITK 5.4) reads NIfTI NaN as 0, so NIfTI floats are read with nibabel."""
    array = _sitk_array(image)
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    if path.name.lower().endswith((".nii", ".nii.gz")):
        # If nibabel fails where SimpleITK succeeded, SimpleITK's values are the best left.
        with contextlib.suppress(Exception):
            array = np.asarray(nib.load(str(path)).dataobj)
    return int(np.count_nonzero(np.isnan(array))) if np.issubdtype(array.dtype, np.floating) else 0


def _sitk_array(image: Any) -> np.ndarray:
    import SimpleITK as sitk  # noqa: PLC0415 - lazy: optional at run time (see readers.import_simpleitk)

    return sitk.GetArrayViewFromImage(image)


def _spatial(image: Any) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Size, spacing, origin and direction of the first three axes (MSD images may be 4D)."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    return (
        tuple(image.GetSize())[:3],
        np.asarray(image.GetSpacing(), dtype=np.float64)[:3],
        np.asarray(image.GetOrigin(), dtype=np.float64)[:3],
        direction,
    )


def _geometry_differences(image: Any, label: Any) -> list[str]:
    size_i, spacing_i, origin_i, direction_i = _spatial(image)
    size_l, spacing_l, origin_l, direction_l = _spatial(label)
    differences = []
    if size_i != size_l:
        differences.append(f"shape {format_numbers(size_i)} vs {format_numbers(size_l)}")
    if not np.allclose(spacing_i, spacing_l):
        differences.append(f"spacing {format_numbers(spacing_i)} vs {format_numbers(spacing_l)} mm")
    if not np.allclose(origin_i, origin_l):
        differences.append(f"origin {format_numbers(origin_i)} vs {format_numbers(origin_l)} mm")
    if not np.allclose(direction_i, direction_l):
        differences.append("direction")
    return differences


# ---------------------------------------------------------------------------------------------- helpers


def _plural(n: int) -> str:
    return "" if n == 1 else "s"


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _rel(folder: Path, path: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join((lines[-1] if lines else type(exc).__name__).split())[:200]
