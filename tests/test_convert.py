"""convert: outputs keep the input's exact geometry, an identity generator gives back the input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny import files, tiny_config, write_domain

from medcyclegan.config import config_from_dict
from medcyclegan.convert import TranslationModel, convert_paths, load_model
from medcyclegan.data.normalise import domain_record
from medcyclegan.train.trainer import Trainer


class IdentityGenerator(torch.nn.Module):
    """Returns its input: what a perfect CT -> CT model would do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def identity_ct_model(spacing: float | None = None) -> TranslationModel:
    raw = {
        "data": {"src_modality": "ct", "tgt_modality": "ct", "spacing": spacing},
        "train": {"device": "cpu"},
    }
    cfg = config_from_dict(raw)
    record = domain_record([], "ct", cfg.data)
    cfg.normalisation = {"src": record, "tgt": record}
    return TranslationModel(IdentityGenerator(), cfg, "ct", "ct", Path("identity"), torch.device("cpu"))


def head_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 1.5) ** 2 < 1
    ct = np.full(shape, -1000.0)
    ct[inside] = 40 + rng.normal(0, 20, inside.sum())
    ct[inside & ((x / 0.8) ** 2 + (y / 0.7) ** 2 > 0.7)] = 1200
    return np.round(ct).astype(np.int16)


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
    ct = head_ct(shape)
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
    ct = head_ct((28, 30, 4))
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
    ct = head_ct((24, 20, 4))
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
    ct = head_ct((40, 36, 4))
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


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    mr = write_domain(root / "mr", "mr", 2, 3)
    ct = write_domain(root / "ct", "ct", 2, 4)
    Trainer(
        tiny_config(**{"train.max_steps": 2}), root / "run", files(mr), files(ct), show_progress=False
    ).fit()
    return root


def test_trained_model_converts_any_in_plane_size_both_directions(
    trained_run: Path, tmp_path: Path, write_nifti
) -> None:
    mr = np.abs(np.random.default_rng(0).normal(300, 50, (37, 23, 5))).astype(np.float32)
    path = write_nifti("odd.nii.gz", mr, OBLIQUE)
    model = load_model(trained_run / "run", device="cpu")
    assert (model.source_modality, model.target_modality) == ("mr", "ct")
    (out,) = convert_paths(model, path, tmp_path / "sct.nii.gz")
    res = nib.load(out)
    assert res.shape == mr.shape and res.header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(res.affine, nib.load(path).affine)
    back = load_model(trained_run / "run", to="mr", device="cpu")
    (out_mr,) = convert_paths(back, out, tmp_path / "smr.nii.gz")
    assert nib.load(out_mr).header.get_data_dtype() == np.float32
    assert nib.load(out_mr).shape == mr.shape


def test_convert_folder_refuses_to_overwrite_before_any_work(trained_run: Path, tmp_path: Path) -> None:
    model = load_model(trained_run / "run", device="cpu")
    out = tmp_path / "out"
    written = convert_paths(model, trained_run / "mr", out)
    assert sorted(p.name for p in written) == sorted(p.name for p in files(trained_run / "mr"))
    before = {p: p.stat().st_mtime_ns for p in written}
    from medcyclegan.errors import OutputError

    with pytest.raises(OutputError, match="--overwrite"):
        convert_paths(model, trained_run / "mr", out)
    assert {p: p.stat().st_mtime_ns for p in written} == before
