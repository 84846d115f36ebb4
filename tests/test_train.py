"""The trainer: artefacts of a tiny CPU run, falling cycle loss, exact resume, signals, NaN stop."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TrainedRun, files, tiny_config

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.errors import CheckpointError, OutputError, TrainingError, TrainingInterrupted
from medcyclegan.train.schedule import epoch_batches, lr_factor
from medcyclegan.train.trainer import Trainer


@pytest.fixture(scope="module")
def domains(trained_run: TrainedRun) -> tuple[Path, Path]:
    """The session's training folders (read-only); each test trains its own run on them."""
    return trained_run.mr, trained_run.ct


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch() -> None:
    a = epoch_batches(10, 3, 5, seed=1, epoch=2, domain=0)
    assert a == epoch_batches(10, 3, 5, seed=1, epoch=2, domain=0)
    assert a != epoch_batches(10, 3, 5, seed=1, epoch=3, domain=0)
    assert len(a) == 5 and all(len(b) == 3 for b in a)
    assert sorted([i for batch in a for i in batch][:10]) == list(
        range(10)
    )  # the first pass is a permutation


def test_lr_schedule_is_the_reference_linear_decay() -> None:
    factors = [lr_factor(e, 3, 2) for e in range(5)]
    assert factors == pytest.approx([1.0, 1.0, 1.0, 2 / 3, 1 / 3])


def test_tiny_run_writes_every_artefact_and_cycle_loss_falls(domains, tmp_path: Path) -> None:
    mr, ct = domains
    cfg = tiny_config(**{"optim.n_epochs": 4, "optim.n_epochs_decay": 2, "train.steps_per_epoch": 6})
    run = tmp_path / "run"
    trainer = Trainer(
        cfg,
        run,
        files(mr),
        files(ct),
        val_src_paths=files(mr)[:1],
        val_tgt_paths=files(ct)[:1],
        show_progress=False,
    )
    result = trainer.fit()
    assert result.step == 36 and result.epoch == 6
    for name in ("config.yaml", "metrics.csv", "val_metrics.csv"):  # sources.json: the folder API's
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "checkpoints" / "best.pt").is_file()
    # train.keep_epoch_checkpoints (3 by default): the newest three of the six epoch checkpoints
    epochs = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))
    assert epochs == ["epoch_0004.pt", "epoch_0005.pt", "epoch_0006.pt"]
    assert len(list((run / "samples").glob("*.png"))) == 6
    assert list((run / "tb").glob("events.out.tfevents.*"))
    text = (run / "config.yaml").read_text()
    assert "normalisation" in text and "version: 0." in text
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36
    cycle = [float(r["cycle_A"]) + float(r["cycle_B"]) for r in rows]
    assert np.mean(cycle[-6:]) < 0.7 * np.mean(cycle[:6])
    with open(run / "val_metrics.csv") as handle:
        val_rows = list(csv.DictReader(handle))
    assert len(val_rows) == 6 and "val/cycle_ssim" in val_rows[0]
    data = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for key in (
        "G_AB",
        "G_BA",
        "D_A",
        "D_B",
        "opt_G",
        "opt_D",
        "sched_G",
        "sched_D",
        "pool_A",
        "pool_B",
        "rng",
    ):
        assert key in data
    assert data["step"] == 36 and data["epoch"] == 6


def test_the_folder_api_records_the_data_sources_for_resume(trained_run: TrainedRun) -> None:
    # train_from_folders (the importable `medcyclegan train`) writes sources.json beside the run's files;
    # `--resume` without --src/--tgt reads the folders from it (test_resume.py resumes that way).
    recorded = json.loads((trained_run.run / "sources.json").read_text())
    assert recorded == {
        "src": str(trained_run.mr.resolve()),
        "tgt": str(trained_run.ct.resolve()),
        "val_src": None,
        "val_tgt": None,
        "src_masks": None,
        "tgt_masks": None,
    }


def _weights(path: Path) -> dict[str, torch.Tensor]:
    data = load_checkpoint(path)
    return {f"{net}.{k}": v for net in ("G_AB", "G_BA", "D_A", "D_B") for k, v in data[net].items()}


def test_resume_is_exact(domains, tmp_path: Path) -> None:
    mr, ct = domains
    total, stop = 10, 5  # stops inside epoch 1 (4 steps per epoch) and resumes mid-epoch
    straight = Trainer(
        tiny_config(**{"train.max_steps": total}), tmp_path / "a", files(mr), files(ct), show_progress=False
    )
    straight.fit()
    first = Trainer(
        tiny_config(**{"train.max_steps": stop}), tmp_path / "b", files(mr), files(ct), show_progress=False
    )
    assert first.fit().step == stop
    resumed = Trainer(
        tiny_config(**{"train.max_steps": total}),
        tmp_path / "b",
        files(mr),
        files(ct),
        resume=tmp_path / "b" / "checkpoints" / "last.pt",
        show_progress=False,
    )
    assert resumed.global_step == stop
    assert resumed.fit().step == total
    a = _weights(tmp_path / "a" / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    with open(tmp_path / "b" / "metrics.csv") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle)]
    assert steps == list(range(1, total + 1))


def test_resume_rejects_a_changed_architecture(domains, trained_run: TrainedRun, tmp_path: Path) -> None:
    mr, ct = domains
    data = load_checkpoint(trained_run.run / "checkpoints" / "last.pt")
    data["G_AB"] = {k: v for k, v in list(data["G_AB"].items())[:-2]}
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="architecture"):
        Trainer(tiny_config(), tmp_path / "r2", files(mr), files(ct), resume=bad, show_progress=False)


def test_fresh_run_refuses_an_existing_run_folder(domains, trained_run: TrainedRun, tmp_path: Path) -> None:
    mr, ct = domains
    shutil.copytree(trained_run.run, tmp_path / "r")  # a trained run's folder
    with pytest.raises(OutputError, match="--resume"):
        Trainer(tiny_config(), tmp_path / "r", files(mr), files(ct), show_progress=False)


def test_sigterm_saves_a_checkpoint_and_resume_continues(domains, tmp_path: Path) -> None:
    mr, ct = domains
    trainer = Trainer(
        tiny_config(**{"train.max_steps": 8}), tmp_path / "s", files(mr), files(ct), show_progress=False
    )

    def interrupt(step: int, _row: dict) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(on_step=interrupt)
    assert info.value.step == 3
    assert load_checkpoint(tmp_path / "s" / "checkpoints" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    resumed = Trainer(
        tiny_config(**{"train.max_steps": 8}),
        tmp_path / "s",
        files(mr),
        files(ct),
        resume=tmp_path / "s",
        show_progress=False,
    )
    assert resumed.fit().step == 8


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(
    domains, tmp_path: Path, monkeypatch
) -> None:
    mr, ct = domains
    trainer = Trainer(
        tiny_config(**{"train.max_steps": 8, "train.save_every_steps": 2}),
        tmp_path / "n",
        files(mr),
        files(ct),
        show_progress=False,
    )
    original = trainer.model.train_step

    def poisoned(batch):
        losses = original(batch)
        if trainer.global_step == 4:  # the 5th step
            losses["loss_G"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(trainer.model, "train_step", poisoned)
    with pytest.raises(TrainingError, match="NaN or Inf at step 5"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "n" / "checkpoints" / "last.pt")["step"] == 4


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_never_unpickle_code(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": "medcyclegan-checkpoint", "x": _Evil()}, handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    torch.save({"format": "medcyclegan-checkpoint", "x": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(tmp_path / "evil2.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    good = tmp_path / "good.pt"
    torch.save({"format": "medcyclegan-checkpoint", "w": torch.ones(3)}, good)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.ones(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a medcyclegan checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
