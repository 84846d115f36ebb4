"""Validation drives best.pt: train.best_metric "auto", the check of an explicit name, training time."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tiny import TrainedRun, files, tiny_config

from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.errors import ConfigError
from medcyclegan.train.resume import merge_resume_config
from medcyclegan.train.trainer import Trainer

# Three one-step epochs, validated after each: three rows of val_metrics.csv in a few seconds.
THREE_EPOCHS = {"optim.n_epochs": 2, "optim.n_epochs_decay": 1, "train.steps_per_epoch": 1}


@pytest.fixture(scope="module")
def domains(trained_run: TrainedRun) -> tuple[list[Path], list[Path]]:
    """The session's training volumes (case00, case01 of each domain, same grid): read-only."""
    return files(trained_run.mr), files(trained_run.ct)


def _val_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "val_metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_auto_picks_validation_mae_on_pairs_and_times_each_validation(domains, cli, tmp_path: Path) -> None:
    mr, ct = domains
    run = tmp_path / "run"
    # case00 in both domains: a pair, so the translation is scored against its CT (MAE in HU).
    trainer = Trainer(
        tiny_config(**THREE_EPOCHS),
        run,
        mr,
        ct,
        val_src_paths=mr[:1],
        val_tgt_paths=ct[:1],
        show_progress=False,
    )
    assert (trainer.best_metric, trainer.best_mode) == ("val/mae", "min")
    result = trainer.fit()
    rows = _val_rows(run)
    assert list(rows[0])[:3] == ["step", "epoch", "train_seconds"]
    maes = [float(r["val/mae"]) for r in rows]
    seconds = [float(r["train_seconds"]) for r in rows]
    assert len(rows) == 3 and seconds[0] > 0 and seconds == sorted(set(seconds))
    assert result.best_metric == "val/mae" and result.best_value == pytest.approx(min(maes), rel=1e-5)
    best = load_checkpoint(run / "checkpoints" / "best.pt")["best"]
    assert best["metric"] == "val/mae" and best["mode"] == "min"
    assert best["step"] == int(rows[maes.index(min(maes))]["step"])
    # `medcyclegan info` names the best validation and the training time.
    shown = cli("info", run)
    assert shown.code == 0, shown.err
    assert f"val/mae = {result.best_value:.4g} (min) at epoch" in shown.out and "training time" in shown.out
    # The names validate() returned are the names the trainer knew before training.
    from_validation = set(trainer.val_history[0]) - {"step", "epoch", "train_seconds"}
    assert from_validation == set(trainer.val_metric_names)


def test_auto_picks_cycle_ssim_without_pairs_and_explicit_choices_stay(domains, tmp_path: Path) -> None:
    mr, ct = domains
    unpaired = {"val_src_paths": mr[:1], "val_tgt_paths": ct[1:]}  # case00 MR, case01 CT: no pair
    trainer = Trainer(tiny_config(**THREE_EPOCHS), tmp_path / "a", mr, ct, **unpaired, show_progress=False)
    assert (trainer.best_metric, trainer.best_mode) == ("val/cycle_ssim", "max")
    explicit = tiny_config(**THREE_EPOCHS, **{"train.best_metric": "val/cycle_mae", "train.best_mode": "max"})
    trainer = Trainer(explicit, tmp_path / "b", mr, ct, **unpaired, show_progress=False)
    assert (trainer.best_metric, trainer.best_mode) == ("val/cycle_mae", "max")  # as given
    named = tiny_config(**THREE_EPOCHS, **{"train.best_metric": "val/cycle_mae"})
    trainer = Trainer(named, tmp_path / "c", mr, ct, **unpaired, show_progress=False)
    assert trainer.best_mode == "min"  # best_mode auto: an error is better lower
    with pytest.raises(
        ConfigError, match=r"^train.best_metric 'val/mae' is not computed by this run; it computes "
    ):
        Trainer(
            tiny_config(**{"train.best_metric": "val/mae"}),
            tmp_path / "d",
            mr,
            ct,
            **unpaired,
            show_progress=False,
        )


def test_an_unknown_best_metric_is_one_line_exit_2_before_training(
    trained_run: TrainedRun, cli, tmp_path
) -> None:
    out = tmp_path / "run"
    result = cli(
        "train", "--src", trained_run.mr, "--tgt", trained_run.ct, "--val-src", trained_run.mr,
        "--val-tgt", trained_run.ct, "-c", trained_run.config, "--out", out, "--no-progress",
        "--set", "train.best_metric=val/cycle_ssmi",
    )  # fmt: skip
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1 and "train.best_metric 'val/cycle_ssmi' is not computed" in lines[0], lines
    assert "val/mae" in lines[0] and "val/cycle_ssim" in lines[0]
    assert not (out / "checkpoints").exists()


def test_a_misspelt_best_metric_with_overwrite_keeps_the_old_run(
    trained_run: TrainedRun, cli, tmp_path
) -> None:
    # --overwrite empties the run folder: a config error found after that would lose the old run.
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    kept = out / "checkpoints" / "last.pt"
    kept.write_bytes(b"an earlier run")
    result = cli(
        "train", "--src", trained_run.mr, "--tgt", trained_run.ct, "-c", trained_run.config,
        "--out", out, "--no-progress", "--overwrite", "--set", "train.best_metric=val/maee",
    )  # fmt: skip
    assert result.code == 2, result.err
    assert "train.best_metric 'val/maee'" in result.err
    assert kept.read_bytes() == b"an earlier run"


def test_the_training_clock_continues_on_resume(domains, tmp_path: Path) -> None:
    mr, ct = domains
    run = tmp_path / "run"
    val = {"val_src_paths": mr[:1], "val_tgt_paths": ct[:1]}
    first = Trainer(
        tiny_config(**THREE_EPOCHS, **{"train.max_steps": 2}), run, mr, ct, **val, show_progress=False
    )
    first.fit()
    stored = load_checkpoint(run / "checkpoints" / "last.pt")["train_seconds"]
    assert stored >= float(_val_rows(run)[-1]["train_seconds"]) > 0
    resumed = Trainer(tiny_config(**THREE_EPOCHS), run, mr, ct, **val, resume=run, show_progress=False)
    assert resumed.train_seconds == stored
    resumed.fit()
    rows = _val_rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    seconds = [float(r["train_seconds"]) for r in rows]
    assert seconds[0] < seconds[1] <= stored < seconds[2]


def test_auto_on_resume_keeps_a_stored_explicit_metric() -> None:
    # Every run before "auto" stored val/cycle_ssim (max): resumed with today's defaults, it keeps them.
    stored = tiny_config(**{"train.best_metric": "val/cycle_ssim", "train.best_mode": "max"})
    merged = merge_resume_config(stored, tiny_config(), announce=False)
    assert (merged.train.best_metric, merged.train.best_mode) == ("val/cycle_ssim", "max")
    with pytest.raises(ConfigError, match=r"cannot change train\.best_metric"):
        merge_resume_config(stored, tiny_config(**{"train.best_metric": "val/mae"}), announce=False)
