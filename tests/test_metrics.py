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
    ssim_components,
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


def test_mae_is_not_clipped_in_either_standard() -> None:
    """The SynthRAD2025 code clips for PSNR and MS-SSIM only; its MAE sees the raw HU, as in 2023."""
    ref = np.zeros((8, 8, 8))
    pred = np.zeros((8, 8, 8))
    mask = np.ones((8, 8, 8), dtype=bool)
    pred[0, 0, 0] = 4000.0 * 512  # one voxel, +2048000 HU: MAE 4000 unclipped
    assert synthrad2023(pred, ref, mask)["mae"] == pytest.approx(4000.0)
    assert synthrad2025(pred, ref, mask)["mae"] == pytest.approx(4000.0)
    ref[1, 1, 1], pred[1, 1, 1] = 3500.0, -2000.0  # beyond [-1024, 3071] on both sides: |diff| 5500
    assert synthrad2025(pred, ref, mask)["mae"] == pytest.approx((4000.0 * 512 + 5500.0) / 512)
    assert metric_metadata("synthrad2025")["mae_clipped"] is False


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
# The SynthRAD2025 evaluation's procedure (REFERENCE.md section 3), checked point by point on volumes
# whose values follow from the definitions: constant images give flat windows (contrast = structure = 1,
# luminance l(p, q) = (2pq + C1) / (p^2 + q^2 + C1)), so only the chosen effect moves the result.
C1_2025 = (0.01 * 4095.0) ** 2
C2_2025 = (0.03 * 4095.0) ** 2


def _luminance(p: float, q: float) -> float:
    return (2 * p * q + C1_2025) / (p * p + q * q + C1_2025)


def _centre_voxel_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """One voxel that lands on (48, 48, 48) once the volume is padded to 97: it survives 4 halvings."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(48 - (97 - size) // 2 for size in shape)] = True
    return mask


def _two_regions(split: int) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """a = 1000 everywhere; b = 1500 before ``split`` on axis 0, 3000 from it on (97 x 11 x 11)."""
    p, q1, q2 = 1000.0, 1500.0, 3000.0
    a = np.full((97, 11, 11), p)
    b = np.where(np.arange(97)[:, None, None] < split, q1, q2) * np.ones((1, 11, 11))
    return a, b, p, q1, q2


def test_ssim_components_multiply_to_skimage_map() -> None:
    """With C3 = C2 / 2, l * c * s is skimage's SSIM map wherever the structure term is not clamped."""
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 4095, size=(12, 11, 10))
    b = a + rng.normal(0, 200, size=a.shape)
    luminance, contrast, structure = ssim_components(a, b, 4095.0)
    assert structure.min() > 0
    _, expected = structural_similarity(a, b, data_range=4095.0, full=True)
    np.testing.assert_allclose(luminance * contrast * structure, expected, rtol=1e-10, atol=1e-12)


def test_ms_ssim_is_the_masked_mean_of_the_powered_map() -> None:
    """(a) Two mask voxels with luminance 1 and l2: mean(l^w) = (1 + l2^w) / 2, not mean(l)^w."""
    a, b, _, q1, q2 = _two_regions(split=49)
    a[:] = q1  # a equals b in the first region: l = 1 there
    mask = np.zeros(a.shape, dtype=bool)
    mask[20, 5, 5] = mask[76, 5, 5] = True  # 7-voxel windows inside one region each
    expected = (1.0 + _luminance(q1, q2) ** 0.5) / 2
    assert masked_ms_ssim(a, b, mask, data_range=4095.0, weights=(0.5,)) == pytest.approx(expected, rel=1e-9)
    assert expected != pytest.approx(((1.0 + _luminance(q1, q2)) / 2) ** 0.5, rel=1e-3)


def test_ms_ssim_edge_pads_images_and_mask_to_97() -> None:
    """(b) A 9x9x9 body filling its volume: edge padding keeps everything flat and inside, so the value
    is l(p, q)^w exactly; padding with background would put air into the windows at the border.

    Five scales, weight 0 beyond the first (those terms are mean(x^0) = 1): the padding to 97 is
    done whatever the weights, and only scale 1 counts.
    """
    p, q = 1000.0, 3000.0
    a, b = np.full((9, 9, 9), p), np.full((9, 9, 9), q)
    mask = np.ones(a.shape, dtype=bool)
    value = masked_ms_ssim(a, b, mask, data_range=4095.0, weights=(0.5, 0.0, 0.0, 0.0, 0.0))
    assert value == pytest.approx(_luminance(p, q) ** 0.5, rel=1e-9)


def test_box_downsample_is_fftconvolve_same_then_every_other_voxel() -> None:
    """(c) coarse[i] averages fine[2i - 1] and fine[2i] per axis, zeros before index 0."""
    from scipy.signal import fftconvolve

    from medcyclegan.metrics import _box_downsample

    coarse = _box_downsample(np.full((3, 3, 3), 8.0))
    assert coarse.shape == (2, 2, 2)
    # (0, 0, 0) sees 1 of its 8 voxels, (0, 0, 1) 2, (0, 1, 1) 4, (1, 1, 1) all 8.
    assert coarse[0, 0, 0] == 1.0 and coarse[0, 0, 1] == 2.0 and coarse[0, 1, 1] == 4.0
    assert coarse[1, 1, 1] == 8.0 and coarse[1, 0, 1] == 4.0
    fine = np.random.default_rng(8).uniform(0, 4095, size=(5, 6, 7))
    expected = fftconvolve(fine, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]
    np.testing.assert_allclose(_box_downsample(fine), expected, rtol=1e-12, atol=1e-9)


def test_ms_ssim_downsamples_the_mask_by_every_other_voxel() -> None:
    """(d) Mask voxels at axis-0 index 20 (even, kept at scale 2) and 77 (odd, dropped by [::2]; an
    any-of-8 rule would keep it): scale 2 sees region 1 only."""
    a, b, p, q1, q2 = _two_regions(split=49)
    mask = np.zeros(a.shape, dtype=bool)
    mask[20, 5, 5] = mask[77, 5, 5] = True
    # Scale 1: voxels 20 and 77, flat windows in regions 1 and 2. Scale 2: b is still q1 around coarse
    # voxel 10 (fine voxels 7..26) and the box average of a constant is that constant away from index 0.
    scale1 = (_luminance(p, q1) ** 0.3 + _luminance(p, q2) ** 0.3) / 2
    scale2 = _luminance(p, q1) ** 0.7
    value = masked_ms_ssim(a, b, mask, data_range=4095.0, weights=(0.3, 0.7))
    assert value == pytest.approx(scale1 * scale2, rel=1e-9)


@pytest.mark.parametrize("shape", [(97, 97, 97), (9, 10, 11)])
def test_ms_ssim_luminance_at_every_scale_and_offset_downsampling(shape: tuple[int, int, int]) -> None:
    """(e) and (c) on constant volumes p and q, mask one voxel that survives to scale 5 (b: a small
    volume is padded (97 - n) // 2 voxels before, so the voxel lands on the same centre).

    Scales 1-4: flat windows, each term l(p, q)^w_j (luminance enters at every scale). Scale 5 (7^3
    voxels): the offset box puts zeros before index 0 at every halving, so that voxel holds 1/16 of its
    value per axis: image = p * g with g = f x f x f, f = (1/16, 1, 1, 1, 1, 1, 1); the window is the
    whole volume, b = (q / p) a gives s = 1, and l, c follow from the sample statistics of g.
    """
    p, q = 1000.0, 3000.0
    a, b = np.full(shape, p), np.full(shape, q)
    mask = _centre_voxel_mask(shape)
    w = MS_SSIM_WEIGHTS

    f = np.array([1 / 16, 1, 1, 1, 1, 1, 1])
    g = f[:, None, None] * f[None, :, None] * f[None, None, :]
    mean, variance = g.mean(), g.var(ddof=1)  # sample variance, as skimage's SSIM
    lum5 = (2 * p * q * mean**2 + C1_2025) / ((p * p + q * q) * mean**2 + C1_2025)
    con5 = (2 * p * q * variance + C2_2025) / ((p * p + q * q) * variance + C2_2025)
    expected = _luminance(p, q) ** sum(w[:4]) * (lum5 * con5) ** w[4]

    value = masked_ms_ssim(a, b, mask, data_range=4095.0)
    assert value == pytest.approx(expected, rel=1e-9)
    assert masked_ms_ssim(a, a, mask, data_range=4095.0) == pytest.approx(1.0, rel=1e-12)


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, weights: tuple[float, ...]) -> float:
    """The published procedure from independent parts: skimage's SSIM map, numpy edge padding, scipy's
    fftconvolve box and [::2]. skimage's map is l * c * s, and negative only where s < 0, so clamping
    the map at 0 is clamping s."""
    from scipy.signal import fftconvolve

    pad = [(max(0, 97 - n) // 2, max(0, 97 - n) - max(0, 97 - n) // 2) for n in a.shape]
    a, b, mask = (np.pad(x, pad, mode="edge") for x in (a, b, mask))
    result = 1.0
    for weight in weights:
        _, ssim_map = structural_similarity(a, b, data_range=4095.0, full=True)
        ssim_map = np.maximum(ssim_map, 0.0)
        inner = (slice(3, -3),) * 3
        result *= np.clip((ssim_map[inner] ** weight)[mask[inner]].mean(), 0, 1)
        a, b = (fftconvolve(x, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2] for x in (a, b))
        mask = mask[::2, ::2, ::2]
    return float(result)


def test_ms_ssim_matches_the_procedure_built_from_skimage_and_scipy() -> None:
    rng = np.random.default_rng(6)
    z, y, x = np.mgrid[0:21, 0:17, 0:25]
    a = 1500 + 600 * np.sin(x / 3.0) + 400 * np.cos(y / 4.0) + 30 * z
    b = np.clip(a + rng.normal(0, 150, size=a.shape), 0, 4095)
    mask = np.zeros(a.shape, dtype=bool)
    mask[:, 2:15, 3:22] = True  # touches two faces: padded into the margin
    value = masked_ms_ssim(a, b, mask, data_range=4095.0)
    assert value == pytest.approx(_reference_ms_ssim(a, b, mask, MS_SSIM_WEIGHTS), rel=1e-9)
    assert 0.0 < value < 1.0


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


def test_ms_ssim_negative_structure_is_clamped_to_zero() -> None:
    """Anti-correlated checkerboards (b = 4000 - a): s < 0 is clamped to 0 per voxel, so 0, not NaN."""
    x, y, z = np.meshgrid(*(np.arange(16),) * 3, indexing="ij")
    a = 2000.0 + 800.0 * (((x // 2 + y // 2 + z // 2) % 2) * 2 - 1)
    b = 4000.0 - a
    mask = np.zeros(a.shape, dtype=bool)
    mask[4:12, 4:12, 4:12] = True
    _, _, structure = ssim_components(a, b, 4095.0)
    assert (structure[4:12, 4:12, 4:12] == 0.0).all()
    assert masked_ms_ssim(a, b, mask, data_range=4095.0, weights=(0.5, 0.5)) == 0.0
    assert masked_ms_ssim(a, a, mask, data_range=4095.0, weights=(0.5, 0.5)) == pytest.approx(1.0)


def test_ms_ssim_pads_small_volumes() -> None:
    """A 12x10x6 volume (far below 97) and a one-voxel-thick mask give a value in (0, 1)."""
    rng = np.random.default_rng(9)
    ref = rng.normal(0, 300, size=(12, 10, 6))
    pred = ref + rng.normal(0, 30, size=ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[2:10, 2:8, 3] = True  # padded onto z = 48, which every halving keeps
    value = synthrad2025(pred, ref, mask)["ms_ssim"]
    assert 0.0 < value < 1.0


def test_ms_ssim_mask_vanishing_at_a_coarse_scale_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    """A one-voxel mask at an odd index is gone after mask[::2]: the official mean is NaN, so is ours."""
    a = np.full((97, 11, 11), 1000.0)
    mask = np.zeros(a.shape, dtype=bool)
    mask[49, 5, 5] = True
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        assert math.isnan(masked_ms_ssim(a, a, mask, data_range=4095.0, weights=(0.5, 0.5)))
    assert "scale 2" in caplog.text


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
    assert meta_2025["mae_clipped"] is False
    assert meta_2023["mask_rule"] == meta_2025["mask_rule"] == "inside where mask value > 0"
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


def test_tissue_mae_follows_its_definition_per_reference_class() -> None:
    from medcyclegan.metrics import TISSUE_EDGES_HU, tissue_mae

    rng = np.random.default_rng(0)
    ref = rng.uniform(-1024, 2000, size=(12, 10, 8))
    pred = ref + rng.normal(0, 50, size=ref.shape)
    mask = rng.random(ref.shape) > 0.3
    low, high = TISSUE_EDGES_HU
    error = np.abs(pred - ref)
    expected = {
        "mae_air_lung": error[mask & (ref < low)].mean(),
        "mae_soft_tissue": error[mask & (ref >= low) & (ref < high)].mean(),
        "mae_bone": error[mask & (ref >= high)].mean(),
    }
    result = tissue_mae(pred, ref, mask)
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(result[key] - value) < 1e-9, key
    # The edges belong to the class above them; a class absent from the mask is NaN.
    edge = tissue_mae(np.array([high + 7.0]), np.array([high]))
    assert edge["mae_bone"] == 7.0 and np.isnan(edge["mae_air_lung"]) and np.isnan(edge["mae_soft_tissue"])
    with pytest.raises(ConfigError, match="two increasing HU values"):
        tissue_mae(pred, ref, mask, edges=(250.0, -400.0))
