"""The training run folder: --overwrite leaves nothing of the old run, one trainer at a time, kept
epoch checkpoints, stale temporaries of a killed write, batches larger than the data (issue 12)."""

from __future__ import annotations

import csv
import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY_RUN, TrainedRun, files, folder_locked_by_another_process, tiny_config, write_config_yaml

from medcyclegan.checkpoint import find_checkpoint, load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.convert import load_model
from medcyclegan.errors import CheckpointError, ConfigError, OutputError
from medcyclegan.io import lock as lock_module
from medcyclegan.io.atomic import atomic_path
from medcyclegan.io.lock import LOCK_FILE, is_atomic_temporary
from medcyclegan.train import trainer as trainer_module
from medcyclegan.train.api import train_from_folders
from medcyclegan.train.info import describe
from medcyclegan.train.trainer import RUN_ARTEFACTS, Trainer

REPO = Path(__file__).resolve().parents[1]
# Run A: two one-step epochs with validation, so it writes every artefact (best.pt, epoch_*.pt, samples).
RUN_A = {
    **TINY_RUN,
    "data.val_fraction": 0.0,
    "optim.n_epochs": 2,
    "optim.n_epochs_decay": 0,
    "train.steps_per_epoch": 1,
}
# Run B: one step of a four-step epoch, no validation: it writes last.pt only.
RUN_B = {**TINY_RUN, "data.val_fraction": 0.0, "train.max_steps": 1, "train.sample_every": 100}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's two tiny domains, the configs of runs A and B, and run A trained through the folder API."""
    root = tmp_path_factory.mktemp("run_folder")
    mr, ct = trained_run.mr, trained_run.ct
    run_a = root / "run_a"
    train_from_folders(
        load_config(None, RUN_A), run_a, src=mr, tgt=ct, val_src=mr, val_tgt=ct, show_progress=False
    )
    return {
        "mr": mr,
        "ct": ct,
        "run_a": run_a,
        "config_b": write_config_yaml(
            root / "b.yaml", {k: v for k, v in RUN_B.items() if k != "train.max_steps"}
        ),
    }


def _copy_run_a(world: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(world["run_a"], run)
    return run


def _metric_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- item 2: --overwrite, run ids


def test_the_artefact_list_names_every_file_a_run_writes(world) -> None:
    # Run A writes everything (validation, samples, epoch checkpoints, sources.json): a file missing
    # from RUN_ARTEFACTS would survive --overwrite and mix with the next run.
    names = set(os.listdir(world["run_a"])) - {LOCK_FILE}
    assert names == set(RUN_ARTEFACTS)
    assert RUN_ARTEFACTS[0] == "checkpoints"  # moved aside first (see _move_aside_previous_run)


def test_overwrite_removes_every_artefact_of_the_previous_run(world, cli, tmp_path: Path) -> None:
    run = _copy_run_a(world, tmp_path)
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "samples").is_dir()
    id_a = load_checkpoint(run / "checkpoints" / "last.pt").get("run_id")
    result = cli("train", "--src", world["mr"], "--tgt", world["ct"], "--out", run, "-c", world["config_b"],
                 "--overwrite", "--max-steps", 1, "--no-progress")  # fmt: skip
    assert result.code == 0, result.err
    assert sorted(os.listdir(run / "checkpoints")) == ["last.pt"]  # no best.pt, no epoch_*.pt of A
    assert not (run / "samples").exists() and not (run / "val_metrics.csv").exists()
    assert [int(r["step"]) for r in _metric_rows(run / "metrics.csv")] == [1]
    assert len(list((run / "tb").iterdir())) == 1
    assert not [n for n in os.listdir(run) if n.startswith(trainer_module.TRASH_PREFIX)]
    last = run / "checkpoints" / "last.pt"
    assert load_checkpoint(last).get("run_id") not in (None, id_a)
    assert load_model(run, device="cpu").checkpoint == last  # convert --model RUN takes B's model
    assert describe(run)["best"]["value"] is None  # info: B has no best metric


class _Crash(BaseException):
    """A kill in the middle of --overwrite."""


def test_a_crash_during_overwrite_leaves_no_mix_and_the_next_start_finishes_it(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = _copy_run_a(world, tmp_path)
    real_rename = os.rename
    calls: list[str] = []

    def crash_on_second(src, dst) -> None:
        calls.append(Path(src).name)
        if len(calls) == 2:
            raise _Crash
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_second)
    cfg = load_config(None, RUN_B)
    with pytest.raises(_Crash):
        Trainer(cfg, run, files(world["mr"]), files(world["ct"]), show_progress=False, overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert calls[0] == "checkpoints"
    # Half done: the old run's checkpoints are in the trash, so nothing would use the rest of it...
    assert not (run / "checkpoints").exists() and (run / "config.yaml").is_file()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_checkpoint(run)
    # ... and the next start (even without --overwrite) removes the leftovers and the trash.
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        Trainer(cfg, run, files(world["mr"]), files(world["ct"]), show_progress=False).fit()
    assert "an interrupted --overwrite left config.yaml" in caplog.text
    assert sorted(os.listdir(run / "checkpoints")) == ["last.pt"]
    assert not (run / "samples").exists() and not (run / "val_metrics.csv").exists()
    assert not [n for n in os.listdir(run) if n.startswith(trainer_module.TRASH_PREFIX)]
    assert [int(r["step"]) for r in _metric_rows(run / "metrics.csv")] == [1]


def test_what_a_run_left_before_its_first_checkpoint_is_replaced_with_a_warning(
    world, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # e.g. out of memory at the first step: config.yaml, metrics.csv and tb/ but no checkpoint yet.
    run = _copy_run_a(world, tmp_path)
    shutil.rmtree(run / "checkpoints")
    cfg = load_config(None, RUN_B)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        Trainer(cfg, run, files(world["mr"]), files(world["ct"]), show_progress=False).fit()
    assert "a run that stopped before its first checkpoint left config.yaml, metrics.csv" in caplog.text
    assert [int(r["step"]) for r in _metric_rows(run / "metrics.csv")] == [1]  # not appended to A's rows
    assert not (run / "samples").exists() and not (run / "val_metrics.csv").exists()


def test_run_files_in_a_folder_no_trainer_used_are_not_removed_without_overwrite(
    world, tmp_path: Path
) -> None:
    folder = tmp_path / "project"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "mine.png").write_bytes(b"user data")
    cfg = load_config(None, RUN_B)
    # Not even with --overwrite (and the message does not advise it): samples/ holds no run's sample.
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"holds samples/mine\.png, which no medcyclegan run wrote"):
            Trainer(
                cfg, folder, files(world["mr"]), files(world["ct"]), show_progress=False, overwrite=overwrite
            )
    assert (folder / "samples" / "mine.png").read_bytes() == b"user data"


def test_a_best_checkpoint_of_another_run_is_never_used(
    world, trained_run: TrainedRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = shutil.copytree(trained_run.run, tmp_path / "run_b")  # like run B: one step, last.pt only
    # A folder mixed by hand (or by an older medcyclegan): run A's best.pt beside run B's last.pt.
    shutil.copy(world["run_a"] / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        assert find_checkpoint(run) == run / "checkpoints" / "last.pt"
        assert describe(run)["best"]["value"] is None
    assert "best.pt: belongs to another run than last.pt" in caplog.text
    # best.pt of the same run is still preferred
    assert find_checkpoint(world["run_a"]) == world["run_a"] / "checkpoints" / "best.pt"


# ---------------------------------------------------------------------- item 5: the run lock


def test_a_second_training_process_is_refused_until_the_first_is_killed(world, cli, tmp_path: Path) -> None:
    run = _copy_run_a(world, tmp_path)
    # A temporary of the live process's checkpoint write: it must survive the refused starts.
    (run / "checkpoints" / ".last.pt.abcd_123.tmp.pt").write_bytes(b"being written")
    with folder_locked_by_another_process(run) as holder:
        before = snapshot(run)
        expected = f"error: {run}: another training process (pid {holder.pid}) is using this run folder"
        resumed = cli("train", "--out", run, "--resume", "--no-progress")
        assert resumed.code == 2 and resumed.err.strip() == expected, resumed.err
        fresh = cli("train", "--src", world["mr"], "--tgt", world["ct"], "--out", run, "-c", world["config_b"],
                    "--overwrite", "--no-progress")  # fmt: skip
        assert fresh.code == 2 and fresh.err.strip() == expected, fresh.err
        assert snapshot(run) == before  # nothing of the live run was removed or rewritten
    assert holder.returncode == -signal.SIGKILL
    # The kernel dropped the killed process's lock: the run resumes.
    resumed = cli("train", "--out", run, "--resume", "--no-progress")
    assert resumed.code == 0, resumed.err


def test_the_lock_is_released_when_training_ends(world, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(load_config(None, RUN_B), run, files(world["mr"]), files(world["ct"]), show_progress=False).fit()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from medcyclegan.io.lock import FolderLock; FolderLock(sys.argv[1]).acquire()",
         str(run)], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr


# ---------------------------------------------------------------- item 10: kept epoch checkpoints


def _epochs_run(tmp_path: Path, world, name: str, **overrides: object) -> Trainer:
    cfg = tiny_config(
        **{
            "data.val_fraction": 0.0,
            "optim.n_epochs": 5,
            "optim.n_epochs_decay": 0,
            "train.steps_per_epoch": 1,
            "train.sample_every": 100,
            **overrides,
        }
    )
    return Trainer(cfg, tmp_path / name, files(world["mr"]), files(world["ct"]), show_progress=False)


def test_only_the_newest_epoch_checkpoints_are_kept(world, tmp_path: Path) -> None:
    _epochs_run(tmp_path, world, "k2", **{"train.keep_epoch_checkpoints": 2}).fit()
    assert sorted(os.listdir(tmp_path / "k2" / "checkpoints")) == [
        "epoch_0004.pt",
        "epoch_0005.pt",
        "last.pt",
    ]
    _epochs_run(tmp_path, world, "k0", **{"train.keep_epoch_checkpoints": 0, "optim.n_epochs": 2}).fit()
    assert sorted(os.listdir(tmp_path / "k0" / "checkpoints")) == ["last.pt"]
    assert tiny_config().train.keep_epoch_checkpoints == 3
    with pytest.raises(ConfigError, match=r"train\.keep_epoch_checkpoints must be >= 0"):
        tiny_config(**{"train.keep_epoch_checkpoints": -1})


def test_an_old_epoch_checkpoint_is_deleted_only_after_the_new_one_is_written(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = trainer_module.save_checkpoint

    def failing_save(payload, path):
        if Path(path).name == "epoch_0003.pt":
            raise OutputError("cannot be written (No space left on device)", path)
        return real_save(payload, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", failing_save)
    trainer = _epochs_run(tmp_path, world, "k1", **{"train.keep_epoch_checkpoints": 1})
    with pytest.raises(OutputError, match="No space left"):
        trainer.fit()
    folder = tmp_path / "k1" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["epoch_0002.pt", "last.pt"]
    assert load_checkpoint(folder / "epoch_0002.pt")["epoch"] == 2


# ----------------------------------------------------------- item 13: temporaries, batch size

KILLED_WRITE = """\
import os, signal, sys
from medcyclegan.io.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _temporaries(folder: Path) -> list[Path]:
    """The atomic-write temporaries under ``folder``: ``.<name>.<8 random characters>.tmp<suffix>``."""
    return [p for p in folder.rglob(".*") if re.fullmatch(r"\..+\.[a-z0-9_]{8}\.tmp.*", p.name)]


def test_temporaries_of_a_killed_write_are_removed_at_the_next_start(world, tmp_path: Path) -> None:
    run = _copy_run_a(world, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for target in (run / "checkpoints" / "last.pt", run / "metrics.csv", run / "samples" / "epoch_0002.png"):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], env=env, timeout=120)
        assert killed.returncode == -signal.SIGKILL
    assert len(_temporaries(run)) == 3
    # Files that only look similar are not ours to delete.
    keep = [run / ".notes.tmp", run / "checkpoints" / ".last.pt.tmp.pt", run / "checkpoints" / "notes.txt"]
    for path in keep:
        path.write_text("mine")
    mr, ct = files(world["mr"]), files(world["ct"])  # run A's training and validation data
    trainer = Trainer(
        load_config(None, RUN_A),
        run,
        mr,
        ct,
        val_src_paths=mr,
        val_tgt_paths=ct,
        resume=run,
        show_progress=False,
    )
    assert not _temporaries(run)
    assert all(p.read_text() == "mine" for p in keep)
    trainer.fit()  # the run itself is intact


def test_a_batch_larger_than_the_slices_warns_once(
    world, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mr, ct = files(world["mr"]), files(world["ct"])
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        trainer = Trainer(
            tiny_config(**{"optim.batch_size": 500}), tmp_path / "b", mr, ct, show_progress=False
        )
    n_src, n_tgt = len(trainer.data.src_dataset), len(trainer.data.tgt_dataset)
    warnings = [r.getMessage() for r in caplog.records if "batch size" in r.getMessage()]
    assert warnings == [
        f"batch size 500 is larger than the {n_src} source and {n_tgt} target training slices: each batch "
        f"repeats the same slices (about {-(-500 // min(n_src, n_tgt))} times each), which costs time and "
        f"adds nothing; use --batch-size {min(n_src, n_tgt)} or less"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medcyclegan"):
        Trainer(tiny_config(), tmp_path / "ok", mr, ct, show_progress=False)
    assert "batch size" not in caplog.text


# ------------------------------------------------------------------------- the io helpers


def test_folder_lock_is_reentrant_in_one_process_and_says_why_it_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    first = lock_module.FolderLock(tmp_path / "a").acquire()
    second = lock_module.FolderLock(tmp_path / "a").acquire()  # same process: shares the flock
    second.release()
    assert (tmp_path / "a").resolve() / LOCK_FILE in lock_module._HELD  # still held by the first
    first.release()
    assert (tmp_path / "a").resolve() / LOCK_FILE not in lock_module._HELD

    def no_locks(_fd: int, _op: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="medcyclegan"), lock_module.FolderLock(tmp_path / "b"):
        pass
    assert "this file system cannot lock files (Function not implemented)" in caplog.text


def test_stale_temporary_names_are_those_of_atomic_path(tmp_path: Path) -> None:
    seen = []
    for name in ("last.pt", "metrics.csv", "CT.NII.GZ", "epoch_0001.png", "noext"):
        with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / name) as tmp:
            seen.append(tmp.name)
            raise KeyboardInterrupt
    assert all(is_atomic_temporary(n) for n in seen), seen
    assert not any(
        is_atomic_temporary(n) for n in (".last.pt.tmp.pt", ".notes.tmp", "last.pt", ".a.abcdefgh.tmp.csv")
    )


def test_folder_lock_validates_its_name_and_wait_and_says_what_it_is(tmp_path: Path) -> None:
    from medcyclegan.io.lock import FolderLock

    for bad in ("lock", "../.lock", ".", ".."):
        with pytest.raises(ValueError, match="hidden"):
            FolderLock(tmp_path, name=bad)
    with pytest.raises(ValueError, match="wait_s"):
        FolderLock(tmp_path, wait_s=-1)
    lock = FolderLock(tmp_path, holder="evaluate process", name=".x.lock", wait_s=2)
    assert repr(lock) == (
        f"FolderLock({str(tmp_path)!r}, holder='evaluate process', place='folder', "
        "name='.x.lock', wait_s=2.0, held=False)"
    )
    with lock, FolderLock(tmp_path):  # independent names: both are taken
        assert (tmp_path / ".x.lock").is_file() and (tmp_path / LOCK_FILE).is_file()
