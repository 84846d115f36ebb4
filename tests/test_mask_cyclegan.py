"""Mask CycleGAN variants train and convert from the CLI (issue 5); the losses' definitions are tested
in test_losses.py and the attention combination in test_nets.py."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from tiny import TrainedRun
from typer.testing import CliRunner

from medcyclegan.cli import app

# The networks and crops of tiny.TINY_MODEL as `medcyclegan train` options; two steps.
TINY_TRAIN_ARGS = [
    "--image-size", "32", "--ngf", "8", "--n-blocks", "2", "--ndf", "8", "--max-steps", "2",
    "--set", "train.steps_per_epoch=2", "--set", "model.n_layers_d=2", "--set", "optim.batch_size=2",
    "--no-progress", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def domains(trained_run: TrainedRun) -> tuple[Path, Path]:
    """The session's training folders (read-only): 40 x 44 voxel slices."""
    return trained_run.mr, trained_run.ct


@pytest.mark.parametrize(
    "flags",
    [
        ["--lambda-identity", "0"],
        ["--mask-loss"],
        ["--mask-loss", "--lambda-mask", "1"],
        ["--generator", "resnet-attention", "--mask-loss", "--lambda-mask", "1"],
    ],
    ids=["plain", "masked", "outline", "attention"],
)
def test_variant_trains_and_converts_from_the_cli(flags: list[str], domains, tmp_path: Path) -> None:
    mr, ct = domains
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--src", str(mr), "--tgt", str(ct), "--out", str(run), *TINY_TRAIN_ARGS, *flags]
    )
    assert result.exit_code == 0, result.output
    attention = "resnet-attention" in flags
    scan = sorted(mr.glob("*.nii.gz"))[0]
    out = tmp_path / "sct.nii.gz"
    args = ["convert", str(scan), "-o", str(out), "--model", str(run), "--device", "cpu"]
    result = runner.invoke(app, args + (["--save-attention"] if attention else []))
    assert result.exit_code == 0, result.output
    src = nib.load(scan)
    assert nib.load(out).shape == src.shape
    np.testing.assert_array_equal(nib.load(out).affine, src.affine)
    grid = np.asarray(Image.open(sorted((run / "samples").glob("*.png"))[-1]))
    tile = 44 + 2  # tiles are whole prepared slices (40 x 44 px here) plus a 2 px gap
    if attention:
        m = nib.load(tmp_path / "sct_attention.nii.gz")
        values = np.asarray(m.dataobj)
        assert m.shape == src.shape and values.min() >= 0 and values.max() <= 1
        np.testing.assert_array_equal(m.affine, src.affine)
        assert grid.shape[1] > 3 * tile  # a 4th tile per row: the attention mask
    else:
        assert not (tmp_path / "sct_attention.nii.gz").exists()
        assert grid.shape[1] <= 3 * tile  # three tiles per row
