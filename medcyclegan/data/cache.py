"""Load and prepare volumes once: in memory, and optionally in an on-disk memory-mapped cache.

``load_prepared`` reads every file once, prepares it (:func:`~medcyclegan.data.prepare.prepare_volume`)
and returns the prepared volumes; the dataset then slices them without touching files again.

With a ``cache_dir``, each prepared volume is stored as two ``.npy`` files (image float32 and mask
bool, both in slice-contiguous (Z, X', Y') order) and a small JSON (normalisation, shapes, spacings,
source), and later reloaded memory-mapped (``np.load(mmap_mode="r")``), so that datasets larger than
memory work: the operating system pages in only the slices that are used. Entries are keyed by a
hash of the absolute path, size and modification time of the input (and of its mask file), the
modality, the DataConfig fields that affect preparation (``PREPARATION_FIELDS``), fixed parameters
if any, and the package version: a changed file, setting or version misses the cache. The JSON is
written last (after the arrays, each atomically), so an entry is only visible once complete;
an unreadable entry is logged, rebuilt and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcyclegan import __version__
from medcyclegan.config import DataConfig
from medcyclegan.data.normalise import NormParams, check_modality_name
from medcyclegan.data.prepare import PreparedVolume, prepare_volume
from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.io.atomic import atomic_path, atomic_write_text
from medcyclegan.io.discovery import split_series
from medcyclegan.io.readers import read_mask, read_volume

logger = logging.getLogger("medcyclegan")

# DataConfig fields that change a prepared volume (the others act on slices or training only).
PREPARATION_FIELDS = (
    "spacing",
    "ct_window",
    "mr_percentiles",
    "mask_method",
    "mask_threshold_hu",
    "mask_dilation",
)
CACHE_FORMAT = 1

MaskSource = str | Path | np.ndarray | None


def load_prepared(
    paths: Sequence[str | Path],
    modality: str,
    data_cfg: DataConfig,
    *,
    masks: Sequence[MaskSource] | None = None,
    cache_dir: str | Path | None = None,
    params: NormParams | None = None,
) -> list[PreparedVolume]:
    """Reads and prepares volumes once, through the on-disk cache when ``cache_dir`` is given.

    Args:
        paths: volume files (or DICOM folders).
        modality: ``"ct"`` or ``"mr"`` (all volumes of one call share it).
        data_cfg: preparation settings.
        masks: optional body masks, one per path (a mask file on the volume's grid, read with
            ``read_mask``; a bool array in RAS order; or None for the automatic mask).
        cache_dir: folder of the on-disk cache (created if missing); None keeps everything in memory.
        params: fixed normalisation parameters for every volume (default: measured per volume).

    Returns:
        One prepared volume per path, in order; arrays are memory-mapped read-only when they come
        from the cache.

    Raises:
        InputError: an unreadable input or mask, or a mask on another grid.
        ConfigError: ``masks`` and ``paths`` differ in length.
        OutputError: the cache folder cannot be created.
    """
    modality = check_modality_name(modality)
    paths = [Path(p) for p in paths]
    mask_list: list[MaskSource] = list(masks) if masks is not None else [None] * len(paths)
    if len(mask_list) != len(paths):
        raise ConfigError(f"got {len(mask_list)} masks for {len(paths)} volumes; give one mask per volume")
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create cache folder ({exc.strerror})", folder) from None
    prepared = []
    for path, mask in zip(paths, mask_list, strict=True):
        if folder is None:
            prepared.append(_prepare_file(path, modality, data_cfg, mask, params))
            continue
        key = cache_key(path, modality, data_cfg, mask=mask, params=params)
        volume = _load_entry(folder, key)
        if volume is None:
            volume = _prepare_file(path, modality, data_cfg, mask, params)
            _store_entry(folder, key, volume)
            volume = _load_entry(folder, key) or volume
        prepared.append(volume)
    return prepared


def cache_key(
    path: str | Path,
    modality: str,
    data_cfg: DataConfig,
    *,
    mask: MaskSource = None,
    params: NormParams | None = None,
) -> str:
    """Hex digest identifying a prepared volume: input identity, settings and package version."""
    settings = {name: _plain(getattr(data_cfg, name)) for name in PREPARATION_FIELDS}
    if isinstance(mask, np.ndarray):
        mask_id: Any = hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest() + str(mask.shape)
    elif mask is not None:
        mask_id = _file_identity(Path(mask))
    else:
        mask_id = None
    description = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "input": _file_identity(Path(path)),
        "modality": check_modality_name(modality),
        "settings": settings,
        "mask": mask_id,
        "params": params.to_dict() if params is not None else None,
    }
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _file_identity(path: Path) -> list[Any]:
    """Absolute path, size (bytes) and mtime (ns) of a file, or of every file in a folder (DICOM series).

    ``FOLDER::SERIES_UID`` (one series of a DICOM folder) is the folder's identity plus the UID.
    """
    folder, series_uid = split_series(path)
    if series_uid is not None:
        return [*_file_identity(folder), series_uid]
    path = path.absolute()
    try:
        if path.is_dir():
            entries = sorted(p for p in path.rglob("*") if p.is_file())
            return [
                str(path),
                [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in entries],
            ]
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _prepare_file(
    path: Path, modality: str, data_cfg: DataConfig, mask: MaskSource, params: NormParams | None
) -> PreparedVolume:
    volume = read_volume(path)
    user_mask: np.ndarray | None = None
    if isinstance(mask, np.ndarray):
        user_mask = mask
    elif mask is not None:
        user_mask = read_mask(mask, like=volume.geometry)
    prepared = prepare_volume(volume, modality, data_cfg, mask=user_mask, params=params)
    if not prepared.source:
        prepared.source = str(path)
    return prepared


def _entry_paths(folder: Path, key: str) -> tuple[Path, Path, Path]:
    return folder / f"{key}.image.npy", folder / f"{key}.mask.npy", folder / f"{key}.json"


def _store_entry(folder: Path, key: str, volume: PreparedVolume) -> None:
    image_path, mask_path, meta_path = _entry_paths(folder, key)
    meta = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "source": volume.source,
        "params": volume.params.to_dict(),
        "shape": list(volume.image.shape),
        "original_shape": list(volume.original_shape),
        "original_spacing": list(volume.original_spacing),
        "spacing": list(volume.spacing),
    }
    try:
        # (Z, X', Y') C order: an axial slice is one contiguous block of the memory map.
        with atomic_path(image_path) as tmp:
            np.save(tmp, np.ascontiguousarray(np.moveaxis(volume.image, 2, 0), dtype=np.float32))
        with atomic_path(mask_path) as tmp:
            np.save(tmp, np.ascontiguousarray(np.moveaxis(volume.mask, 2, 0), dtype=bool))
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
    except OSError as exc:
        # The cache is an optimisation: a full disk or read-only folder must not stop training.
        logger.warning("%s: cannot write the cache (%s); continuing without it", folder, exc.strerror or exc)


def _load_entry(folder: Path, key: str) -> PreparedVolume | None:
    image_path, mask_path, meta_path = _entry_paths(folder, key)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        image_zxy = np.load(image_path, mmap_mode="r")
        mask_zxy = np.load(mask_path, mmap_mode="r")
        shape = tuple(int(n) for n in meta["shape"])
        zxy = (shape[2], shape[0], shape[1])
        if image_zxy.shape != zxy or mask_zxy.shape != zxy:
            raise ValueError(
                f"arrays {image_zxy.shape}/{mask_zxy.shape} do not match the recorded shape {zxy}"
            )
        if image_zxy.dtype != np.float32 or mask_zxy.dtype != np.bool_:
            raise ValueError(f"unexpected dtypes {image_zxy.dtype}/{mask_zxy.dtype}")
        return PreparedVolume(
            image=np.moveaxis(image_zxy, 0, 2),
            mask=np.moveaxis(mask_zxy, 0, 2),
            params=NormParams.from_dict(meta["params"]),
            source=str(meta["source"]),
            original_shape=tuple(int(n) for n in meta["original_shape"]),  # type: ignore[arg-type]
            original_spacing=tuple(float(s) for s in meta["original_spacing"]),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in meta["spacing"]),  # type: ignore[arg-type]
        )
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        logger.warning("%s: damaged cache entry (%s); rebuilding it", meta_path, exc)
        for stale in (meta_path, image_path, mask_path):
            with contextlib.suppress(OSError):
                os.remove(stale)
        return None
