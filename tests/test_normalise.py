"""Normalisation: exact inverse (property tests), MR percentiles in the body, modality checks, records."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medcyclegan.config import DataConfig
from medcyclegan.data.normalise import (
    NormParams,
    check_modality,
    denormalise,
    domain_record,
    fit_normalisation,
    normalise,
    output_params,
)
from medcyclegan.errors import ConfigError, InputError

CT_LOW, CT_HIGH = DataConfig().ct_window


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int16, st.integers(1, 300), elements=st.integers(int(CT_LOW), int(CT_HIGH))))
def test_ct_integer_hu_round_trip_exactly(hu: np.ndarray) -> None:
    params = NormParams("ct", CT_LOW, CT_HIGH)
    normalised = normalise(hu, params)
    assert normalised.dtype == np.float32
    assert normalised.min() >= -1.0 and normalised.max() <= 1.0
    back = denormalise(normalised, params)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(np.round(back).astype(np.int16), hu)
    # Well within float32 rounding of the 4024 HU range.
    assert np.max(np.abs(back.astype(np.float64) - hu)) < 1e-3


@settings(max_examples=80, deadline=None)
@given(
    lower=st.floats(-1e4, 1e4, allow_nan=False),
    width=st.floats(1e-2, 1e5, allow_nan=False),
    fractions=hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(0.0, 1.0)),
)
def test_mr_round_trip_within_float32_rounding(lower: float, width: float, fractions: np.ndarray) -> None:
    upper = lower + width
    params = NormParams("mr", lower, upper)
    values = (lower + fractions * width).astype(np.float32)
    values = np.clip(values, np.float32(lower), np.float32(upper))  # float32 rounding may leave the window
    inside = (values >= lower) & (values <= upper)
    back = denormalise(normalise(values, params), params).astype(np.float64)
    # One float32 rounding of the normalised value (relative to the width) and one of the output.
    tolerance = 2 * np.finfo(np.float32).eps * (width + np.abs(values.astype(np.float64)))
    assert np.all(np.abs(back - values)[inside] <= tolerance[inside])


def test_values_outside_the_window_are_clipped() -> None:
    params = NormParams("ct", -1024, 3000)
    out = normalise(np.array([-3000, -1024, 0, 3000, 5000], dtype=np.int16), params)
    np.testing.assert_allclose(out, [-1, -1, 2 * 1024 / 4024 - 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(denormalise(np.array([-1.5, 1.5], np.float32), params), [-1024, 3000])


def test_ct_uses_the_configured_window() -> None:
    cfg = DataConfig(ct_window=(-1000.0, 2000.0))
    array = np.linspace(-1000, 1500, 1000).reshape(10, 10, 10)
    assert fit_normalisation(array, "CT", None, cfg) == NormParams("ct", -1000, 2000)


def test_mr_percentiles_are_measured_inside_the_mask() -> None:
    rng = np.random.default_rng(0)
    array = np.zeros((20, 20, 10), dtype=np.float32)
    mask = np.zeros(array.shape, dtype=bool)
    mask[5:15, 5:15, 2:8] = True
    array[mask] = rng.uniform(100, 200, int(mask.sum()))
    params = fit_normalisation(array, "mr", mask, DataConfig(mr_percentiles=(1.0, 99.0)))
    np.testing.assert_allclose([params.lower, params.upper], np.percentile(array[mask], [1, 99]))
    assert params.lower > 99  # the zero background (two thirds of the voxels) is not counted
    whole = fit_normalisation(array, "mr", None, DataConfig(mr_percentiles=(1.0, 99.0)))
    assert whole.lower == 0.0


def test_empty_mask_falls_back_to_the_whole_volume(caplog: pytest.LogCaptureFixture) -> None:
    array = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        params = fit_normalisation(array, "mr", np.zeros(array.shape, bool), DataConfig(), path="a.nii")
    assert "a.nii: empty body mask" in caplog.text
    np.testing.assert_allclose(params.lower, np.percentile(array, 0.5))


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_constant_volume_is_an_input_error(modality: str) -> None:
    with pytest.raises(InputError, match=r"^scan\.nii\.gz: volume is constant"):
        fit_normalisation(np.full((8, 8, 4), 7.0), modality, None, DataConfig(), path="scan.nii.gz")


def test_mr_with_equal_percentiles_in_the_body_is_an_input_error() -> None:
    array = np.zeros((8, 8, 4))
    array[0, 0, 0] = 5.0
    mask = array == 0
    with pytest.raises(InputError, match="no usable intensity range"):
        fit_normalisation(array, "mr", mask, DataConfig(), path="mr.nii")


def test_params_validation_and_dict_round_trip() -> None:
    params = NormParams("MR", 3, 250.5, clip=True)
    assert params.modality == "mr"
    assert NormParams.from_dict(params.to_dict()) == params
    with pytest.raises(ConfigError):
        NormParams("pet", 0, 1)
    with pytest.raises(ConfigError):
        NormParams("mr", 5, 5)
    with pytest.raises(ConfigError, match="lack"):
        NormParams.from_dict({"modality": "ct", "lower": 0})
    with pytest.raises(ConfigError):
        NormParams.from_dict({"modality": "ct", "lower": "a", "upper": 1})


def _ct_like(rng: np.random.Generator) -> np.ndarray:
    array = np.full((20, 20, 8), -1000.0)
    array[4:16, 4:16] = rng.normal(40, 20, (12, 12, 8))
    return array


@pytest.mark.parametrize(
    ("modality", "make", "warns"),
    [
        ("ct", _ct_like, False),
        ("ct", lambda rng: _ct_like(rng) + 1024, True),  # raw stored values, no rescale: no air
        ("mr", lambda rng: rng.uniform(0, 800, (20, 20, 8)), False),
        ("mr", lambda rng: rng.normal(0, 1, (20, 20, 8)), False),  # z-scored MR
        ("mr", _ct_like, True),
    ],
)
def test_modality_check_warns_naming_the_file(
    caplog: pytest.LogCaptureFixture, modality: str, make, warns: bool
) -> None:
    array = make(np.random.default_rng(1))
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        ok = check_modality(array, modality, "case7.nii.gz")
    assert ok is not warns
    if warns:
        assert caplog.records and caplog.records[0].getMessage().startswith("case7.nii.gz: declared")
    else:
        assert not caplog.records


def test_mr_share_rule_without_very_low_minimum(caplog: pytest.LogCaptureFixture) -> None:
    array = np.full((10, 10, 10), 300.0)
    array[:, :, :1] = -200.0  # 10 % below -100, minimum -200 > -500
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        assert not check_modality(array, "mr", "x.nii")
    array[:, :, :1] = 300.0
    array[0, 0, 0] = -200.0  # 0.1 %: noise, not a CT
    assert check_modality(array, "mr", "x.nii")


def test_domain_records_and_output_params() -> None:
    cfg = DataConfig(ct_window=(-1000.0, 2000.0), mr_percentiles=(1.0, 99.0))
    ct = domain_record([NormParams("ct", -1000, 2000)] * 2, "ct", cfg)
    assert ct["window"] == [-1000.0, 2000.0]
    assert output_params(ct) == NormParams("ct", -1000, 2000)
    mr_params = [NormParams("mr", lo, hi) for lo, hi in [(0, 100), (10, 300), (5, 200)]]
    mr = domain_record(mr_params, "mr", cfg)
    assert mr["percentiles"] == [1.0, 99.0] and mr["n_volumes"] == 3
    assert output_params(mr) == NormParams("mr", 5, 200)
    with pytest.raises(ConfigError):
        domain_record([], "mr", cfg)
    with pytest.raises(ConfigError):
        domain_record(mr_params, "ct", cfg)
    with pytest.raises(ConfigError):
        output_params({})
