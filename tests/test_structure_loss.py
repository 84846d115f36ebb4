"""Structure-consistency losses between a generator's input and output (issue 14 point 2).

MIND (Heinrich et al. 2012, as in Yang et al. 2018) and gradient correlation (Hiasa et al. 2018) are
tested against their definitions; the CycleGAN adds them as ``struct_A`` / ``struct_B``.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import SESSION_RUN, TrainedRun, files, one_error_line, tiny_config

from medcyclegan.config import STRUCTURE_LOSSES, load_config
from medcyclegan.errors import ConfigError
from medcyclegan.losses import (
    gradient_correlation_loss,
    mind_descriptor,
    mind_loss,
    structure_loss,
)
from medcyclegan.train.trainer import Trainer


def smooth_image(seed: int = 0, shape: tuple[int, ...] = (2, 1, 24, 28)) -> torch.Tensor:
    """Random values blurred a little, plus a disk: edges of several strengths."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(shape, generator=generator)
    noise = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)
    yy, xx = torch.meshgrid(torch.arange(shape[-2]), torch.arange(shape[-1]), indexing="ij")
    disk = (((yy - shape[-2] / 2) ** 2 + (xx - shape[-1] / 2) ** 2) < (shape[-2] / 4) ** 2).float()
    return noise + disk


def regions(shape: tuple[int, int] = (48, 48)) -> torch.Tensor:
    """Labels 0 (background), 1 (a disk), 2 (a ring around it), 3 (a square), as a (1, 1, H, W) map."""
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    r2 = (yy - 18.0) ** 2 + (xx - 18.0) ** 2
    labels = torch.zeros(shape)
    labels[r2 < 12.0**2] = 2
    labels[r2 < 6.0**2] = 1
    labels[36:44, 30:42] = 3
    return labels[None, None]


def paint(labels: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values)[labels.long()]


def numpy_mind(
    image: np.ndarray, radius: int, offsets: list[tuple[int, int]], kernel: np.ndarray
) -> np.ndarray:
    """MIND of one (H, W) image from the formula, with explicit loops (replicate borders)."""
    h, w = image.shape
    half = kernel.shape[0] // 2
    pad = radius
    padded = np.pad(image, pad, mode="edge")
    distances = []
    for dy, dx in offsets:
        shifted = padded[pad + dy * radius : pad + dy * radius + h, pad + dx * radius : pad + dx * radius + w]
        squared = np.pad((image - shifted) ** 2, half, mode="edge")
        d = np.zeros((h, w))
        for py in range(-half, half + 1):
            for px in range(-half, half + 1):
                d += (
                    kernel[py + half, px + half]
                    * squared[half + py : half + py + h, half + px : half + px + w]
                )
        distances.append(d)
    distance = np.stack(distances)
    variance = distance.mean(axis=0)
    mean = variance.mean()
    variance = np.clip(variance, 1e-3 * mean, 1e3 * mean)
    variance = np.maximum(variance, 1e-12)
    mind = np.exp(-distance / variance)
    return mind / mind.max(axis=0)


FOUR = [(0, 1), (1, 0), (0, -1), (-1, 0)]
EIGHT = [*FOUR, (1, 1), (1, -1), (-1, 1), (-1, -1)]


def gaussian_kernel(sigma: float) -> np.ndarray:
    half = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-half, half + 1)
    line = np.exp(-(t**2) / (2 * sigma**2))
    kernel = np.outer(line, line)
    return kernel / kernel.sum()


@pytest.mark.parametrize(
    ("params", "offsets", "kernel"),
    [
        ({}, FOUR, gaussian_kernel(0.5)),
        ({"neighbourhood": "eight", "radius": 2, "sigma": 1.0}, EIGHT, gaussian_kernel(1.0)),
        ({"patch": "box", "patch_size": 3}, FOUR, np.full((3, 3), 1 / 9)),
    ],
    ids=["default", "eight-r2-sigma1", "box3"],
)
def test_mind_matches_a_direct_numpy_implementation(params, offsets, kernel) -> None:
    image = smooth_image(1, (1, 1, 13, 17))
    expected = numpy_mind(image[0, 0].double().numpy(), params.get("radius", 1), offsets, kernel)
    got = mind_descriptor(image, **params)
    assert got.shape == (1, 1, len(offsets), 13, 17) and got.dtype == torch.float32
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=1e-5)
    # Heinrich's normalisation: the largest entry of every pixel's descriptor is 1.
    torch.testing.assert_close(got.amax(dim=2), torch.ones(1, 1, 13, 17))


@pytest.mark.parametrize(("scale", "offset"), [(2.5, 0.3), (0.2, -1.0), (-0.7, 0.5), (-3.0, 0.0)])
def test_mind_is_invariant_to_affine_intensity_changes(scale: float, offset: float) -> None:
    image = smooth_image(2)
    reference = mind_descriptor(image)
    torch.testing.assert_close(mind_descriptor(scale * image + offset), reference, atol=1e-5, rtol=0)
    assert mind_loss(image, scale * image + offset) < 1e-5


def test_mind_loss_of_an_image_with_itself_is_zero() -> None:
    image = smooth_image(3)
    assert mind_loss(image, image).item() == 0.0


def test_mind_loss_sees_edges_not_contrast() -> None:
    labels = regions()
    mr_like = paint(labels, (-1.0, 0.6, -0.8, 0.2))  # non-monotonic: the ring is dark, as bone in T1 MR
    ct_like = paint(labels, (-1.0, 0.1, 0.9, -0.3))  # the same regions, other values and edge signs
    shifted = torch.roll(ct_like, shifts=(3, 2), dims=(-2, -1))
    same_edges = mind_loss(mr_like, ct_like)
    moved_edges = mind_loss(mr_like, shifted)
    assert same_edges < 0.2 * moved_edges, (same_edges, moved_edges)


def test_mind_of_a_constant_image_is_one_and_finite() -> None:
    flat = torch.full((1, 1, 8, 8), 0.3, requires_grad=True)
    mind = mind_descriptor(flat)
    torch.testing.assert_close(mind, torch.ones_like(mind))
    mind_loss(flat, smooth_image(4, (1, 1, 8, 8))).backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


def test_gradient_correlation_of_affine_images() -> None:
    image = smooth_image(5)
    assert abs(gradient_correlation_loss(image, 2 * image + 1).item()) < 1e-5
    assert abs(gradient_correlation_loss(image, -image).item() - 2.0) < 1e-5
    assert gradient_correlation_loss(image, image + 0.1 * smooth_image(6)) > 1e-3
    # No edges at all: NCC 0, loss 1 (not NaN).
    assert gradient_correlation_loss(image, torch.zeros_like(image)).item() == pytest.approx(1.0)


def test_gradient_correlation_is_the_mean_over_images_and_directions() -> None:
    x, y = smooth_image(7, (3, 1, 16, 16)), smooth_image(8, (3, 1, 16, 16))
    per_image = [gradient_correlation_loss(x[i : i + 1], y[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(gradient_correlation_loss(x, y), torch.stack(per_image).mean())


@pytest.mark.parametrize("name", STRUCTURE_LOSSES)
def test_structure_losses_compare_every_channel_with_its_own(name: str) -> None:
    loss = structure_loss(name)
    x, y = smooth_image(9, (2, 3, 16, 16)), smooth_image(10, (2, 3, 16, 16))
    per_channel = torch.stack([loss(x[:, c : c + 1], y[:, c : c + 1]) for c in range(3)])
    torch.testing.assert_close(loss(x, y), per_channel.mean())


@pytest.mark.parametrize("name", STRUCTURE_LOSSES)
def test_structure_losses_are_differentiable_and_float32_under_bf16(name: str) -> None:
    loss = structure_loss(name)
    x = smooth_image(11).requires_grad_(True)
    y = smooth_image(12)
    value = loss(x, y)
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(x.detach().bfloat16(), y.bfloat16())
    assert low.dtype == torch.float32 and low.ndim == 0


def test_structure_losses_reject_bad_inputs() -> None:
    image = smooth_image(13)
    with pytest.raises(ValueError, match="one shape"):
        mind_loss(image, image[:, :, :-1])
    with pytest.raises(ValueError, match="one shape"):
        gradient_correlation_loss(image[0], image[0])
    with pytest.raises(ValueError, match="radius"):
        mind_descriptor(image, radius=0)
    with pytest.raises(ValueError, match="neighbourhood"):
        mind_descriptor(image, neighbourhood="six")
    with pytest.raises(ValueError, match="patch_size"):
        mind_descriptor(image, patch="box", patch_size=2)
    with pytest.raises(ConfigError, match=r"loss\.structure"):
        structure_loss("ssim")


def test_config_defaults_leave_the_structure_loss_off() -> None:
    cfg = load_config(None, {})
    assert cfg.loss.structure == "mind" and cfg.loss.lambda_structure == 0.0


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("loss.structure=ssim", "loss.structure must be one of mind, gradient-correlation; got 'ssim'"),
        ("loss.lambda_structure=-1", "loss.lambda_structure must be >= 0; got -1.0"),
        ("loss.lambda_structure=nan", "loss.lambda_structure must be a finite number; got nan"),
    ],
)
def test_bad_structure_settings_are_one_line(cli, tmp_path: Path, setting: str, expected: str) -> None:
    result = cli("train", "--src", tmp_path, "--tgt", tmp_path, "--out", tmp_path / "run", "--set", setting)
    assert expected in one_error_line(result)


@pytest.mark.parametrize("name", STRUCTURE_LOSSES)
def test_a_training_step_with_the_structure_loss(name: str, trained_run: TrainedRun, tmp_path: Path) -> None:
    cfg = tiny_config(**{"train.max_steps": 1, "loss.structure": name, "loss.lambda_structure": 2.0})
    trainer = Trainer(
        cfg, tmp_path / "run", files(trained_run.mr), files(trained_run.ct), show_progress=False
    )
    trainer.fit()
    with open(tmp_path / "run" / "metrics.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    struct = float(row["struct_A"]), float(row["struct_B"])
    assert all(np.isfinite(struct)) and min(struct) > 0
    total = sum(
        float(row[k]) for k in row if k not in ("step", "epoch", "lr", "loss_G", "loss_D_A", "loss_D_B")
    )
    assert float(row["loss_G"]) == pytest.approx(total, rel=1e-4)


def test_the_structure_columns_are_zero_when_off(trained_run: TrainedRun) -> None:
    with open(trained_run.run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(float(r["struct_A"]) == 0.0 == float(r["struct_B"]) for r in rows)


def test_gradient_correlation_is_sign_sensitive_and_mind_is_not() -> None:
    # Why MIND is the default: with the ring's edges inverted (bone dark in MR, bright in CT), GC
    # cannot tell the right structure from a moved one, while MIND can.
    labels = regions()
    mr_like = paint(labels, (-1.0, 0.6, -0.8, 0.2))
    ct_like = paint(labels, (-1.0, 0.1, 0.9, -0.3))
    shifted = torch.roll(ct_like, shifts=(3, 2), dims=(-2, -1))
    assert gradient_correlation_loss(mr_like, ct_like) > 0.8 * gradient_correlation_loss(mr_like, shifted)
    assert mind_loss(mr_like, ct_like) < 0.2 * mind_loss(mr_like, shifted)


def test_resuming_a_run_logged_without_the_structure_columns(trained_run: TrainedRun, tmp_path: Path) -> None:
    # A run folder of an earlier version: metrics.csv without struct_A / struct_B.
    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    log = run / "metrics.csv"
    with open(log) as handle:
        old = [{k: v for k, v in r.items() if not k.startswith("struct_")} for r in csv.DictReader(handle)]
    log.write_text(",".join(old[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in old))
    cfg = load_config(None, {**SESSION_RUN, "train.max_steps": 2})
    resumed = Trainer(
        cfg,
        run,
        files(trained_run.mr),
        files(trained_run.ct),
        resume=run / "checkpoints" / "last.pt",
        show_progress=False,
    )
    assert resumed.fit().step == 2
    with open(log) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert rows[0]["struct_A"] == "" and float(rows[1]["struct_A"]) == 0.0
