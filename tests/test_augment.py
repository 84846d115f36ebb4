"""Segmentation augmentation: nnU-Net v2 / MSD layouts, exact label geometry, splits, resume, checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from tiny import TrainedRun, folder_locked_by_another_process, head

from medcyclegan.augment import (
    FILE_ENDING,
    MODEL_FILE,
    _resolve_labels,
    augment_dataset,
    check_dataset,
    cross_validation_splits,
    label_values,
    load_labels_json,
)
from medcyclegan.checkpoint import load_checkpoint, save_checkpoint
from medcyclegan.convert import load_model, translate_volume
from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.io.readers import read_volume

SHAPE = (24, 20, 4)
CASES = ("p1", "p2", "p3", "p4", "p5")


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    cz, sz = np.cos(np.radians(z_deg)), np.sin(np.radians(z_deg))
    cx, sx = np.cos(np.radians(x_deg)), np.sin(np.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


def _affines() -> dict[str, np.ndarray]:
    """RAS, LPS, swapped in-plane axes (PRS) and an oblique grid: each a different voxel order to honour."""
    ras = np.diag([1.5, 1.5, 3.0, 1.0])
    ras[:3, 3] = [-20.0, -15.0, 5.0]
    lps = np.diag([-1.25, -1.25, 3.0, 1.0])
    lps[:3, 3] = [18.0, 14.0, -6.0]
    permuted = np.zeros((4, 4))
    permuted[1, 0], permuted[0, 1], permuted[2, 2], permuted[3, 3] = -1.5, 2.0, 3.0, 1.0
    permuted[:3, 3] = [7.0, -12.0, -9.0]
    oblique = np.eye(4)
    oblique[:3, :3] = _rotation(20.0, 10.0) @ np.diag([1.2, 1.4, 3.0])
    oblique[:3, 3] = [-13.7, 4.2, 11.1]
    return {"p1": ras, "p2": lps, "p3": permuted, "p4": oblique, "p5": ras}


def _label(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Two organs (1, 2) placed off-centre so that any flip or transpose of the axes shows."""
    label = np.zeros(shape, dtype=np.uint8)
    label[2 + seed : 9 + seed, 3:8, 1:3] = 1
    label[14:20, 10 + seed % 3 : 16, 2:] = 2
    return label


def write_labelled(folder: Path, cases=CASES, label_dtype=np.uint8) -> tuple[Path, Path]:
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(0)
    affines = _affines()
    for i, case in enumerate(cases):
        affine = affines.get(case, affines["p1"])
        image_affine = affine.copy()
        if case == "p2":
            # Within our 1e-3 mm grid tolerance but beyond nnU-Net's np.allclose: only writing the
            # synthetic image with the label's geometry makes the two headers agree.
            image_affine[0, 3] += 5e-4
        nib.save(nib.Nifti1Image(head(SHAPE, "mr", rng), image_affine), images / f"{case}.nii.gz")
        label_path = labels / f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(_label(SHAPE, i).astype(label_dtype), affine), label_path)
        if case == "p5":  # one label in another format: no NIfTI header to reuse
            sitk.WriteImage(sitk.ReadImage(str(label_path)), str(labels / f"{case}.nrrd"))
            label_path.unlink()
    return images, labels


def _source_label(labels: Path, case: str) -> Path:
    return next(labels.glob(f"{case}.*"))


@pytest.fixture(scope="module")
def run_dir(trained_run: TrainedRun) -> Path:
    """The session's tiny MR -> CT model (read-only; a test that changes it copies it)."""
    return trained_run.run


@pytest.fixture(scope="module")
def model(run_dir: Path):
    return load_model(run_dir, device="cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_labelled(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, inputs, model):
    """The reference nnU-Net v2 dataset (synthetic only); tests that modify it work on a copy."""
    images, labels = inputs
    out = tmp_path_factory.mktemp("raw")
    return augment_dataset(images, labels, model, out, dataset_id=7, name="SynthCT")


@pytest.fixture(scope="module")
def with_originals(tmp_path_factory: pytest.TempPathFactory, inputs, model):
    images, labels = inputs
    return augment_dataset(
        images, labels, model, tmp_path_factory.mktemp("raw2"), dataset_id=8, include_originals=True
    )


def _tree_state(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------- layout


def test_nnunet_layout_and_dataset_json(built) -> None:
    root = built.dataset_dir
    assert root.name == "Dataset007_SynthCT"
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"{c}_synth_0000.nii.gz" for c in CASES]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [f"{c}_synth.nii.gz" for c in CASES]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert meta["numTraining"] == len(CASES)
    assert meta["file_ending"] == ".nii.gz"
    assert built.cases == [f"{c}_synth" for c in CASES]
    assert built.check.ok and built.check.n_cases == len(CASES)
    assert not (root / "imagesTs").exists()


def test_synthetic_image_has_exactly_the_label_geometry(built, inputs) -> None:
    _, labels = inputs
    root = built.dataset_dir
    for case in CASES:
        image = sitk.ReadImage(str(root / "imagesTr" / f"{case}_synth_0000.nii.gz"))
        label = sitk.ReadImage(str(root / "labelsTr" / f"{case}_synth.nii.gz"))
        source = sitk.ReadImage(str(_source_label(labels, case)))
        # Bit-for-bit equal, as nnU-Net's checks need, and on the source label's world grid.
        assert image.GetSize() == label.GetSize() == source.GetSize()
        assert image.GetSpacing() == label.GetSpacing()
        assert image.GetOrigin() == label.GetOrigin()
        assert image.GetDirection() == label.GetDirection()
        np.testing.assert_allclose(label.GetSpacing(), source.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(label.GetOrigin(), source.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(label.GetDirection(), source.GetDirection(), atol=1e-6)
        image_nib = nib.load(root / "imagesTr" / f"{case}_synth_0000.nii.gz")
        label_nib = nib.load(root / "labelsTr" / f"{case}_synth.nii.gz")
        assert np.array_equal(image_nib.get_sform(), label_nib.get_sform())
        assert np.array_equal(image_nib.get_qform(), label_nib.get_qform())
        assert image_nib.get_data_dtype() == np.int16


def test_labels_are_copied_unchanged_as_integers(built, inputs) -> None:
    _, labels = inputs
    for case in CASES:
        path = built.dataset_dir / "labelsTr" / f"{case}_synth.nii.gz"
        assert np.issubdtype(nib.load(path).get_data_dtype(), np.integer)
        written, source = read_volume(path).array, read_volume(_source_label(labels, case)).array
        assert written.dtype == np.uint8 and np.array_equal(written, source)


def test_synthetic_values_are_the_model_translation(built, inputs, model) -> None:
    images, _ = inputs
    for case in ("p2", "p4"):
        expected, _, _ = translate_volume(model, images / f"{case}.nii.gz")
        written = read_volume(built.dataset_dir / "imagesTr" / f"{case}_synth_0000.nii.gz")
        assert np.array_equal(written.array, np.clip(np.rint(expected), -32768, 32767).astype(np.int16))
        source = read_volume(images / f"{case}.nii.gz")
        assert not np.allclose(written.array, source.array)  # a translation, not a copy of the MR


def test_inputs_are_not_modified(tmp_path: Path, model) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    before = _tree_state(tmp_path / "in")
    augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=3)
    assert _tree_state(tmp_path / "in") == before


# --------------------------------------------------------------------------------------------- splits


def test_originals_share_a_fold_with_their_synthetic_case(with_originals, inputs, caplog) -> None:
    root = with_originals.dataset_dir
    splits = json.loads((root / "splits_final.json").read_text())
    assert len(splits) == 5
    all_cases = sorted([*CASES, *(f"{c}_synth" for c in CASES)])
    assert sorted(case for fold in splits for case in fold["val"]) == all_cases  # each case validated once
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == all_cases
        for case in CASES:
            assert (case in fold["val"]) == (f"{case}_synth" in fold["val"])
            assert (case in fold["train"]) == (f"{case}_synth" in fold["train"])
    meta = json.loads((root / "dataset.json").read_text())
    # MR originals next to synthetic CT: one channel, two modalities -> per-image z-score, not "CT".
    assert meta["channel_names"] == {"0": "zscore"} and meta["numTraining"] == 10
    images, _ = inputs
    original = read_volume(root / "imagesTr" / "p3_0000.nii.gz")
    assert np.array_equal(original.array, read_volume(images / "p3.nii.gz").array)


def test_mixed_modalities_warn(tmp_path: Path, model, caplog) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1",))
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=4, include_originals=True)
    assert "zscore" in caplog.text and "mixes modalities" in caplog.text


def test_cross_validation_splits_are_per_patient_and_deterministic(caplog) -> None:
    groups = {f"p{i}": [f"p{i}", f"p{i}_synth"] for i in range(12)}
    splits = cross_validation_splits(groups)
    assert splits == cross_validation_splits(dict(reversed(list(groups.items()))))
    assert len(splits) == 5
    assert sorted(len(f["val"]) // 2 for f in splits) == [2, 2, 2, 3, 3]
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        few = cross_validation_splits({"a": ["a_synth"], "b": ["b_synth"]})
    assert len(few) == 2 and "2 fold(s)" in caplog.text
    assert cross_validation_splits({"a": ["a", "a_synth"]}) == [
        {"train": ["a", "a_synth"], "val": ["a", "a_synth"]}
    ]


# ---------------------------------------------------------------------------------------- input errors


def test_unmatched_cases_are_listed_both_ways(tmp_path: Path, model) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    (images / "p1.nii.gz").rename(images / "extra_image.nii.gz")
    with pytest.raises(InputError) as err:
        augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=5)
    message = str(err.value)
    assert "extra_image" in message and "without a label" in message
    assert "p1" in message and "without an image" in message
    assert str(images) in message and str(labels) in message
    assert not (tmp_path / "raw").exists()


def test_image_label_grid_mismatch_names_both_files(tmp_path: Path, model) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    label = nib.load(labels / "p2.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), np.diag([1.5, 1.5, 2.0, 1.0])), labels / "p2.nii.gz")
    with pytest.raises(InputError) as err:
        augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=5)
    message = str(err.value)
    assert str(images / "p2.nii.gz") in message and str(labels / "p2.nii.gz") in message
    assert "spacing" in message
    assert not (tmp_path / "raw").exists()  # checked before any translation


def test_image_whose_header_names_a_file_outside_is_refused(tmp_path: Path, model) -> None:
    """``--include-originals`` would copy the named file's bytes into a dataset meant to be shared."""
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    sitk.WriteImage(sitk.ReadImage(str(images / "p1.nii.gz")), str(images / "p1.mhd"), useCompression=False)
    (images / "p1.nii.gz").unlink()
    (tmp_path / "elsewhere").mkdir()
    (images / "p1.raw").rename(tmp_path / "elsewhere" / "p1.raw")
    header = images / "p1.mhd"
    header.write_text(header.read_text().replace("= p1.raw", "= ../../elsewhere/p1.raw"))
    with pytest.raises(InputError, match=r"p1\.mhd: names a data file outside its own folder"):
        augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=9, include_originals=True)
    assert not [p for p in (tmp_path / "raw").rglob("*p1*") if p.is_file()]


def test_label_values_must_be_non_negative_integers(tmp_path: Path) -> None:
    assert label_values(np.array([[[0, 3, 3, 1]]], dtype=np.int16), "x") == [0, 1, 3]
    with pytest.raises(InputError, match="non-integer"):
        label_values(np.array([[[0.0, 0.5]]], dtype=np.float32), "x")
    with pytest.raises(InputError, match="negative"):
        label_values(np.array([[[0, -1]]], dtype=np.int16), "x")


def test_labels_json_names_labels_and_is_validated(tmp_path: Path, inputs, model) -> None:
    images, labels = inputs
    good = tmp_path / "labels.json"
    good.write_text(json.dumps({"background": 0, "liver": 1, "spleen": 2, "kidney": 3}))
    subset_in = tmp_path / "subset"
    (subset_in / "i").mkdir(parents=True)
    (subset_in / "l").mkdir()
    shutil.copy(images / "p1.nii.gz", subset_in / "i")
    shutil.copy(labels / "p1.nii.gz", subset_in / "l")
    result = augment_dataset(
        subset_in / "i", subset_in / "l", model, tmp_path / "raw", dataset_id=9, labels_json=good
    )
    assert json.loads(result.dataset_json.read_text())["labels"] == {
        "background": 0,
        "liver": 1,
        "spleen": 2,
        "kidney": 3,
    }
    too_few = tmp_path / "few.json"
    too_few.write_text(json.dumps({"background": 0, "liver": 1}))
    with pytest.raises(InputError, match=r"label values \[2\] occur"):
        augment_dataset(
            subset_in / "i", subset_in / "l", model, tmp_path / "raw2", dataset_id=9, labels_json=too_few
        )
    for bad, expected in (
        ({"liver": 1}, "background"),
        ({"background": 0, "a": 2}, "consecutive"),
        ({"background": 0, "a": 1.5}, "integers"),
    ):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=expected):
            load_labels_json(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_labels_json(tmp_path / "broken.json")


def test_labels_json_may_be_the_dataset_json_of_an_existing_dataset(tmp_path: Path) -> None:
    expected = {"background": 0, "liver": 1, "spleen": 2}
    layouts = {
        "nnunet": {
            "channel_names": {"0": "CT"},
            "labels": expected,
            "numTraining": 3,
            "file_ending": ".nii.gz",
        },
        "msd": {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "spleen"}},
        "msd_without_background": {"labels": {"2": "spleen", "1": "liver"}},
    }
    for name, data in layouts.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        assert load_labels_json(path) == expected, name
    # A label called "labels" in a bare map is a label, not a dataset description.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"background": 0, "labels": 1}))
    assert load_labels_json(bare) == {"background": 0, "labels": 1}
    for data, expected_error in (
        ({"labels": {"background": 0, "liver": 2}}, "consecutive"),  # nnU-Net's rule, either layout
        ({"labels": {"background": 0, "organs": [1, 2]}}, "region"),
        ({"labels": {"0": "background", "1": "liver", "2": "liver"}}, "two label values"),
    ):
        path = tmp_path / "bad_dataset.json"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=expected_error):
            load_labels_json(path)
    duplicate = tmp_path / "duplicate.json"
    duplicate.write_text('{"background": 0, "liver": 1, "liver": 2}')
    with pytest.raises(InputError, match="appears twice"):  # json would keep the last silently
        load_labels_json(duplicate)
    with pytest.raises(InputError, match="not a JSON object"):
        (tmp_path / "list.json").write_text("[0, 1]")
        load_labels_json(tmp_path / "list.json")


def test_automatic_labels_are_consecutive_even_with_gaps(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        labels = _resolve_labels(None, {0, 3}, None)
    assert labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}  # nnU-Net needs 0..K
    assert "1, 2 never occur" in caplog.text
    assert _resolve_labels(None, {0}, None) == {"background": 0}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_labels_json_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "labels.json"
    os.mkfifo(fifo)
    stop = threading.Event()

    def release() -> None:  # a reader blocked on the FIFO is let go, so that the test fails, not hangs
        stop.wait(5.0)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            stop.wait(0.05)

    threading.Thread(target=release, daemon=True).start()
    try:
        with pytest.raises(InputError, match="is a FIFO"):
            load_labels_json(fifo)
    finally:
        stop.set()


def test_a_stray_huge_label_value_is_refused_not_declared(tmp_path: Path) -> None:
    """Before: one voxel of value 100000 declared 100,000 labels in dataset.json (and 10^12 never ended)."""
    for highest in (100_000, 10**12):
        with pytest.raises(InputError, match=f"up to {highest} but only 3 distinct values") as info:
            _resolve_labels(None, {0, 1, highest}, None, tmp_path)
        assert str(info.value).startswith(f"{tmp_path}: ")
    assert len(_resolve_labels(None, {0, 1, 900}, None, tmp_path)) == 901  # gaps up to 1000 declared


def test_options_are_validated(tmp_path: Path, inputs, model) -> None:
    images, labels = inputs
    for kwargs, error, text in (
        ({"dataset_id": None}, ConfigError, "dataset id is required"),
        ({"dataset_id": 1000}, ConfigError, "1 to 999"),
        ({"dataset_id": 100, "fmt": "msd"}, ConfigError, "1 to 99"),
        ({"dataset_id": 1, "name": "bad name"}, ConfigError, "invalid"),
        ({"dataset_id": 1, "fmt": "nnunet"}, ConfigError, "nnunetv2, msd"),
        ({"dataset_id": 1, "to": "pet"}, ConfigError, "ct, mr"),
        ({"dataset_id": 1, "to": "mr"}, ConfigError, "produces ct"),
    ):
        with pytest.raises(error, match=text):
            augment_dataset(images, labels, model, tmp_path / "raw", **kwargs)
    with pytest.raises(OutputError, match="overlap"):
        augment_dataset(images, labels, model, images / "raw", dataset_id=1)
    (tmp_path / "raw" / "Dataset001_Other").mkdir(parents=True)
    with pytest.raises(OutputError, match="already uses dataset id 1"):
        augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=1)


# ------------------------------------------------------------------------------------ resume, overwrite


def test_rerun_skips_existing_outputs_and_overwrite_rewrites(tmp_path: Path, run_dir: Path) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    first = augment_dataset(images, labels, run_dir, tmp_path / "raw", dataset_id=11, device="cpu")
    assert len(first.written) == 4 and not first.skipped
    cases = [p for p in _tree_state(first.dataset_dir) if p.endswith(FILE_ENDING)]
    before = _tree_state(first.dataset_dir)

    (first.dataset_dir / "imagesTr" / "p2_synth_0000.nii.gz").unlink()  # as if killed mid-run
    leftover = first.dataset_dir / "labelsTr" / ".p2_synth.nii.gz.abc123.tmp.nii.gz"
    leftover.write_bytes(b"partial")
    second = augment_dataset(images, labels, run_dir, tmp_path / "raw", dataset_id=11, device="cpu")
    assert [p.name for p in second.written] == ["p2_synth_0000.nii.gz"]
    assert len(second.skipped) == 3 and not leftover.exists()
    after = _tree_state(second.dataset_dir)
    for path in cases:
        if path != "imagesTr/p2_synth_0000.nii.gz":
            assert after[path] == before[path], path  # untouched: same mtime, same bytes
    assert after["imagesTr/p2_synth_0000.nii.gz"][1] == before["imagesTr/p2_synth_0000.nii.gz"][1]

    third = augment_dataset(
        images, labels, run_dir, tmp_path / "raw", dataset_id=11, device="cpu", overwrite=True
    )
    assert len(third.written) == 4 and not third.skipped
    rewritten = _tree_state(third.dataset_dir)
    assert all(rewritten[p][0] != after[p][0] and rewritten[p][1] == after[p][1] for p in cases)


def test_test_time_averaging_is_convert_s_and_a_rerun_must_repeat_it(tmp_path: Path, model) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    out = tmp_path / "raw"
    result = augment_dataset(
        images, labels, model, out, dataset_id=14, flip_average=True, planes="axial,coronal"
    )
    for case in ("p1", "p2"):
        path = result.dataset_dir / "imagesTr" / f"{case}_synth_0000.nii.gz"
        expected, _, _ = translate_volume(
            model, images / f"{case}.nii.gz", flip_average=True, planes=("axial", "coronal")
        )
        assert np.array_equal(read_volume(path).array, expected)
        plain, _, _ = translate_volume(model, images / f"{case}.nii.gz")
        assert not np.array_equal(plain, expected)  # the options did change the translation
        header = nib.load(path).header
        assert header["descrip"].tobytes().decode().startswith("synthetic CT from MR by medcyclegan")
        # NIfTI's descrip holds 79 characters: the whole description is in a comment extension.
        (comment,) = [ext for ext in header.extensions if ext.get_code() == 6]
        assert comment.get_content().decode().endswith("flip-avg, planes axial+coronal")
    # A rerun keeps those cases only with the same options: others would mix two translations.
    with pytest.raises(
        OutputError,
        match=r"other test-time averaging \(planes axial\+coronal, flip-average, not planes axial\)",
    ):
        augment_dataset(images, labels, model, out, dataset_id=14)
    again = augment_dataset(
        images, labels, model, out, dataset_id=14, flip_average=True, planes=["axial", "coronal"]
    )
    assert len(again.skipped) == 4 and not again.written
    # A record from before the options were recorded means the plain translation.
    plain_out = tmp_path / "plain"
    first = augment_dataset(images, labels, model, plain_out, dataset_id=15)
    record = first.dataset_dir / MODEL_FILE
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in stored.items() if k not in ("flip_average", "planes")}))
    assert len(augment_dataset(images, labels, model, plain_out, dataset_id=15).skipped) == 4
    with pytest.raises(OutputError, match="other test-time averaging"):
        augment_dataset(images, labels, model, plain_out, dataset_id=15, flip_average=True)
    with pytest.raises(ConfigError, match="unknown plane 'oblique'"):
        augment_dataset(images, labels, model, tmp_path / "bad", dataset_id=16, planes="axial,oblique")


def test_cases_from_another_run_are_refused(tmp_path: Path, model) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1", "p2"))
    augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=12, include_originals=True)
    with pytest.raises(OutputError, match=r"2 case\(s\) that are not among the inputs: p1, p2"):
        augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=12)


# ---------------------------------------------------------------------------------------------- check


def test_check_dataset_finds_planted_problems(tmp_path: Path, built) -> None:
    root = tmp_path / built.dataset_dir.name
    shutil.copytree(built.dataset_dir, root)
    assert check_dataset(root).ok
    # 1: a label whose spacing no longer matches its image.
    path = str(root / "labelsTr" / "p1_synth.nii.gz")
    label = sitk.ReadImage(path)
    label.SetSpacing([s * 1.1 for s in label.GetSpacing()])
    sitk.WriteImage(label, path)
    # 2: an undeclared label value.
    other = nib.load(root / "labelsTr" / "p3_synth.nii.gz")
    data = np.asarray(other.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, other.affine, other.header), root / "labelsTr" / "p3_synth.nii.gz")
    # 3: a wrong numTraining.
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 6
    (root / "dataset.json").write_text(json.dumps(meta))

    report = check_dataset(root)
    assert report.layout == "nnunetv2" and report.n_cases == 5
    assert len(report.problems) == 3, report.problems
    text = " | ".join(report.problems)
    assert "imagesTr/p1_synth_0000.nii.gz: differs from its label labelsTr/p1_synth.nii.gz: spacing" in text
    assert "labelsTr/p3_synth.nii.gz: label value(s) [7] not declared" in text
    assert "numTraining is 6 but 5" in text
    with pytest.raises(InputError, match=r"^.*: 3 problems: "):
        check_dataset(root, strict=True)


def test_check_dataset_finds_missing_files_and_nan(tmp_path: Path, built) -> None:
    root = tmp_path / built.dataset_dir.name
    shutil.copytree(built.dataset_dir, root)
    (root / "labelsTr" / "p2_synth.nii.gz").unlink()
    image = nib.load(root / "imagesTr" / "p4_synth_0000.nii.gz")
    data = np.asarray(image.dataobj).astype(np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), root / "imagesTr" / "p4_synth_0000.nii.gz")
    (root / "imagesTr" / "stray.nii.gz").write_bytes(b"")
    text = " | ".join(check_dataset(root).problems)
    assert "labelsTr/p2_synth.nii.gz: missing" in text
    assert "p4_synth_0000.nii.gz: 1 NaN" in text
    assert "stray.nii.gz: name must end in a 4-digit channel" in text
    (root / "dataset.json").unlink()
    assert check_dataset(root).problems == ["dataset.json: missing"]


def test_msd_layout(tmp_path: Path, inputs, model) -> None:
    images, labels = inputs
    result = augment_dataset(images, labels, model, tmp_path, fmt="msd", dataset_id=5, name="SynthCT")
    root = result.dataset_dir
    assert root.name == "Task05_SynthCT" and result.splits is None
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "label_1", "2": "label_2"}
    assert meta["numTraining"] == 5 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["training"][0] == {
        "image": "./imagesTr/p1_synth.nii.gz",
        "label": "./labelsTr/p1_synth.nii.gz",
    }
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"{c}_synth.nii.gz" for c in CASES]
    assert (root / "imagesTs").is_dir() and not any((root / "imagesTs").iterdir())
    report = check_dataset(root)
    assert report.ok and report.layout == "msd" and report.n_cases == 5
    meta["training"] = meta["training"][:4]
    (root / "dataset.json").write_text(json.dumps(meta))
    problems = check_dataset(root).problems
    assert any("p5_synth.nii.gz: not listed" in p for p in problems)


def test_synthetic_images_say_what_they_are_in_their_header(with_originals, model) -> None:
    images = sorted((with_originals.dataset_dir / "imagesTr").glob("*_0000.nii.gz"))
    synthetic = [p for p in images if "_synth_" in p.name]
    assert synthetic and len(synthetic) < len(images)
    for path in images:
        description = nib.load(path).header["descrip"].item().decode()
        if path in synthetic:
            assert description.startswith("synthetic CT from MR by medcyclegan"), (path, description)
            assert model.checkpoint.name in description
        else:
            assert "synthetic" not in description, (path, description)


def test_a_second_augment_into_the_same_dataset_is_refused_while_the_first_runs(
    tmp_path: Path, model
) -> None:

    images, labels = write_labelled(tmp_path / "in", cases=("p1",))
    dataset = tmp_path / "raw" / "Dataset013_SynthCT"
    (dataset / "labelsTr").mkdir(parents=True)
    # The live process's temporary: before, the second augment deleted it as "an interrupted write"
    # (the first then failed to publish) and wrote its own cases into the same dataset.
    live = dataset / "labelsTr" / ".p1.nii.gz.abc123.tmp.nii.gz"
    live.write_bytes(b"being written")
    with folder_locked_by_another_process(dataset) as holder:
        with pytest.raises(OutputError, match=rf"another augment process \(pid {holder.pid}\) is using"):
            augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=13)
        assert live.read_bytes() == b"being written"
        assert [p.name for p in (dataset / "labelsTr").iterdir()] == [live.name]  # nothing else written
    result = augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=13)
    assert result.check.ok and not live.exists()  # the lock is free: a killed run's leftovers go


def test_cases_of_another_model_are_not_kept_as_this_models(tmp_path: Path, run_dir: Path, model) -> None:
    images, labels = write_labelled(tmp_path / "in", cases=("p1",))
    first = augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=14)
    # Another model: another run's checkpoint (same architecture).
    other_run = tmp_path / "other"
    shutil.copytree(run_dir, other_run)
    state = load_checkpoint(other_run / "checkpoints" / "last.pt")
    save_checkpoint({**state, "run_id": "another-run"}, other_run / "checkpoints" / "last.pt")
    other = load_model(other_run, device="cpu")
    before = _tree_state(first.dataset_dir / "imagesTr")
    # Before: every case was "kept" and dataset.json then named the other model as their maker.
    with pytest.raises(OutputError, match=r"holds 1 case\(s\) made by another model"):
        augment_dataset(images, labels, other, tmp_path / "raw", dataset_id=14)
    assert _tree_state(first.dataset_dir / "imagesTr") == before
    # The same model resumes (keeps its cases); --overwrite rewrites them with the other one.
    assert len(augment_dataset(images, labels, model, tmp_path / "raw", dataset_id=14).skipped) == 2
    rewritten = augment_dataset(images, labels, other, tmp_path / "raw", dataset_id=14, overwrite=True)
    assert len(rewritten.written) == 2 and rewritten.check.ok
    assert len(augment_dataset(images, labels, other, tmp_path / "raw", dataset_id=14).skipped) == 2
