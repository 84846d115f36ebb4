"""Shared pytest fixtures: the session's trained run, writers of tiny volumes, the CLI, real-data paths.

``trained_run`` is the one tiny model of the whole session (trained once through the public API);
tests that need *a* trained model use it read-only (it is checked unchanged at the end of the
session) and copy it to ``tmp_path`` to change it. Tests of training itself train their own.

The writers are factory fixtures (call them with a file name under ``tmp_path``) so that tests build
exactly the volume they need, with a geometry they know, using the reference libraries (nibabel,
SimpleITK, pydicom) rather than the code under test.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from tiny import SESSION_RUN, TINY_RUN, CliResult, TrainedRun, digests, write_config_yaml, write_domains

from medcyclegan import parallel
from medcyclegan.cli import main
from medcyclegan.config import load_config
from medcyclegan.train.api import train_from_folders

REAL_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedRun]:
    """The session's tiny MR -> CT run (:data:`tiny.SESSION_RUN`, one step, ``checkpoints/last.pt`` only).

    Trained once through ``train_from_folders`` (so it has ``sources.json``); every file of it must be
    unchanged when the session ends: a test that changes it works on a copy.
    """
    root = tmp_path_factory.mktemp("trained_run")
    mr, ct = write_domains(root)
    run = root / "run"
    train_from_folders(load_config(None, SESSION_RUN), run, src=mr, tgt=ct, show_progress=False)
    config = write_config_yaml(root / "tiny.yaml", {**TINY_RUN, "data.val_fraction": 0.0})
    before = digests(root)
    yield TrainedRun(root=root, mr=mr, ct=ct, run=run, config=config)
    after = digests(root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"a test changed the session's trained run (copy it instead): {sorted(changed)}"


@pytest.fixture
def real_data_dir() -> Path:
    """The shared real scans folder; skips the test when it is absent."""
    if not REAL_DATA_DIR.is_dir():
        pytest.skip(f"real scans not available ({REAL_DATA_DIR})")
    return REAL_DATA_DIR


@pytest.fixture
def write_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_nifti(name, array, affine=None, *, qform_code=1, sform_code=1, slope=None, inter=None)``.

    Writes ``array`` (file voxel order) with nibabel under ``tmp_path`` and returns the path.
    """

    def write(
        name: str,
        array: np.ndarray,
        affine: np.ndarray | None = None,
        *,
        qform_code: int = 1,
        sform_code: int = 1,
        slope: float | None = None,
        inter: float | None = None,
    ) -> Path:
        affine = np.eye(4) if affine is None else affine
        image = nib.Nifti1Image(array, affine)
        image.header.set_data_dtype(array.dtype)
        image.set_qform(affine, code=qform_code)
        image.set_sform(affine, code=sform_code)
        if slope is not None or inter is not None:
            image.header.set_slope_inter(1.0 if slope is None else slope, 0.0 if inter is None else inter)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(path))
        return path

    return write


@pytest.fixture
def write_itk(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_itk(name, array_xyz, spacing, origin, direction)`` (ITK LPS geometry, mm).

    ``array_xyz`` is indexed (x, y, z) like the file's voxel order; ``direction`` is row-major 3x3.
    """

    def write(
        name: str,
        array_xyz: np.ndarray,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        compress: bool = True,
    ) -> Path:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
        image.SetSpacing([float(v) for v in spacing])
        image.SetOrigin([float(v) for v in origin])
        image.SetDirection([float(v) for v in direction])
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path), useCompression=compress)
        return path

    return write


@pytest.fixture
def write_dicom_series(tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """Factory writing a CT (or MR) series with pydicom, one uint16 slice per file; returns (folder, series UID).

    ``write_dicom_series(folder, hu_xyz, *, spacing=(x, y, z) mm, origin=(x, y, z) LPS mm, slope=1,
    intercept=-1024, description="tiny CT", series_uid=None, skip_slices=(), file_prefix="IM",
    modality="CT", orientation=(1, 0, 0, 0, 1, 0), reverse_files=False, tags={}, omit=())``. Stored
    values are ``(HU - intercept) / slope``; slice k lies at ``origin + k * spacing_z`` along the
    normal of ``orientation`` (ImageOrientationPatient, LPS: +z for the default axial one);
    ``skip_slices`` leaves slices out (to make a gap). ``modality="MR"`` writes MR Image Storage;
    ``reverse_files`` numbers the files and InstanceNumbers from the last slice (as a feet-first
    scanner does); ``tags`` sets further elements on every slice (``{"PatientPosition": "FFS"}``),
    ``omit`` deletes elements (``("FrameOfReferenceUID",)``).
    """

    def write(
        folder_name: str,
        hu_xyz: np.ndarray,
        *,
        spacing: Sequence[float] = (0.8, 0.7, 2.5),
        origin: Sequence[float] = (-10.0, -20.0, 30.0),
        slope: float = 1.0,
        intercept: float = -1024.0,
        description: str = "tiny CT",
        series_uid: str | None = None,
        skip_slices: Sequence[int] = (),
        file_prefix: str = "IM",
        modality: str = "CT",
        orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        reverse_files: bool = False,
        tags: Mapping[str, object] | None = None,
        omit: Sequence[str] = (),
    ) -> tuple[Path, str]:
        folder = tmp_path / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        series_uid = series_uid or generate_uid()
        study_uid, frame_uid = generate_uid(), generate_uid()
        sop_class = MRImageStorage if modality == "MR" else CTImageStorage
        normal = np.cross(orientation[:3], orientation[3:])
        n_x, n_y, n_z = hu_xyz.shape
        for k in range(n_z):
            if k in skip_slices:
                continue
            number = n_z - k if reverse_files else k + 1
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.Modality = modality
            ds.PatientID = "tiny"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SeriesDescription = description
            ds.InstanceNumber = number
            ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + k * spacing[2] * normal]
            ds.ImageOrientationPatient = [float(v) for v in orientation]
            # PixelSpacing is (row spacing = along y, column spacing = along x).
            ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
            ds.SliceThickness = float(spacing[2])
            ds.Rows, ds.Columns = n_y, n_x
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
            stored = np.rint((hu_xyz[:, :, k].T - intercept) / slope)
            ds.PixelData = stored.astype(np.uint16).tobytes()
            for keyword, value in (tags or {}).items():
                setattr(ds, keyword, value)
            for keyword in omit:
                delattr(ds, keyword)
            name = f"{file_prefix}{number - 1 if reverse_files else k:04d}.dcm"
            ds.save_as(folder / name, enforce_file_format=True)
        return folder, series_uid

    return write


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Iterator[Callable[..., CliResult]]:
    """Runs ``medcyclegan ARGS`` in this process through ``cli.main`` (the console entry point).

    An exception escaping ``main`` is what a user would see as a traceback: it is recorded in ``err``
    (and fails the tests' one-error-line checks) rather than failing the test from inside the CLI.
    The logger's handlers, which the CLI replaces, are restored afterwards.
    """
    logger = logging.getLogger("medcyclegan")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps log lines at the terminal width
    # torch is loaded in this process already, so --threads auto (the default) could only re-set its
    # thread count, after a load reading: keep the test process's count, and restore our loops'
    # setting afterwards (tests of auto itself: test_threads.py).
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    monkeypatch.setattr(parallel, "_threads", parallel._threads)

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["medcyclegan", *(str(a) for a in args)])
        capsys.readouterr()
        code, escaped = 0, ""
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            code, escaped = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return CliResult(code, out, err + escaped)

    yield run
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
