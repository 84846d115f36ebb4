"""Body mask on phantoms: covers the head, fills cavities, drops detached noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medcyclegan import parallel
from medcyclegan.data import mask as mask_module
from medcyclegan.data.mask import _label_sizes, body_mask, fill_holes, largest_component
from medcyclegan.errors import ConfigError

SHAPE = (64, 56, 24)


def _phantom(modality: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A head (an ellipsoid cut by the field of view in z) with a closed dark cavity, an airway open
    at both ends of the scan (a hole in each axial slice, not in 3D), noisy air and two detached
    bright blobs."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    head = ((x - 32) / 24) ** 2 + ((y - 28) / 20) ** 2 + ((z - 12) / 20) ** 2 <= 1
    cavity = ((x - 32) / 8) ** 2 + ((y - 30) / 6) ** 2 + ((z - 12) / 5) ** 2 <= 1
    airway = (x - 32) ** 2 + (y - 20) ** 2 <= 4  # along z through the whole scan
    blobs = np.zeros(SHAPE, dtype=bool)
    blobs[2:5, 2:5, 2:5] = True
    blobs[60:63, 50:54, 18:22] = True
    if modality == "ct":
        air, tissue, noise = -1000.0, 40.0, 30.0
    else:
        air, tissue, noise = 0.0, 400.0, 15.0
    array = np.full(SHAPE, air) + np.abs(rng.normal(0, noise, SHAPE))
    array[head] = tissue + rng.normal(0, noise, int(head.sum()))
    array[cavity | airway] = air
    array[blobs] = tissue
    return {
        "array": array.astype(np.float32),
        "head": head,
        "cavity": cavity,
        "airway": airway,
        "blobs": blobs,
    }


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_mask_covers_head_fills_cavities_and_drops_blobs(modality: str) -> None:
    phantom = _phantom(modality)
    assert phantom["head"][:, :, 0].any() and phantom["airway"][:, :, 0].any()  # open in 3D
    mask = body_mask(phantom["array"], modality, dilation=2)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert mask[phantom["head"]].all()
    assert mask[phantom["cavity"]].all()
    assert mask[phantom["airway"]].all()
    assert not mask[phantom["blobs"]].any()
    # No more than the head dilated in-plane by the 2 voxels asked for.
    grown = ndimage.binary_dilation(phantom["head"], structure=np.ones((3, 3, 1), bool), iterations=2)
    assert not (mask & ~grown).any()


def test_dilation_is_in_plane_and_of_the_asked_size() -> None:
    array = np.full((21, 21, 9), -1000.0)
    array[10, 10, 4] = 0.0
    mask = body_mask(array, "ct", dilation=3)
    assert mask[:, :, 4].sum() == 1 + 2 * 3 * 4  # a diamond of radius 3 (cross element, 3 times)
    assert not mask[:, :, 3].any() and not mask[:, :, 5].any()
    assert body_mask(array, "ct", dilation=0).sum() == 1


def test_threshold_method_and_its_threshold() -> None:
    array = np.full((12, 12, 6), -1000.0)
    array[3:9, 3:9, 1:5] = -300.0  # lung-like tissue
    assert body_mask(array, "ct", dilation=0).sum() == 6 * 6 * 4
    assert not body_mask(array, "ct", threshold_hu=-200.0, dilation=0).any()
    # "otsu" on CT and "threshold" on MR are both allowed.
    assert body_mask(array, "ct", method="otsu", dilation=0).sum() == 6 * 6 * 4
    assert body_mask(array + 1000.0, "mr", method="threshold", threshold_hu=100.0, dilation=0).sum() == 144


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_empty_result_is_all_false(modality: str) -> None:
    array = np.full((10, 10, 4), -1000.0 if modality == "ct" else 0.0, dtype=np.float32)
    mask = body_mask(array, modality)
    assert mask.shape == array.shape and mask.dtype == bool and not mask.any()


def test_options_are_validated() -> None:
    array = np.zeros((4, 4, 4))
    with pytest.raises(ConfigError, match="mask method"):
        body_mask(array, "ct", method="watershed")
    with pytest.raises(ConfigError, match="modality"):
        body_mask(array, "pet")
    with pytest.raises(ConfigError, match="dilation"):
        body_mask(array, "ct", dilation=-1)


@pytest.mark.parametrize("order", ["C", "F"])
def test_fill_holes_matches_scipy_definition(order: str) -> None:
    # scipy's definition: 3D fill, then 2D fill of every axial slice; ours skips the 3D pass.
    rng = np.random.default_rng(3)
    for _ in range(8):
        mask = ndimage.binary_opening(rng.random((20, 18, 7)) > 0.45)
        # A closed 3D cavity, so that the 3D pass of the definition has something to fill.
        mask[4:12, 4:12, 1:6] = True
        mask[6:10, 6:10, 2:5] = False
        expected = ndimage.binary_fill_holes(mask)
        for z in range(mask.shape[2]):
            expected[:, :, z] = ndimage.binary_fill_holes(expected[:, :, z])
        np.testing.assert_array_equal(fill_holes(np.asarray(mask, order=order)), expected)


def test_body_mask_is_the_same_for_c_and_fortran_ordered_volumes() -> None:
    # NIfTI volumes are read Fortran-ordered and processed as their transpose: same mask.
    rng = np.random.default_rng(4)
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), np.linspace(-1, 1, 9), indexing="ij"
    )
    head = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 1.2) ** 2 < 1
    cavity = (x / 0.3) ** 2 + (y / 0.3) ** 2 + (z / 0.5) ** 2 < 1
    mr = np.where(head & ~cavity, 500.0, 0.0) + np.abs(rng.normal(0, 20, head.shape))
    mr[2:4, 2:4, 2:4] = 900.0  # a detached blob
    for modality, array in (("mr", mr), ("ct", np.where(head, 40.0, -1000.0))):
        c_mask = body_mask(np.ascontiguousarray(array), modality)
        f_mask = body_mask(np.asfortranarray(array), modality)
        np.testing.assert_array_equal(c_mask, f_mask)
        assert c_mask[20, 18, 4] and not c_mask[3, 3, 3]  # cavity filled, blob dropped


def test_label_sizes_match_the_voxel_counts() -> None:
    # Per-box counting (and its bincount fallback for many overlapping boxes) against the definition.
    rng = np.random.default_rng(5)
    for _ in range(100):
        mask = rng.random((12, 11, 9)) > rng.uniform(0.3, 0.8)
        labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))
        np.testing.assert_array_equal(
            _label_sizes(labels, count), np.bincount(labels.ravel(), minlength=count + 1)[1:]
        )


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_threaded_largest_component_equals_one_scipy_labelling(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs of 2 slices so that components cross many run boundaries (U shapes, spirals of noise).
    monkeypatch.setattr(mask_module, "_MIN_RUN_SLICES", 2)
    rng = np.random.default_rng(6)
    structure = ndimage.generate_binary_structure(3, 1)
    for trial in range(40):
        shape = (int(rng.integers(4, 14)), int(rng.integers(3, 9)), int(rng.integers(3, 9)))
        mask = rng.random(shape) > rng.uniform(0.35, 0.75)
        if trial % 4 == 0:  # two equal blocks: the tie goes to the first in memory order
            mask[:] = False
            mask[0:2, 0:2, 0:2] = mask[-2:, -2:, -2:] = True
        labels, count = ndimage.label(mask, structure=structure)
        expected = np.zeros(shape, dtype=bool)
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            expected = labels == int(np.argmax(sizes))  # argmax: the lowest label on a tie
        for order in ("C", "F"):
            got = largest_component(np.asarray(mask, order=order), threads=threads)
            np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}, order {order}")


def test_threaded_per_slice_steps_equal_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mask_module, "_MIN_RUN_SLICES", 2)
    monkeypatch.setattr(parallel, "_threads", 3)
    rng = np.random.default_rng(7)
    mask = ndimage.binary_opening(rng.random((30, 26, 11)) > 0.4)
    single = body_mask(np.where(mask, 40.0, -1000.0), "ct")
    monkeypatch.setattr(parallel, "_threads", 1)
    np.testing.assert_array_equal(single, body_mask(np.where(mask, 40.0, -1000.0), "ct"))


def test_largest_component() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[0:2, 0:2, 0:2] = True
    mask[5:9, 5:9, 5:9] = True
    mask[3, 3, 3] = True
    out = largest_component(mask)
    assert out.sum() == 64 and out[6, 6, 6]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_mr_otsu_keeps_dark_tissue_at_the_outline() -> None:
    """Half the head is bright (fat-like), half dark: raw Otsu would cut the dark half away."""
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    shape = (48, 48, 8)
    x, y, _ = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    head = ((x - 24) / 18) ** 2 + ((y - 24) / 16) ** 2 <= 1
    array = np.abs(rng.normal(0, 8, shape))
    bright, dark = head & (x < 24), head & (x >= 24)
    array[bright] = rng.normal(1000, 50, int(bright.sum()))
    array[dark] = rng.normal(80, 10, int(dark.sum()))
    assert (array[dark] < threshold_otsu(array)).mean() > 0.9  # the raw threshold fails here
    mask = body_mask(array, "mr", dilation=0)
    np.testing.assert_array_equal(mask, head)


def test_real_scans_give_one_plausible_body() -> None:
    sitk = pytest.importorskip("SimpleITK")
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not folder.is_dir():
        pytest.skip("real scans not available")
    for name, modality, low, high in (
        ("brain1_image.nrrd", "mr", 0.4, 0.8),
        ("lung1_image.nrrd", "ct", 0.35, 0.75),
    ):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name))).transpose(2, 1, 0)
        mask = body_mask(array, modality)
        assert low < mask.mean() < high, (name, mask.mean())
        middle = mask[:, :, array.shape[2] // 2]
        assert ndimage.label(middle)[1] == 1 and ndimage.binary_fill_holes(middle).sum() == middle.sum()
        if modality == "ct":  # the lungs (air inside the body) are inside the mask
            assert (array[mask] < -500).mean() > 0.2
