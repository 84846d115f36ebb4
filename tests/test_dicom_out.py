"""convert --output-format dicom: a CT Image Storage series on the input's exact grid, in HU.

Source MR series are built with pydicom (conftest's ``write_dicom_series``): axial with the files in
LPS order and in RAS order, oblique, coronal, and feet-first (PatientPosition FFS, the files numbered
from the other end). Each synthetic series is read back with pydicom, with SimpleITK and with the
package's own reader, and compared with the source series (geometry, patient, study, frame of
reference) and with the NIfTI output of the same conversion (the same int16 HU, exactly).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from test_convert import OBLIQUE, identity_ct_model
from test_convert_averaging import tiny_attention_model
from tiny import TrainedRun, assert_clean_error, head, one_error_line

import medcyclegan.io.atomic
from medcyclegan.convert import ConversionModel, convert_paths, load_model, plan_conversion, plan_outputs
from medcyclegan.errors import InputError, OutputError
from medcyclegan.io.dicom_writer import DicomIdentity, DicomSource, new_dicom_source, write_dicom_series
from medcyclegan.io.readers import read_volume
from medcyclegan.io.volume import Geometry

# The source's patient and study (a Latin-1 name: copied with its character set).
PATIENT = {
    "SpecificCharacterSet": "ISO_IR 100",
    "PatientName": "Müller^Jörg",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "StudyID": "S1",
    "AccessionNumber": "A123",
    "ReferringPhysicianName": "Dr^Who",
    "SeriesNumber": 7,
    "PatientPosition": "HFS",
}
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
          "SpecificCharacterSet", "PatientPosition")  # fmt: skip
_ROW, _COLUMN = np.array([np.cos(0.3), np.sin(0.3), 0.0]), np.array([-np.sin(0.3), np.cos(0.3), 0.0])
_TILT = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.2), -np.sin(0.2)], [0.0, np.sin(0.2), np.cos(0.2)]])
# name -> (shape of the stored slices (columns, rows, slices), write_dicom_series options)
SERIES = {
    "axial-lps": ((24, 20, 5), {}),
    "axial-ras": ((24, 20, 5), {"orientation": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)}),
    "oblique": ((24, 20, 5), {"orientation": (*(_TILT @ _ROW), *(_TILT @ _COLUMN))}),
    "coronal": ((24, 6, 20), {"orientation": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)}),
    "feet-first": (
        (24, 20, 5),
        {
            "orientation": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            "reverse_files": True,
            "tags": {"PatientPosition": "FFS"},
        },
    ),
}


def mr_series(write_dicom_series, name: str, variant: str = "axial-lps", **options) -> tuple[Path, str]:
    """An MR series (stored values = the MR values, no rescale) of one :data:`SERIES` variant."""
    shape, settings = SERIES[variant]
    settings = {**settings, **options}
    tags = {**PATIENT, **settings.pop("tags", {})}
    return write_dicom_series(
        name, head(shape, "mr"), modality="MR", intercept=0.0, description="T1 ax", tags=tags, **settings
    )


def slices(folder: Path) -> list[pydicom.Dataset]:
    """Every file of a series folder, read with pydicom, in file name order."""
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def voxel_centres(geometry: Geometry) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, in RAS voxel order, (N, 3)."""
    index = np.indices(geometry.ras_shape).reshape(3, -1)
    return (geometry.ras_affine[:3, :3] @ index + geometry.ras_affine[:3, 3:]).T


def assert_same_voxel_centres(a: Geometry, b: Geometry) -> None:
    assert a.ras_shape == b.ras_shape
    assert np.abs(voxel_centres(a) - voxel_centres(b)).max() <= 1e-3


def pixel_centres(ds: pydicom.Dataset) -> np.ndarray:
    """LPS coordinates of a slice's pixel centres from its own attributes, (rows, columns, 3)."""
    position = np.array(ds.ImagePositionPatient, float)
    row, column = (
        np.array(ds.ImageOrientationPatient[:3], float),
        np.array(ds.ImageOrientationPatient[3:], float),
    )
    between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
    j, i = np.mgrid[: ds.Rows, : ds.Columns]
    return position + i[..., None] * between_columns * row + j[..., None] * between_rows * column


@pytest.fixture
def model(trained_run: TrainedRun) -> ConversionModel:
    return load_model(trained_run.run, device="cpu")


@pytest.mark.parametrize("variant", list(SERIES))
def test_a_series_from_an_mr_series_keeps_its_grid_patient_study_and_hu(
    model: ConversionModel, tmp_path: Path, write_dicom_series, variant: str
) -> None:
    source, source_uid = mr_series(write_dicom_series, "mr", variant)
    (series,) = convert_paths(model, source, tmp_path / "sct", output_format="dicom")
    (nifti,) = convert_paths(model, source, tmp_path / "sct.nii.gz")
    assert series == tmp_path / "sct"
    written, originals = slices(series), {ds.SOPInstanceUID: ds for ds in slices(source)}
    assert [p.name for p in sorted(series.iterdir())] == [
        f"CT{k:04d}.dcm" for k in range(1, len(originals) + 1)
    ]
    first = next(iter(originals.values()))
    uids = {ds.SOPInstanceUID for ds in written}
    assert len(uids) == len(written) == len(originals) and not uids & originals.keys()
    for k, ds in enumerate(written):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesInstanceUID == written[0].SeriesInstanceUID != source_uid
        assert ds.SeriesNumber == 1007 and ds.InstanceNumber == k + 1
        for keyword in COPIED:
            assert ds[keyword].value == first[keyword].value, keyword
        assert ds.SeriesDescription.startswith("synthetic CT from MR by medcyclegan")
        assert "model run/last.pt" in ds.ImageComments and source_uid in ds.DerivationDescription
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.pixel_array.dtype == np.int16
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.RescaleType) == (1.0, 0.0, "HU")
        assert [float(v) for v in ds.WindowCenter] == [40.0, 400.0]
        # The MR slice it was made from lies exactly where it does (pydicom's view of the geometry).
        (reference,) = ds.SourceImageSequence
        original = originals[reference.ReferencedSOPInstanceUID]
        assert reference.ReferencedSOPClassUID == original.SOPClassUID == pydicom.uid.MRImageStorage
        assert (ds.Rows, ds.Columns) == (original.Rows, original.Columns)
        np.testing.assert_allclose(pixel_centres(ds), pixel_centres(original), rtol=0, atol=1e-3)
        assert float(ds.SliceThickness) == pytest.approx(float(ds.SpacingBetweenSlices), abs=1e-9)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(2.5, abs=1e-6)
    # The package's reader: the source's grid, and exactly the NIfTI output's HU.
    back, mr, reference = read_volume(series), read_volume(source), read_volume(nifti)
    assert_same_voxel_centres(back.geometry, mr.geometry)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, reference.array)
    # SimpleITK on its own: the source series' grid, the NIfTI file's voxels.
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    original_image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source)))
    assert image.GetSize() == original_image.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), original_image.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), original_image.GetOrigin(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), original_image.GetDirection(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    )


@pytest.mark.parametrize("affine", [OBLIQUE, np.diag([-1.2, 0.8, 2.0, 1.0])], ids=["oblique", "left-handed"])
def test_a_nifti_input_becomes_a_new_patient_study_and_frame_of_reference(
    cli, trained_run: TrainedRun, tmp_path: Path, write_nifti, affine: np.ndarray
) -> None:
    path = write_nifti("in/brain.nii.gz", head((24, 20, 4), "mr"), affine)
    study = pydicom.uid.generate_uid()
    args = ("convert", path, "-m", trained_run.run, "--device", "cpu")
    result = cli(*args, "-o", tmp_path / "sct", "--output-format", "dicom", "--dicom-patient-name", "Doe^Jane",
                 "--dicom-patient-id", "ID-7", "--dicom-study-uid", study)  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.strip() == str(tmp_path / "sct")
    assert [line.split()[0] for line in result.err.splitlines() if line.strip()] == ["INFO"]  # no chatter
    assert cli(*args, "-o", tmp_path / "sct.nii.gz").code == 0
    written = slices(tmp_path / "sct")
    assert len(written) == 4
    for ds in written:
        assert (str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID) == ("Doe^Jane", "ID-7", study)
        assert pydicom.uid.UID(ds.FrameOfReferenceUID).is_valid
        assert ds.FrameOfReferenceUID == written[0].FrameOfReferenceUID
        assert (
            ds.SeriesDescription.startswith("synthetic CT")
            and "file brain.nii.gz" in ds.DerivationDescription
        )
        assert "SourceImageSequence" not in ds and ds.SeriesNumber == 1000
    back, reference = read_volume(tmp_path / "sct"), read_volume(tmp_path / "sct.nii.gz")
    assert_same_voxel_centres(back.geometry, read_volume(path).geometry)
    np.testing.assert_array_equal(back.array, reference.array)
    # Without identifiers: the case name as patient, a new study.
    assert cli(*args, "-o", tmp_path / "plain", "--output-format", "dicom").code == 0
    plain = slices(tmp_path / "plain")[0]
    assert (str(plain.PatientName), plain.PatientID) == ("brain", "brain")
    assert plain.StudyInstanceUID != study and plain.FrameOfReferenceUID != written[0].FrameOfReferenceUID


def test_writing_again_never_reuses_uids_and_overwrite_replaces_the_whole_series(
    cli, trained_run: TrainedRun, tmp_path: Path, write_dicom_series
) -> None:
    source, _ = mr_series(write_dicom_series, "mr")
    out = tmp_path / "out" / "sct"
    args = (
        "convert",
        source,
        "-o",
        out,
        "-m",
        trained_run.run,
        "--device",
        "cpu",
        "--output-format",
        "dicom",
    )
    assert cli(*args).code == 0
    before = slices(out)
    (out / "CT9999.dcm").write_bytes((out / "CT0001.dcm").read_bytes())  # a slice of an older, longer series
    line = one_error_line(cli(*args))
    assert line == f"error: {out}: already exists; pass --overwrite to replace it"
    assert cli(*args, "--overwrite").code == 0
    after = slices(out)
    assert len(after) == len(before) == 5  # the stray slice went with the old series
    assert after[0].SeriesInstanceUID != before[0].SeriesInstanceUID
    assert not {d.SOPInstanceUID for d in after} & {d.SOPInstanceUID for d in before}
    assert [ds.pixel_array.tolist() for ds in after] == [ds.pixel_array.tolist() for ds in before]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sct"]  # no temporary left


def test_a_folder_of_inputs_gives_one_series_folder_per_case(
    model: ConversionModel, tmp_path: Path, write_dicom_series, write_nifti
) -> None:
    mr_series(write_dicom_series, "in/p1/T1")
    write_nifti("in/p2/brain.nii.gz", head((24, 20, 4), "mr"), OBLIQUE)
    written = convert_paths(model, tmp_path / "in", tmp_path / "out", output_format="dicom")
    assert sorted(written) == [tmp_path / "out" / "p1" / "T1", tmp_path / "out" / "p2" / "brain"]
    assert [len(slices(folder)) for folder in sorted(written)] == [5, 4]
    p1, p2 = (slices(folder)[0] for folder in sorted(written))
    assert p1.PatientID == "tiny" and p2.PatientID == "brain" and p1.StudyInstanceUID != p2.StudyInstanceUID


def test_a_series_folder_inside_another_is_refused(tmp_path: Path, write_dicom_series, write_nifti) -> None:
    """in/p1 is a series and holds p1/sub/c.nii.gz: out/p1/sub/c would lie inside the series out/p1."""
    write_dicom_series("in/p1", head((12, 10, 3), "ct"))
    write_nifti("in/p1/sub/c.nii.gz", head((12, 10, 3), "ct"))
    with pytest.raises(OutputError, match="would lie inside the output series folder") as caught:
        plan_conversion(identity_ct_model(), tmp_path / "in", tmp_path / "out", output_format="dicom")
    assert str(caught.value).startswith(f"{tmp_path / 'out' / 'p1' / 'sub' / 'c'}:")
    assert not (tmp_path / "out").exists()


class StyledIdentity(torch.nn.Module):
    """Returns its input at every style: a model with styles whose samples all agree."""

    style_dim = 2

    def set_style(self, code: torch.Tensor | None) -> None:
        self.code = code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_attention_and_std_maps_are_nifti_beside_the_series(tmp_path: Path, write_nifti) -> None:
    ct = head((24, 20, 4), "ct")
    path = write_nifti("in/ct.nii.gz", ct, OBLIQUE)
    base = identity_ct_model()
    styled = ConversionModel(StyledIdentity(), base.cfg, "ct", "ct", Path("styled.pt"), torch.device("cpu"))
    (series,) = convert_paths(styled, path, tmp_path / "mean", output_format="dicom", samples=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "mean", "mean_std.nii.gz"]
    np.testing.assert_array_equal(read_volume(series).array, read_volume(path).array)  # the identity, in HU
    assert np.asarray(nib.load(tmp_path / "mean_std.nii.gz").dataobj).max() == 0
    (series,) = convert_paths(
        tiny_attention_model(), path, tmp_path / "att", output_format="dicom", save_attention=True
    )
    assert (tmp_path / "att_attention.nii.gz").is_file() and len(slices(series)) == 4


def test_the_identity_model_stores_the_input_hu_exactly(tmp_path: Path, write_dicom_series) -> None:
    """A CT series in, the same HU out: the stored int16 values are the HU, intercept 0."""
    ct = head((24, 20, 5), "ct")
    folder, _ = write_dicom_series("ct", ct, orientation=SERIES["oblique"][1]["orientation"])
    (series,) = convert_paths(identity_ct_model(), folder, tmp_path / "sct", output_format="dicom")
    written = slices(series)
    stored = np.stack([ds.pixel_array.T for ds in written], axis=2)
    np.testing.assert_array_equal(stored, ct)
    hu = [float(ds.RescaleSlope) * ds.pixel_array.T + float(ds.RescaleIntercept) for ds in written]
    np.testing.assert_array_equal(np.stack(hu, axis=2), ct)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_an_itk_input_becomes_a_series_on_its_grid(tmp_path: Path, write_itk, suffix: str) -> None:
    ct = head((24, 20, 4), "ct")
    direction = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # flipped y, like brain1_image.nrrd
    path = write_itk(
        f"in/scan{suffix}", ct, spacing=(0.8, 0.7, 3.0), origin=(-10.0, 20.0, 5.0), direction=direction
    )
    (series,) = convert_paths(identity_ct_model(), path, tmp_path / "sct", output_format="dicom")
    back, source = read_volume(series), read_volume(path)
    assert_same_voxel_centres(back.geometry, source.geometry)
    np.testing.assert_array_equal(back.array, source.array)
    assert f"file scan{suffix}" in slices(series)[0].DerivationDescription


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("missing", ["FrameOfReferenceUID", "StudyInstanceUID"])
def test_a_source_without_what_the_series_needs_is_one_line(
    cli, trained_run: TrainedRun, tmp_path: Path, write_dicom_series, missing: str
) -> None:
    source, _ = mr_series(write_dicom_series, "mr", omit=(missing,))
    out = tmp_path / "sct"
    result = cli(
        "convert", source, "-o", out, "-m", trained_run.run, "--device", "cpu", "--output-format", "dicom"
    )
    line = one_error_line(result)
    assert f"has no {missing}" in line and str(source / "IM0000.dcm") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mr"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, on the bad UID the test writes
def test_a_slice_of_another_frame_of_reference_or_a_bad_uid_is_one_line(
    model: ConversionModel, tmp_path: Path, write_dicom_series
) -> None:
    source, _ = mr_series(write_dicom_series, "mr")
    odd = source / "IM0003.dcm"
    ds = pydicom.dcmread(odd)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(odd)
    with pytest.raises(InputError, match=r"has FrameOfReferenceUID .* where its series has") as caught:
        convert_paths(model, source, tmp_path / "sct", output_format="dicom")
    assert str(caught.value).startswith(f"{odd}: ")
    bad, _ = mr_series(write_dicom_series, "bad", tags={"StudyInstanceUID": "1.2.x"})
    with pytest.raises(InputError, match="has an invalid StudyInstanceUID"):
        convert_paths(model, bad, tmp_path / "sct", output_format="dicom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "mr"]


def test_outputs_a_series_cannot_be_written_to_are_one_line_each(
    cli, trained_run: TrainedRun, tmp_path: Path, write_dicom_series, write_nifti
) -> None:
    source, _ = mr_series(write_dicom_series, "mr")
    args = ("convert", source, "-m", trained_run.run, "--device", "cpu", "--output-format", "dicom")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    assert "is a file" in assert_clean_error(cli(*args, "-o", a_file), a_file)
    assert "is a volume file name" in one_error_line(cli(*args, "-o", tmp_path / "sct.nii.gz"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    line = one_error_line(cli(*args, "-o", other, "--overwrite"))
    assert "holds notes.txt, which is not a DICOM file" in line and (other / "notes.txt").is_file()
    assert "--output-format dicom writes CT" in one_error_line(cli(*args, "-o", tmp_path / "x", "--to", "mr"))
    line = one_error_line(cli(*args, "-o", tmp_path / "x", "--dicom-patient-id", "P"))
    assert "keeps the series' own patient and study" in line and str(source) in line
    line = one_error_line(cli(*args[:-2], "-o", tmp_path / "x.nii.gz", "--dicom-patient-id", "P"))
    assert "need --output-format dicom" in line
    line = one_error_line(cli(*args, "-o", tmp_path / "x", "--dicom-study-uid", "1.02.x"))
    assert "--dicom-study-uid must be a DICOM UID" in line
    assert "--output-format must be one of volume, dicom" in one_error_line(
        cli(*args[:-1], "nifti", "-o", tmp_path / "x")
    )
    # An output folder holding the input would delete it when replaced.
    inside = write_nifti("out/mr.nii.gz", head((24, 20, 4), "mr"))
    line = one_error_line(cli(*args[:1], inside, *args[2:], "-o", tmp_path / "out", "--overwrite"))
    assert "holds the input" in line and inside.is_file()
    assert not (tmp_path / "x").exists() and not (tmp_path / "sct.nii.gz").exists()


def test_a_sheared_grid_cannot_be_dicom(cli, trained_run: TrainedRun, tmp_path: Path, write_nifti) -> None:
    sheared = np.array([[2.0, 0.3, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0], [0, 0, 0, 1]])
    path = write_nifti("sheared.nii.gz", head((24, 20, 4), "mr"), sheared)
    result = cli("convert", path, "-o", tmp_path / "sct", "-m", trained_run.run, "--device", "cpu",
                 "--output-format", "dicom")  # fmt: skip
    line = assert_clean_error(result, path)
    assert "sheared (non-orthogonal) voxel grid" in line and not (tmp_path / "sct").exists()
    # The writer itself refuses it too, and a grid sheared by float noise only is written.
    geometry = Geometry(affine=sheared, shape=(3, 3, 2), dtype="int16", source_format="nifti")
    with pytest.raises(OutputError, match="sheared"):
        write_dicom_series(
            np.zeros((3, 3, 2), np.int16), geometry, tmp_path / "w", source=_source(), description="x"
        )
    noisy = Geometry(
        affine=np.diag([2.0, 2.0, 4.0, 1.0]) + 1e-9, shape=(3, 3, 2), dtype="int16", source_format="nifti"
    )
    write_dicom_series(
        np.zeros((3, 3, 2), np.int16), noisy, tmp_path / "w", source=_source(), description="x"
    )
    assert len(slices(tmp_path / "w")) == 2


def test_an_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = Geometry(
        affine=np.diag([2.0, 2.0, 4.0, 1.0]), shape=(3, 3, 4), dtype="int16", source_format="nifti"
    )
    calls = []

    def interrupted(self, *args, **kwargs) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, *args, **kwargs)

    real = pydicom.Dataset.save_as
    monkeypatch.setattr(pydicom.Dataset, "save_as", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dicom_series(
            np.zeros((3, 3, 4), np.int16), geometry, tmp_path / "sct", source=_source(), description="x"
        )
    assert list(tmp_path.iterdir()) == []


def test_another_process_publishing_first_wins_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers of one series folder never mix slices: the second one to publish fails, cleanly."""
    geometry = Geometry(
        affine=np.diag([2.0, 2.0, 4.0, 1.0]), shape=(3, 3, 4), dtype="int16", source_format="nifti"
    )
    out = tmp_path / "sct"
    real = medcyclegan.io.atomic.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs) -> str:
        made = real(*args, **kwargs)
        if not others:  # the other process writes and publishes its series meanwhile
            others.append(made)
            write_dicom_series(
                np.ones((3, 3, 4), np.int16), geometry, out, source=_source(), description="other"
            )
        return made

    others: list[str] = []

    monkeypatch.setattr(medcyclegan.io.atomic.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(OutputError, match="was created by another process while this one was writing"):
        write_dicom_series(np.zeros((3, 3, 4), np.int16), geometry, out, source=_source(), description="mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sct"]
    assert all(ds.pixel_array.min() == 1 and ds.SeriesDescription == "other" for ds in slices(out))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "moved-aside"])
def test_overwrite_replaces_the_folder_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # a kernel or file system without RENAME_EXCHANGE
        monkeypatch.setattr(medcyclegan.io.atomic, "_renameat2", lambda *args: False)
    geometry = Geometry(
        affine=np.diag([2.0, 2.0, 4.0, 1.0]), shape=(3, 3, 4), dtype="int16", source_format="nifti"
    )
    out = tmp_path / "sct"
    out.mkdir()  # an empty folder is there to be filled, without --overwrite
    write_dicom_series(np.zeros((3, 3, 4), np.int16), geometry, out, source=_source(), description="old")
    longer = Geometry(affine=geometry.affine, shape=(3, 3, 2), dtype="int16", source_format="nifti")
    write_dicom_series(
        np.ones((3, 3, 2), np.int16), longer, out, source=_source(), description="new", overwrite=True
    )
    assert [ds.SeriesDescription for ds in slices(out)] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sct"]


def test_a_non_ascii_patient_name_is_written_in_utf8(tmp_path: Path) -> None:
    source = new_dicom_source(
        DicomIdentity(patient_name="Zoë^Ann", patient_id="Ø1"), "case", "file case.nii.gz"
    )
    geometry = Geometry(
        affine=np.diag([2.0, 2.0, 4.0, 1.0]), shape=(3, 3, 2), dtype="int16", source_format="nifti"
    )
    write_dicom_series(
        np.zeros((3, 3, 2), np.int16), geometry, tmp_path / "sct", source=source, description="x"
    )
    ds = slices(tmp_path / "sct")[0]
    assert (ds.SpecificCharacterSet, str(ds.PatientName), ds.PatientID) == ("ISO_IR 192", "Zoë^Ann", "Ø1")


def test_a_single_dicom_input_writes_beside_itself_by_default(tmp_path: Path) -> None:
    (planned,) = plan_outputs([tmp_path / "mr"], None, False, "ct", output_format="dicom")
    assert planned == tmp_path / "mr_synthct"
    (nifti,) = plan_outputs([tmp_path / "mr"], tmp_path, False, "ct")
    assert nifti == tmp_path / "mr.nii.gz"  # the default format is unchanged


def _source() -> DicomSource:
    return new_dicom_source(DicomIdentity(), "case", "file case.nii.gz")
