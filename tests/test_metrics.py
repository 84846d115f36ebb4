"""SynthRAD metric definitions checked against hand computations on tiny volumes."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from medcyclegan.errors import ConfigError
from medcyclegan.metrics import (
    MS_SSIM_WEIGHTS,
    masked_ms_ssim,
    metric_metadata,
    metric_names,
    ssim_terms,
    synthrad2023,
    synthrad2025,
    synthrad_body_mask,
)


@pytest.fixture
def volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured reference, a noisy prediction and a box mask away from the borders (HU)."""
    rng = np.random.default_rng(1)
    ref = rng.normal(0.0, 300.0, size=(24, 22, 18))
    pred = ref + rng.normal(0.0, 80.0, size=ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[4:20, 5:18, 4:14] = True
    return pred, ref, mask


# --------------------------------------------------------------------------- MAE
def test_mae_by_hand_with_known_mask() -> None:
    ref = np.zeros((8, 8, 8))
    pred = np.zeros((8, 8, 8))
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[0, 0, :4] = True  # 4 voxels in the mask
    pred[0, 0, :4] = [10.0, -20.0, 30.0, 0.0]  # |diff| sum 60 -> MAE 15
    pred[5, 5, 5] = 1000.0  # outside the mask: ignored
    assert synthrad2023(pred, ref, mask)["mae"] == pytest.approx(15.0)
    assert synthrad2025(pred, ref, mask)["mae"] == pytest.approx(15.0)


def test_mae_2023_unclipped_2025_clipped() -> None:
    ref = np.zeros((8, 8, 8))
    pred = np.zeros((8, 8, 8))
    mask = np.ones((8, 8, 8), dtype=bool)
    pred[0, 0, 0] = 4000.0 * 512  # one voxel, +2048000 HU: MAE 4000 unclipped
    assert synthrad2023(pred, ref, mask)["mae"] == pytest.approx(4000.0)
    assert synthrad2025(pred, ref, mask)["mae"] == pytest.approx(3071.0 / 512)


def test_int16_inputs_do_not_overflow() -> None:
    ref = np.full((8, 8, 8), -30000, dtype=np.int16)
    pred = np.full((8, 8, 8), 30000, dtype=np.int16)
    mask = np.ones((8, 8, 8), dtype=bool)
    assert synthrad2023(pred, ref, mask)["mae"] == pytest.approx(60000.0)


def test_mask_accepts_integer_labels(volumes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    pred, ref, mask = volumes
    as_bool = synthrad2023(pred, ref, mask)
    as_labels = synthrad2023(pred, ref, mask.astype(np.uint8) * 3)
    assert as_labels == as_bool


# --------------------------------------------------------------------------- PSNR
def test_psnr_2023_by_formula_on_clipped_mask_voxels(
    volumes: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    pred, ref, mask = volumes
    pred = pred.copy()
    pred[mask.nonzero()[0][0], mask.nonzero()[1][0], mask.nonzero()[2][0]] = 5000.0  # clipped to 3000
    gt_m = np.clip(ref[mask], -1024, 3000)
    pred_m = np.clip(pred[mask], -1024, 3000)
    expected = 10 * math.log10(4024.0**2 / np.mean((gt_m - pred_m) ** 2))
    assert synthrad2023(pred, ref, mask)["psnr"] == pytest.approx(expected, rel=1e-12)


def test_psnr_2025_by_formula(volumes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    pred, ref, mask = volumes
    gt_m = np.clip(ref[mask], -1024, 3071)
    pred_m = np.clip(pred[mask], -1024, 3071)
    expected = 10 * math.log10(4095.0**2 / np.mean((gt_m - pred_m) ** 2))
    assert synthrad2025(pred, ref, mask)["psnr"] == pytest.approx(expected, rel=1e-12)


def test_data_range_alone_shifts_psnr() -> None:
    """Same errors, no clipping involved: the standards differ by exactly 20 log10(4095 / 4024) dB."""
    rng = np.random.default_rng(2)
    ref = rng.uniform(-500, 1500, size=(10, 10, 10))
    pred = ref + rng.normal(0, 40, size=ref.shape)
    pred = np.clip(pred, -1000, 2900)
    mask = np.ones(ref.shape, dtype=bool)
    gap = synthrad2025(pred, ref, mask)["psnr"] - synthrad2023(pred, ref, mask)["psnr"]
    assert gap == pytest.approx(20 * math.log10(4095 / 4024), rel=1e-9)


def test_identical_volumes_give_perfect_scores(volumes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, ref, mask = volumes
    scores_2023 = synthrad2023(ref, ref, mask)
    scores_2025 = synthrad2025(ref, ref, mask)
    assert scores_2023 == {"mae": 0.0, "psnr": math.inf, "ssim": pytest.approx(1.0)}
    assert scores_2025 == {"mae": 0.0, "psnr": math.inf, "ms_ssim": pytest.approx(1.0)}


@pytest.mark.parametrize("standard_function", [synthrad2023, synthrad2025])
def test_values_outside_mask_change_nothing(
    volumes: tuple[np.ndarray, np.ndarray, np.ndarray], standard_function
) -> None:
    pred, ref, mask = volumes
    before = standard_function(pred, ref, mask)
    rng = np.random.default_rng(3)
    pred_changed = np.where(mask, pred, rng.uniform(-3000, 5000, size=pred.shape))
    ref_changed = np.where(mask, ref, rng.uniform(-3000, 5000, size=ref.shape))
    after = standard_function(pred_changed, ref_changed, mask)
    assert after == pytest.approx(before, rel=1e-12)


# --------------------------------------------------------------------------- SSIM (2023)
def test_ssim_full_mask_equals_skimage_mean(volumes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """With a mask covering the whole volume the definition reduces to skimage's own mean SSIM."""
    pred, ref, _ = volumes
    pred = pred.copy()
    pred[0, 0, 0] = 9000.0  # exercises the clip
    full = np.ones(ref.shape, dtype=bool)
    gt = np.clip(ref, -1024, 3000) + 1024
    pr = np.clip(pred, -1024, 3000) + 1024
    expected = structural_similarity(gt, pr, data_range=4024)
    assert synthrad2023(pred, ref, full)["ssim"] == pytest.approx(expected, rel=1e-12)


def test_ssim_masked_mean_by_hand(volumes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    pred, ref, mask = volumes
    gt = np.where(mask, np.clip(ref, -1024, 3000), -1024) + 1024
    pr = np.where(mask, np.clip(pred, -1024, 3000), -1024) + 1024
    _, ssim_map = structural_similarity(gt, pr, data_range=4024, full=True)
    expected = ssim_map[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean()
    value = synthrad2023(pred, ref, mask)["ssim"]
    assert value == pytest.approx(expected, rel=1e-12)
    assert 0.0 < value < 1.0


def test_ssim_ignores_mask_voxels_in_the_cropped_border() -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(0, 300, size=(16, 16, 16))
    pred = ref + rng.normal(0, 50, size=ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[3:13, 3:13, 3:13] = True
    border_mask = mask.copy()
    border_mask[0:3, 5, 5] = True  # only inside the 3-voxel border
    border_pred = pred.copy()
    border_pred[0:3, 5, 5] = ref[0:3, 5, 5]  # identical there, so only MAE/PSNR may change
    a = synthrad2023(pred, ref, mask)["ssim"]
    b = synthrad2023(border_pred, ref, border_mask)["ssim"]
    # The border voxels do not enter the mean, but their values do enter neighbouring windows.
    assert np.isfinite(a) and np.isfinite(b)
    _, ssim_map = structural_similarity(
        np.where(border_mask, np.clip(ref, -1024, 3000), -1024) + 1024,
        np.where(border_mask, np.clip(border_pred, -1024, 3000), -1024) + 1024,
        data_range=4024,
        full=True,
    )
    assert b == pytest.approx(ssim_map[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean(), rel=1e-12)


def test_ssim_too_small_volume_is_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    ref = np.zeros((10, 10, 5))
    mask = np.ones(ref.shape, dtype=bool)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        scores = synthrad2023(ref + 5, ref, mask)
    assert math.isnan(scores["ssim"])
    assert scores["mae"] == pytest.approx(5.0)
    assert "SSIM window" in caplog.text


def test_empty_mask_gives_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    ref = np.zeros((10, 10, 10))
    empty = np.zeros(ref.shape, dtype=bool)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        for function in (synthrad2023, synthrad2025):
            assert all(math.isnan(v) for v in function(ref, ref, empty).values())
    assert "empty mask" in caplog.text


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        synthrad2023(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), np.ones((8, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match="shapes differ"):
        synthrad2025(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), np.ones((8, 8, 7), dtype=bool))


# --------------------------------------------------------------------------- MS-SSIM (2025)
def test_ssim_terms_multiply_to_skimage_map() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 4095, size=(12, 11, 10))
    b = a + rng.normal(0, 200, size=a.shape)
    luminance, contrast_structure = ssim_terms(a, b, 4095.0)
    _, expected = structural_similarity(a, b, data_range=4095.0, full=True)
    np.testing.assert_allclose(luminance * contrast_structure, expected, rtol=1e-10, atol=1e-12)


def test_ms_ssim_single_scale_is_masked_ssim(volumes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    pred, ref, mask = volumes
    a, b = np.clip(pred, -1024, 3071) + 1024, np.clip(ref, -1024, 3071) + 1024
    _, ssim_map = structural_similarity(a, b, data_range=4095.0, full=True)
    expected = ssim_map[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean()
    value = masked_ms_ssim(a, b, mask, data_range=4095.0, weights=(1.0,))
    assert value == pytest.approx(expected, rel=1e-12)


def test_ms_ssim_two_scales_by_hand() -> None:
    """cs at scale 1, box-downsample images (mean of 8) and mask (any of 8), full SSIM at scale 2."""
    rng = np.random.default_rng(6)
    a = rng.uniform(0, 3000, size=(16, 14, 14))
    b = np.clip(a + rng.normal(0, 300, size=a.shape), 0, 4095)
    mask = np.zeros(a.shape, dtype=bool)
    # z 7..9 covers only one of the two fine slices (6, 7) of coarse slice 3: in by the any-of-8 rule.
    mask[2:14, 3:12, 7:10] = True
    weights = (0.4, 0.6)

    _, cs1 = ssim_terms(a, b, 4095.0)
    inner = (slice(3, -3),) * 3
    term1 = cs1[inner][mask[inner]].mean()

    def box(x: np.ndarray) -> np.ndarray:
        return x.reshape(8, 2, 7, 2, 7, 2).mean(axis=(1, 3, 5))

    coarse_mask = mask.reshape(8, 2, 7, 2, 7, 2).any(axis=(1, 3, 5))
    assert coarse_mask[3:5, 3, 3].all()
    # 8x7x7 after halving: the 7-voxel window leaves 2x1x1 uncropped voxels, the mask covers them.
    lum2, cs2 = ssim_terms(box(a), box(b), 4095.0)
    term2 = (lum2 * cs2)[inner][coarse_mask[inner]].mean()
    expected = term1**0.4 * term2**0.6
    assert masked_ms_ssim(a, b, mask, data_range=4095.0, weights=weights) == pytest.approx(
        expected, rel=1e-12
    )


def test_ms_ssim_decreases_with_noise() -> None:
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[0:20, 0:24, 0:16]
    ref = 400 * np.sin(x / 3.0) + 300 * np.cos(y / 4.0) + 50 * z - 300
    mask = np.zeros(ref.shape, dtype=bool)
    mask[2:18, 2:22, 2:14] = True
    noise = rng.normal(0, 1, size=ref.shape)
    values = [synthrad2025(ref + sigma * noise, ref, mask)["ms_ssim"] for sigma in (0, 20, 100, 400, 1500)]
    assert values[0] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in itertools.pairwise(values))
    assert all(0.0 <= v <= 1.0 for v in values)


def test_ms_ssim_negative_contrast_structure_is_clamped_to_zero() -> None:
    """Anti-correlated checkerboards of 2-voxel blocks (still anti-correlated at scale 2): 0, not NaN."""
    x, y, z = np.meshgrid(*(np.arange(16),) * 3, indexing="ij")
    a = 2000.0 + 800.0 * (((x // 2 + y // 2 + z // 2) % 2) * 2 - 1)
    b = 4000.0 - a
    mask = np.ones(a.shape, dtype=bool)
    _, cs = ssim_terms(a, b, 4095.0)
    assert cs[3:-3, 3:-3, 3:-3].mean() < 0
    assert masked_ms_ssim(a, b, mask, data_range=4095.0, weights=(0.5, 0.5)) == 0.0
    assert masked_ms_ssim(a, a, mask, data_range=4095.0, weights=(0.5, 0.5)) == pytest.approx(1.0)


def test_ms_ssim_pads_small_volumes_and_keeps_thin_masks() -> None:
    """A 12x10x6 volume (far below 97) and a one-voxel-thick mask still give a finite value."""
    rng = np.random.default_rng(9)
    ref = rng.normal(0, 300, size=(12, 10, 6))
    pred = ref + rng.normal(0, 30, size=ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[2:10, 2:8, 3] = True
    value = synthrad2025(pred, ref, mask)["ms_ssim"]
    assert 0.0 < value < 1.0


def test_ms_ssim_default_weights() -> None:
    assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert metric_metadata("synthrad2025")["ms_ssim_min_size"] == 97


# --------------------------------------------------------------------------- metadata
def test_metric_metadata_records_range_and_clip() -> None:
    meta_2023 = metric_metadata("synthrad2023")
    meta_2025 = metric_metadata("synthrad2025")
    assert meta_2023["data_range"] == 4024.0
    assert meta_2023["clip_range_hu"] == [-1024.0, 3000.0]
    assert meta_2023["mae_clipped"] is False
    assert set(meta_2023["metrics"]) == {"mae", "psnr", "ssim"}
    assert meta_2025["data_range"] == 4095.0
    assert meta_2025["clip_range_hu"] == [-1024.0, 3071.0]
    assert meta_2025["mae_clipped"] is True
    assert meta_2025["units"] == {"mae": "HU", "psnr": "dB", "ms_ssim": "1"}
    assert metric_names("synthrad2025") == ("mae", "psnr", "ms_ssim")


def test_unknown_standard_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown standard 'synthrad2024'.*synthrad2023, synthrad2025"):
        metric_metadata("synthrad2024")


# --------------------------------------------------------------------------- body mask
def _phantom_ct(shape: tuple[int, int, int] = (40, 36, 16)) -> tuple[np.ndarray, np.ndarray]:
    """Air (-1000 HU) around an ellipsoidal body (40 HU) with a bone rod and a one-voxel air hole."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    body = ((x - 20) / 14.0) ** 2 + ((y - 18) / 11.0) ** 2 + ((z - 8) / 30.0) ** 2 <= 1.0
    ct = np.where(body, 40.0, -1000.0)
    ct[18:22, 16:20, :] = 1200.0  # bone
    ct[26, 18, 8] = -1000.0  # a small air pocket inside the body
    return ct, body


def test_body_mask_covers_body_fills_holes_and_excludes_far_air() -> None:
    ct, body = _phantom_ct()
    mask = synthrad_body_mask(ct)
    assert mask.dtype == bool and mask.shape == ct.shape
    assert mask[body].all()
    assert mask[26, 18, 8]  # hole closed
    assert not mask[0, 0, 0] and not mask[39, 35, 15]
    # Two one-voxel dilations (26-connected) and a radius-2 closing: the mask reaches 2 voxels past the body.
    from scipy import ndimage as ndi

    grown = ndi.binary_dilation(body, structure=np.ones((3, 3, 3), bool), iterations=2)
    assert not mask[~ndi.binary_dilation(grown, structure=np.ones((3, 3, 3), bool), iterations=1)].any()
    assert mask[grown].all()


def test_body_mask_ignores_out_of_field_padding_and_keeps_border_body() -> None:
    ct, body = _phantom_ct()
    ct[:, :4, :] = -3024.0  # outside the scanner field of view
    ct[:, 30:, :] = 40.0  # body cut by the volume border
    mask = synthrad_body_mask(ct)
    assert not mask[:, :2, :].any()  # padding is air, not body
    assert mask[:, 30:, :].all()  # the closing does not erode the border
    assert mask[body].all()


def test_body_mask_of_constant_volume_is_empty() -> None:
    assert not synthrad_body_mask(np.full((8, 8, 8), -1000.0)).any()


def test_body_mask_on_real_chest_ct() -> None:
    """pyradiomics lung1 CT: the tumour is inside, the air around the patient is not."""
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not (real / "lung1_image.nrrd").is_file():
        pytest.skip(f"real scans not found in {real}")
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(real / "lung1_image.nrrd")))
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(real / "lung1_label.nrrd"))) > 0
    mask = synthrad_body_mask(ct)
    assert mask[tumour].all()
    assert not mask[:, :20, :20].any() and not mask[:, -20:, -20:].any()  # corners: air
    assert 0.3 < mask.mean() < 0.7
