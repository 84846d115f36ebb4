"""Tests of the synthetic head phantom (medcyclegan.sample_data) and examples/make_phantom.py."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
from scripts import load_script

from medcyclegan.augment import load_labels_json
from medcyclegan.errors import ConfigError, OutputError
from medcyclegan.label_names import read_label_names
from medcyclegan.sample_data import (
    AIR_CAVITY,
    CORTICAL_BONE,
    CSF,
    FAT,
    GREY_MATTER,
    MARROW,
    TISSUE_LABELS,
    VENTRICLES,
    WHITE_MATTER,
    PhantomSubject,
    SampleDataset,
    make_head_phantom,
    write_sample_dataset,
)

REPO = Path(__file__).resolve().parents[1]
# The default field of view (192 x 192 x 144 mm) with 8x fewer voxels: fast, same anatomy.
SMALL = {"shape": (64, 64, 24), "spacing": (3.0, 3.0, 6.0)}
# A coarse phantom grid (quick to draw).
TINY_GRID = {"shape": (32, 32, 12), "spacing": (6.0, 6.0, 12.0)}


@pytest.fixture(scope="module")
def subject() -> PhantomSubject:
    return make_head_phantom(0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SampleDataset:
    root = tmp_path_factory.mktemp("phantom") / "data"
    return write_sample_dataset(root, n_train_mr=2, n_train_ct=2, n_test=2, seed=7, **SMALL)


def _canonical(path: Path) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.load(path))


def _ids(paths: tuple[Path, ...]) -> set[str]:
    return {p.name for p in paths}


# ---------------------------------------------------------------------------------------------------
# make_head_phantom
# ---------------------------------------------------------------------------------------------------


def test_default_subject_grid_and_types(subject: PhantomSubject) -> None:
    assert (
        subject.mr.shape == subject.ct.shape == subject.mask.shape == subject.labels.shape == (128, 128, 48)
    )
    assert (subject.mr.dtype, subject.ct.dtype, subject.mask.dtype, subject.labels.dtype) == (
        np.float32,
        np.int16,
        np.uint8,
        np.uint8,
    )
    expected = np.diag([1.5, 1.5, 3.0, 1.0])
    expected[:3, 3] = [-95.25, -95.25, -70.5]  # field of view centred on world (0, 0, 0) mm
    np.testing.assert_allclose(subject.affine, expected)
    assert subject.spacing == (1.5, 1.5, 3.0)
    assert set(np.unique(subject.mask)) == {0, 1}
    # The body mask is the head, internal air cavities included.
    np.testing.assert_array_equal(subject.mask, subject.labels > 0)
    assert set(np.unique(subject.labels)) == set(TISSUE_LABELS.values())


def test_same_seed_same_subject_and_other_seed_other_subject() -> None:
    first, again, other = (make_head_phantom(seed, **SMALL) for seed in (3, 3, 4))
    for name in ("mr", "ct", "mask", "labels", "affine"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name), err_msg=name)
    assert not np.array_equal(first.mr, other.mr)
    assert not np.array_equal(first.labels, other.labels)


def test_ct_values_per_tissue(subject: PhantomSubject) -> None:
    ct = subject.ct.astype(np.float64)

    def median(label: int) -> float:
        return float(np.median(ct[subject.labels == label]))

    assert abs(np.median(ct[subject.mask == 0]) + 1000) < 15  # air around the head
    assert median(AIR_CAVITY) < -600  # small sinuses: partial volume with their bony walls
    assert median(CORTICAL_BONE) > 700
    assert np.percentile(ct[subject.labels == CORTICAL_BONE], 95) > 1000
    assert 250 < median(MARROW) < 700
    assert -150 < median(FAT) < -20
    assert 15 < median(WHITE_MATTER) < median(GREY_MATTER) < 60
    assert -10 < median(VENTRICLES) < 30
    assert subject.ct.min() >= -1024 and subject.ct.max() <= 3071
    # Gaussian noise of 10-20 HU: the standard deviation of the air around the head.
    assert 8 < ct[:, :, -1].std() < 22


def test_mr_contrast_is_t1_weighted(subject: PhantomSubject) -> None:
    mr = subject.mr

    def median(label: int) -> float:
        return float(np.median(mr[subject.labels == label]))

    fat_bright = float(np.percentile(mr[subject.labels == FAT], 90))
    assert fat_bright > median(WHITE_MATTER) > median(GREY_MATTER) > median(CSF)
    assert median(CORTICAL_BONE) < 0.25 * fat_bright  # bone dark, unlike in CT
    assert median(CSF) < median(MARROW) < median(WHITE_MATTER)  # marrow medium
    assert median(AIR_CAVITY) < 100 and np.median(mr[subject.mask == 0]) < 100
    assert mr.min() >= 0 and 1000 < mr.max() < 2500
    np.testing.assert_array_equal(mr, np.rint(mr))  # integer-valued like a scanner's magnitude image
    # Rician background: not zero, and its mean is about 1.25 sigma (sigma about 20).
    assert 5 < np.mean(mr[subject.mask == 0]) < 60


def test_anatomy_differs_between_seeds() -> None:
    subjects = [make_head_phantom(seed, **SMALL) for seed in range(4)]
    widths = set()
    for i, a in enumerate(subjects):
        widths.add(int(a.mask.any(axis=(1, 2)).sum()))
        for b in subjects[i + 1 :]:
            body = (a.mask > 0) | (b.mask > 0)
            assert np.mean(a.labels[body] != b.labels[body]) > 0.1
    assert len(widths) > 1


@pytest.mark.parametrize("seed", range(6))
def test_head_is_realistic_size_with_air_around(seed: int) -> None:
    subject = make_head_phantom(seed, **SMALL)
    mask = subject.mask > 0
    width_mm = mask.any(axis=(1, 2)).sum() * 3.0
    length_mm = mask.any(axis=(0, 2)).sum() * 3.0
    assert 138 <= width_mm <= 190 and 150 <= length_mm <= 190
    # Air all around in-plane and above the vertex; the neck leaves through the bottom slice.
    assert not mask[[0, -1], :, :].any() and not mask[:, [0, -1], :].any() and not mask[:, :, -1].any()
    assert mask[:, :, 0].any()


def test_small_or_cut_grids_work() -> None:
    inside_brain = make_head_phantom(1, shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    assert inside_brain.mask.all()
    tiny = make_head_phantom(1, **TINY_GRID)
    assert tiny.mr.shape == (32, 32, 12) and tiny.mask.any() and not tiny.mask.all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 0, "shape": (4, 64, 24)}, "shape"),
        ({"seed": 0, "shape": (64, 64)}, "shape"),
        ({"seed": 0, "spacing": (3.0, 0.0, 6.0)}, "spacing"),
        ({"seed": 0, "spacing": (3.0, float("nan"), 6.0)}, "spacing"),
    ],
)
def test_invalid_phantom_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        make_head_phantom(**kwargs)


# ---------------------------------------------------------------------------------------------------
# write_sample_dataset
# ---------------------------------------------------------------------------------------------------


def test_dataset_layout_and_disjoint_subjects(dataset: SampleDataset) -> None:
    root = dataset.root
    expected_counts = {
        "train/mr": 2,
        "train/mr_masks": 2,
        "train/ct": 2,
        "train/ct_masks": 2,
        "test/mr": 2,
        "test/ct": 2,
        "test/masks": 2,
        "test/labels": 2,
    }
    for folder, count in expected_counts.items():
        files = sorted(p.name for p in (root / folder).iterdir())
        assert len(files) == count and all(f.startswith("subj_") and f.endswith(".nii.gz") for f in files)
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "test", "train"]
    mr_ids, ct_ids, test_ids = _ids(dataset.train_mr), _ids(dataset.train_ct), _ids(dataset.test_mr)
    assert not mr_ids & ct_ids and not test_ids & mr_ids and not test_ids & ct_ids
    assert _ids(dataset.train_mr_masks) == mr_ids and _ids(dataset.train_ct_masks) == ct_ids
    assert _ids(dataset.test_ct) == _ids(dataset.test_masks) == _ids(dataset.test_labels) == test_ids
    assert len(set(dataset.subject_seeds.values())) == 6
    assert dataset.train_mr_dir == root / "train" / "mr" and dataset.test_masks_dir == root / "test" / "masks"
    readme = dataset.readme.read_text()
    assert "LPS" in readme and "disjoint" in readme and str(dataset.subject_seeds["subj_004"]) in readme


def test_the_label_names_are_written_for_evaluate_and_augment(dataset: SampleDataset) -> None:
    assert dataset.labels_json == dataset.root / "test" / "labels.json"
    names = read_label_names(dataset.labels_json)
    assert names.layout == "nnU-Net v2 dataset.json"
    assert names.names[3] == "cortical_bone" and names.names[9] == "air_cavity"
    assert load_labels_json(dataset.labels_json) == TISSUE_LABELS
    # Every value the label maps hold has its name.
    found = set()
    for path in dataset.test_labels:
        found |= {int(v) for v in np.unique(np.asanyarray(nib.load(path).dataobj))}
    assert found - {0} <= set(names.names)


def test_dataset_files_have_the_stated_geometry(dataset: SampleDataset) -> None:
    mr_affine = np.diag([3.0, 3.0, 6.0, 1.0])
    mr_affine[:3, 3] = [-94.5, -94.5, -69.0]
    ct_affine = np.diag([-3.0, -3.0, 6.0, 1.0])
    ct_affine[:3, 3] = [94.5, 94.5, -69.0]
    groups = [
        (dataset.train_mr, mr_affine, np.float32),
        (dataset.train_mr_masks, mr_affine, np.uint8),
        (dataset.test_mr, mr_affine, np.float32),
        (dataset.train_ct, ct_affine, np.int16),
        (dataset.train_ct_masks, ct_affine, np.uint8),
        (dataset.test_ct, ct_affine, np.int16),
        (dataset.test_masks, ct_affine, np.uint8),
        (dataset.test_labels, ct_affine, np.uint8),
    ]
    for paths, affine, dtype in groups:
        for path in paths:
            image = nib.load(path)
            header = image.header
            np.testing.assert_allclose(image.affine, affine, err_msg=str(path))
            np.testing.assert_allclose(header.get_qform(), affine, err_msg=str(path))
            assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
            assert header.get_xyzt_units()[0] == "mm"
            assert image.get_data_dtype() == dtype
            assert image.shape == (64, 64, 24)
            assert np.asarray(image.dataobj).dtype == dtype  # stored unscaled
    assert nib.aff2axcodes(nib.load(dataset.test_mr[0]).affine) == ("R", "A", "S")
    assert nib.aff2axcodes(nib.load(dataset.test_ct[0]).affine) == ("L", "P", "S")


def test_test_subjects_mr_and_ct_align_in_world(dataset: SampleDataset) -> None:
    for mr_path, ct_path, mask_path, labels_path in zip(
        dataset.test_mr, dataset.test_ct, dataset.test_masks, dataset.test_labels, strict=True
    ):
        truth = make_head_phantom(dataset.subject_seeds[mr_path.name.removesuffix(".nii.gz")], **SMALL)
        mr = nib.load(mr_path)
        np.testing.assert_array_equal(np.asarray(mr.dataobj), truth.mr)  # MR is stored in RAS order
        # Reoriented to RAS with nibabel, CT, mask and labels land on the MR grid, voxel for voxel.
        for path, expected in ((ct_path, truth.ct), (mask_path, truth.mask), (labels_path, truth.labels)):
            canonical = _canonical(path)
            np.testing.assert_allclose(canonical.affine, mr.affine)
            np.testing.assert_array_equal(np.asarray(canonical.dataobj), expected)
        # The same, without reorientation: the world positions (mm) of the mask voxels, each file through
        # its own affine, are the same set of points.
        mask_file = nib.load(mask_path)
        ct_world = nib.affines.apply_affine(mask_file.affine, np.argwhere(np.asarray(mask_file.dataobj) > 0))
        mr_world = nib.affines.apply_affine(mr.affine, np.argwhere(truth.mask > 0))
        as_set = lambda points: {tuple(p) for p in np.round(points, 3)}  # noqa: E731
        assert as_set(ct_world) == as_set(mr_world)
        # And the CT's bone sits where the MR is dark inside the body.
        ct_ras = np.asarray(_canonical(ct_path).dataobj)
        bone = (ct_ras > 700) & (truth.mask > 0)
        assert np.median(truth.mr[bone]) < 0.5 * np.median(truth.mr[(truth.mask > 0) & ~bone])


def test_training_masks_match_their_images(dataset: SampleDataset) -> None:
    for image_path, mask_path in zip(dataset.train_ct, dataset.train_ct_masks, strict=True):
        ct, mask = np.asarray(nib.load(image_path).dataobj), np.asarray(nib.load(mask_path).dataobj) > 0
        assert np.median(ct[~mask]) < -950 and np.median(ct[mask]) > -200
    for image_path, mask_path in zip(dataset.train_mr, dataset.train_mr_masks, strict=True):
        mr, mask = np.asarray(nib.load(image_path).dataobj), np.asarray(nib.load(mask_path).dataobj) > 0
        assert np.median(mr[~mask]) < 100 and np.median(mr[mask]) > 300


def test_refuses_non_empty_or_file_destination(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        write_sample_dataset(occupied, n_train_mr=1, n_train_ct=1, n_test=1, **TINY_GRID)
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_sample_dataset(a_file, **TINY_GRID)


def test_overwrite_replaces_and_removes_stale_subjects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    write_sample_dataset(root, n_train_mr=2, n_train_ct=2, n_test=1, seed=1, **TINY_GRID)
    with pytest.raises(OutputError, match=f"^{root}: .*--overwrite"):
        write_sample_dataset(root, n_train_mr=2, n_train_ct=2, n_test=1, seed=1, **TINY_GRID)
    (root / "train" / "notes.txt").write_text("kept")
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        smaller = write_sample_dataset(
            root, n_train_mr=1, n_train_ct=1, n_test=1, seed=2, overwrite=True, **TINY_GRID
        )
    assert "not part of the new sample dataset" in caplog.text
    written = {
        p
        for group in (
            smaller.train_mr,
            smaller.train_mr_masks,
            smaller.train_ct,
            smaller.train_ct_masks,
            smaller.test_mr,
            smaller.test_ct,
            smaller.test_masks,
            smaller.test_labels,
        )
        for p in group
    }
    on_disk = {p for p in root.rglob("*.nii.gz")}
    assert on_disk == written and len(written) == 8
    assert (root / "train" / "notes.txt").read_text() == "kept"
    # The file of subj_001 now holds the CT of the new dataset's seed.
    seed = smaller.subject_seeds["subj_001"]
    ct = np.asarray(_canonical(root / "train" / "ct" / "subj_001.nii.gz").dataobj)
    np.testing.assert_array_equal(ct, make_head_phantom(seed, **TINY_GRID).ct)
    assert not list(root.rglob(".*tmp*"))  # no temporary files left behind


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_train_mr": 0}, "n_train_mr"),
        ({"n_train_ct": 0}, "n_train_ct"),
        ({"n_test": -1}, "n_test"),
        ({"n_val": -1}, "n_val"),
        ({"seed": -3}, "seed"),
    ],
)
def test_invalid_dataset_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        write_sample_dataset(tmp_path / "data", **TINY_GRID, **kwargs)
    assert not (tmp_path / "data").exists()  # validated before anything is written


# The training and test subjects of write_sample_dataset(n 1/1/1, seed 3, TINY_GRID): headers and
# voxels, computed with the code before validation subjects existed (medcyclegan 50c9d8d).
_TRAIN_TEST_DIGEST = "291db350d4c90b3a65dbfac468b1c5165892c212c450888c5bc59c3f75fa3362"


def _train_test_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.nii.gz")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("val/"):
            continue
        image = nib.load(path)
        digest.update(relative.encode())
        digest.update(image.header.binaryblock)
        digest.update(np.asarray(image.dataobj).tobytes())
    return digest.hexdigest()


def test_validation_subjects_are_paired_disjoint_and_leave_the_others_unchanged(tmp_path: Path) -> None:
    counts = {"n_train_mr": 1, "n_train_ct": 1, "n_test": 1, "seed": 3, **TINY_GRID}
    without = write_sample_dataset(tmp_path / "without", **counts)
    assert not (without.root / "val").exists() and without.val_mr == without.val_ct == ()
    assert "val/" not in without.readme.read_text()  # the README of a dataset without them is as before
    assert _train_test_digest(without.root) == _TRAIN_TEST_DIGEST
    data = write_sample_dataset(tmp_path / "with", n_val=2, **counts)
    assert _train_test_digest(data.root) == _TRAIN_TEST_DIGEST  # appended after test: nothing moved
    val_ids = _ids(data.val_mr)
    assert val_ids == _ids(data.val_ct) == _ids(data.val_masks) == {"subj_003.nii.gz", "subj_004.nii.gz"}
    assert not val_ids & (_ids(data.train_mr) | _ids(data.train_ct) | _ids(data.test_mr))
    assert data.val_mr_dir == data.root / "val" / "mr" and data.val_masks_dir == data.root / "val" / "masks"
    # Paired: the MR and the CT of a validation subject are the same head, in world coordinates.
    seed = data.subject_seeds["subj_003"]
    ct = np.asarray(_canonical(data.val_ct_dir / "subj_003.nii.gz").dataobj)
    np.testing.assert_array_equal(ct, make_head_phantom(seed, **TINY_GRID).ct)
    np.testing.assert_array_equal(
        np.asarray(_canonical(data.val_mr_dir / "subj_003.nii.gz").dataobj),
        make_head_phantom(seed, **TINY_GRID).mr,
    )
    assert "val/ct/subj_*.nii.gz" in data.readme.read_text() and "val    seed" in data.readme.read_text()
    # Rewritten without validation subjects: the old ones go (they would join a later run).
    again = write_sample_dataset(data.root, overwrite=True, **counts)
    assert not list((again.root / "val").rglob("*.nii.gz"))


# ---------------------------------------------------------------------------------------------------
# examples/make_phantom.py
# ---------------------------------------------------------------------------------------------------


def _load_example() -> ModuleType:
    return load_script(REPO / "examples" / "make_phantom.py")


def test_example_script_writes_dataset_and_reports_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = _load_example()
    out = tmp_path / "phantom"
    args = [str(out), "--seed", "5", "--n-train-mr", "1", "--n-train-ct", "1", "--n-test", "1"]
    grid = ["--shape", "32", "32", "12", "--spacing", "6", "6", "12"]
    assert script.main(args + grid) == 0
    assert (out / "README.txt").is_file()
    assert len(list(out.rglob("*.nii.gz"))) == 8
    assert nib.load(out / "test" / "ct" / "subj_002.nii.gz").shape == (32, 32, 12)
    with caplog.at_level(logging.ERROR, logger="medcyclegan"):
        assert script.main(args + grid) == 2
    assert "--overwrite" in caplog.text
    assert script.main([*args, *grid, "--overwrite"]) == 0


def test_the_cli_writes_validation_subjects_and_refuses_a_negative_count(cli, tmp_path: Path) -> None:
    out = tmp_path / "data"
    bad = cli("sample-data", out, "--n-val", "-1")
    assert bad.code == 2 and bad.err.strip() == "error: n_val: must be an integer >= 0; got -1", bad.err
    assert not out.exists()
    done = cli("sample-data", out, "--n-train", "1", "--n-test", "0", "--n-val", "1")
    assert done.code == 0, done.err
    assert sorted(p.name for p in (out / "val").iterdir()) == ["ct", "masks", "mr"]
    assert [p.name for p in (out / "val" / "mr").iterdir()] == ["subj_002.nii.gz"]
