"""Resuming: requeued jobs (same command line), the data a run trained on, and step-based schedules.

Issue 12 items 6, 8 and 9: ``--resume`` on changed data is refused naming the file; the same command
line plus ``--resume`` (or ``--auto-resume``, which also starts the run) is accepted when its values
equal the stored ones; ``--steps N`` trains exactly N steps past the epoch schedule, and
``--max-steps`` beyond the schedule is refused before training. Weights are compared bit for bit only
between runs of this one process (same thread count).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import TINY_RUN, TrainedRun, files, head, one_error_line, tiny_config, write_config_yaml

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.errors import ConfigError
from medcyclegan.models import CycleGAN
from medcyclegan.train.data_record import data_changes, record_data
from medcyclegan.train.info import describe
from medcyclegan.train.trainer import Trainer

NETS = ("G_AB", "G_BA", "D_A", "D_B")


def weights(run: Path) -> dict[str, torch.Tensor]:
    data = load_checkpoint(run / "checkpoints" / "last.pt")
    return {f"{net}.{k}": v for net in NETS for k, v in data[net].items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different[:5]


def logged(run: Path, column: str) -> list[float]:
    with open(run / "metrics.csv", newline="") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def data(trained_run: TrainedRun) -> dict[str, Path]:
    """The session's training folders and its config file: tiny.TINY_RUN without validation, i.e.
    2 + 1 epochs of 4 steps (12 steps), a log row every step. Read-only: tests copy what they change."""
    return {"mr": trained_run.mr, "ct": trained_run.ct, "config": trained_run.config}


def copy_data(data: dict[str, Path], folder: Path) -> tuple[Path, Path]:
    """A private copy of the training folders (tests change them)."""
    return shutil.copytree(data["mr"], folder / "mr"), shutil.copytree(data["ct"], folder / "ct")


def requeued_command(mr: Path, ct: Path, out: Path, config: Path) -> tuple[object, ...]:
    # One thread count: bit-identical results need it, and auto follows the machine's load.
    return ("--threads", 1, "train", "--src", mr, "--tgt", ct, "--out", out, "-c", config, "--max-steps", 6,
            "--image-size", 32, "--set", "train.save_every_steps=1", "--no-progress", "--auto-resume")  # fmt: skip


# ------------------------------------------------------------------ item 8: requeued jobs


def test_auto_resume_starts_then_resumes_the_same_command_exactly(
    data, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = cli(*requeued_command(data["mr"], data["ct"], tmp_path / "straight", data["config"]))
    assert straight.code == 0, straight.err
    assert "trained to step 6" in straight.out

    # The first job is preempted after 3 steps (SIGTERM: checkpoint saved, exit 130) ...
    original = CycleGAN.train_step
    steps = []

    def preempted(self: CycleGAN, batch):
        losses = original(self, batch)
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a batch system sends; the trainer's handler stops
        return losses

    monkeypatch.setattr(CycleGAN, "train_step", preempted)
    command = requeued_command(data["mr"], data["ct"], tmp_path / "run", data["config"])
    # An earlier job was killed before its first checkpoint: it left the config it writes first and
    # log rows that describe no saved state.
    (tmp_path / "run").mkdir()
    shutil.copy(tmp_path / "straight" / "config.yaml", tmp_path / "run" / "config.yaml")
    rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    (tmp_path / "run" / "metrics.csv").write_text("\n".join(rows[:3]) + "\n")
    first = cli(*command)
    assert first.code == 130, first.err
    assert "no checkpoint in" in first.text and "starting the run" in first.text
    monkeypatch.undo()
    # ... and requeued with the very same command line: it resumes and ends where the straight run did.
    second = cli(*command)
    assert second.code == 0, second.err
    assert "resumed from" in second.text and "at epoch 0, step 3" in second.text, second.err
    assert "trained to step 6" in second.out
    assert_same_weights(tmp_path / "straight", tmp_path / "run")
    assert logged(tmp_path / "run", "step") == list(range(1, 7))


def test_resume_accepts_the_config_and_options_it_was_started_with(data, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start = ("train", "--src", data["mr"], "--tgt", data["ct"], "--out", run, "-c", data["config"],
             "--ngf", 8, "--set", "optim.lr=0.0002", "--max-steps", 2, "--no-progress")  # fmt: skip
    assert cli(*start).code == 0
    again = cli(*start[:-3], "--max-steps", 3, "--no-progress", "--resume")
    assert again.code == 0, again.err
    assert "trained to step 3" in again.out
    # Without --config, options equal to the stored values are accepted too.
    again = cli("train", "--out", run, "--resume", "--image-size", 32, "--set", "model.ngf=8", "--max-steps", 4,
                "--no-progress")  # fmt: skip
    assert again.code == 0, again.err
    assert "trained to step 4" in again.out


def test_resume_refuses_a_real_change_naming_key_stored_and_given_value(data, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start = ("train", "--src", data["mr"], "--tgt", data["ct"], "--out", run, "-c", data["config"],
             "--max-steps", 1, "--no-progress")  # fmt: skip
    assert cli(*start).code == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    line = one_error_line(
        cli("train", "--out", run, "--resume", "--image-size", 64, "--max-steps", 2), notices_allowed=True
    )
    assert "cannot change data.image_size (stored 32, given 64) when resuming" in line
    changed = tmp_path / "changed.yaml"
    write_config_yaml(changed, {**TINY_RUN, "data.val_fraction": 0.0, "model.ngf": 16, "optim.batch_size": 3})
    line = one_error_line(cli(*start[:8], changed, "--max-steps", 2, "--resume"), notices_allowed=True)
    assert "model.ngf (stored 8, given 16)" in line and "optim.batch_size (stored 2, given 3)" in line
    line = one_error_line(cli(*start, "--auto-resume", "--overwrite"), notices_allowed=True)
    assert "--auto-resume cannot be combined with --overwrite" in line
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_the_trainer_refuses_a_changed_config_on_resume(
    data, trained_run: TrainedRun, tmp_path: Path
) -> None:
    run = shutil.copytree(trained_run.run, tmp_path / "run")  # tiny_config's run, trained to step 1
    with pytest.raises(ConfigError, match=r"loss\.lambda_cycle \(stored 10\.0, given 5\.0\)"):
        Trainer(tiny_config(**{"loss.lambda_cycle": 5.0}), run, files(data["mr"]), files(data["ct"]),
                resume=run, show_progress=False)  # fmt: skip


# ------------------------------------------------------------ item 6: the data a run trained on


def test_the_checkpoint_and_data_json_record_every_input_file(data, tmp_path: Path) -> None:
    mr, ct = files(data["mr"]), files(data["ct"])
    Trainer(tiny_config(**{"train.max_steps": 1}), tmp_path, mr, ct, val_src_paths=mr[:1],
            show_progress=False).fit()  # fmt: skip
    record = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["data"]
    assert json.loads((tmp_path / "data.json").read_text()) == record
    src = record["roles"]["src"]
    assert [e["name"] for e in src] == ["case00.nii.gz", "case01.nii.gz"]
    assert [e["sha256"] for e in src] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in mr]
    assert [e["size"] for e in src] == [p.stat().st_size for p in mr]
    assert src[0]["path"] == os.path.abspath(mr[0]) and src[0]["mtime_ns"] == mr[0].stat().st_mtime_ns
    assert [e["name"] for e in record["roles"]["val_src"]] == ["case00.nii.gz"]
    assert record["roles"]["val_tgt"] == [] and record["roles"]["tgt_masks"] == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("rewrite", "--tgt: case01.nii.gz changed ("),
        ("add", "--src: case02.nii.gz added"),
        ("remove", "--tgt: case00.nii.gz removed"),
        ("rename", "--src: case00.nii.gz renamed to case09.nii.gz"),  # the order changes
        ("validation", "--val-src: case00.nii.gz changed (same size, other content)"),
    ],
)
def test_resume_on_changed_data_is_refused_naming_the_file(
    data, cli, tmp_path: Path, change: str, expected: str
) -> None:
    mr, ct = copy_data(data, tmp_path)
    val = shutil.copytree(data["mr"], tmp_path / "val")
    run = tmp_path / "run"
    start = cli("train", "--src", mr, "--tgt", ct, "--val-src", val, "--val-tgt", ct, "--out", run,
                "-c", data["config"], "--max-steps", 1, "--no-progress")  # fmt: skip
    assert start.code == 0, start.err
    if change == "rewrite":
        image = head((40, 44, 7), "ct", 5)  # one slice more: another size
        nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 4.0, 1.0])), ct / "case01.nii.gz")
    elif change == "add":
        shutil.copy(mr / "case00.nii.gz", mr / "case02.nii.gz")
    elif change == "remove":
        (ct / "case00.nii.gz").unlink()
    elif change == "rename":
        (mr / "case00.nii.gz").rename(mr / "case09.nii.gz")
    else:
        target = val / "case00.nii.gz"
        raw = bytearray(target.read_bytes())
        raw[-20] ^= 0xFF  # same size, one byte of other content
        target.write_bytes(bytes(raw))
    before = (run / "checkpoints" / "last.pt").read_bytes()
    line = one_error_line(cli("train", "--out", run, "--resume", "--max-steps", 2), notices_allowed=True)
    assert line.startswith(f"error: {run / 'checkpoints' / 'last.pt'}: the training data differs"), line
    assert expected in line, line
    assert "resume with the same data, or start a new run in another --out" in line
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_accepts_the_same_content_moved_and_touched(data, cli, tmp_path: Path) -> None:
    mr, ct = copy_data(data, tmp_path / "node1")
    run = tmp_path / "run"
    for out, steps in ((tmp_path / "straight", 4), (run, 2)):
        start = cli("train", "--src", mr, "--tgt", ct, "--out", out, "-c", data["config"], "--max-steps", steps,
                    "--no-progress")  # fmt: skip
        assert start.code == 0, start.err
    # A requeued job on another node: the data folder is mounted elsewhere, the files were touched.
    moved = tmp_path / "node2"
    shutil.move(tmp_path / "node1", moved)
    for path in [*files(moved / "mr"), *files(moved / "ct")]:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    resumed = cli("train", "--out", run, "--resume", "--src", moved / "mr", "--tgt", moved / "ct",
                  "--max-steps", 4, "--no-progress")  # fmt: skip
    assert resumed.code == 0, resumed.err
    assert "trained to step 4" in resumed.out and "now read from another place" in resumed.text
    assert_same_weights(tmp_path / "straight", run)
    record = load_checkpoint(run / "checkpoints" / "last.pt")["data"]
    assert record["roles"]["src"][0]["path"] == os.path.abspath(moved / "mr" / "case00.nii.gz")


def test_a_checkpoint_without_a_data_record_resumes_with_a_warning(data, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start = cli("train", "--src", data["mr"], "--tgt", data["ct"], "--out", run, "-c", data["config"],
                "--max-steps", 1, "--no-progress")  # fmt: skip
    assert start.code == 0, start.err
    last = run / "checkpoints" / "last.pt"
    old = load_checkpoint(last)
    del old["data"]  # as written before the record existed
    torch.save(old, last)
    resumed = cli("train", "--out", run, "--resume", "--max-steps", 2, "--no-progress")
    assert resumed.code == 0, resumed.err
    assert "has no record of its training data" in resumed.text and "trained to step 2" in resumed.out
    assert "data" in load_checkpoint(last)  # recorded from now on


def test_multi_file_volumes_are_hashed_whole(write_itk, write_dicom_series, tmp_path: Path) -> None:
    header = write_itk("itk/scan.mhd", np.arange(60, dtype=np.int16).reshape(3, 4, 5), compress=False)
    series, _uid = write_dicom_series("dicom/ct", np.zeros((4, 5, 3)))
    before = record_data({"src": [header], "tgt": [series]})
    raw = header.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:-1] + b"\x01")  # the header is unchanged; its voxel data is not
    slice_file = sorted(series.glob("*.dcm"))[1]
    slice_file.write_bytes(slice_file.read_bytes()[:-1] + b"\x07")
    after = record_data({"src": [header], "tgt": [series]})
    assert data_changes(before, after) == [
        "--src: scan.mhd changed (same size, other content)",
        "--tgt: ct changed (same size, other content)",
    ]


def test_a_reordered_list_is_a_change() -> None:
    a = {"name": "a", "size": 1, "sha256": "1"}
    b = {"name": "b", "size": 1, "sha256": "2"}
    stored = {"roles": {"src": [a, b]}}
    assert data_changes(stored, {"roles": {"src": [b, a]}}) == ["--src: the same files in another order"]
    assert data_changes(stored, {"roles": {"src": [a, b]}}) == []


# ------------------------------------------------------------------------------ item 9: steps


def test_steps_train_exactly_n_steps_past_the_epoch_schedule(data, tmp_path: Path) -> None:
    mr, ct = files(data["mr"]), files(data["ct"])
    # The epoch schedule is 2 + 1 epochs of 4 steps (12); the step schedule asks for 18.
    trainer = Trainer(tiny_config(**{"optim.n_steps": 18}), tmp_path / "a", mr, ct, show_progress=False)
    result = trainer.fit()
    assert result.step == 18 and result.epoch == 4  # 4 whole epochs and 2 steps of the fifth
    # Constant for 9 steps, then linear decay over 9 (half and half), as the reference over epochs.
    expected = [2e-4 * (1 - max(0, s + 1 - 9) / 10) for s in range(18)]
    assert logged(tmp_path / "a", "lr") == pytest.approx(expected, rel=1e-5)
    assert describe(tmp_path / "a")["total_steps"] == 18

    stopped = Trainer(tiny_config(**{"optim.n_steps": 18, "train.max_steps": 13}), tmp_path / "b", mr, ct,
                      show_progress=False)  # fmt: skip
    assert stopped.fit().step == 13  # past the 12 steps of the epoch schedule, mid-epoch
    resumed = Trainer(tiny_config(**{"optim.n_steps": 18}), tmp_path / "b", mr, ct, resume=tmp_path / "b",
                      show_progress=False)  # fmt: skip
    assert resumed.fit().step == 18
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert logged(tmp_path / "b", "step") == list(range(1, 19))


def test_max_steps_beyond_the_schedule_is_refused_before_training(data, cli, tmp_path: Path) -> None:
    base = ("train", "--src", data["mr"], "--tgt", data["ct"], "-c", data["config"], "--no-progress")
    line = one_error_line(cli(*base, "--out", tmp_path / "a", "--max-steps", 1500), notices_allowed=True)
    assert (
        "train.max_steps 1500 is more than the 12 steps of the epoch schedule (2 + 1 epochs of 4 steps); "
        "use --steps 1500 for a step-based schedule of 1500 steps"
    ) in line
    assert not (tmp_path / "a" / "metrics.csv").exists()
    line = one_error_line(
        cli(*base, "--out", tmp_path / "b", "--steps", 10, "--max-steps", 11), notices_allowed=True
    )
    assert "train.max_steps 11 is more than the 10 steps of optim.n_steps; raise --steps to 11" in line
    result = cli(*base, "--out", tmp_path / "c", "--steps", 14, "--max-steps", 13)
    assert result.code == 0, result.err
    assert "trained to step 13 (epoch 3)" in result.out
    info = cli("info", tmp_path / "c")
    assert "step 13 of 14" in info.out
