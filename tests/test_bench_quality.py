"""The translation-quality benchmark (benchmarks/bench_quality.py) as a test: a --tiny run end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scripts import load_script, run_script

from medcyclegan.metrics import TISSUE_CLASSES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_quality.py"
METRIC_KEYS = ("mae", "psnr", "ssim", *(f"mae_{name}" for name in TISSUE_CLASSES))


bench = load_script(SCRIPT)


def run_bench(*args: object) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, timeout=120)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """One --tiny run: both datasets (lung1 when the real scan is here), two recipes, two seeds."""
    out = tmp_path_factory.mktemp("bench") / "quality.json"
    datasets = "phantom,lung1" if bench.DEFAULT_LUNG1.is_file() else "phantom"
    result = run_bench(
        "--tiny", "--seeds", "0,1", "--datasets", datasets, "--recipe", "wide=model.ngf=6", "--out-json", out
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


def test_prints_one_table_per_dataset_with_every_recipe_and_seed(tiny_run: tuple) -> None:
    result, report = tiny_run
    for name in report["datasets"]:
        assert f"### {name}" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("| recipe"))
    for title in (
        "MAE [HU]",
        "PSNR [dB]",
        "SSIM",
        "MAE air/lung",
        "MAE soft",
        "MAE bone",
        "train [s]",
        "steps",
    ):
        assert title in header
    rows = [line for line in result.stdout.splitlines() if line.startswith("| baseline | 0 ")]
    assert len(rows) == len(report["datasets"])
    assert result.stdout.count("| **wide** | mean ± std |") == len(report["datasets"])
    assert report["command"] in result.stdout


def test_json_holds_every_run_with_metrics_per_tissue_and_the_settings(tiny_run: tuple) -> None:
    _, report = tiny_run
    assert report["command"].startswith("python ") and "--tiny" in report["command"]
    assert report["seeds"] == [0, 1] and report["budget"] == {"steps": bench.TINY_STEPS, "minutes": None}
    assert report["recipes"] == {"baseline": {}, "wide": {"model.ngf": 6}}
    assert report["tissue_edges_hu"] == [-400.0, 250.0] and "synthrad_body_mask" in report["body_mask"]
    assert report["machine"]["torch_threads"] == 1
    for data in report["datasets"].values():
        runs = data["runs"]
        assert [(r["recipe"], r["seed"]) for r in runs] == [
            ("baseline", 0),
            ("baseline", 1),
            ("wide", 0),
            ("wide", 1),
        ]
        for run in runs:
            assert run["steps"] == bench.TINY_STEPS and run["stopped_by"] == "steps"  # the budget, exactly
            assert all(isinstance(run[key], float) for key in METRIC_KEYS)
            assert run["train_seconds"] > 0 and run["cases"]
            for case in run["cases"].values():
                assert set(METRIC_KEYS) <= set(case)
        for recipe in ("baseline", "wide"):
            stats = data["summary"][recipe]["mae"]
            values = [r["mae"] for r in runs if r["recipe"] == recipe]
            assert stats["mean"] == pytest.approx(sum(values) / 2)
            assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        # The seed is the training's: two seeds, two different models.
        assert runs[0]["mae"] != runs[1]["mae"]


def test_lung1_blocks_are_disjoint_and_the_test_block_is_held_out(tiny_run: tuple) -> None:
    _, report = tiny_run
    if "lung1" not in report["datasets"]:
        pytest.skip("the real scan lung1_image.nrrd is not here")
    split = report["datasets"]["lung1"]["description"]
    slices = [
        set(range(*block))
        for block in (split["test_block"], *split["mr_train_blocks"], *split["ct_train_blocks"])
    ]
    assert sum(map(len, slices)) == len(set().union(*slices))  # disjoint
    assert split["mr_train_blocks"] and split["ct_train_blocks"]


@pytest.mark.parametrize(("n_slices", "block"), [(48, 6), (24, 4), (10, 1), (30, 7)])
def test_block_split_covers_every_slice_once(n_slices: int, block: int) -> None:
    test, mr, ct = bench.lung1_blocks(n_slices, block)
    covered = [z for z0, z1 in (test, *mr, *ct) for z in range(z0, z1)]
    assert sorted(covered) == list(range(n_slices))
    assert test[1] - test[0] >= bench.MIN_TEST_SLICES and mr and ct


def test_budget_minutes_stops_a_run_early(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    result = run_bench(
        "--tiny", "--datasets", "phantom", "--seeds", "0", "--budget-steps", "100000", "--budget-minutes", "0.001",
        "--out-json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(out.read_text())["datasets"]["phantom"]["runs"]
    assert run["stopped_by"] == "minutes" and 1 <= run["steps"] < 100000


def test_convert_options_reach_every_conversion(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    result = run_bench(
        "--tiny", "--datasets", "phantom", "--seeds", "0", "--flip-average", "--planes", "axial,coronal",
        "--out-json", out, "--keep-work", "--work-dir", tmp_path / "work",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "convert --flip-average; convert --planes axial,coronal" in result.stdout
    report = json.loads(out.read_text())
    assert report["convert"] == {"flip_average": True, "planes": ["axial", "coronal"]}
    (pred,) = (tmp_path / "work").rglob("pred/*/*.nii.gz")
    description = nib.load(pred).header["descrip"].item().decode()
    assert "last.pt, flip" in description  # convert's record of it (NIfTI keeps 79 characters)


def test_recipes_parse_with_commas_inside_values() -> None:
    recipe = bench.parse_recipe("win=data.ct_window=[-1000,2000],model.ngf=32, loss.mask_loss=true")
    assert recipe.name == "win"
    assert recipe.overrides == {"data.ct_window": [-1000, 2000], "model.ngf": 32, "loss.mask_loss": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "nokeys"], "expected NAME="),
        (["--recipe", "baseline=model.ngf=8"], "built in"),
        (["--recipe", "a=optim.n_steps=5"], "set by the benchmark"),
        (["--recipe", "a=model.ngf=8", "--recipe", "a=model.ngf=4"], "share a name"),
        (["--seeds", "0,0"], "distinct"),
        (["--tissue-edges", "300,100"], "increasing"),
        (["--datasets", "brain"], "unknown brain"),
        (["--budget-steps", "0"], "budget-steps"),
        (["--datasets", "lung1", "--lung1", "/nonexistent/ct.nrrd"], "not found"),
        (["--recipe", "x=model.no_such_key=1"], "model.no_such_key"),
        (["--recipe", "x=model.ngf=-3"], "model.ngf"),
        (["--config", "no-such-config"], "no-such-config"),
        (["--planes", "axial,axial"], "--planes names 'axial' twice"),
        (["--planes", "foo"], "--planes has an unknown plane 'foo'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert bench.main(["--tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unwritable_json_is_refused_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert bench.main(["--tiny", "--datasets", "phantom", "--out-json", str(blocker / "q.json")]) == 2
    err = capsys.readouterr().err
    assert "--out-json" in err and "training" not in err and len(err.strip().splitlines()) == 1


def test_a_paired_model_trains_on_each_training_mr_with_its_own_ct(tmp_path: Path) -> None:
    """pix2pix (``TranslationModel.paired``) gets the same MR as the unpaired models, each with its CT."""
    out, work = tmp_path / "quality.json", tmp_path / "work"
    datasets = "phantom,lung1" if bench.DEFAULT_LUNG1.is_file() else "phantom"
    result = run_bench(
        "--tiny", "--datasets", datasets, "--seeds", "0", "--skip-baseline", "--recipe",
        "p2p=model.kind=pix2pix", "--recipe", "cut=model.kind=cut,cut.nce_layers=[0,4,8,10]",
        "--work-dir", work, "--out-json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    for name, dataset in report["datasets"].items():
        runs = {run["recipe"]: run for run in dataset["runs"]}
        assert runs["p2p"]["paired"] and not runs["cut"]["paired"]
        assert runs["p2p"]["seconds_per_step"] > 0 and runs["p2p"]["memory_mib"] > 0
        assert set(runs["cut"]["network_parameters"]) == {"G_AB", "D_B", "F"}
        assert runs["cut"]["translator_parameters"] == runs["cut"]["network_parameters"]["G_AB"]
        mr_dir = work / name / "data" / ("train/mr" if name == "phantom" else "train_mr")
        paired = work / name / "data" / "paired_ct"
        names = sorted(p.name for p in mr_dir.glob("*.nii.gz"))
        assert names and names == sorted(p.name for p in paired.glob("*.nii.gz"))
        for file_name in names:
            mr, ct = nib.load(mr_dir / file_name), nib.load(paired / file_name)
            assert mr.shape == ct.shape
            np.testing.assert_allclose(mr.affine, ct.affine, atol=1e-5)
            assert np.asarray(ct.dataobj).dtype == np.int16 and np.asarray(ct.dataobj).max() > 0


def _processes_with(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds ``marker`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")),
                "",
            )
        except OSError:
            continue
        if marker.encode() in environ and "Z" not in state.split()[1:2]:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="needs Linux /proc")
def test_sigterm_stops_the_training_process_too(tmp_path: Path) -> None:
    """Each run trains in a spawned process; a benchmark stopped by SIGTERM must not leave it training."""
    marker = f"BENCH_QUALITY_TEST_{os.getpid()}_{tmp_path.name}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BENCH_MARKER": marker}
    work = tmp_path / "work"
    bench_process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--tiny", "--datasets", "phantom", "--seeds", "0",
         "--budget-steps", "100000", "--work-dir", str(work), "--out-json", str(tmp_path / "q.json")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # Wait for the training process: the run's folder has its config once training began.
        while not list(work.glob("phantom/runs/*/config.yaml")):
            assert bench_process.poll() is None, bench_process.communicate()[1]
            assert time.monotonic() < deadline, "the training did not start"
            time.sleep(0.2)
        assert len(_processes_with(marker)) >= 2  # the benchmark and its training process
        bench_process.send_signal(signal.SIGTERM)
        _, err = bench_process.communicate(timeout=60)
        assert bench_process.returncode != 0
        deadline = time.monotonic() + 30
        while _processes_with(marker):
            assert time.monotonic() < deadline, f"left running: {_processes_with(marker)}\n{err}"
            time.sleep(0.2)
    finally:
        if bench_process.poll() is None:
            bench_process.kill()


def test_a_picture_per_dataset_and_seed_shows_every_recipe(tiny_run: tuple) -> None:
    _, report = tiny_run
    for name, dataset in report["datasets"].items():
        pictures = [Path(p) for p in dataset["pictures"]]
        assert [p.name.rsplit("_", 1)[-1] for p in pictures] == ["seed0.png", "seed1.png"]
        assert all(name in p.name for p in pictures)
        for path in pictures:
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width > 6 * 64 and image.height > 2 * 64
