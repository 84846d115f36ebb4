"""evaluate --labels: MAE per segmentation label of the reference, label names, and the body outline Dice."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from rich.console import Console
from tiny import assert_clean_error

import medcyclegan.evaluate
from medcyclegan.errors import ConfigError, InputError
from medcyclegan.evaluate import evaluate
from medcyclegan.label_names import MSD_LAYOUT, NNUNET_LAYOUT, read_label_names
from medcyclegan.metrics import dice_coefficient, label_mae, synthrad_body_mask
from medcyclegan.sample_data import TISSUE_LABELS, SampleDataset, write_sample_dataset

SHAPE = (16, 14, 10)


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype: type = np.int16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(array).astype(dtype), np.eye(4) if affine is None else affine)
    image.to_filename(path)
    return path


def _json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _ct(seed: int = 0) -> np.ndarray:
    """Air around a textured box 'body' (HU)."""
    ct = np.full(SHAPE, -1000.0)
    ct[3:13, 3:11, 2:8] = np.random.default_rng(seed).normal(40, 200, size=(10, 8, 6)).round()
    return ct


def _labels(with_three: bool = True) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[3:8, 3:11, 2:8] = 1
    labels[8:13, 3:11, 2:8] = 2
    if with_three:
        labels[9:11, 5:7, 3:5] = 3
    return labels


def _case(
    folder: Path, name: str, *, seed: int = 0, noise: float = 30.0, labels: np.ndarray | None = None
) -> None:
    """ref/, pred/ (ref + noise) and labels/ of one case under ``folder``."""
    ref = _ct(seed)
    pred = ref + np.random.default_rng(seed + 100).normal(0, noise, size=SHAPE).round()
    _save(folder / "ref" / f"{name}.nii.gz", ref)
    _save(folder / "pred" / f"{name}.nii.gz", pred)
    labels = _labels() if labels is None else labels
    _save(folder / "labels" / f"{name}.nii.gz", labels, dtype=labels.dtype.type)


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _text(table: object, width: int = 200) -> str:
    console = Console(record=True, width=width)
    console.print(table)
    return console.export_text()


# --------------------------------------------------------------------------- metrics
def test_label_mae_is_the_mean_absolute_error_over_each_label() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(-1024, 3000, size=(9, 8, 7)).astype(np.int16)
    pred = rng.integers(-1024, 3000, size=(9, 8, 7)).astype(np.int16)
    pred[0, 0, 0], ref[0, 0, 0] = 32767, -32768  # int16 differences must not wrap
    labels = rng.choice([0, 1, 3, 7], size=(9, 8, 7)).astype(np.uint8)
    labels[0, 0, 0] = 3

    result = label_mae(pred, ref, labels)

    assert list(result) == [1, 3, 7]  # background left out, value order
    error = np.abs(pred.astype(np.float64) - ref.astype(np.float64))
    for value, mae in result.items():
        assert mae == pytest.approx(error[labels == value].mean(), rel=1e-12)
    assert result[3] > 65535.0 / np.count_nonzero(labels == 3)


def test_label_mae_accepts_whole_float_labels_and_refuses_others() -> None:
    ref = np.zeros((2, 2, 2))
    pred = np.arange(8.0).reshape(2, 2, 2)
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2], dtype=np.float32).reshape(2, 2, 2)
    assert label_mae(pred, ref, labels) == {1: 2.5, 2: 5.5}
    assert label_mae(pred, ref, np.zeros((2, 2, 2), np.uint8)) == {}
    with pytest.raises(ValueError, match="non-integer"):
        label_mae(pred, ref, labels + 0.5)
    with pytest.raises(ValueError, match="non-integer"):
        label_mae(pred, ref, np.where(labels == 2, np.nan, labels))
    with pytest.raises(ValueError, match=r"negative values \(min -1\)"):
        label_mae(pred, ref, labels - 1)
    with pytest.raises(ValueError, match="shapes differ"):
        label_mae(pred, ref, labels[:1])


@pytest.mark.parametrize(("dtype", "huge"), [(np.int32, 2**31 - 1), (np.uint64, 2**64 - 1)])
def test_a_huge_label_value_needs_no_huge_count_array(dtype: type, huge: int) -> None:
    """A value of 2**31 - 1 would make np.bincount allocate 16 GiB of counts: np.unique serves instead."""
    ref = np.zeros((4, 4, 4))
    pred = np.ones((4, 4, 4))
    pred[0] = 5.0
    labels = np.zeros((4, 4, 4), dtype=dtype)
    labels[0] = huge
    labels[1] = 2
    assert label_mae(pred, ref, labels) == {2: 1.0, huge: 5.0}


def test_dice_coefficient_matches_its_definition_and_monai() -> None:
    from monai.metrics import compute_dice  # lazy: importing MONAI takes about 2 s, for this test alone

    rng = np.random.default_rng(1)
    a = rng.random((10, 9, 8)) > 0.4
    b = rng.random((10, 9, 8)) > 0.6
    expected = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    assert dice_coefficient(a, b) == pytest.approx(expected, rel=1e-15)
    as_tensor = [torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b)]
    assert dice_coefficient(a, b) == pytest.approx(float(compute_dice(*as_tensor)), rel=1e-6)
    assert dice_coefficient(a, a) == 1.0
    assert dice_coefficient(a, np.zeros_like(a)) == 0.0  # nothing of the outline found
    assert math.isnan(dice_coefficient(np.zeros_like(a), np.zeros_like(a)))  # 0 / 0: undefined
    with pytest.raises(ValueError, match="shapes differ"):
        dice_coefficient(a, b[:1])


# --------------------------------------------------------------------------- label names
NNUNET = {"labels": {"background": 0, "skull": 1, "brain": 2}, "channel_names": {"0": "CT"}}
MSD = {"labels": {"0": "background", "1": "skull", "2": "brain"}, "modality": {"0": "CT"}}


@pytest.mark.parametrize(("data", "layout"), [(NNUNET, NNUNET_LAYOUT), (MSD, MSD_LAYOUT)])
def test_label_names_from_nnunet_and_msd_dataset_json(tmp_path: Path, data: dict, layout: str) -> None:
    path = _json(tmp_path / "dataset.json", data)
    names = read_label_names(path)
    assert names.names == {1: "skull", 2: "brain"}  # background is no label
    assert names.layout == layout and names.source == f"file: {path} ({layout})"
    assert names.name_of(2) == "brain" and names.name_of(5) == "label_5"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "label names file not found"),
        ("{", "is not valid JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        ("[1, 2]", "is not a JSON object; expected a dataset.json"),
        ('{"name": "x"}', 'has no "labels" entry'),
        ('{"labels": []}', '"labels" must be a non-empty object'),
        ('{"labels": {}}', '"labels" must be a non-empty object'),
        ('{"labels": {"background": 0, "tumour": [1, 2]}}', "label 'tumour' is a region"),
        ('{"labels": {"background": 0, "a": 1.5}}', "label 'a' has the value 1.5, not an integer"),
        ('{"labels": {"background": 0, "a": true}}', "label 'a' has the value True, not an integer"),
        ('{"labels": {"background": 0, "a": -1}}', "label 'a' has the negative value -1"),
        ('{"labels": {"background": 0, "a": 1, "b": 1}}', "label value 1 is named twice: 'a' and 'b'"),
        ('{"labels": {"background": 0, "a": 1, "a": 2}}', "key 'a' appears twice"),
        (
            '{"labels": {"0": "background", "1": "bone", "2": "bone"}}',
            "name 'bone' is given to two label values: 1 and 2",
        ),
        ('{"labels": {"0": "background", "1": "a", "01": "b"}}', "label value 1 is named twice"),
        ('{"labels": {"0": "background", "one": "a"}}', "label key 'one' is not a label value"),
        ('{"labels": {"background": 0, "a": "1"}}', "mixes the two layouts"),
        ('{"labels": {"background": 0, "label_2": 1}}', "the name of unnamed label 2"),
        ('{"labels": {"0": "background", "1": " "}}', "label 1 has an empty or unprintable name"),
        ('{"labels": {"0": "background", "1": "a\\u001b[31m"}}', "unprintable name"),
    ],
)
def test_bad_label_names_files_are_refused(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "dataset.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_label_names(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_folder_or_fifo_as_label_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a folder; give a dataset\.json file"):
        read_label_names(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="is a FIFO"):
        read_label_names(tmp_path / "fifo")


# --------------------------------------------------------------------------- evaluate, tiny arrays
def test_label_maes_in_json_csv_and_tables(tmp_path: Path) -> None:
    _case(tmp_path, "a", seed=0)
    _case(tmp_path, "b", seed=1, noise=60.0, labels=_labels(with_three=False))  # b lacks label 3
    names = _json(tmp_path / "dataset.json", {"labels": {"background": 0, "left": 1, "right": 2, "core": 3}})

    report = evaluate(tmp_path / "pred", tmp_path / "ref", labels=tmp_path / "labels", label_names=names)

    expected = {}
    for name in ("a", "b"):
        pred = nib.load(tmp_path / "pred" / f"{name}.nii.gz").get_fdata()
        ref = nib.load(tmp_path / "ref" / f"{name}.nii.gz").get_fdata()
        labels = np.asarray(nib.load(tmp_path / "labels" / f"{name}.nii.gz").dataobj)
        expected[name] = {
            f"mae_label_{label}": float(np.abs(pred - ref)[labels == value].mean())
            if (labels == value).any()
            else math.nan
            for label, value in (("left", 1), ("right", 2), ("core", 3))
        }
    cases = {case.case: case for case in report.cases}
    assert report.labels == {1: "left", 2: "right", 3: "core"}
    assert cases["a"].label_mae == pytest.approx(expected["a"], rel=1e-12)
    assert cases["b"].label_mae == pytest.approx(expected["b"], rel=1e-12, nan_ok=True)
    assert math.isnan(cases["b"].label_mae["mae_label_core"])
    assert report.summary["mae_label_core"]["n"] == 1
    assert report.summary["mae_label_core"]["mean"] == pytest.approx(expected["a"]["mae_label_core"])
    assert report.summary["mae_label_left"]["mean"] == pytest.approx(
        np.mean([expected[n]["mae_label_left"] for n in ("a", "b")])
    )

    data = _strict_json(report.to_json())
    assert data["metadata"]["labels"] == {
        "maps": str(tmp_path / "labels"),
        "names_source": f"file: {names} (nnU-Net v2 dataset.json)",
        "names": {"1": "left", "2": "right", "3": "core"},
        "unnamed": [],
        "named_absent": [],
        "region": medcyclegan.evaluate.LABEL_REGION_RULE,
    }
    assert "not restricted to the body mask" in data["metadata"]["labels"]["region"]
    assert data["cases"][1]["label_mae"]["mae_label_core"] is None  # NaN is null
    assert data["summary"]["mae_label_right"]["n"] == 2

    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    header = report.to_csv().splitlines()[0].split(",")
    assert header[header.index("dice_body") + 1 : header.index("standard")] == [
        "mae_label_left",
        "mae_label_right",
        "mae_label_core",
    ]
    assert float(rows[0]["mae_label_core"]) == pytest.approx(expected["a"]["mae_label_core"], rel=1e-15)
    assert rows[1]["mae_label_core"] == "nan"

    text = _text(report.to_label_table())
    assert "MAE per label of the reference [HU]" in text
    core = next(line for line in text.splitlines() if "core" in line and "│" in line)
    cells = [cell.strip() for cell in core.split("│")[1:-1]]
    assert cells[:3] == ["core", "3", "1/2"]
    assert cells[3] == f"{expected['a']['mae_label_core']:.1f}" and cells[-1].endswith("(a)")
    assert "core: absent from the label map of 1 of 2 case(s) (b), left out of its summary" in text
    assert f"names: file: {names} (nnU-Net v2 dataset.json)" in " ".join(text.split())


def test_labels_are_not_restricted_to_the_body_mask(tmp_path: Path) -> None:
    """A label outside the mask (a couch, air) keeps its voxels: a label is its own region."""
    ref = _ct()
    pred = ref + 10.0
    pred[0] += 500.0  # slice 0 is air, outside any body mask
    labels = _labels()
    labels[0] = 4
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:13, 3:11, 2:8] = 1
    paths = [
        _save(tmp_path / "p.nii.gz", pred),
        _save(tmp_path / "r.nii.gz", ref),
        _save(tmp_path / "m.nii.gz", mask, dtype=np.uint8),
    ]
    label_path = _save(tmp_path / "l.nii.gz", labels, dtype=np.uint8)
    case = evaluate(*paths, labels=label_path).cases[0]
    assert case.label_mae["mae_label_label_4"] == pytest.approx(510.0)  # mae_label_<name>, name label_4
    assert case.label_mae["mae_label_label_1"] == pytest.approx(10.0)
    assert case.metrics["mae"] == pytest.approx(10.0)  # the SynthRAD metrics stay inside the mask


def test_default_names_unnamed_values_and_a_file_naming_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _case(tmp_path, "a")
    pred, ref, labels = tmp_path / "pred", tmp_path / "ref", tmp_path / "labels"
    report = evaluate(pred, ref, labels=labels)
    assert report.labels == {1: "label_1", 2: "label_2", 3: "label_3"}
    assert report.metadata["labels"]["names_source"] == "label_<value> (no label names file)"
    assert set(report.cases[0].label_mae) == {"mae_label_label_1", "mae_label_label_2", "mae_label_label_3"}

    partial = _json(tmp_path / "partial.json", {"labels": {"0": "background", "1": "left", "9": "other"}})
    with caplog.at_level(logging.INFO, logger="medcyclegan"):
        report = evaluate(pred, ref, labels=labels, label_names=partial)
    assert report.labels == {1: "left", 2: "label_2", 3: "label_3"}
    assert report.metadata["labels"]["unnamed"] == [2, 3]
    assert report.metadata["labels"]["named_absent"] == [9]
    said = [r.getMessage() for r in caplog.records if "not named here" in r.getMessage()]
    assert said == [
        f"{partial}: label value(s) 2, 3 occur in the label maps but are not named here; reported as label_2, label_3"
    ]

    caplog.clear()
    wrong = _json(tmp_path / "wrong.json", {"labels": {"background": 0, "liver": 5}})
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        report = evaluate(pred, ref, labels=labels, label_names=wrong)
    assert report.labels == {1: "label_1", 2: "label_2", 3: "label_3"}
    assert [r.getMessage() for r in caplog.records] == [
        f"{wrong}: names none of the label values in the label maps (1, 2, 3): is it their dataset.json?"
    ]


def test_without_labels_only_the_body_dice_is_added(tmp_path: Path) -> None:
    _case(tmp_path, "a")
    report = evaluate(tmp_path / "pred", tmp_path / "ref")
    data = _strict_json(report.to_json())
    assert "labels" not in data["metadata"] and "label_mae" not in data["cases"][0]
    assert set(data["cases"][0]) == {
        "case",
        "pred",
        "ref",
        "mask_source",
        "metrics",
        "tissue_mae",
        "dice_body",
    }
    assert report.to_label_table() is None
    assert report.to_csv().splitlines()[0] == (
        "case,pred,ref,mask_source,mae,psnr,ssim,mae_air_lung,mae_soft_tissue,mae_bone,dice_body,"
        "standard,data_range,clip_min_hu,clip_max_hu,tissue_edge_low_hu,tissue_edge_high_hu"
    )
    assert set(data["summary"]) == {
        "mae",
        "psnr",
        "ssim",
        "mae_air_lung",
        "mae_soft_tissue",
        "mae_bone",
        "dice_body",
    }


def test_body_dice_compares_the_outlines_by_one_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref = _ct()
    shifted = np.full(SHAPE, -1000.0)
    shifted[5:15, 3:11, 2:8] = ref[3:13, 3:11, 2:8]  # the body moved by 2 voxels
    mask = np.ones(SHAPE, np.uint8)  # a given mask does not enter the Dice
    ref_path = _save(tmp_path / "r.nii.gz", ref)
    mask_path = _save(tmp_path / "m.nii.gz", mask, dtype=np.uint8)
    pred_path = _save(tmp_path / "p.nii.gz", shifted)
    case = evaluate(pred_path, ref_path, mask_path).cases[0]
    expected = dice_coefficient(synthrad_body_mask(shifted), synthrad_body_mask(ref))
    assert case.dice_body == pytest.approx(expected, rel=1e-15) and 0.5 < expected < 0.95
    assert evaluate(ref_path, ref_path).cases[0].dice_body == 1.0

    air = _save(tmp_path / "air.nii.gz", np.full(SHAPE, -1000.0))
    assert evaluate(air, ref_path).cases[0].dice_body == 0.0  # the model lost the body
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        report = evaluate(air, air, mask_path)  # no outline on either side: undefined
    assert math.isnan(report.cases[0].dice_body) and report.summary["dice_body"]["n"] == 0
    assert "both empty: Dice is NaN" in caplog.text
    assert "Dice body: both outlines empty in 1 of 1 case(s) (air)" in " ".join(
        _text(report.to_rich_table()).split()
    )


def test_figure_titles_carry_the_body_dice_and_the_label_maes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles: list[str] = []
    real = medcyclegan.evaluate.case_panel

    def panel(*args: object, title: str, **kwargs: object) -> object:
        titles.append(title)
        return real(*args, title=title, **kwargs)

    monkeypatch.setattr(medcyclegan.evaluate, "case_panel", panel)
    _case(tmp_path, "a")
    names = _json(tmp_path / "d.json", {"labels": {"background": 0, "left": 1, "right": 2, "core": 3}})
    report = evaluate(
        tmp_path / "pred",
        tmp_path / "ref",
        labels=tmp_path / "labels",
        label_names=names,
        figures=tmp_path / "fig",
    )
    case = report.cases[0]
    lines = titles[0].splitlines()
    assert lines[2] == f"body outline Dice {case.dice_body:.4f} (prediction vs reference)"
    assert lines[3] == (
        "MAE by label: "
        + ", ".join(f"{n} {case.label_mae['mae_label_' + n]:.1f}" for n in ("left", "right", "core"))
        + " HU"
    )
    assert (tmp_path / "fig" / "a.png").is_file()


# --------------------------------------------------------------------------- bad input
def test_bad_label_maps_are_refused_naming_the_file(tmp_path: Path) -> None:
    _case(tmp_path, "a")
    pred, ref, folder = tmp_path / "pred", tmp_path / "ref", tmp_path / "bad"
    shifted = np.eye(4)
    shifted[:3, 3] = [0.5, 0.0, 0.0]
    problems = {
        "shape": (_labels()[:, :, :-1], None, np.uint8, r"voxel grid differs from .*: shape"),
        "affine": (_labels(), shifted, np.uint8, r"affines differ by up to 0\.5 mm .*resample the label map"),
        "fraction": (_labels() + 0.5, None, np.float32, "non-integer values"),
        "negative": (_labels().astype(np.int16) - 1, None, np.int16, r"negative values \(min -1\)"),
    }
    for problem, (array, affine, dtype, message) in problems.items():
        path = _save(folder / problem / "a.nii.gz", array, affine, dtype=dtype)
        with pytest.raises(InputError, match=message) as info:
            evaluate(pred, ref, labels=path.parent)
        assert str(info.value).startswith(f"{path}: "), problem

    four_d = folder / "4d" / "a.nii.gz"
    four_d.parent.mkdir(parents=True)
    nib.Nifti1Image(np.stack([_labels()] * 2, axis=-1), np.eye(4)).to_filename(four_d)
    with pytest.raises(InputError, match="is 4D"):
        evaluate(pred, ref, labels=four_d.parent)
    vector = folder / "vector" / "a.mha"
    vector.parent.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((*SHAPE[::-1], 3), np.uint8), isVector=True), vector)
    with pytest.raises(InputError, match=r"a\.mha: has 3 values per voxel"):
        evaluate(pred, ref, labels=vector.parent)


def test_label_folders_must_hold_every_case_once(tmp_path: Path) -> None:
    _case(tmp_path, "a")
    _case(tmp_path, "b", seed=1)
    pred, ref, labels = tmp_path / "pred", tmp_path / "ref", tmp_path / "labels"
    with pytest.raises(InputError, match="single label map but the inputs are folders"):
        evaluate(pred, ref, labels=labels / "a.nii.gz")
    _save(labels / "b.nrrd.nii.gz", _labels(), dtype=np.uint8)  # another file named like no case: fine
    (labels / "b.nii.gz").rename(labels / "sub_b.nii.gz")
    with pytest.raises(InputError, match=r"no label map for case\(s\): b") as info:
        evaluate(pred, ref, labels=labels)
    assert str(info.value).startswith(f"{labels}: ")
    (labels / "sub_b.nii.gz").rename(labels / "b.nii.gz")
    _save(labels / "deeper" / "a.nii.gz", _labels(), dtype=np.uint8)
    with pytest.raises(InputError, match="case 'a' appears twice"):
        evaluate(pred, ref, labels=labels)
    with pytest.raises(InputError, match="does not exist"):
        evaluate(pred, ref, labels=tmp_path / "nothing")
    with pytest.raises(ConfigError, match="give the label maps"):
        evaluate(pred, ref, label_names=tmp_path / "d.json")


def test_a_huge_label_value_in_a_file(tmp_path: Path) -> None:
    labels = _labels().astype(np.int32)
    labels[labels == 3] = 2**31 - 1
    _case(tmp_path, "a", labels=labels)
    report = evaluate(tmp_path / "pred", tmp_path / "ref", labels=tmp_path / "labels" / "a.nii.gz")
    assert report.labels == {1: "label_1", 2: "label_2", 2**31 - 1: f"label_{2**31 - 1}"}


# --------------------------------------------------------------------------- the CLI and sample-data
@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> SampleDataset:
    """Two phantom test heads (all 11 labels present) on a coarse grid; CT and labels stored LPS."""
    root = tmp_path_factory.mktemp("phantom")
    return write_sample_dataset(
        root / "data", n_train_mr=1, n_train_ct=1, n_test=2, shape=(32, 32, 12), spacing=(6.0, 6.0, 12.0)
    )


def test_cli_sample_data_labels_work_as_written(cli, phantom: SampleDataset, tmp_path: Path) -> None:
    """The true CT plus noise as prediction, sample-data's test/labels and names from TISSUE_LABELS."""
    pred = tmp_path / "pred"
    expected: dict[str, dict[str, float]] = {}
    for index, ct_path in enumerate(phantom.test_ct):
        image = nib.load(ct_path)
        ct = np.asarray(image.dataobj).astype(np.float64)
        noisy = ct + np.random.default_rng(index).normal(0, 40, size=ct.shape).round()
        _save(pred / ct_path.name, noisy, image.affine)
        labels = np.asarray(nib.load(phantom.root / "test" / "labels" / ct_path.name).dataobj)
        expected[ct_path.name.removesuffix(".nii.gz")] = {
            name: float(np.abs(noisy - ct)[labels == value].mean())
            for name, value in TISSUE_LABELS.items()
            if value
        }
    names = _json(tmp_path / "dataset.json", {"labels": TISSUE_LABELS})
    out = tmp_path / "eval.json"
    ct_dir, labels_dir = phantom.root / "test" / "ct", phantom.root / "test" / "labels"

    result = cli(
        "evaluate",
        "--pred",
        pred,
        "--ref",
        ct_dir,
        "--labels",
        labels_dir,
        "--label-names",
        names,
        "--out",
        out,
    )

    assert result.code == 0, result.err
    assert "MAE per label of the reference [HU]" in result.out and "white_matter" in result.out
    data = _strict_json(out.read_text())
    assert data["metadata"]["labels"]["names"] == {str(v): k for k, v in TISSUE_LABELS.items() if v}
    for case in data["cases"]:
        assert case["label_mae"] == pytest.approx(
            {f"mae_label_{name}": value for name, value in expected[case["case"]].items()}, rel=1e-12
        )
        assert 0.9 < case["dice_body"] <= 1.0
    assert out.with_suffix(".csv").read_text().splitlines()[0].endswith("tissue_edge_high_hu")

    plain = cli("evaluate", "--pred", pred, "--ref", ct_dir, "--labels", labels_dir)  # no names: label_<v>
    assert plain.code == 0, plain.err
    assert "label_11" in plain.out


@pytest.mark.parametrize("problem", ["names-without-labels", "bad-names", "other-grid"])
def test_cli_bad_label_input_is_one_line(cli, tmp_path: Path, problem: str) -> None:
    _case(tmp_path, "a")
    args = ["evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref"]
    if problem == "names-without-labels":
        result = cli(*args, "--label-names", tmp_path / "d.json")
        assert (
            assert_clean_error(result)
            == "error: --label-names names the values of --labels: give --labels too"
        )
    elif problem == "bad-names":
        names = tmp_path / "d.json"
        names.write_text("not json")
        result = cli(*args, "--labels", tmp_path / "labels", "--label-names", names)
        assert assert_clean_error(result, names).startswith(f"error: {names}: is not valid JSON")
    else:
        bad = _save(tmp_path / "bad" / "a.nii.gz", _labels()[1:], dtype=np.uint8)
        result = cli(*args, "--labels", bad.parent)
        assert_clean_error(result, bad, "voxel grid differs")
    assert result.code == 2


def test_label_maps_without_any_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _case(tmp_path, "a", labels=np.zeros(SHAPE, np.uint8))
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        report = evaluate(tmp_path / "pred", tmp_path / "ref", labels=tmp_path / "labels")
    assert report.labels == {} and report.cases[0].label_mae == {}
    assert "label map has no label > 0" in caplog.text
    assert "no label > 0 in any label map" in _text(report.to_label_table())
    assert _strict_json(report.to_json())["metadata"]["labels"]["names"] == {}


def test_cli_report_never_replaces_the_label_names_file(cli, tmp_path: Path) -> None:
    _case(tmp_path, "a")
    names = _json(tmp_path / "names.json", {"labels": {"background": 0, "left": 1}})
    result = cli(
        "evaluate",
        "--pred",
        tmp_path / "pred",
        "--ref",
        tmp_path / "ref",
        "--labels",
        tmp_path / "labels",
        "--label-names",
        names,
        "--out",
        names,
        "--overwrite",
    )
    assert "the report would replace the input file" in assert_clean_error(result, names)
    assert json.loads(names.read_text()) == {"labels": {"background": 0, "left": 1}}
