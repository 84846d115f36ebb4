"""Tests of the pseudo-MR made from a CT (medcyclegan.pseudo_mr): contrast, bias, noise, geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcyclegan.errors import ConfigError
from medcyclegan.io.readers import read_volume
from medcyclegan.io.volume import Geometry
from medcyclegan.io.writers import write_volume
from medcyclegan.pseudo_mr import (
    PSEUDO_MR_FULL_SCALE,
    T1_LIKE_CONTRAST,
    pseudo_mr,
    pseudo_mr_volume,
    t1_like_contrast,
)

SPACING = (2.0, 2.0, 4.0)
# Nominal HU of tissues (REFERENCE CT values): what the T1-like map must order non-monotonically.
HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "fluid": 0.0,
    "soft_tissue": 40.0,
    "cancellous_bone": 300.0,
    "cortical_bone": 1500.0,
}


def intensity(tissue: str) -> float:
    return float(t1_like_contrast(np.array([HU[tissue]]))[0])


def test_contrast_is_t1_like_and_not_monotonic() -> None:
    soft = intensity("soft_tissue")
    # Air and cortical bone both dark (darker than soft tissue): intensity alone cannot tell them apart.
    assert intensity("air") < 0.1 * soft
    assert intensity("cortical_bone") < 0.2 * soft
    assert intensity("lung") < 0.2 * soft
    # Fat the brightest; fluid darker than soft tissue; cancellous bone between soft tissue and fat.
    assert intensity("fat") == PSEUDO_MR_FULL_SCALE
    assert intensity("fluid") < soft < intensity("cancellous_bone") < intensity("fat")
    # Not monotonic in HU: up to fat, down to fluid, up to marrow, down to cortical bone.
    values = np.array([intensity(t) for t in HU])  # HU is in increasing HU order
    signs = np.sign(np.diff(values))
    assert (np.diff(signs[signs != 0]) != 0).sum() >= 3


def test_contrast_follows_its_table_and_is_constant_beyond_the_ends() -> None:
    hu = np.array([p[0] for p in T1_LIKE_CONTRAST])
    expected = np.array([p[1] for p in T1_LIKE_CONTRAST], dtype=np.float32)
    np.testing.assert_array_equal(t1_like_contrast(hu), expected)
    assert np.all(np.diff(hu) > 0)
    ends = t1_like_contrast(np.array([-3024.0, 5000.0]))
    np.testing.assert_array_equal(ends, [expected[0], expected[-1]])
    midway = t1_like_contrast(np.array([(hu[0] + hu[1]) / 2, (hu[-2] + hu[-1]) / 2]))
    np.testing.assert_allclose(midway, [(expected[0] + expected[1]) / 2, (expected[-2] + expected[-1]) / 2])


def ct_phantom(shape: tuple[int, int, int] = (48, 40, 12)) -> np.ndarray:
    """A CT in HU with one block of each tissue along axis 0."""
    ct = np.empty(shape, dtype=np.int16)
    blocks = np.array_split(np.arange(shape[0]), len(HU))
    for rows, value in zip(blocks, HU.values()):
        ct[rows] = value
    return ct


def test_shape_dtype_integer_values_and_determinism() -> None:
    ct = ct_phantom()
    first = pseudo_mr(ct, SPACING, seed=3)
    assert first.shape == ct.shape and first.dtype == np.float32
    assert np.all(first >= 0) and np.array_equal(first, np.rint(first))
    np.testing.assert_array_equal(first, pseudo_mr(ct, SPACING, seed=3))
    assert not np.array_equal(first, pseudo_mr(ct, SPACING, seed=4))


def test_noise_is_rician_with_the_given_sigma() -> None:
    ct = np.full((64, 64, 16), HU["soft_tissue"], dtype=np.int16)
    ct[:, :32] = HU["air"]
    mr = pseudo_mr(ct, SPACING, seed=0, bias_strength=0.0, noise_fraction=0.03)
    sigma = 0.03 * PSEUDO_MR_FULL_SCALE
    tissue, air = mr[:, 32:], mr[:, :32]
    # High SNR: about Gaussian around the signal; no signal: Rayleigh, mean sigma * sqrt(pi / 2).
    assert tissue.mean() == pytest.approx(intensity("soft_tissue"), rel=0.01)
    assert tissue.std() == pytest.approx(sigma, rel=0.05)
    assert air.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)
    clean = pseudo_mr(ct, SPACING, seed=0, bias_strength=0.0, noise_fraction=0.0)
    np.testing.assert_array_equal(clean, np.rint(t1_like_contrast(ct)))


def test_bias_field_is_smooth_multiplicative_and_seeded() -> None:
    ct = np.full((64, 64, 16), HU["soft_tissue"], dtype=np.int16)
    gain = pseudo_mr(ct, (4.0, 4.0, 8.0), seed=0, bias_strength=0.1, noise_fraction=0.0) / intensity(
        "soft_tissue"
    )
    log_gain = np.log(gain)
    assert 0.02 < log_gain.std() < 0.2  # about 10 %: strength is the log gain's standard deviation
    assert np.abs(np.diff(log_gain, axis=0)).max() < 0.02  # smooth: below 2 % from voxel to voxel
    other = pseudo_mr(ct, (4.0, 4.0, 8.0), seed=1, bias_strength=0.1, noise_fraction=0.0)
    assert not np.array_equal(gain * intensity("soft_tissue"), other)


def test_volume_keeps_the_ct_geometry(tmp_path: Path) -> None:
    affine = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 30.0], [0, 0, 4.0, -20.0], [0, 0, 0, 1]])
    ct_path = tmp_path / "ct.nii.gz"
    ct = ct_phantom((20, 16, 6))
    write_volume(ct, Geometry(affine=affine, shape=ct.shape, dtype="int16", source_format="nifti"), ct_path)
    volume = read_volume(ct_path)
    mr = pseudo_mr_volume(volume, seed=1)
    assert mr.geometry.same_grid(volume.geometry) and mr.geometry.dtype == "float32"
    np.testing.assert_array_equal(mr.array, pseudo_mr(volume.array, volume.spacing, seed=1))
    written = write_volume(mr.array, mr.geometry, tmp_path / "mr.nii.gz")
    back = read_volume(written)
    assert back.geometry.same_grid(volume.geometry)
    np.testing.assert_array_equal(back.array, mr.array)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"noise_fraction": -0.1}, "noise_fraction"),
        ({"bias_strength": float("nan")}, "bias_strength"),
        ({"bias_scale_mm": 0.0}, "bias_scale_mm"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        pseudo_mr(ct_phantom((8, 8, 8)), SPACING, **kwargs)


def test_wrong_array_or_spacing_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="3D"):
        pseudo_mr(np.zeros((8, 8)), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        pseudo_mr(np.zeros((8, 8, 8)), (1.0, 0.0, 1.0))
