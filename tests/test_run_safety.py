"""Run management under attack: what a user owns is never removed or read as data by a run (issue 12).

Each test is a defect found by attacking train's run folder, options and config files.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import (
    SESSION_RUN,
    TrainedRun,
    assert_clean_error,
    folder_locked_by_another_process,
    write_config_yaml,
)

from medcyclegan.errors import OutputError
from medcyclegan.sample_data import write_sample_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's two tiny domains (read-only) and a YAML config of a one-step run."""
    config = write_config_yaml(tmp_path_factory.mktemp("run_safety") / "tiny.yaml", SESSION_RUN)
    return {"mr": trained_run.mr, "ct": trained_run.ct, "config": config}


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".medcyclegan.lock"
    }


def _train(cli, data: dict[str, Path], out: Path, *extra: object):
    return cli("train", "--src", data["mr"], "--tgt", data["ct"], "--out", out, "-c", data["config"],
               "--no-progress", *extra)  # fmt: skip


def test_overwrite_never_removes_files_no_run_wrote(data, cli, tmp_path: Path) -> None:
    # A project folder used as --out: the user's own config.yaml (the one given with -c), a samples/
    # folder of their pictures, a tb/ folder with notes and a checkpoints/ folder of another tool.
    home = tmp_path / "project"
    (home / "samples").mkdir(parents=True)
    (home / "samples" / "photo.png").write_bytes(b"the user's picture")
    (home / "tb").mkdir()
    (home / "tb" / "notes.txt").write_text("mine")
    (home / "checkpoints").mkdir()
    (home / "checkpoints" / "best.pt").write_bytes(b"another tool's model")
    config = home / "config.yaml"
    config.write_text(data["config"].read_text())
    before = _digests(home)
    for extra in ((), ("--overwrite",)):
        result = cli("train", "--src", data["mr"], "--tgt", data["ct"], "--out", home, "-c", config,
                     "--no-progress", *extra)  # fmt: skip
        line = assert_clean_error(result, home, notices_allowed=True)
        if extra:
            assert "no medcyclegan run wrote" in line and "checkpoints/best.pt" in line, line
        assert _digests(home) == before  # nothing removed, nothing moved
    # Only the user's files block it: a folder holding just their notes is fine to train in.
    other = tmp_path / "notes_only"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _train(cli, data, other).code == 0
    assert (other / "notes.txt").read_text() == "mine"


def test_overwrite_still_replaces_a_real_run(data, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(cli, data, run).code == 0
    (run / "checkpoints" / "best.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    result = _train(cli, data, run, "--overwrite")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]


@pytest.mark.parametrize("place", ["src", "inside_src", "inside_tgt_masks"])
def test_a_run_folder_in_the_input_data_is_refused(data, cli, tmp_path: Path, place: str) -> None:
    mr, ct = tmp_path / "mr", tmp_path / "ct"
    shutil.copytree(data["mr"], mr)
    shutil.copytree(data["ct"], ct)
    masks = None
    if place == "src":
        out, option = mr, "--src"
    elif place == "inside_src":
        out, option = mr / "runs" / "a", "--src"
    else:
        masks, option = tmp_path / "masks", "--tgt-masks"
        masks.mkdir()
        out = masks / "run"
    extra = ("--tgt-masks", masks) if masks is not None else ()
    before = {p.name for p in mr.iterdir()}
    result = cli(
        "train", "--src", mr, "--tgt", ct, "--out", out, "-c", data["config"], "--no-progress", *extra
    )
    line = assert_clean_error(result, out, option)
    assert "choose an --out outside it" in line
    assert {p.name for p in mr.iterdir()} == before  # nothing written into the data


def test_a_config_file_that_is_not_yaml_text_is_one_line(data, cli, tmp_path: Path) -> None:
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    folder = tmp_path / "configs"
    folder.mkdir()
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("data:\n  image_size: abc\n")
    cases = [
        (binary, "not a YAML config file"),
        (data["mr"] / "case00.nii.gz", "not a YAML config file"),  # gzip bytes, path without .yaml
        (folder, "is a folder"),
        (tmp_path / "missing" / "run", "config file not found"),  # a path, not a built-in name
        (wrong, "data.image_size must be an integer"),  # the file is named with the wrong value
    ]
    for config, problem in cases:
        result = cli(
            "train", "--src", data["mr"], "--tgt", data["ct"], "--out", tmp_path / "run", "-c", config
        )
        assert problem in assert_clean_error(result, config), (config, result.err)
    assert not (tmp_path / "run").exists()


def test_resume_with_overwrite_is_refused_and_a_resume_with_nothing_to_do_says_so(
    data, cli, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert _train(cli, data, run, "--max-steps", 2).code == 0
    before = _digests(run)
    # Before: --overwrite was silently ignored and the run resumed.
    line = assert_clean_error(_train(cli, data, run, "--resume", "--overwrite"))
    assert "--resume cannot be combined with --overwrite" in line
    assert _digests(run) == before
    # Before: exit 0, "trained to step 2", and no word that no step was made.
    result = cli("train", "--out", run, "--resume", "--max-steps", 1, "--no-progress")
    assert result.code == 0, result.err
    assert "already at step 2" in result.text and "nothing to train" in result.text


def test_out_that_is_a_file_is_named_as_such(data, cli, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = assert_clean_error(_train(cli, data, target), target)
    assert "is a file, not a run folder" in line  # was "cannot create run folder (File exists)"
    assert target.read_text() == "mine"


def test_a_run_killed_while_writing_its_first_log_row_starts_again(data, cli, tmp_path: Path) -> None:
    # A SIGKILL in the first append to metrics.csv leaves a cut header: the folder is still a run's.
    run = tmp_path / "run"
    assert _train(cli, data, run).code == 0
    for name in ("checkpoints", "sources.json"):
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (run / "metrics.csv").write_text("ste")
    result = _train(cli, data, run)
    assert result.code == 0, result.err
    assert "stopped before its first checkpoint" in result.text


def test_an_evaluate_report_never_replaces_an_input(data, cli, tmp_path: Path) -> None:
    pred = tmp_path / "pred.nii.gz"
    shutil.copy(data["ct"] / "case00.nii.gz", pred)
    ref = data["ct"] / "case00.nii.gz"
    digest = hashlib.sha256(pred.read_bytes()).hexdigest()
    # Before: exit 0, pred.nii.gz became JSON text (and pred.nii.csv appeared beside it).
    for out, problem in (
        (pred, "is named like a volume"),
        (tmp_path / "scores.mha", "is named like a volume"),
        (tmp_path / "pred.nii", "is named like a volume"),
    ):
        result = cli("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--overwrite")
        assert problem in assert_clean_error(result, out)
    dicom_like = tmp_path / "IM0001"
    dicom_like.write_bytes(b"not really DICOM, but an input")
    result = cli(
        "evaluate", "--pred", pred, "--ref", ref, "--mask", dicom_like, "--out", dicom_like, "--overwrite"
    )
    assert "the report would replace the input file" in assert_clean_error(result, dicom_like)
    assert hashlib.sha256(pred.read_bytes()).hexdigest() == digest
    assert not list(tmp_path.glob("*.csv"))


def test_a_huge_thread_count_is_one_line(cli, tmp_path: Path) -> None:
    # Before: a MemoryError traceback.
    line = assert_clean_error(cli("--threads", 100000, "info", tmp_path))
    assert "--threads must be at most 1024; got 100000" in line


def test_sigterm_to_the_process_group_saves_the_run_with_data_workers(data, tmp_path: Path) -> None:
    # Slurm's SIGTERM (like Ctrl-C) reaches every process of the group, DataLoader workers included.
    # Before: "RuntimeError: DataLoader worker (pid N) is killed by signal" (traceback), no last.pt.
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medcyclegan", "train", "--src", data["mr"], "--tgt", data["ct"],
           "--out", out, "-c", data["config"], "--no-progress", "--num-workers", "1",
           "--set", "train.max_steps=400", "--set", "optim.n_epochs=100", "--set", "train.save_every_steps=0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(c) for c in cmd], start_new_session=True, stderr=subprocess.PIPE, text=True, env=env
    )
    metrics = out / "metrics.csv"
    try:
        # Two log rows: the loop runs, with its worker started.
        while proc.poll() is None and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "SIGTERM received" in err, err[-2000:]
    assert (out / "checkpoints" / "last.pt").is_file()


def test_convert_refuses_an_output_folder_inside_its_input_folder(data, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(cli, data, run).code == 0
    mr = tmp_path / "mr"
    shutil.copytree(data["mr"], mr)
    # Before: exit 0 and synthetic CTs inside the MR folder, found as MR inputs by the next run on it.
    for out in (mr / "synth", mr):
        line = assert_clean_error(cli("convert", mr, "-o", out, "--model", run, "--device", "cpu"), out)
        assert "is inside the input folder" in line
    assert sorted(p.name for p in mr.iterdir()) == ["case00.nii.gz", "case01.nii.gz"]
    assert cli("convert", mr, "-o", tmp_path / "synth", "--model", run, "--device", "cpu").code == 0


def test_two_sample_data_runs_into_one_folder_cannot_mix(tmp_path: Path) -> None:
    out = tmp_path / "phantom"
    out.mkdir()
    tiny = {"shape": (24, 24, 8), "spacing": (4.0, 4.0, 4.0), "n_train_mr": 1, "n_train_ct": 1, "n_test": 0}
    # Another sample-data process writing there (past its emptiness check): before, this one also
    # found the folder empty and wrote its own subjects among the other's.
    with folder_locked_by_another_process(out):
        with pytest.raises(OutputError, match="another sample-data process"):
            write_sample_dataset(out, seed=1, **tiny)
        assert [p.name for p in out.iterdir()] == [".medcyclegan.lock"]
    # The other process's lock file does not make the folder "not empty"; none is left in the dataset.
    assert write_sample_dataset(out, seed=1, **tiny).train_mr
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "test", "train"]


def test_a_users_folder_named_like_the_trash_is_not_deleted(data, cli, tmp_path: Path) -> None:
    # Before: every ".previous-run.*" folder in --out was deleted at the start, e.g. a user's backup.
    home = tmp_path / "home"
    backup = home / ".previous-run.backup"
    backup.mkdir(parents=True)
    (backup / "thesis.tex").write_text("mine")
    assert _train(cli, data, home).code == 0
    assert (backup / "thesis.tex").read_text() == "mine"


def test_the_same_scans_as_both_domains_are_refused(data, cli, tmp_path: Path) -> None:
    # Before: exit 0; MR scans were normalised as CT and trained on as the target domain.
    result = cli(
        "train", "--src", data["mr"], "--tgt", data["mr"], "--out", tmp_path / "run", "-c", data["config"]
    )
    line = assert_clean_error(result, data["mr"] / "case00.nii.gz")
    assert "--src and --tgt both hold" in line


def test_the_default_run_folder_is_always_a_new_one(data, cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # runs/<this second ... +20 s> taken already (another job of the array, a user's folder): before,
    # the run went into that folder (another job's: refused mid-start; a user's: trained among its files).
    now = datetime.datetime.now()
    taken = [(now + datetime.timedelta(seconds=s)).strftime("%Y%m%d-%H%M%S") for s in range(20)]
    for name in taken:
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "notes.txt").write_text("mine")
    result = cli("train", "--src", data["mr"], "--tgt", data["ct"], "-c", data["config"], "--no-progress")
    assert result.code == 0, result.err
    made = [p for p in (tmp_path / "runs").iterdir() if (p / "checkpoints" / "last.pt").is_file()]
    assert len(made) == 1 and made[0].name.rsplit("-", 1)[0] in taken and made[0].name.endswith("-2")
    assert all(sorted(os.listdir(tmp_path / "runs" / name)) == ["notes.txt"] for name in taken)
