"""The segmentation benchmark (benchmarks/bench_segmentation.py): a --tiny run end to end, its scores
against their definitions, and its argument checks."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scripts import load_script, run_script

from medcyclegan.sample_data import TISSUE_LABELS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_segmentation.py"


bench = load_script(SCRIPT)


def run_bench(*args: object) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, timeout=180)


@pytest.fixture(scope="module")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess, dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "segmentation.json"
    result = run_bench("--tiny", "--seeds", "0,1", "--out-json", out, "--work-dir", folder / "work")
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text()), folder / "work"


def test_prints_both_tables_with_every_arm(tiny_run: tuple) -> None:
    result, _, _ = tiny_run
    for arm, description in bench.ARMS.items():
        assert f"| {arm} | {description} |" in result.stdout
    for name in bench.LABEL_NAMES:
        assert f"Dice {name}" in result.stdout and f"MAE {name} [HU]" in result.stdout
    assert "| trained | 3 |" in result.stdout and "| under-trained | 1 |" in result.stdout


def test_every_arm_and_seed_scored_on_the_held_out_ct(tiny_run: tuple) -> None:
    _, report, _ = tiny_run
    rows = report["rows"]
    assert sorted((row["arm"], row["seed"]) for row in rows) == sorted(
        (arm, seed) for arm in bench.ARMS for seed in (0, 1)
    )
    test_cases = set(report["data"]["groups"]["test"])
    for row in rows:
        assert set(row["cases"]) == test_cases
        for name in bench.LABEL_NAMES:
            dice = row[f"dice_{name}"]
            assert math.isnan(dice) or 0.0 <= dice <= 1.0
        assert row["seconds"] >= row["train_seconds"] > 0
    arms = {row["arm"]: row for row in rows if row["seed"] == 0}
    # The training sets the issue defines: (a) MR, (c) the scarce CT, (d) = (c) + (b), (e) = (c) + under-trained.
    assert arms["a"]["normalisation"] == "per-image z-score"
    assert arms["b"]["normalisation"].startswith("clip [")
    assert arms["d"]["training_cases"] == arms["b"]["training_cases"] + arms["c"]["training_cases"]
    assert arms["e"]["training_cases"] == arms["d"]["training_cases"]


def test_groups_are_disjoint_and_synthetic_ct_comes_from_augment(tiny_run: tuple) -> None:
    _, report, work = tiny_run
    groups = report["data"]["groups"]
    names = [name for group in groups.values() for name in group]
    assert len(names) == len(set(names))
    for row in report["translation_rows"]:
        assert row["dataset_check"].startswith("OK")
        assert row["steps"] == (3 if row["model"] == "trained" else 1)
    datasets = sorted((work / "nnUNet_raw").glob("Dataset*"))
    assert len(datasets) == 4  # two models per seed
    spec = json.loads((datasets[0] / "dataset.json").read_text())
    assert spec["labels"] == {"background": 0, **{n: i for i, n in enumerate(bench.LABEL_NAMES, 1)}}
    assert [p.name for p in (datasets[0] / "imagesTr").iterdir()] == [
        f"{groups['source'][0]}_synth_0000.nii.gz"
    ]


def test_pictures_are_written(tiny_run: tuple) -> None:
    _, report, _ = tiny_run
    assert len(report["pictures"]) == 2
    for path in report["pictures"]:
        with Image.open(path) as picture:
            width, height = picture.size
        assert width > 6 * 48 and height > 2 * 48


def test_labels_join_the_named_phantom_tissues() -> None:
    lut = bench.segmentation_lut()
    assert lut[TISSUE_LABELS["cortical_bone"]] == lut[TISSUE_LABELS["marrow"]] == 1
    assert lut[TISSUE_LABELS["grey_matter"]] == lut[TISSUE_LABELS["white_matter"]] == 2
    assert lut[TISSUE_LABELS["ventricles"]] == 3 and lut[TISSUE_LABELS["eye"]] == 4
    for tissue in ("background", "skin", "fat", "csf", "air_cavity", "muscle"):
        assert lut[TISSUE_LABELS[tissue]] == 0


def volume(labels: np.ndarray, spacing: tuple[float, float, float] = (1.0, 2.0, 3.0)) -> Any:
    return bench.Volume("case", np.zeros(labels.shape, np.float32), labels.astype(np.uint8), spacing)


def test_dice_and_hd95_follow_their_definitions() -> None:
    truth = np.zeros((20, 20, 6), np.uint8)
    truth[4:10, 4:10, 1:4] = 1  # skull
    truth[12:16, 12:16, 2:4] = 2  # brain
    truth[2:4, 14:18, 2:3] = 3  # ventricles: predicted nowhere
    # eyes (4) in neither: undefined
    prediction = np.zeros_like(truth)
    prediction[5:11, 4:10, 1:4] = 1  # one voxel (2 mm along Y... here X, 1 mm) shifted
    prediction[12:16, 12:16, 2:4] = 2
    scores = bench.score_segmentation(prediction, volume(truth))
    a, b = truth == 1, prediction == 1
    assert scores["dice_skull"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert scores["hd95_skull"] == pytest.approx(1.0)  # the shift along X, 1 mm voxels
    assert scores["dice_brain"] == 1.0 and scores["hd95_brain"] == 0.0
    assert scores["dice_ventricles"] == 0.0
    assert scores["hd95_ventricles"] == pytest.approx(np.linalg.norm([20 * 1.0, 20 * 2.0, 6 * 3.0]))
    assert scores["empty"] == ["ventricles"]
    assert math.isnan(scores["dice_eyes"]) and math.isnan(scores["hd95_eyes"])
    assert scores["dice_mean"] == pytest.approx(np.mean([scores["dice_skull"], 1.0, 0.0]))


def test_ct_normalisation_is_nnunets() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(40, 300, (10, 10, 10)).astype(np.float32)
    labels = (rng.random((10, 10, 10)) < 0.5).astype(np.uint8)
    normalise = bench.Normaliser.fit_ct([bench.Volume("x", image, labels, (1, 1, 1))])
    foreground = image[labels > 0].astype(np.float64)
    low, high = np.percentile(foreground, [0.5, 99.5])
    expected = (np.clip(image, low, high) - foreground.mean()) / foreground.std()
    np.testing.assert_allclose(normalise(image), expected, rtol=1e-5, atol=1e-5)
    z = bench.Normaliser(True)(image)
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "x"], "--seeds"),
        (["--translation-steps", "5", "--undertrained-steps", "5"], "--undertrained-steps (5) must be below"),
        (["--seg-steps", "0"], "--seg-steps must be >= 1"),
        (["--n-test", "0"], "--n-test must be >= 1"),
        (["--config", "no-such-config"], "no-such-config"),
        (["--real-share", "1"], "--real-share must be between 0 and 1"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_bench("--tiny", *args, "--out-json", "/dev/null/x.json")
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_refuses_a_work_dir_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = run_bench("--tiny", "--work-dir", tmp_path, "--out-json", tmp_path / "out.json")
    assert result.returncode == 2 and "--work-dir must be new or empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine" and not (tmp_path / "out.json").exists()


def test_real_share_weights_real_slices_as_asked() -> None:
    real = [volume(np.zeros((4, 4, 3)))]
    synthetic = [volume(np.zeros((4, 4, 5))), volume(np.zeros((4, 4, 4)))]
    assert bench.slice_weights([*real, *synthetic], 1, None) is None  # pooled: every slice alike
    assert bench.slice_weights(real, 1, 0.5) is None  # nothing to mix
    weights = bench.slice_weights([*real, *synthetic], 1, 0.25)
    assert weights.shape == (12,) and weights.sum() == pytest.approx(1.0)
    assert weights[:3].sum() == pytest.approx(0.25) and np.ptp(weights[3:]) == 0
