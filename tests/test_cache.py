"""load_prepared: read once, memory-mapped disk cache keyed by file, settings and version."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny import head, save_volume

import medcyclegan
from medcyclegan.config import DataConfig
from medcyclegan.data import cache as cache_module
from medcyclegan.data.cache import cache_key, load_prepared
from medcyclegan.data.normalise import NormParams
from medcyclegan.data.prepare import prepare_volume
from medcyclegan.errors import ConfigError, InputError
from medcyclegan.io.volume import Geometry, Volume

# Anisotropic voxels (mm): the cache key and the resampled grid depend on them.
VOXELS = np.diag([0.8, 0.9, 3.0, 1.0])


def _write_nifti(path: Path, seed: int, modality: str = "ct", shape=(24, 20, 6)) -> Path:
    return save_volume(path, head(shape, modality, seed), VOXELS)


def _nibabel_read_volume(path: str | Path, **_: object) -> Volume:
    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    geometry = Geometry(
        image.affine, array.shape, str(array.dtype), source_format="nifti", source_path=str(path)
    )
    return Volume(geometry.array_to_ras(array), geometry)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts file reads by replacing the io reader with a plain nibabel one."""
    calls: list[str] = []

    def read_volume(path: str | Path, **kwargs: object) -> Volume:
        calls.append(str(path))
        return _nibabel_read_volume(path, **kwargs)

    def read_mask(path: str | Path, like: Geometry) -> np.ndarray:
        mask = _nibabel_read_volume(path)
        assert mask.shape == like.ras_shape
        return mask.array > 0

    monkeypatch.setattr(cache_module, "read_volume", read_volume)
    monkeypatch.setattr(cache_module, "read_mask", read_mask)
    return calls


def _fresh(path: Path, modality: str, cfg: DataConfig):
    return prepare_volume(_nibabel_read_volume(path), modality, cfg)


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a.image), b.image)
    np.testing.assert_array_equal(np.asarray(a.mask), b.mask)
    assert a.params == b.params and a.source == b.source
    assert a.original_shape == b.original_shape and a.spacing == b.spacing
    assert a.original_spacing == b.original_spacing


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_memory_mapped_reload_equals_fresh_preparation(
    tmp_path: Path, reads: list[str], modality: str
) -> None:
    paths = [_write_nifti(tmp_path / f"case{i}.nii.gz", i, modality) for i in range(2)]
    cfg = DataConfig(spacing=1.1)
    cache_dir = tmp_path / "cache"
    first = load_prepared(paths, modality, cfg, cache_dir=cache_dir)
    assert len(reads) == 2
    assert len(list(cache_dir.glob("*.json"))) == 2 and len(list(cache_dir.glob("*.npy"))) == 4
    assert not list(cache_dir.glob(".*"))  # no temporary files left
    second = load_prepared(paths, modality, cfg, cache_dir=cache_dir)
    assert len(reads) == 2  # served from the cache: no file read
    for volume, path, again in zip(second, paths, first, strict=True):
        assert isinstance(np.moveaxis(volume.image, 2, 0), np.memmap) or isinstance(
            volume.image.base, np.memmap
        )
        assert not volume.image.flags.writeable
        assert np.moveaxis(volume.image, 2, 0).flags.c_contiguous
        _assert_same(volume, _fresh(path, modality, cfg))
        _assert_same(again, _fresh(path, modality, cfg))
    memory_only = load_prepared(paths, modality, cfg)
    assert len(reads) == 4
    _assert_same(memory_only[0], second[0])


def test_changed_settings_input_or_version_miss_the_cache(
    tmp_path: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_nifti(tmp_path / "ct.nii.gz", 0)
    cache_dir = tmp_path / "cache"
    cfg = DataConfig()
    load_prepared([path], "ct", cfg, cache_dir=cache_dir)
    load_prepared(
        [path], "ct", DataConfig(image_size=64, context_slices=2, augment=False), cache_dir=cache_dir
    )
    assert len(reads) == 1  # slice-level settings do not change a prepared volume
    window = load_prepared([path], "ct", DataConfig(ct_window=(-1000.0, 2000.0)), cache_dir=cache_dir)
    assert len(reads) == 2 and window[0].params == NormParams("ct", -1000, 2000)
    load_prepared([path], "ct", DataConfig(mask_dilation=0), cache_dir=cache_dir)
    load_prepared([path], "ct", DataConfig(spacing=2.0), cache_dir=cache_dir)
    load_prepared([path], "mr", cfg, cache_dir=cache_dir)
    load_prepared([path], "ct", cfg, cache_dir=cache_dir, params=NormParams("ct", -500, 500))
    assert len(reads) == 6
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    load_prepared([path], "ct", cfg, cache_dir=cache_dir)
    assert len(reads) == 7
    monkeypatch.setattr(cache_module, "__version__", medcyclegan.__version__ + ".post1")
    load_prepared([path], "ct", cfg, cache_dir=cache_dir)
    assert len(reads) == 8
    assert len(list(cache_dir.glob("*.json"))) == 8


def test_damaged_entry_is_rebuilt(tmp_path: Path, reads: list[str], caplog: pytest.LogCaptureFixture) -> None:
    path = _write_nifti(tmp_path / "ct.nii.gz", 0)
    cache_dir = tmp_path / "cache"
    load_prepared([path], "ct", DataConfig(), cache_dir=cache_dir)
    (image_file,) = cache_dir.glob("*.image.npy")
    image_file.write_bytes(image_file.read_bytes()[:200])  # truncated
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        (volume,) = load_prepared([path], "ct", DataConfig(), cache_dir=cache_dir)
    assert "damaged cache entry" in caplog.text and len(reads) == 2
    _assert_same(volume, _fresh(path, "ct", DataConfig()))
    load_prepared([path], "ct", DataConfig(), cache_dir=cache_dir)
    assert len(reads) == 2  # the rebuilt entry is used


def test_user_masks(tmp_path: Path, reads: list[str]) -> None:
    path = _write_nifti(tmp_path / "ct.nii.gz", 0)
    mask = np.zeros((24, 20, 6), dtype=np.uint8)
    mask[5:15, 5:10] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.diag([0.8, 0.9, 3.0, 1.0])), mask_path)
    cache_dir = tmp_path / "cache"
    (from_file,) = load_prepared([path], "ct", DataConfig(), masks=[mask_path], cache_dir=cache_dir)
    np.testing.assert_array_equal(from_file.mask, mask > 0)
    (from_array,) = load_prepared([path], "ct", DataConfig(), masks=[mask > 0], cache_dir=cache_dir)
    np.testing.assert_array_equal(from_array.mask, mask > 0)
    (automatic,) = load_prepared([path], "ct", DataConfig(), masks=[None], cache_dir=cache_dir)
    assert automatic.mask.sum() > mask.sum()
    with pytest.raises(ConfigError, match="one mask per volume"):
        load_prepared([path], "ct", DataConfig(), masks=[])


def test_with_the_real_reader(tmp_path: Path) -> None:
    pytest.importorskip("medcyclegan.io.readers")
    path = _write_nifti(tmp_path / "mr.nii.gz", 4, "mr")
    (volume,) = load_prepared([path], "mr", DataConfig(), cache_dir=tmp_path / "cache")
    _assert_same(volume, _fresh(path, "mr", DataConfig()))
    mask_path = tmp_path / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), mask_path)
    with pytest.raises(InputError, match="small_mask"):
        load_prepared([path], "mr", DataConfig(), masks=[mask_path])
    with pytest.raises(InputError, match="missing"):
        load_prepared([tmp_path / "missing.nii.gz"], "mr", DataConfig(), cache_dir=tmp_path / "cache")


def test_series_paths_are_keyed_by_folder_and_uid(tmp_path: Path) -> None:
    pytest.importorskip("medcyclegan.io.discovery")
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"x")
    key_a = cache_key(f"{folder}::1.2.3", "ct", DataConfig())
    key_b = cache_key(f"{folder}::1.2.4", "ct", DataConfig())
    assert key_a != key_b and key_a == cache_key(f"{folder}::1.2.3", "ct", DataConfig())
    before = cache_key(folder, "ct", DataConfig())
    (folder / "2.dcm").write_bytes(b"y")
    assert cache_key(folder, "ct", DataConfig()) != before  # a file added to the series
