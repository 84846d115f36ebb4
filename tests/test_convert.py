"""convert: outputs keep the input's exact geometry, an identity generator gives back the input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny import TrainedRun, assert_clean_error, files, head, race_at_temporary, write_domain

from medcyclegan.config import Normalisation, config_from_dict
from medcyclegan.convert import ConversionModel, convert_paths, load_model, plan_conversion
from medcyclegan.data.normalise import domain_record
from medcyclegan.errors import InputError, OutputError


class IdentityGenerator(torch.nn.Module):
    """Returns its input: what a perfect CT -> CT model would do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def identity_ct_model(spacing: float | None = None) -> ConversionModel:
    raw = {
        "data": {"src_modality": "ct", "tgt_modality": "ct", "spacing": spacing},
        "train": {"device": "cpu"},
    }
    cfg = config_from_dict(raw)
    record = domain_record([], "ct", cfg.data)
    cfg.normalisation = Normalisation(source=record, target=record)
    return ConversionModel(IdentityGenerator(), cfg, "ct", "ct", Path("identity"), torch.device("cpu"))


OBLIQUE = np.array(
    [
        [0.9 * np.cos(0.35), -0.9 * np.sin(0.35), 0.0, -20.0],
        [0.9 * np.sin(0.35), 0.9 * np.cos(0.35), 0.0, 15.0],
        [0.0, 0.0, 2.5, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
FLIPPED = np.diag([-1.2, -0.8, 2.0, 1.0]) + np.array(
    [[0, 0, 0, 30.0], [0, 0, 0, 40.0], [0, 0, 0, -5.0], [0] * 4]
)


@pytest.mark.parametrize("affine", [OBLIQUE, FLIPPED], ids=["oblique", "flipped"])
@pytest.mark.parametrize("shape", [(30, 26, 5), (33, 27, 4)], ids=["even", "odd-inplane"])
def test_identity_generator_gives_back_the_input_nifti(tmp_path: Path, write_nifti, affine, shape) -> None:
    ct = head(shape, "ct")
    path = write_nifti("in/scan.nii.gz", ct, affine)
    (out,) = convert_paths(identity_ct_model(), path, tmp_path / "out.nii.gz")
    src, res = nib.load(path), nib.load(out)
    assert res.shape == src.shape
    np.testing.assert_array_equal(res.affine, src.affine)
    assert res.header.get_data_dtype() == np.int16
    assert int(res.header["qform_code"]) == 1 and int(res.header["sform_code"]) == 1
    assert nib.aff2axcodes(res.affine) == nib.aff2axcodes(src.affine)
    # Inside the CT window, a perfect generator round-trips HU exactly after int16 rounding.
    np.testing.assert_array_equal(np.asarray(res.dataobj), ct)


def test_identity_generator_gives_back_the_input_nrrd(tmp_path: Path, write_itk) -> None:
    ct = head((28, 30, 4), "ct")
    direction = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # flipped y, like brain1_image.nrrd
    path = write_itk(
        "in/scan.nrrd", ct, spacing=(0.8, 0.7, 3.0), origin=(-10.0, 20.0, 5.0), direction=direction
    )
    (out,) = convert_paths(identity_ct_model(), path, tmp_path / "out.nrrd")
    src, res = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert res.GetSize() == src.GetSize()
    assert res.GetSpacing() == src.GetSpacing()
    assert res.GetOrigin() == src.GetOrigin()
    assert res.GetDirection() == src.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res), sitk.GetArrayFromImage(src))


def test_identity_generator_dicom_series_to_nifti(tmp_path: Path, write_dicom_series) -> None:
    ct = head((24, 20, 4), "ct")
    folder, _uid = write_dicom_series("dicom", ct)
    (out,) = convert_paths(identity_ct_model(), folder, tmp_path / "out.nii.gz")
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    res = sitk.ReadImage(str(out))
    assert res.GetSize() == ref.GetSize()
    np.testing.assert_allclose(res.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(res.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(res.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res), sitk.GetArrayFromImage(ref))


def test_in_plane_resampling_keeps_the_grid_and_the_values_close(tmp_path: Path, write_nifti) -> None:
    ct = head((40, 36, 4), "ct", cavity=False)
    path = write_nifti("scan.nii.gz", ct, FLIPPED)
    (out,) = convert_paths(identity_ct_model(spacing=2.0), path, tmp_path / "out.nii.gz")
    res = nib.load(out)
    assert res.shape == ct.shape
    np.testing.assert_array_equal(res.affine, nib.load(path).affine)
    # Down to 2 mm and back blurs edges but keeps the anatomy where it was.
    body, out_body = ct > -500, np.asarray(res.dataobj) > -500
    dice = 2 * (body & out_body).sum() / (body.sum() + out_body.sum())
    assert dice > 0.93
    centroid = np.array(np.nonzero(body)).mean(axis=1)
    out_centroid = np.array(np.nonzero(out_body)).mean(axis=1)
    assert np.abs(centroid - out_centroid).max() < 0.5  # voxels of the original grid


def test_trained_model_converts_any_in_plane_size_both_directions(
    trained_run: TrainedRun, tmp_path: Path, write_nifti
) -> None:
    mr = np.abs(np.random.default_rng(0).normal(300, 50, (37, 23, 5))).astype(np.float32)
    path = write_nifti("odd.nii.gz", mr, OBLIQUE)
    model = load_model(trained_run.run, device="cpu")
    assert (model.source_modality, model.target_modality) == ("mr", "ct")
    (out,) = convert_paths(model, path, tmp_path / "sct.nii.gz")
    res = nib.load(out)
    assert res.shape == mr.shape and res.header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(res.affine, nib.load(path).affine)
    back = load_model(trained_run.run, to="mr", device="cpu")
    (out_mr,) = convert_paths(back, out, tmp_path / "smr.nii.gz")
    assert nib.load(out_mr).header.get_data_dtype() == np.float32
    assert nib.load(out_mr).shape == mr.shape


def test_convert_folder_refuses_to_overwrite_before_any_work(trained_run: TrainedRun, tmp_path: Path) -> None:
    model = load_model(trained_run.run, device="cpu")
    out = tmp_path / "out"
    written = convert_paths(model, trained_run.mr, out)
    assert sorted(p.name for p in written) == sorted(p.name for p in files(trained_run.mr))
    before = {p: p.stat().st_mtime_ns for p in written}

    with pytest.raises(OutputError, match="--overwrite"):
        convert_paths(model, trained_run.mr, out)
    assert {p: p.stat().st_mtime_ns for p in written} == before


# --------------------------------------------------------------- issue 12: outputs and odd inputs


def test_convert_keeps_an_output_another_process_created_meanwhile(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli, monkeypatch: pytest.MonkeyPatch
) -> None:

    path = write_nifti("in/scan.nii.gz", head((20, 22, 4), "mr"))
    out = tmp_path / "out" / "sct.nii.gz"
    created = race_at_temporary(monkeypatch)
    result = cli("convert", path, "-o", out, "-m", trained_run.run, "--device", "cpu")
    assert created == [out]
    line = assert_clean_error(result, out, notices_allowed=True)
    assert line == (
        f"error: {out}: was created by another process while this one was writing; "
        "pass --overwrite to replace it"
    )
    assert result.code == 2
    assert out.read_text() == "the other process's file"
    assert sorted(p.name for p in out.parent.iterdir()) == ["sct.nii.gz"]  # our temporary is gone


@pytest.mark.parametrize("shape", [(40, 1, 12), (3, 3, 12), (1, 40, 12), (4, 30, 6)])
def test_convert_refuses_slices_too_small_for_the_generator(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli, shape: tuple[int, int, int]
) -> None:
    path = write_nifti("thin.nii.gz", head(shape, "mr"))
    out = tmp_path / "out.nii.gz"
    result = cli("convert", path, "-o", out, "-m", trained_run.run, "--device", "cpu")
    line = assert_clean_error(result, path, notices_allowed=True)
    assert f"axial slices are {shape[0]} x {shape[1]} voxels" in line and "at least 5 x 5" in line
    assert result.code == 2 and not out.exists()


@pytest.mark.parametrize("shape", [(5, 5, 3), (40, 5, 12)])
def test_convert_smallest_slices_the_generator_takes_onto_the_input_grid(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli, shape: tuple[int, int, int]
) -> None:
    path = write_nifti("small.nii.gz", head(shape, "mr"), OBLIQUE)
    out = tmp_path / "out.nii.gz"
    result = cli("convert", path, "-o", out, "-m", trained_run.run, "--device", "cpu")
    assert result.code == 0, result.err
    res = nib.load(out)
    assert res.shape == shape and res.header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(res.affine, nib.load(path).affine)


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x", "gpu0"])
def test_convert_and_augment_refuse_an_unknown_device_in_one_line(
    trained_run: TrainedRun, tmp_path: Path, cli, device: str
) -> None:
    result = cli("convert", trained_run.mr, "-o", tmp_path / "out", "-m", trained_run.run, "--device", device)
    line = assert_clean_error(result, repr(device))
    assert "auto, cpu, cuda, cuda:N" in line and result.code == 2
    labels = write_domain(tmp_path / "labels", "ct", 2, 0)
    for label in files(labels):
        nib.save(
            nib.Nifti1Image(
                (np.asarray(nib.load(label).dataobj) > 0).astype(np.uint8), nib.load(label).affine
            ),
            label,
        )
    result = cli(
        "augment", "--images", trained_run.mr, "--labels", labels, "--out", tmp_path / "ds",
        "--dataset-id", 5, "-m", trained_run.run, "--device", device,
    )  # fmt: skip
    line = assert_clean_error(result, repr(device))
    assert "auto, cpu, cuda, cuda:N" in line and not (tmp_path / "ds").exists()


def test_convert_and_augment_refuse_cuda_without_a_gpu_in_one_line(
    trained_run: TrainedRun, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for verb in ("convert", "augment"):
        args = (
            [trained_run.mr, "-o", tmp_path / "out"]
            if verb == "convert"
            else ["--images", trained_run.mr, "--labels", trained_run.ct, "--out", tmp_path / "ds", "--dataset-id", 5]
        )  # fmt: skip
        result = cli(verb, *args, "-m", trained_run.run, "--device", "cuda:0")
        line = assert_clean_error(result)
        assert "--device cuda:0 was requested but no CUDA GPU is available" in line, line


def test_folder_input_with_a_file_name_as_output_is_refused(
    trained_run: TrainedRun, tmp_path: Path, cli
) -> None:
    out = tmp_path / "x.nii.gz"
    result = cli("convert", trained_run.mr, "-o", out, "-m", trained_run.run, "--device", "cpu")
    line = assert_clean_error(result, out)
    assert "is a file name, but the input is a folder of 2 volume(s): give an output folder" in line
    assert not out.exists()


def test_two_inputs_with_one_output_name_are_both_named(
    tmp_path: Path, write_nifti, write_dicom_series
) -> None:
    write_dicom_series("in/a", head((12, 10, 3), "ct"))
    nifti = write_nifti("in/a.nii.gz", head((12, 10, 3), "ct"))
    with pytest.raises(OutputError) as caught:
        plan_conversion(identity_ct_model(), tmp_path / "in", tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(
        f"{tmp_path / 'out' / 'a.nii.gz'}: two inputs would be written to the same output name"
    )
    assert str(tmp_path / "in" / "a") + " and" in message and str(nifti) in message


def test_output_names_differing_only_in_case_collide(tmp_path: Path, write_nifti) -> None:
    """``scan.mhd`` and ``SCAN.MHD`` are one file on a case-insensitive disk (and both write scan.zraw)."""
    first = write_nifti("in/scan.nii.gz", head((12, 10, 3), "ct"))
    second = write_nifti("in/SCAN.NII.GZ", head((12, 10, 3), "ct", 2))
    with pytest.raises(OutputError, match="two inputs would be written to the same output name") as caught:
        plan_conversion(identity_ct_model(), tmp_path / "in", tmp_path / "out")
    assert str(first) in str(caught.value) and str(second) in str(caught.value)


def test_a_patient_series_tree_converts_as_one_folder_mirroring_its_paths(
    tmp_path: Path, write_nifti, write_dicom_series
) -> None:
    # Two patients with a series of the same name: named by relative path, they no longer collide.
    volumes = {
        "p1/T1": head((12, 10, 3), "ct", 1),
        "p1/T2": head((12, 10, 3), "ct", 2),
        "p2/T1": head((12, 10, 3), "ct", 3),
    }
    for name, ct in volumes.items():
        write_dicom_series(f"in/{name}", ct)
    write_nifti("in/p2/extra/scan.nii.gz", head((12, 10, 3), "ct", 4))
    written = convert_paths(identity_ct_model(), tmp_path / "in", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(written) == sorted(
        [out / "p1" / "T1.nii.gz", out / "p1" / "T2.nii.gz", out / "p2" / "T1.nii.gz", out / "p2" / "extra" / "scan.nii.gz"]
    )  # fmt: skip
    for name, ct in volumes.items():
        # The identity model gives back each series: the right input went to the right output.
        res = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}.nii.gz"))).transpose(2, 1, 0)
        np.testing.assert_array_equal(res, ct)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_a_synthetic_ct_says_what_it_is_instead_of_the_mr_description(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, suffix: str
) -> None:
    path = write_nifti("mr.nii.gz", head((20, 22, 4), "mr"))
    image = nib.load(path)
    image.header["descrip"] = b"MR T1w axial 3D"
    nib.save(image, path)
    model = load_model(trained_run.run, device="cpu")
    (out,) = convert_paths(model, path, tmp_path / f"sct{suffix}")
    if suffix == ".nii.gz":
        description = nib.load(out).header["descrip"].item().decode()
    else:
        key = "NRRD_content" if suffix == ".nrrd" else "Description"
        description = sitk.ReadImage(str(out)).GetMetaData(key)
    assert description.startswith("synthetic CT from MR by medcyclegan"), description
    assert f"model run/{model.checkpoint.name}" in description and "T1w" not in description


def test_slices_too_small_at_the_model_spacing_are_refused_naming_both_sizes(
    tmp_path: Path, write_nifti
) -> None:
    # 12 x 40 voxels of 0.5 mm are 3 x 10 voxels at the model's 2 mm: too narrow for the generator.
    path = write_nifti("fine.nii.gz", head((12, 40, 3), "ct"), np.diag([0.5, 0.5, 3.0, 1.0]))
    with pytest.raises(InputError) as caught:
        convert_paths(identity_ct_model(spacing=2.0), path, tmp_path / "out.nii.gz")
    assert str(caught.value).startswith(
        f"{path}: its axial slices are 12 x 40 voxels (3 x 10 at the model's 2 mm spacing); "
    )
    assert not (tmp_path / "out.nii.gz").exists()
