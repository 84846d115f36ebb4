"""Normalisation: exact inverse (property tests), MR percentiles in the body, modality checks, typed records."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medcyclegan.checkpoint import checkpoint_config
from medcyclegan.config import (
    Config,
    DataConfig,
    DomainNormalisation,
    Normalisation,
    config_from_dict,
    config_from_yaml,
    config_to_yaml,
    load_config,
)
from medcyclegan.data.normalise import (
    NormParams,
    check_modality,
    denormalise,
    domain_record,
    fit_normalisation,
    normalise,
    output_params,
)
from medcyclegan.errors import CheckpointError, ConfigError, InputError

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
    assert ct.window == (-1000.0, 2000.0)
    # The YAML form is the one of 0.1.0, key for key and in that order.
    assert list(ct.to_dict().items()) == [
        ("modality", "ct"),
        ("method", "window"),
        ("window", [-1000.0, 2000.0]),
        ("lower", -1000.0),
        ("upper", 2000.0),
    ]
    assert output_params(ct) == NormParams("ct", -1000, 2000)
    mr_params = [NormParams("mr", lo, hi) for lo, hi in [(0, 100), (10, 300), (5, 200)]]
    mr = domain_record(mr_params, "mr", cfg)
    assert mr.percentiles == (1.0, 99.0) and mr.n_volumes == 3
    assert list(mr.to_dict()) == ["modality", "method", "percentiles", "lower", "upper", "n_volumes"]
    assert output_params(mr) == NormParams("mr", 5, 200)
    with pytest.raises(ConfigError):
        domain_record([], "mr", cfg)
    with pytest.raises(ConfigError):
        domain_record(mr_params, "ct", cfg)
    with pytest.raises(ConfigError):
        DomainNormalisation.from_dict({})


# The normalisation as medcyclegan 0.1.0 wrote it into config.yaml and into checkpoints (config_yaml),
# verbatim (printed by the 0.1.0 code of commit f9ce753; the other sections are left at their defaults).
CONFIG_YAML_0_1_0 = """\
data:
  src_modality: mr
  tgt_modality: ct
normalisation:
  src:
    modality: mr
    method: percentiles
    percentiles:
    - 0.5
    - 99.5
    lower: 1.6500000000000004
    upper: 1143.778125
    n_volumes: 2
  tgt:
    modality: ct
    method: window
    window:
    - -1024.0
    - 3000.0
    lower: -1024.0
    upper: 3000.0
version: 0.1.0
"""


def test_normalisation_of_0_1_0_yaml_loads_typed_and_writes_back_the_same() -> None:
    cfg = config_from_yaml(CONFIG_YAML_0_1_0)
    assert cfg.normalisation == Normalisation(
        source=DomainNormalisation(
            "mr", "percentiles", 1.6500000000000004, 1143.778125, percentiles=(0.5, 99.5), n_volumes=2
        ),
        target=DomainNormalisation("ct", "window", -1024.0, 3000.0, window=(-1024.0, 3000.0)),
    )
    written = yaml.safe_load(config_to_yaml(cfg))
    assert written["normalisation"] == yaml.safe_load(CONFIG_YAML_0_1_0)["normalisation"]
    # Text too: the section is written exactly as 0.1.0 wrote it.
    section = CONFIG_YAML_0_1_0[
        CONFIG_YAML_0_1_0.index("normalisation:") : CONFIG_YAML_0_1_0.index("version:")
    ]
    assert section in config_to_yaml(cfg)


def test_config_without_normalisation_has_none_and_writes_an_empty_mapping() -> None:
    assert Config().normalisation is None
    assert config_from_yaml("normalisation: {}\n").normalisation is None
    assert config_from_yaml("data: {src_modality: mr}\n").normalisation is None
    assert Config().to_dict()["normalisation"] == {}


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.floats(1e-9, 1e6, allow_nan=False, allow_infinity=False),
    st.integers(1, 10_000),
)
def test_normalisation_round_trips_yaml_exactly(lower: float, width: float, n_volumes: int) -> None:
    upper = lower + width
    assume(upper > lower)
    records = Normalisation(
        source=DomainNormalisation(
            "mr", "percentiles", lower, upper, percentiles=(0.1 + 0.2, 99.9), n_volumes=n_volumes
        ),
        target=DomainNormalisation("ct", "window", -1024.5, 3000.25, window=(-1024.5, 3000.25)),
    )
    cfg = config_from_dict({"normalisation": records.to_dict()})
    again = config_from_yaml(config_to_yaml(cfg))
    assert again.normalisation == records
    assert (
        again.normalisation.source.lower == lower and again.normalisation.source.upper == upper
    )  # bit for bit


def _record(**changes: object) -> dict:
    mr = {"modality": "mr", "method": "percentiles", "percentiles": [0.5, 99.5], "lower": 1.0, "upper": 9.0}
    return {"src": {**mr, **changes}, "tgt": {"modality": "ct", "method": "window", "window": [-1024, 3000],
                                               "lower": -1024, "upper": 3000}}  # fmt: skip


@pytest.mark.parametrize(
    ("normalisation", "message"),
    [
        (["src", "tgt"], "normalisation must be a mapping of src and tgt"),
        ({"src": _record()["src"]}, "normalisation must hold exactly the keys src and tgt; got ['src']"),
        ({**_record(), "extra": {}}, "normalisation must hold exactly the keys src and tgt"),
        ({"src": 3, "tgt": _record()["tgt"]}, "normalisation.src must be a mapping; got 3"),
        (
            {"src": {"modality": "mr"}, "tgt": _record()["tgt"]},
            "normalisation.src lacks method, lower, upper",
        ),
        (_record(lower="low"), "normalisation.src.lower must be a number; got 'low'"),
        (_record(upper=True), "normalisation.src.upper must be a number; got True"),
        (_record(upper=float("nan")), "normalisation.src.upper must be a finite number; got nan"),
        (
            _record(lower=9.0),
            "normalisation.src.lower must be less than normalisation.src.upper; got 9.0 and 9.0",
        ),
        (_record(modality="pet"), "normalisation.src.modality must be one of mr, ct; got 'pet'"),
        (
            _record(method="window"),
            "normalisation.src.method must be 'percentiles' for modality 'mr'; got 'window'",
        ),
        (_record(percentiles=[0.5]), "normalisation.src.percentiles must be a list of 2 numbers; got [0.5]"),
        (_record(percentiles=[50, 101]), "normalisation.src.percentiles must satisfy 0 <= low < high <= 100"),
        (_record(percentiles=None), "normalisation.src.percentiles must be a list of 2 numbers; got None"),
        (_record(window=[0, 1]), "normalisation.src.window does not belong to a 'percentiles' record"),
        (_record(n_volumes=0), "normalisation.src.n_volumes must be an integer >= 1; got 0"),
        (_record(n_volumes=2.5), "normalisation.src.n_volumes must be an integer >= 1; got 2.5"),
        (_record(spacing=1.0), "unknown key(s) ['normalisation.src.spacing']"),
    ],
)
def test_bad_normalisation_record_is_refused_naming_the_field(normalisation: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"normalisation": normalisation})
    assert message in str(info.value)


def test_bad_record_in_a_config_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML_0_1_0.replace("upper: 3000.0", "upper: -2000.0"))
    with pytest.raises(
        ConfigError, match=r"normalisation.tgt.lower must be less than normalisation.tgt.upper"
    ) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_checkpoint_config_of_0_1_0_reads_the_typed_record_and_refuses_a_damaged_one() -> None:
    cfg = checkpoint_config({"config_yaml": CONFIG_YAML_0_1_0}, "last.pt")
    assert cfg.normalisation is not None and cfg.normalisation.target.window == (-1024.0, 3000.0)
    assert output_params(cfg.normalisation.source) == NormParams("mr", 1.6500000000000004, 1143.778125)
    damaged = CONFIG_YAML_0_1_0.replace("n_volumes: 2", "n_volumes: -1")
    with pytest.raises(CheckpointError, match=r"stored config is invalid: normalisation.src.n_volumes"):
        checkpoint_config({"config_yaml": damaged}, "last.pt")
