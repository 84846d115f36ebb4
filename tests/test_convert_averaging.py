"""convert's test-time averaging: ``--flip-average`` (R-L mirror) and ``--planes`` (axial, coronal, sagittal).

The default conversion is unchanged bit for bit; each option is checked against the mean it promises,
computed by hand from plain conversions. Last, training on the three planes (``data.planes``).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_convert import identity_ct_model
from tiny import AFFINE, TrainedRun, assert_clean_error, head

from medcyclegan.config import ModelConfig, Normalisation, config_from_dict
from medcyclegan.convert import ConversionModel, convert_file, convert_paths, load_model, plan_conversion
from medcyclegan.data.normalise import denormalise, domain_record, output_params
from medcyclegan.data.prepare import prepare_volume
from medcyclegan.errors import ConfigError, InputError
from medcyclegan.inference import translate_array
from medcyclegan.io.readers import read_volume
from medcyclegan.io.writers import cast_values
from medcyclegan.nets import build_generator

ALL_PLANES = "axial,coronal,sagittal"


def values(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def description(path: Path) -> str:
    return nib.load(path).header["descrip"].item().decode()


def mr_scan(
    write_nifti,
    name: str,
    shape: tuple[int, int, int] = (20, 22, 8),
    *,
    mirrored: bool = False,
    modality: str = "mr",
) -> Path:
    """A phantom head on the 2 x 2 x 4 mm RAS grid (voxel axis 0 runs R-L); ``mirrored``: its R-L mirror."""
    array = head(shape, modality, seed=3)
    return write_nifti(name, np.ascontiguousarray(array[::-1]) if mirrored else array, AFFINE)


def test_the_default_conversion_is_unchanged_bit_for_bit(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli
) -> None:
    path = mr_scan(write_nifti, "mr.nii.gz")
    model = load_model(trained_run.run, device="cpu")
    (default,) = convert_paths(model, path, tmp_path / "default.nii.gz")
    (explicit,) = convert_paths(
        model, path, tmp_path / "explicit.nii.gz", flip_average=False, planes=["axial"]
    )
    assert cli("convert", path, "-o", tmp_path / "cli.nii.gz", "-m", trained_run.run, "--device", "cpu",
               "--planes", "axial").code == 0  # fmt: skip
    # The whole-volume path of training and validation: prepare, translate_array, denormalise, cast.
    prepared = prepare_volume(read_volume(path), "mr", model.cfg.data)
    translated = translate_array(
        model.generator,
        prepared.image,
        context_slices=model.cfg.data.context_slices,
        canvas=model.cfg.data.image_size,
    )
    reference = cast_values(denormalise(translated, output_params(model.cfg.normalisation.target)), "int16")
    # Smaller than the training canvas: the slices were centred on air, as validation centres them.
    assert min(prepared.image.shape[:2]) < model.canvas == model.cfg.data.image_size
    for out in (default, explicit, tmp_path / "cli.nii.gz"):
        np.testing.assert_array_equal(values(out), reference)
        assert description(out) == description(default)
    assert "flip" not in description(default) and "planes" not in description(default)


def test_flip_average_is_the_mean_with_the_mirrored_conversion_of_the_mirrored_scan(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli
) -> None:
    path, mirror = mr_scan(write_nifti, "mr.nii.gz"), mr_scan(write_nifti, "mirror.nii.gz", mirrored=True)
    common = ("-m", trained_run.run, "--device", "cpu")
    for args in [(path, "-o", tmp_path / "plain.nii.gz"), (mirror, "-o", tmp_path / "mirror_out.nii.gz"),
                 (path, "-o", tmp_path / "averaged.nii.gz", "--flip-average")]:  # fmt: skip
        result = cli("convert", *args, *common)
        assert result.code == 0, result.err
    plain, mirrored = values(tmp_path / "plain.nii.gz"), values(tmp_path / "mirror_out.nii.gz")
    averaged = values(tmp_path / "averaged.nii.gz")
    assert averaged.shape == plain.shape and averaged.dtype == np.int16
    np.testing.assert_array_equal(nib.load(tmp_path / "averaged.nii.gz").affine, AFFINE)
    # The tiny model is not mirror-symmetric, so averaging changes its output...
    assert np.abs(averaged.astype(int) - plain).max() > 0
    # ... into the mean of both translations, up to the int16 rounding of each.
    expected = (plain.astype(np.float64) + mirrored[::-1]) / 2
    assert np.abs(averaged - expected).max() <= 1.0
    assert description(tmp_path / "averaged.nii.gz").endswith(", flip-avg")


def test_flip_average_of_a_mirror_symmetric_model_is_its_plain_output(tmp_path: Path, write_nifti) -> None:
    path = write_nifti("ct.nii.gz", head((30, 26, 5), "ct"), AFFINE)
    model = identity_ct_model()
    (plain,) = convert_paths(model, path, tmp_path / "plain.nii.gz")
    (averaged,) = convert_paths(model, path, tmp_path / "averaged.nii.gz", flip_average=True)
    np.testing.assert_array_equal(values(averaged), values(plain))


def tiny_attention_model(context_slices: int = 1) -> ConversionModel:
    """A freshly initialised (untrained) CT -> CT attention generator: asymmetric, with a mask."""
    cfg = config_from_dict(
        {
            "data": {"src_modality": "ct", "tgt_modality": "ct", "context_slices": context_slices},
            "model": {"generator": "resnet-attention", "ngf": 4, "n_blocks": 1},
            "train": {"device": "cpu"},
        }
    )
    cfg.normalisation = Normalisation(
        source=domain_record([], "ct", cfg.data), target=domain_record([], "ct", cfg.data)
    )
    torch.manual_seed(0)
    channels = 2 * context_slices + 1
    generator = build_generator(
        ModelConfig(generator="resnet-attention", ngf=4, n_blocks=1), channels, channels
    )
    return ConversionModel(generator.eval(), cfg, "ct", "ct", Path("attention.pt"), torch.device("cpu"))


def test_the_attention_mask_is_averaged_like_the_image(tmp_path: Path, write_nifti) -> None:
    model = tiny_attention_model()
    path = mr_scan(write_nifti, "ct.nii.gz", modality="ct")
    mirror = mr_scan(write_nifti, "mirror.nii.gz", mirrored=True, modality="ct")
    masks = {}
    for name, source, flip in [("plain", path, False), ("mirror", mirror, False), ("averaged", path, True)]:
        convert_file(model, source, tmp_path / f"{name}_out.nii.gz", attention_path=tmp_path / f"{name}_att.nii.gz",
                     flip_average=flip)  # fmt: skip
        masks[name] = values(tmp_path / f"{name}_att.nii.gz")
    np.testing.assert_allclose(masks["averaged"], (masks["plain"] + masks["mirror"][::-1]) / 2, atol=1e-6)
    assert np.abs(masks["averaged"] - masks["plain"]).max() > 1e-4
    assert description(tmp_path / "averaged_att.nii.gz").startswith("attention mask of a synthetic CT")
    # With planes too: one mask per plane, averaged; values stay in (0, 1).
    convert_file(model, path, tmp_path / "planes.nii.gz", attention_path=tmp_path / "planes_att.nii.gz",
                 flip_average=True, planes=["axial", "sagittal"])  # fmt: skip
    mask = values(tmp_path / "planes_att.nii.gz")
    assert mask.shape == masks["plain"].shape and ((mask > 0) & (mask < 1)).all()


def test_planes_average_the_per_plane_conversions(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli
) -> None:
    path = mr_scan(write_nifti, "mr.nii.gz")  # 2 x 2 x 4 mm: coronal and sagittal slices at 2 mm
    common = ("-m", trained_run.run, "--device", "cpu")
    outputs = {}
    for planes in ("axial", "coronal", "sagittal", ALL_PLANES):
        out = tmp_path / f"{planes.replace(',', '_')}.nii.gz"
        result = cli("convert", path, "-o", out, "--planes", planes, *common)
        assert result.code == 0, result.err
        assert nib.load(out).shape == (20, 22, 8) and nib.load(out).header.get_data_dtype() == np.int16
        np.testing.assert_array_equal(nib.load(out).affine, AFFINE)
        outputs[planes] = values(out).astype(np.float64)
    expected = (outputs["axial"] + outputs["coronal"] + outputs["sagittal"]) / 3
    assert np.abs(outputs[ALL_PLANES] - expected).max() <= 1.0
    assert np.abs(outputs["coronal"] - outputs["axial"]).max() > 0
    assert description(tmp_path / "coronal.nii.gz").endswith(", planes coronal")
    # NIfTI keeps 79 characters of it; NRRD and MHA keep it all.
    assert ", planes axial+coro" in description(tmp_path / "axial_coronal_sagittal.nii.gz")


def test_planes_of_an_identity_model_give_back_the_scan(tmp_path: Path, write_nifti) -> None:
    ct = head((30, 26, 12), "ct", cavity=False)
    path = write_nifti("ct.nii.gz", ct, np.diag([2.0, 2.0, 2.0, 1.0]))  # isotropic: no Z resampling
    (out,) = convert_paths(identity_ct_model(), path, tmp_path / "out.nrrd", planes=ALL_PLANES.split(","),
                           flip_average=True)  # fmt: skip
    image = sitk.ReadImage(str(out))
    assert np.abs(sitk.GetArrayFromImage(image).T.astype(int) - ct).max() <= 1
    assert image.GetMetaData("NRRD_content").endswith(", flip-avg, planes axial+coronal+sagittal")


@pytest.mark.parametrize(
    ("planes", "problem"),
    [("axial,axial", "names 'axial' twice"), ("foo", "has an unknown plane 'foo'"), ("", "is empty")],
)
def test_bad_planes_are_one_line_naming_the_option(
    trained_run: TrainedRun, tmp_path: Path, cli, planes: str, problem: str
) -> None:
    out = tmp_path / "out"
    result = cli("convert", trained_run.mr, "-o", out, "-m", trained_run.run, "--planes", planes)
    line = assert_clean_error(result, f"--planes {problem}")
    assert "axial, coronal, sagittal" in line and result.code == 2 and not out.exists()
    with pytest.raises(ConfigError, match="planes"):
        plan_conversion(
            load_model(trained_run.run, device="cpu"), trained_run.mr, out, planes=planes.split(",")
        )


def test_a_scan_too_thin_for_coronal_slices_is_refused_naming_it(
    trained_run: TrainedRun, tmp_path: Path, write_nifti, cli
) -> None:
    path = mr_scan(write_nifti, "thin.nii.gz", (20, 22, 2))  # 2 slices of 4 mm: 4 voxels at 2 mm
    out = tmp_path / "out.nii.gz"
    result = cli(
        "convert", path, "-o", out, "-m", trained_run.run, "--device", "cpu", "--planes", "axial,coronal"
    )
    line = assert_clean_error(result, path, notices_allowed=True)
    assert "2 axial slices are 4 voxels deep" in line and "at least 5" in line and result.code == 2
    assert not out.exists()
    with pytest.raises(InputError, match="--planes axial"):
        convert_file(load_model(trained_run.run, device="cpu"), path, out, planes=["sagittal"])
    assert cli("convert", path, "-o", out, "-m", trained_run.run, "--device", "cpu").code == 0


def test_a_model_trained_on_three_planes_converts_along_them(
    trained_run: TrainedRun, tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    result = cli("train", "--src", trained_run.mr, "--tgt", trained_run.ct, "--out", run, "-c", trained_run.config,
                 "--set", f"data.planes={ALL_PLANES}", "--max-steps", 1, "--no-progress")  # fmt: skip
    assert result.code == 0, result.err
    assert load_model(run, device="cpu").cfg.data.planes == ["axial", "coronal", "sagittal"]
    scan = sorted(trained_run.mr.iterdir())[0]
    out = tmp_path / "sct.nii.gz"
    result = cli("convert", scan, "-o", out, "-m", run, "--device", "cpu", "--planes", ALL_PLANES)
    assert result.code == 0, result.err
    assert nib.load(out).shape == nib.load(scan).shape
