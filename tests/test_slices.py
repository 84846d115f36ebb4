"""Preparation (mask, normalisation, in-plane resampling and its inverse) and the slice dataset."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import get_track_meta, set_track_meta
from scipy import ndimage
from tiny import head
from torch.utils.data import DataLoader

from medcyclegan.config import DataConfig
from medcyclegan.data.normalise import NormParams
from medcyclegan.data.prepare import (
    PreparedVolume,
    plane_volume,
    prepare_volume,
    resample_depth,
    restore_inplane,
)
from medcyclegan.data.slices import SliceDataset, pad_or_crop, select_slices, slice_with_context
from medcyclegan.errors import ConfigError, InputError
from medcyclegan.io.volume import Geometry, Volume


def _volume(array: np.ndarray, spacing=(1.0, 1.0, 3.0), path: str = "case.nii.gz") -> Volume:
    geometry = Geometry(
        np.diag([*spacing, 1.0]), array.shape, str(array.dtype), source_format="nifti", source_path=path
    )
    return Volume(array, geometry)


def _prepared(image: np.ndarray, mask: np.ndarray | None = None) -> PreparedVolume:
    mask = np.ones(image.shape, dtype=bool) if mask is None else mask
    return PreparedVolume(
        image=image.astype(np.float32),
        mask=mask,
        params=NormParams("ct", -1024, 3000),
        source="synthetic",
        original_shape=image.shape,
        original_spacing=(1.0, 1.0, 1.0),
        spacing=(1.0, 1.0, 1.0),
    )


# ----------------------------------------------------------------------------- prepare


def test_prepare_volume_normalises_masks_and_keeps_the_grid() -> None:
    array = head((48, 40, 10), "ct")
    prepared = prepare_volume(_volume(array), "ct", DataConfig())
    assert prepared.image.shape == array.shape == prepared.mask.shape
    assert prepared.image.dtype == np.float32 and prepared.mask.dtype == bool
    np.testing.assert_allclose(
        prepared.image, 2 * (np.clip(array, -1024, 3000) + 1024.0) / 4024 - 1, atol=1e-6
    )
    assert prepared.mask[24, 20].all() and not prepared.mask[0, 0].any()
    assert prepared.params == NormParams("ct", -1024, 3000)
    assert prepared.source == "case.nii.gz"
    assert prepared.original_shape == array.shape and prepared.spacing == prepared.original_spacing
    assert np.moveaxis(prepared.image, 2, 0).flags.c_contiguous  # axial slices are contiguous


def test_user_mask_takes_precedence_and_must_match_the_grid() -> None:
    array = head((48, 40, 10), "ct")
    user = np.zeros(array.shape, dtype=np.uint8)
    user[10:20, 10:20, :] = 1
    prepared = prepare_volume(_volume(array), "ct", DataConfig(), mask=user)
    np.testing.assert_array_equal(prepared.mask, user > 0)
    with pytest.raises(InputError, match=r"^case\.nii\.gz: mask shape"):
        prepare_volume(_volume(array), "ct", DataConfig(), mask=np.ones((4, 4, 4)))
    with pytest.raises(InputError, match="not on the volume's grid"):
        shifted = Volume(user, Geometry(np.diag([2.0, 1, 3, 1]), user.shape, "uint8", source_format="nifti"))
        prepare_volume(_volume(array), "ct", DataConfig(), mask=shifted)


def test_empty_body_warns(caplog: pytest.LogCaptureFixture) -> None:
    array = np.full((16, 16, 4), -1000, dtype=np.int16)
    array[0, 0, 0] = -900
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        prepared = prepare_volume(_volume(array), "ct", DataConfig())
    assert not prepared.mask.any() and "body mask is empty" in caplog.text
    assert select_slices(prepared, 0.01) == []


def test_given_params_are_used_and_mr_is_per_volume() -> None:
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 10, (32, 32, 6))
    mr[8:24, 8:24] = rng.uniform(200, 400, (16, 16, 6))
    prepared = prepare_volume(_volume(mr), "mr", DataConfig())
    inside = mr[prepared.mask]
    np.testing.assert_allclose(
        [prepared.params.lower, prepared.params.upper], np.percentile(inside, [0.5, 99.5])
    )
    fixed = NormParams("mr", 0, 1000)
    assert prepare_volume(_volume(mr), "mr", DataConfig(), params=fixed).params == fixed
    with pytest.raises(InputError, match="constant"):
        prepare_volume(_volume(np.zeros((8, 8, 3))), "mr", DataConfig(), mask=np.ones((8, 8, 3)))


@pytest.mark.parametrize(
    ("shape", "spacing", "target"), [((61, 47, 4), (0.7, 0.9, 5.0), 1.3), ((30, 36, 3), (2.0, 1.5, 4.0), 0.8)]
)
def test_inplane_resampling_and_its_inverse_keep_structures_in_place(shape, spacing, target) -> None:
    array = np.full(shape, -1000.0, dtype=np.float32)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centre = (shape[0] * 0.37, shape[1] * 0.61)
    blob = ((x - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2 <= 8.0**2
    array[blob] = 1000.0
    user_mask = np.repeat(blob[:, :, None], shape[2], axis=2)
    volume = _volume(array, spacing)
    prepared = prepare_volume(volume, "ct", DataConfig(spacing=target), mask=user_mask)
    expected_xy = tuple(round(n * s / target) for n, s in zip(shape[:2], spacing[:2], strict=True))
    assert prepared.image.shape == (*expected_xy, shape[2]) and prepared.mask.shape == prepared.image.shape
    np.testing.assert_allclose(prepared.spacing[:2], target, rtol=0.05)
    assert prepared.spacing[2] == spacing[2] and prepared.original_shape == shape
    # The blob's centre in mm is the same on the prepared grid (same field of view, pixel centres).
    ci, cj = ndimage.center_of_mass(prepared.image[:, :, 0] - prepared.image.min())
    oi, oj = ndimage.center_of_mass(blob)
    np.testing.assert_allclose(
        [(ci + 0.5) * prepared.spacing[0], (cj + 0.5) * prepared.spacing[1]],
        [(oi + 0.5) * spacing[0], (oj + 0.5) * spacing[1]],
        atol=0.25 * max(spacing[:2]),
    )
    restored = restore_inplane(prepared.image, prepared)
    assert restored.shape == shape and restored.dtype == np.float32
    back_mask = restore_inplane(prepared.mask, prepared, mode="nearest")
    assert back_mask.shape == shape and back_mask.dtype == bool
    for z in range(shape[2]):
        before = ndimage.center_of_mass(volume.array[:, :, z] + 1000.0)
        after = ndimage.center_of_mass(restored[:, :, z] - restored.min())
        assert np.max(np.abs(np.subtract(before, after))) < 0.5
        assert np.max(np.abs(np.subtract(ndimage.center_of_mass(back_mask[:, :, z]), before))) < 0.5
    assert np.mean(back_mask == user_mask) > 0.97


def test_without_spacing_restore_is_the_identity() -> None:
    prepared = prepare_volume(_volume(head((48, 40, 10), "ct")), "ct", DataConfig(spacing=None))
    translated = np.random.default_rng(0).uniform(-1, 1, prepared.image.shape).astype(np.float32)
    assert restore_inplane(translated, prepared) is translated
    with pytest.raises(ValueError, match="mode"):
        restore_inplane(translated, prepared, mode="cubic")
    with pytest.raises(ValueError, match="prepared grid"):
        restore_inplane(translated[:-1], prepared)


# ------------------------------------------------------------------------------ slices


def test_select_slices_by_body_fraction() -> None:
    mask = np.zeros((10, 10, 5), dtype=bool)
    for z, rows in enumerate([0, 1, 3, 5, 10]):  # 0 %, 10 %, 30 %, 50 %, 100 % of the slice
        mask[:rows, :, z] = True
    prepared = _prepared(np.zeros(mask.shape), mask)
    assert select_slices(prepared, 0.0) == [0, 1, 2, 3, 4]
    assert select_slices(prepared, 0.05) == [1, 2, 3, 4]
    assert select_slices(prepared, 0.3) == [2, 3, 4]
    assert select_slices(prepared, 0.6) == [4]
    dataset = SliceDataset(
        [prepared, prepared], DataConfig(image_size=16, min_body_fraction=0.3), train=False
    )
    assert len(dataset) == 6
    assert [dataset.item_location(i) for i in range(6)] == [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]


def test_context_channels_are_inferior_to_superior_with_replicated_edges() -> None:
    image = np.broadcast_to(np.arange(6, dtype=np.float32), (4, 3, 6)).copy()  # slice z has value z
    assert [c[0, 0] for c in slice_with_context(image, 0, 2)] == [0, 0, 0, 1, 2]
    assert [c[0, 0] for c in slice_with_context(image, 3, 1)] == [2, 3, 4]
    assert [c[0, 0] for c in slice_with_context(image, 5, 2)] == [3, 4, 5, 5, 5]
    assert slice_with_context(image, 2, 0).shape == (1, 4, 3)
    with pytest.raises(IndexError):
        slice_with_context(image, 6, 1)
    dataset = SliceDataset([_prepared(image)], DataConfig(image_size=16, context_slices=2), train=False)
    item = dataset[1]
    assert item["image"].shape == (5, 16, 16)
    centre = item["image"][:, 8, 8].tolist()  # inside the (centred) content
    assert centre == [0, 0, 1, 2, 3] and item["slice_index"] == 1


def test_pad_and_crop_keep_the_scale_and_aspect() -> None:
    rng = np.random.default_rng(0)
    content = rng.uniform(-0.9, 1, (1, 40, 24)).astype(np.float32)  # taller than S in X, narrower in Y
    out = pad_or_crop(content, 32).numpy()
    assert out.shape == (1, 32, 32)
    np.testing.assert_array_equal(out[0, :, 4:28], content[0, 4:36, :])  # centred crop, centred pad
    assert (out[0, :, :4] == -1).all() and (out[0, :, 28:] == -1).all()
    # The dataset at evaluation does the same, and the mask follows the image.
    mask = np.zeros((40, 24, 1), dtype=bool)
    mask[10:30, 5:15] = True
    dataset = SliceDataset([_prepared(content[0][:, :, None], mask)], DataConfig(image_size=32), train=False)
    item = dataset[0]
    np.testing.assert_array_equal(item["image"].numpy(), out)
    np.testing.assert_array_equal(item["mask"][0].numpy(), np.pad(mask[4:36, :, 0], ((0, 0), (4, 4))))


def _random_volume(shape=(20, 24, 6), seed: int = 0) -> PreparedVolume:
    rng = np.random.default_rng(seed)
    image = rng.uniform(-0.5, 1, shape).astype(np.float32)
    mask = rng.random(shape) > 0.3
    return _prepared(image, mask)


def _items(dataset: SliceDataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_training_augmentation_is_a_function_of_seed_epoch_and_index() -> None:
    cfg = DataConfig(image_size=32, context_slices=1, max_shift=0.1, flip_prob=0.5, min_body_fraction=0.0)
    volumes = [_random_volume(seed=0), _random_volume((40, 36, 5), seed=1)]
    first = SliceDataset(volumes, cfg, train=True, seed=7)
    second = SliceDataset(volumes, cfg, train=True, seed=7)
    second.set_epoch(3)
    second.set_epoch(0)
    order = list(range(len(first)))[::-1]
    reversed_items = {i: second[i] for i in order}  # a different order does not matter
    items = _items(first)
    assert all(_same(items[i], reversed_items[i]) for i in range(len(first)))
    first.set_epoch(1)
    later = _items(first)
    assert sum(not _same(a, b) for a, b in zip(items, later, strict=True)) > len(items) // 2
    other_seed = _items(SliceDataset(volumes, cfg, train=True, seed=8))
    assert any(not _same(a, b) for a, b in zip(items, other_seed, strict=True))


def test_augmentation_is_identical_on_image_and_mask_and_bounded() -> None:
    shape = (20, 24, 3)
    rng = np.random.default_rng(2)
    mask = rng.random(shape) > 0.5
    image = np.where(mask, rng.uniform(0.1, 1, shape), -0.5).astype(np.float32)
    cfg = DataConfig(image_size=32, max_shift=0.1, flip_prob=0.5, min_body_fraction=0.0)
    dataset = SliceDataset([_prepared(image, mask)], cfg, train=True, seed=0)
    flips, shifts = set(), set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            picture, body = item["image"][0].numpy(), item["mask"][0].numpy()
            np.testing.assert_array_equal(body > 0, picture > 0)  # mask moved exactly with the image
            # Locate the content on the canvas: it is the slice, possibly flipped left-right, shifted.
            rows, cols = np.nonzero(picture > -1)
            x0, y0 = rows.min(), cols.min()
            window = picture[x0 : x0 + shape[0], y0 : y0 + shape[1]]
            original = image[:, :, item["slice_index"]]
            flipped = bool(np.array_equal(window, original[::-1]))
            assert flipped or np.array_equal(window, original)
            flips.add(flipped)
            shift = (x0 - (32 - shape[0]) // 2, y0 - (32 - shape[1]) // 2)
            assert max(abs(shift[0]), abs(shift[1])) <= round(0.1 * 32)
            shifts.add(shift)
    assert flips == {True, False} and len(shifts) > 5
    # Without augmentation a training slice smaller than S is centred, never flipped.
    plain = SliceDataset([_prepared(image, mask)], DataConfig(image_size=32, augment=False), train=True)
    np.testing.assert_array_equal(plain[0]["image"][0, 6:26, 4:28].numpy(), image[:, :, 0])


def test_large_slices_are_cropped_at_random_offsets_in_training() -> None:
    image = np.broadcast_to(np.arange(64, dtype=np.float32)[:, None, None] / 64, (64, 20, 2)).copy()
    cfg = DataConfig(image_size=32, augment=False, min_body_fraction=0.0)
    dataset = SliceDataset([_prepared(image)], cfg, train=True, seed=0)
    starts = set()
    for epoch in range(20):
        dataset.set_epoch(epoch)
        first_row = dataset[0]["image"][0, :, 10].numpy()
        start = round(float(first_row[0]) * 64)
        np.testing.assert_allclose(first_row, np.arange(start, start + 32) / 64)  # unscaled window
        starts.add(start)
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 32
    evaluation = SliceDataset([_prepared(image)], cfg, train=False)
    assert evaluation[0]["image"][0, 0, 10] == 16 / 64  # centred


def test_items_are_plain_tensors_and_meta_tracking_is_restored() -> None:
    set_track_meta(True)
    threads = torch.get_num_threads()
    dataset = SliceDataset([_random_volume()], DataConfig(image_size=32, min_body_fraction=0.0), train=True)
    item = dataset[0]
    assert type(item["image"]) is torch.Tensor and type(item["mask"]) is torch.Tensor
    assert item["image"].dtype == torch.float32 and item["mask"].shape == (1, 32, 32)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    assert isinstance(item["volume_index"], int) and isinstance(item["slice_index"], int)
    assert get_track_meta() is True
    assert torch.get_num_threads() == threads  # restored after the single-threaded item
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_dataloader_workers_give_the_same_items() -> None:
    cfg = DataConfig(image_size=32, context_slices=1, max_shift=0.1, min_body_fraction=0.0)
    dataset = SliceDataset([_random_volume(), _random_volume(seed=3)], cfg, train=True, seed=5)
    dataset.set_epoch(2)
    expected = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2)
    got = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------- data.planes


def test_plane_volumes_hold_the_coronal_and_sagittal_slices_at_isotropic_voxels() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (12, 9, 5)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[2:10, 1:8, 1:4] = True
    prepared = PreparedVolume(
        image=image, mask=mask, params=NormParams("ct", -1024, 3000), source="case.nii.gz",
        original_shape=image.shape, original_spacing=(2.0, 2.0, 4.0), spacing=(2.0, 2.0, 4.0),
    )  # fmt: skip
    assert plane_volume(prepared, "axial") is prepared
    coronal, sagittal = plane_volume(prepared, "coronal"), plane_volume(prepared, "sagittal")
    # 5 slices of 4 mm become 10 of 2 mm; coronal slices (X, Z) at each Y, sagittal (Y, Z) at each X.
    assert coronal.shape == (12, 10, 9) and coronal.spacing == (2.0, 2.0, 2.0)
    assert sagittal.shape == (9, 10, 12) and sagittal.spacing == (2.0, 2.0, 2.0)
    isotropic = resample_depth(image, 10)
    np.testing.assert_array_equal(coronal.image[:, :, 4], isotropic[:, 4, :])
    np.testing.assert_array_equal(sagittal.image[:, :, 3], isotropic[3, :, :])
    assert coronal.mask.dtype == bool and coronal.mask.shape == coronal.image.shape
    assert not coronal.mask[:, :, 0].any() and coronal.mask[5, 5, 4]  # y = 0 outside, the centre inside
    assert np.moveaxis(coronal.image, 2, 0).flags.c_contiguous  # slices contiguous, as for axial ones
    assert coronal.source == "case.nii.gz (coronal)" and coronal.params == prepared.params


def test_data_planes_add_the_slices_of_each_plane_to_the_dataset() -> None:
    image = np.random.default_rng(1).uniform(-1, 1, (20, 18, 6)).astype(np.float32)
    prepared = _prepared(image)  # 1 mm isotropic: no resampling
    axial = SliceDataset([prepared], DataConfig(image_size=32), train=False)
    assert len(axial) == 6 and axial.volumes == [prepared]
    every = SliceDataset(
        [prepared, prepared], DataConfig(image_size=32, planes=["axial", "coronal", "sagittal"]), train=False
    )
    assert len(every.volumes) == 6 and len(every) == 2 * (6 + 18 + 20)
    v, y = every.item_location(6 + 7)  # the 8th coronal slice of the first volume
    assert (v, y) == (1, 7)
    item = every[6 + 7]["image"][0]
    # Centred on the 32 x 32 canvas: the (X, Z) slice at y = 7, padded with air.
    np.testing.assert_array_equal(item[6:26, 13:19].numpy(), image[:, 7, :])
    assert (item[:6] == -1).all()


def test_data_planes_are_checked_and_kept_as_a_list() -> None:
    cfg = DataConfig(planes="axial,sagittal")  # type: ignore[arg-type]
    cfg.validate()
    assert cfg.planes == ["axial", "sagittal"] and DataConfig().planes == ["axial"]
    for bad in (["axial", "axial"], ["foo"], [], 3):
        with pytest.raises(ConfigError, match=r"data\.planes"):
            DataConfig(planes=bad).validate()  # type: ignore[arg-type]
