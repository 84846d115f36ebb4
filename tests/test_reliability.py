"""Issue 6, end to end at the command line: bad input, outputs, checkpoints, training faults, memory.

Every fault is run through ``medcyclegan.cli.main`` (in-process, with the real error handling of the
entry point; training signals in a real subprocess) and checked for what the user sees (a non-zero
exit and ONE line ``error: <file>: <problem>``, never a traceback) and for what is kept (the input
folder hashed before and after; existing outputs intact; no partial or temporary file left behind).
Reader-level details (every way a file can be broken, fuzzing) live in ``test_io_errors.py`` and
``test_io_fuzz.py``; here each case is checked once per verb that reads it.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny import AFFINE, SESSION_RUN, CliResult, TrainedRun, assert_clean_error, head, save_volume

import medcyclegan.data.cache
import medcyclegan.evaluate
import medcyclegan.io.readers
import medcyclegan.train.data_module
from medcyclegan.checkpoint import checkpoint_config, load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.convert import AIR_VALUE, OUTPUT_DTYPE, load_model, translate_loaded, translate_volume
from medcyclegan.data.normalise import denormalise, output_params
from medcyclegan.data.prepare import prepare_volume, restore_inplane
from medcyclegan.errors import OutputError
from medcyclegan.evaluate import evaluate
from medcyclegan.inference import translate_array
from medcyclegan.io.gzip_io import GzipWriter
from medcyclegan.io.readers import read_volume
from medcyclegan.io.writers import cast_values
from medcyclegan.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ helpers


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden ones too): content hash and permission bits."""
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_dir():
            state[rel] = f"dir {oct(path.stat().st_mode)}"
        else:
            state[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {oct(path.stat().st_mode)}"
    return state


def listing(folder: Path) -> list[str]:
    """Names in ``folder`` including hidden (temporary) files."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def tiny_train(run: Path, mr: Path, ct: Path, **overrides: object) -> Path:
    """A run of its own: the session run's config (one step, no validation) with ``overrides``."""
    cfg = load_config(None, {**SESSION_RUN, **overrides})
    mr_files, ct_files = sorted(mr.glob("*.nii.gz")), sorted(ct.glob("*.nii.gz"))
    Trainer(cfg, run, mr_files, ct_files, show_progress=False).fit()
    return run


@pytest.fixture(scope="module")
def world(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's training folders, trained run (MR <-> CT) and config (read-only), and a good
    input of each modality."""
    good = tmp_path_factory.mktemp("good")
    return {
        "mr": trained_run.mr,
        "ct": trained_run.ct,
        "run": trained_run.run,
        "config": trained_run.config,
        "good_mr": save_volume(good / "mr.nii.gz", head((20, 22, 8), "mr", 5)),
        "good_ct": save_volume(good / "ct.nii.gz", head((20, 22, 8), "ct", 6)),
    }


# --------------------------------------------------------------------------------- 1. bad inputs


def _nifti_gz(image: nib.Nifti1Image) -> bytes:
    return gzip.compress(image.to_bytes(), mtime=0)


def make_bad_input(kind: str, folder: Path) -> Path:
    """One broken input of ``kind`` under ``folder``; returns its path (a file or a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1000, (20, 22, 8)).astype(np.float32)
    if kind == "empty folder":
        (folder / "empty").mkdir()
        return folder / "empty"
    if kind == "folder of non-images":
        (folder / "docs").mkdir()
        (folder / "docs" / "notes.txt").write_text("not an image\n")
        (folder / "docs" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        return folder / "docs"
    path = folder / {"text named .nii": "scan.nii"}.get(kind, "scan.nii.gz")
    good = _nifti_gz(nib.Nifti1Image(noise, AFFINE))
    if kind == "zero-byte .nii.gz":
        path.write_bytes(b"")
    elif kind == "truncated .nii.gz":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "corrupted .nii.gz":
        damaged = bytearray(good)
        for offset in range(len(damaged) * 2 // 3, len(damaged) * 2 // 3 + 8):
            damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
    elif kind == "text named .nii":
        path.write_text("patient notes, not a NIfTI file\n" * 20)
    elif kind == "2D image":
        save_volume(path, noise[:, :, 0])
    elif kind == "4D series":
        save_volume(path, np.stack([noise, noise], axis=-1))
    elif kind == "NaN voxels":
        noise[3, 4, 5] = np.nan
        save_volume(path, noise)
    elif kind == "Inf voxels":
        noise[3, 4, 5] = -np.inf
        save_volume(path, noise)
    elif kind == "constant volume":
        save_volume(path, np.full((20, 22, 8), 7.0, dtype=np.float32))
    else:
        raise ValueError(kind)
    return path


# kind -> what the one error line must say (besides the file name)
BAD_INPUTS = {
    "empty folder": "no volumes found",
    "folder of non-images": "no volumes found",
    "zero-byte .nii.gz": "is empty (0 bytes)",
    "truncated .nii.gz": "truncated",
    "corrupted .nii.gz": "corrupted",
    "text named .nii": "not a NIfTI file",
    "2D image": "is 2D",
    "4D series": "is 4D",
    "NaN voxels": "NaN",
    "Inf voxels": "infinite",
    "constant volume": "constant",
}
# The non-image folder legitimately warns first that it ignored files; every other case is one line.
WARNS_FIRST = {"folder of non-images"}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_convert_refuses_bad_input_with_one_line(kind: str, world, cli, tmp_path: Path) -> None:
    bad = make_bad_input(kind, tmp_path / "in")
    before = snapshot(tmp_path / "in")
    output = tmp_path / "out" / ("converted" if bad.is_dir() else "converted.nii.gz")
    result = cli("convert", bad, "--model", world["run"], "-o", output)
    line = assert_clean_error(result, bad, notices_allowed=kind in WARNS_FIRST)
    assert BAD_INPUTS[kind] in line
    assert snapshot(tmp_path / "in") == before
    assert not output.exists() and listing(output.parent) in ([], ["converted"])
    assert not list(output.parent.rglob("*.nii.gz"))


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_train_refuses_bad_input_with_one_line(kind: str, world, cli, tmp_path: Path) -> None:
    bad = make_bad_input(kind, tmp_path / "in")
    before = snapshot(tmp_path / "in")
    run = tmp_path / "run"
    result = cli(
        "train", "--src", bad, "--tgt", world["ct"], "--out", run, "-c", world["config"], "--no-progress"
    )
    line = assert_clean_error(result, bad, notices_allowed=kind in WARNS_FIRST)
    assert BAD_INPUTS[kind] in line
    assert snapshot(tmp_path / "in") == before
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())


@pytest.mark.parametrize("kind", [k for k in BAD_INPUTS if k != "constant volume"])
def test_evaluate_refuses_bad_input_with_one_line(kind: str, world, cli, tmp_path: Path) -> None:
    bad = make_bad_input(kind, tmp_path / "in")
    before = snapshot(tmp_path / "in")
    reference = world["ct"] if bad.is_dir() else world["good_ct"]
    report = tmp_path / "report" / "eval.json"
    result = cli("evaluate", "--pred", bad, "--ref", reference, "--out", report)
    assert_clean_error(result, bad, notices_allowed=kind in WARNS_FIRST)
    assert snapshot(tmp_path / "in") == before
    assert not report.exists() and not report.with_suffix(".csv").exists()


def test_a_real_subprocess_prints_one_line_and_exits_2(world, tmp_path: Path) -> None:
    """The installed entry point (not only ``main`` in-process) turns errors into one line."""
    bad = make_bad_input("truncated .nii.gz", tmp_path)
    env = {**os.environ, "COLUMNS": "1000"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcyclegan",
            "convert",
            str(bad),
            "-m",
            str(world["run"]),
            "-o",
            str(tmp_path / "o.nii.gz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    result = CliResult(done.returncode, done.stdout, done.stderr)
    assert result.code == 2
    assert "truncated" in assert_clean_error(result, bad)


def test_convert_warns_when_the_input_contradicts_its_modality_and_continues(
    world, cli, tmp_path: Path
) -> None:
    # A CT in HU given to the MR -> CT direction: converted, with a warning that names the file.
    ct_as_mr = save_volume(tmp_path / "in" / "looks_like_ct.nii.gz", head((20, 22, 8), "ct", 3))
    before = snapshot(tmp_path / "in")
    out = tmp_path / "out" / "x.nii.gz"
    result = cli("convert", ct_as_mr, "-m", world["run"], "-o", out)
    assert result.code == 0, result.err
    assert f"{ct_as_mr}: declared MR but" in result.text and "looks like a CT in HU" in result.text
    assert out.is_file() and snapshot(tmp_path / "in") == before


def test_train_warns_on_contradicting_modality_and_on_slices_larger_than_image_size(
    world, cli, tmp_path: Path
) -> None:
    # MR values declared as CT (no voxel below -500 HU): one modality warning per file. Slices are
    # 40 x 44 voxels, larger than image_size 32: one crop warning per volume, naming it.
    before = snapshot(world["mr"])
    run = tmp_path / "run"
    result = cli(
        "train", "--src", world["ct"], "--tgt", world["mr"], "--src-modality", "ct", "--tgt-modality", "ct",
        "--out", run, "-c", world["config"], "--max-steps", "1", "--no-progress",
    )  # fmt: skip
    assert result.code == 0, result.err
    for path in sorted(world["mr"].glob("*.nii.gz")):
        assert result.text.count(f"{path}: declared CT but no voxel is below -500 HU") == 1, result.text
    for path in sorted(world["mr"].glob("*.nii.gz")) + sorted(world["ct"].glob("*.nii.gz")):
        assert result.text.count(f"{path}: slices are 40 x 44 voxels") == 1, result.text
        assert "larger than data.image_size 32: training sees random 32 x 32 crops" in result.text
    assert (run / "checkpoints" / "last.pt").is_file()
    assert snapshot(world["mr"]) == before


def test_dicom_folder_with_two_series_lists_them_and_choosing_one_works(
    world, cli, write_dicom_series, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    first = head((20, 24, 5), "ct", 1).astype(np.float64) + rng.normal(0, 1, (20, 24, 5))
    folder, uid_a = write_dicom_series("study", first, description="axial A", file_prefix="A")
    _, uid_b = write_dicom_series("study", head((20, 24, 4), "ct", 2), description="axial B", file_prefix="B")
    before = snapshot(folder)
    out = tmp_path / "out"
    line = assert_clean_error(
        cli("convert", folder, "-m", world["run"], "--to", "mr", "-o", out / "x.nii.gz"), folder
    )
    assert "holds 2 DICOM series" in line and "FOLDER::SERIES_UID" in line
    assert uid_a in line and uid_b in line and "'axial A'" in line and "5 slices" in line
    line = assert_clean_error(
        cli("train", "--src", world["mr"], "--tgt", folder, "--out", tmp_path / "run", "-c", world["config"]),
        folder,
    )
    assert "FOLDER::SERIES_UID" in line
    # Choosing works, for each series.
    for uid, depth in ((uid_a, 5), (uid_b, 4)):
        target = out / f"{depth}.nii.gz"
        result = cli("convert", f"{folder}::{uid}", "-m", world["run"], "--to", "mr", "-o", target)
        assert result.code == 0, result.err
        assert nib.load(target).shape == (20, 24, depth)
    # Without -o the output goes beside the folder, named after folder and series.
    result = cli("convert", f"{folder}::{uid_b}", "-m", world["run"], "--to", "mr")
    assert result.code == 0, result.err
    assert (folder.parent / f"study_{uid_b}_synthmr.nii.gz").is_file()
    assert snapshot(folder) == before


# ------------------------------------------------------------------------------------- 2. outputs


def test_existing_outputs_are_never_overwritten_without_overwrite(world, cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "mine.nii.gz"
    existing.write_bytes(b"precious")
    report = out / "mine.json"
    report.write_text("{}")
    csv_only = out / "other.csv"  # the CSV written beside other.json
    csv_only.write_text("keep")
    folder_in = tmp_path / "in"
    for name in ("a", "b", "mine"):
        save_volume(folder_in / f"{name}.nii.gz", head((20, 22, 8), "mr", 1))
    before, run_before = snapshot(out), snapshot(world["run"])
    # convert, single file
    line = assert_clean_error(cli("convert", world["good_mr"], "-m", world["run"], "-o", existing), existing)
    assert "already exists; pass --overwrite to replace it" in line
    # convert, folder: one output exists -> nothing at all is converted (a.nii.gz neither)
    assert_clean_error(cli("convert", folder_in, "-m", world["run"], "-o", out), existing)
    # evaluate --out: the JSON, or the CSV beside it
    good_ct = world["good_ct"]
    assert_clean_error(cli("evaluate", "--pred", good_ct, "--ref", good_ct, "--out", report), report)
    result = cli("evaluate", "--pred", good_ct, "--ref", good_ct, "--out", out / "other.json")
    assert_clean_error(result, csv_only, notices_allowed=True)  # refused before scoring
    # train --out with an existing run
    result = cli(
        "train", "--src", world["mr"], "--tgt", world["ct"], "--out", world["run"], "-c", world["config"]
    )
    line = assert_clean_error(result, world["run"])
    assert "--resume" in line and "--overwrite" in line
    # sample-data and demo into a non-empty folder
    assert "--overwrite" in assert_clean_error(cli("sample-data", out), out)
    assert "--overwrite" in assert_clean_error(cli("demo", "--out", out, "--no-progress"), out)
    assert snapshot(out) == before and snapshot(world["run"]) == run_before
    # ... and --overwrite does replace, with a complete file
    result = cli("convert", world["good_mr"], "-m", world["run"], "-o", existing, "--overwrite")
    assert result.code == 0, result.err
    assert nib.load(existing).shape == (20, 22, 8)


def test_evaluate_checks_the_csv_beside_the_report_before_scoring(world, cli, tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("keep")
    result = cli(
        "evaluate", "--pred", world["good_ct"], "--ref", world["good_ct"], "--out", tmp_path / "r.json"
    )
    assert_clean_error(result, tmp_path / "r.csv")


@pytest.mark.parametrize(
    "verb",
    ["convert", "convert-folder", "evaluate", "train", "sample-data"],
)
def test_an_output_under_a_file_is_reported_before_any_work(
    verb: str, world, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root ignores permission bits, so "unwritable" is made portable: the output's parent is a file."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")

    def no_work(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(medcyclegan.io.readers, "read_volume", no_work)
    monkeypatch.setattr(medcyclegan.data.cache, "load_prepared", no_work)
    monkeypatch.setattr(medcyclegan.train.data_module, "load_prepared", no_work)
    target = blocker / "sub"
    args = {
        "convert": ("convert", world["good_mr"], "-m", world["run"], "-o", target / "x.nii.gz"),
        "convert-folder": ("convert", world["mr"], "-m", world["run"], "-o", target),
        "evaluate": (
            "evaluate",
            "--pred",
            world["good_ct"],
            "--ref",
            world["good_ct"],
            "--out",
            target / "r.json",
        ),
        "train": (
            "train",
            "--src",
            world["mr"],
            "--tgt",
            world["ct"],
            "--out",
            target,
            "-c",
            world["config"],
        ),
        "sample-data": ("sample-data", target),
    }[verb]
    if verb == "evaluate":
        monkeypatch.setattr(medcyclegan.evaluate, "read_volume", no_work, raising=False)
    result = cli(*args)
    assert_clean_error(result, blocker)
    assert blocker.read_text() == "a file"


def test_demo_into_a_file_is_one_line(cli, tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("mine")
    assert_clean_error(cli("demo", "--out", target, "--no-progress"), target)
    assert target.read_text() == "mine"


def test_an_unwritable_output_folder_is_reported_before_any_work(world, cli, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            pytest.skip("permission bits are not enforced for this user (root); see the not-a-folder test")
        except PermissionError:
            pass
        result = cli("convert", world["good_mr"], "-m", world["run"], "-o", locked / "x.nii.gz")
        assert "not writable" in assert_clean_error(result, locked)
        result = cli(
            "train",
            "--src",
            world["mr"],
            "--tgt",
            world["ct"],
            "--out",
            locked / "run",
            "-c",
            world["config"],
        )
        assert_clean_error(result, locked)
    finally:
        locked.chmod(0o700)


def _disk_full(written_fraction: float = 0.5) -> Callable[[bytes, Path], None]:
    def fail(data: bytes, path: Path) -> None:
        with open(path, "wb") as handle:  # not Path.write_bytes: tests patch it with this very function
            handle.write(data[: int(len(data) * written_fraction)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return fail


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_a_failed_volume_write_leaves_no_partial_file_and_keeps_the_old_one(
    suffix: str, world, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    target = out / f"synth{suffix}"
    result = cli("convert", world["good_mr"], "-m", world["run"], "-o", target)
    assert result.code == 0, result.err
    before = snapshot(out)
    real_save, real_write = nib.save, sitk.WriteImage

    def full_nifti(image: object, filename: object) -> None:
        real_save(image, filename)
        _disk_full()(Path(filename).read_bytes(), Path(filename))

    def full_itk(image: object, filename: object, *args: object, **kwargs: object) -> None:
        real_write(image, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise RuntimeError("itk::ERROR: ImageFileWriter: No space left on device")

    real_close = GzipWriter.close

    def full_gzip_close(self: GzipWriter) -> None:
        # .nii.gz goes through the gzip writer of gzip_io: the disk fills as the stream ends.
        real_close(self)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", full_nifti)
    monkeypatch.setattr(GzipWriter, "close", full_gzip_close)
    monkeypatch.setattr(sitk, "WriteImage", full_itk)
    result = cli("convert", world["good_mr"], "-m", world["run"], "-o", target, "--overwrite")
    assert "cannot be written" in assert_clean_error(result, target)
    assert snapshot(out) == before  # the previous output intact, no temporary or partial file


def test_a_failed_report_write_leaves_no_partial_file(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = evaluate(world["good_ct"], world["good_ct"])
    json_path = tmp_path / "eval.json"
    report.write(json_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: _disk_full()(data, self))
    with pytest.raises((OSError, OutputError)):
        report.write(json_path, overwrite=True)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before


def test_a_failed_report_write_is_one_line_at_the_cli(world, cli, tmp_path: Path, monkeypatch) -> None:
    json_path = tmp_path / "eval.json"
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: _disk_full()(data, self))
    result = cli("evaluate", "--pred", world["good_ct"], "--ref", world["good_ct"], "--out", json_path)
    assert "No space left" in assert_clean_error(result, json_path, notices_allowed=True)
    assert listing(tmp_path) == []


# What torch.save raises on a full disk: an OSError from Python file objects, or this RuntimeError
# from its C++ zip writer (measured: torch.save to /dev/full on torch 2.13).
SAVE_FAULTS = {
    "OSError": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "RuntimeError": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
}


def _failing_torch_save(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """torch.save writes half of the checkpoint, then fails as a full disk does."""
    real = torch.save

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real(obj, f, *args, **kwargs)
        data = Path(f).read_bytes()
        with open(f, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise SAVE_FAULTS[fault]

    monkeypatch.setattr(torch, "save", full)


@pytest.mark.parametrize("fault", list(SAVE_FAULTS))
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(
    fault: str, world, tmp_path: Path, monkeypatch
) -> None:
    run = shutil.copytree(world["run"], tmp_path / "run")  # trained to step 1
    checkpoints = run / "checkpoints"
    before = snapshot(checkpoints)
    cfg = load_config(None, {**SESSION_RUN, "train.max_steps": 4, "train.save_every_steps": 1})
    trainer = Trainer(
        cfg,
        run,
        sorted(world["mr"].glob("*.nii.gz")),
        sorted(world["ct"].glob("*.nii.gz")),
        resume=run,
        show_progress=False,
    )
    _failing_torch_save(monkeypatch, fault)
    with pytest.raises((OSError, RuntimeError, OutputError)):
        trainer.fit()
    monkeypatch.undo()
    assert snapshot(checkpoints) == before  # no partial or temporary file next to it
    assert load_checkpoint(checkpoints / "last.pt")["step"] == 1


@pytest.mark.parametrize("fault", list(SAVE_FAULTS))
def test_a_failed_checkpoint_write_is_one_line_at_the_cli(
    fault: str, world, cli, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    _failing_torch_save(monkeypatch, fault)
    result = cli(
        "train", "--src", world["mr"], "--tgt", world["ct"], "--out", run, "-c", world["config"],
        "--max-steps", 1, "--no-progress",
    )  # fmt: skip
    line = assert_clean_error(result, run / "checkpoints" / "last.pt", notices_allowed=True)
    assert "cannot be written" in line
    assert listing(run / "checkpoints") == []


# ---------------------------------------------------------------------------------- 3. checkpoints


class _Payload:
    """Unpickling this runs a shell command: the test checks that it never runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def make_bad_checkpoint(kind: str, world: dict[str, Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    good = world["run"] / "checkpoints" / "last.pt"
    path = folder / f"{kind.replace(' ', '_')}.pt"
    raw = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "corrupted":
        damaged = bytearray(raw)
        for offset in range(64, len(damaged), 997):
            damaged[offset] ^= 0x5A
        path.write_bytes(bytes(damaged))
    elif kind == "unsafe pickle":
        torch.save({"format": "medcyclegan-checkpoint", "x": _Payload(folder / "PWNED")}, path)
    elif kind == "other architecture":
        data = load_checkpoint(good)
        # G weights of another width: the shapes differ from what the stored config builds.
        data["G_AB"] = {
            k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.ndim else v for k, v in data["G_AB"].items()
        }
        torch.save(data, path)
    elif kind == "non-finite weights":
        data = load_checkpoint(good)
        name = next(k for k, v in data["G_AB"].items() if v.is_floating_point())
        data["G_AB"][name] = torch.full_like(data["G_AB"][name], float("nan"))
        torch.save(data, path)
    elif kind == "foreign file":
        torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text file":
        path.write_text("hello")
    else:
        raise ValueError(kind)
    return path


CHECKPOINT_FAULTS = {
    "truncated": "corrupted or truncated",
    "corrupted": "corrupted",
    "unsafe pickle": "arbitrary unpickling",
    "other architecture": "does not match this model's architecture",
    "non-finite weights": "NaN or Inf weights",
    "foreign file": "not a medcyclegan checkpoint",
    "random bytes": "",
    "text file": "not a medcyclegan checkpoint: it is a text file",
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_FAULTS))
def test_convert_refuses_a_bad_checkpoint(kind: str, world, cli, tmp_path: Path) -> None:
    checkpoint = make_bad_checkpoint(kind, world, tmp_path / "ckpt")
    before = snapshot(tmp_path / "ckpt")
    out = tmp_path / "out" / "x.nii.gz"
    line = assert_clean_error(cli("convert", world["good_mr"], "-m", checkpoint, "-o", out), checkpoint)
    assert CHECKPOINT_FAULTS[kind] in line
    assert not (tmp_path / "ckpt" / "PWNED").exists()
    assert snapshot(tmp_path / "ckpt") == before and not out.exists()


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "corrupted",
        "unsafe pickle",
        "foreign file",
        "random bytes",
        "text file",
        "other architecture",
    ],
)
def test_info_refuses_a_bad_checkpoint(kind: str, world, cli, tmp_path: Path) -> None:
    checkpoint = make_bad_checkpoint(kind, world, tmp_path / "ckpt")
    before = snapshot(tmp_path / "ckpt")
    line = assert_clean_error(cli("info", checkpoint), checkpoint)
    assert CHECKPOINT_FAULTS[kind] in line
    assert not (tmp_path / "ckpt" / "PWNED").exists()
    assert snapshot(tmp_path / "ckpt") == before


# ---------------------------------------------------------------------------- 4. training faults


def _start_training(run: Path, world: dict[str, Path], *extra: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "1000", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "medcyclegan", "train", "--src", str(world["mr"]), "--tgt", str(world["ct"]),
        "--out", str(run), "-c", str(world["config"]), "--no-progress",
        "--set", "train.steps_per_epoch=1000", *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _logged_steps(run: Path) -> int:
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        return 0
    return max(0, len([line for line in metrics.read_text().splitlines() if line.strip()]) - 1)


def _wait_for_steps(process: subprocess.Popen, run: Path, steps: int, timeout_s: float = 240.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early ({process.returncode}): {process.stderr.read()}")
        done = _logged_steps(run)
        if done >= steps:
            return done
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {steps} training steps within {timeout_s} s")


def _metric_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as handle:
        return [int(float(row["step"])) for row in csv.DictReader(handle)]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_a_checkpoint_exit_130_and_resume_continues(
    sig: signal.Signals, world, cli, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    inputs_before = snapshot(world["mr"]), snapshot(world["ct"])
    process = _start_training(run, world)
    _wait_for_steps(process, run, 2)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert step >= 2
    message = [line for line in stderr.splitlines() if "received" in line]
    assert message == [
        f"{sig.name} received: stopped at step {step}, checkpoint saved to {run / 'checkpoints' / 'last.pt'}; "
        "continue with --resume"
    ], stderr
    result = cli("train", "--out", run, "--resume", "--max-steps", step + 2, "--set", "train.log_every=1")
    assert result.code == 0, result.err
    assert f"trained to step {step + 2}" in result.out
    assert _metric_steps(run) == list(range(1, step + 3))
    assert (snapshot(world["mr"]), snapshot(world["ct"])) == inputs_before


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(world, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = _start_training(run, world, "--set", "train.save_every_steps=2")
    _wait_for_steps(process, run, 5)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    done = _logged_steps(run)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert saved % 2 == 0 and 0 <= done - saved <= 2, (done, saved)
    result = cli("train", "--out", run, "--resume", "--max-steps", saved + 2, "--set", "train.log_every=1")
    assert result.code == 0, result.err
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at epoch 0, step {saved}" in result.text
    assert _metric_steps(run) == list(range(1, saved + 3))  # rows after the checkpoint were redone once


def test_resume_keeps_the_runs_own_checkpoint_interval(world, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ("--no-progress", "--set", "train.save_every_steps=2")
    result = cli("train", "--src", world["mr"], "--tgt", world["ct"], "--out", run, "-c", world["config"], *common[:1],
                 "--max-steps", 2, *common[1:])  # fmt: skip
    assert result.code == 0, result.err
    result = cli("train", "--out", run, "--resume", "--max-steps", 3, "--no-progress")
    assert result.code == 0, result.err
    path = run / "checkpoints" / "last.pt"
    assert checkpoint_config(load_checkpoint(path), path).train.save_every_steps == 2


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(world, cli, tmp_path: Path) -> None:
    # Adam's first update is about lr per weight: at lr 1e30 the second step's losses are not finite.
    run = tmp_path / "run"
    result = cli(
        "train", "--src", world["mr"], "--tgt", world["ct"], "--out", run, "-c", world["config"],
        "--set", "optim.lr=1e30", "--set", "train.save_every_steps=1", "--max-steps", "6", "--no-progress",
    )  # fmt: skip
    line = assert_clean_error(result, run / "checkpoints" / "last.pt", notices_allowed=True)
    assert "became NaN or Inf at step 2" in line and "the last good checkpoint is kept" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


# ------------------------------------------------------------------ 5-6. slab-by-slab conversion


def whole_volume_translation(model, path: Path, *, mask_background: bool = False) -> np.ndarray:
    """The conversion as it was before slabs: every step on the whole volume, then one cast."""
    cfg = model.cfg
    volume = read_volume(path)
    prepared = prepare_volume(volume, model.source_modality, cfg.data)
    translated = translate_array(
        model.generator,
        prepared.image,
        context_slices=cfg.data.context_slices,
        batch_size=4,
        device="cpu",
        canvas=cfg.data.image_size,
    )
    translated = restore_inplane(translated, prepared, mode="bilinear")
    record = (
        cfg.normalisation.target
        if model.source_modality == cfg.data.src_modality
        else cfg.normalisation.source
    )
    out = denormalise(translated, output_params(record))
    if mask_background:
        body = restore_inplane(prepared.mask.astype(np.float32), prepared, mode="nearest") > 0.5
        out = np.where(body, out, np.float32(AIR_VALUE[model.target_modality]))
    return cast_values(out.astype(np.float32), OUTPUT_DTYPE[model.target_modality])


@pytest.fixture(scope="module")
def context_run(world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2.5D model (2 context slices each side) trained at 1.3 mm in-plane: conversion resamples."""
    root = tmp_path_factory.mktemp("context")
    return tiny_train(
        root / "run", world["mr"], world["ct"], **{"data.context_slices": 2, "data.spacing": 1.3}
    )


def _oblique_affine() -> np.ndarray:
    """Voxel axes permuted and flipped relative to RAS (0.9 x 1.1 x 2.5 mm), with an origin."""
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 0], affine[2, 2], affine[3, 3] = -1.1, 0.9, -2.5, 1.0
    affine[:3, 3] = (12.0, -30.0, 40.0)
    return affine


@pytest.mark.parametrize("to", ["ct", "mr"])
@pytest.mark.parametrize("mask_background", [False, True])
def test_slab_conversion_equals_whole_volume_conversion(
    to: str, mask_background: bool, context_run: Path, tmp_path: Path
) -> None:
    # Odd in-plane sizes, neither a multiple of 4 nor of the resampling factor; 9 slices with 2
    # context slices each side: slabs of 1, 2, 3 and 4 slices cut the context at every position.
    model = load_model(context_run, to=to, device="cpu")
    modality = "mr" if to == "ct" else "ct"
    path = save_volume(tmp_path / "in.nii.gz", head((29, 37, 9), modality, 4), _oblique_affine())
    expected = whole_volume_translation(model, path, mask_background=mask_background)
    for batch_size in (1, 2, 3, 4, 9, 50):
        out, geometry, _ = translate_volume(
            model, path, batch_size=batch_size, mask_background=mask_background
        )
        assert out.dtype == np.dtype(OUTPUT_DTYPE[to]) and out.shape == expected.shape == geometry.ras_shape
        if to == "ct":  # int16 HU: equal, or 1 HU apart where float rounding straddles .5
            difference = np.abs(out.astype(np.int32) - expected.astype(np.int32))
            assert difference.max() <= 1 and np.count_nonzero(difference) <= 0.001 * out.size, batch_size
        else:
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3 * float(np.ptp(expected)))


def test_context_slices_cross_slab_boundaries(context_run: Path, tmp_path: Path) -> None:
    """A slab that clipped its context at its own ends (instead of the volume's) would differ here."""
    model = load_model(context_run, to="ct", device="cpu")
    path = save_volume(tmp_path / "in.nii.gz", head((29, 37, 9), "mr", 4))
    whole, _, _ = translate_volume(model, path, batch_size=9)
    one_by_one, _, _ = translate_volume(model, path, batch_size=1)
    assert np.abs(whole.astype(np.int32) - one_by_one.astype(np.int32)).max() <= 1
    # ... and the context does matter to this network: the slices are not translated independently.
    volume = read_volume(path)
    shuffled = volume.with_array(volume.array[:, :, [0, 1, 2, 3, 8, 5, 6, 7, 4]])
    swapped, _ = translate_loaded(model, shuffled, batch_size=9)
    assert not np.array_equal(swapped[:, :, 5], whole[:, :, 5])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_converted_output_keeps_the_input_geometry_for_odd_sizes(
    suffix: str, world, context_run: Path, cli, tmp_path: Path
) -> None:
    for run, shape in ((world["run"], (21, 23, 5)), (context_run, (29, 37, 9))):
        source = save_volume(tmp_path / f"in{shape[0]}.nii.gz", head(shape, "mr", 2), _oblique_affine())
        target = tmp_path / "out" / f"x{shape[0]}{suffix}"
        result = cli("convert", source, "-m", run, "-o", target, "--batch-size", "2")
        assert result.code == 0, result.err
        written, original = read_volume(target), read_volume(source)
        assert written.array.shape == original.array.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
        assert written.array.dtype == np.int16
        if suffix == ".nii.gz":
            assert nib.load(target).shape == nib.load(source).shape
            np.testing.assert_allclose(nib.load(target).affine, nib.load(source).affine, atol=1e-6)


def test_convert_reads_the_input_once_and_holds_no_float_copy_of_the_volume(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(world["run"], to="mr", device="cpu")  # CT -> MR: no body mask is needed
    path = save_volume(tmp_path / "ct.nii.gz", head((64, 64, 160), "ct", 1))
    reads = []
    real_read = medcyclegan.io.readers.read_volume
    monkeypatch.setattr(
        medcyclegan.io.readers, "read_volume", lambda *a, **k: reads.append(a) or real_read(*a, **k)
    )
    volume = medcyclegan.io.readers.read_volume(path)
    reads.clear()
    translate_volume(model, path, batch_size=4)
    assert len(reads) == 1
    # Peak of numpy allocations while translating an already read volume: the float32 output plus
    # a few slabs. The whole-volume path held five float32 copies or more.
    output_bytes = volume.array.size * 4
    tracemalloc.start()
    try:
        translate_loaded(model, volume, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * output_bytes, (peak, output_bytes)
