"""Config values the networks or the loop cannot use are refused by ``medcyclegan train`` in one line.

Issue 12 item 11: an image size that is not a multiple of the generator's stride, an absurd size, and
NaN or infinite numbers used to pass validation and fail later with a traceback (exit 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import one_error_line

from medcyclegan.config import MAX_IMAGE_SIZE, load_config
from medcyclegan.errors import ConfigError
from medcyclegan.nets import discriminator_min_size, generator_stride_multiple
from medcyclegan.nets.discriminator import PatchGAN
from medcyclegan.nets.generator import ResnetGenerator


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--image-size", "30"),
            "data.image_size must be a multiple of 4 (the generator's stride-2 layers); got 30, use 28 or 32",
        ),
        (
            ("--image-size", "18"),
            "data.image_size must be a multiple of 4 (the generator's stride-2 layers); got 18, use 20",
        ),
        (("--image-size", "100000"), f"data.image_size must be at most {MAX_IMAGE_SIZE} pixels; got 100000"),
        (
            ("--image-size", "16"),
            "data.image_size 16 is too small for model.n_layers_d 3: the discriminator needs at least 24 pixels",
        ),
        (("--set", "optim.lr=nan"), "optim.lr must be a finite number; got nan"),
        (("--set", "optim.lr=.inf"), "optim.lr must be a finite number; got inf"),
        (("--lambda-cycle", "nan"), "loss.lambda_cycle must be a finite number; got nan"),
        (
            ("--set", "data.ct_window=[-1000, .nan]"),
            "data.ct_window must be a finite number; got [-1000.0, nan]",
        ),
        (
            ("--set", "data.mask_threshold_hu=-.inf"),
            "data.mask_threshold_hu must be a finite number; got -inf",
        ),
        (("--spacing", "inf"), "data.spacing must be a finite number; got inf"),
        (("--set", "model.init_gain=nan"), "model.init_gain must be a finite number; got nan"),
        (("--ngf", "100000"), "model.ngf must be at most 1024; got 100000"),
        (("--n-blocks", "5000"), "model.n_blocks must be at most 64; got 5000"),
        (("--context-slices", "1000"), "data.context_slices must be at most 32; got 1000"),
        (("--num-workers", "100000"), "data.num_workers must be at most 256; got 100000"),
        (("--set", "train.steps_per_epoch=1000000000000"), "train.steps_per_epoch must be at most 1000000"),
        (("--set", "train.seed=99999999999999999999999"), "train.seed must be a 64-bit integer"),
        (("--set", "optim.decay_fraction=2"), "optim.decay_fraction must be in [0, 1]; got 2.0"),
        (("--steps", "0"), "optim.n_steps must be > 0; got 0"),
        (("--steps", "10", "--epochs", "3"), "--steps replaces --epochs and --epochs-decay"),
    ],
)
def test_unusable_config_values_are_one_line(
    cli, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = cli("train", "--src", tmp_path, "--tgt", tmp_path, "--out", tmp_path / "run", *args)
    assert expected in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_the_image_size_rule_uses_the_generators_own_stride() -> None:
    assert generator_stride_multiple(load_config(None).model) == ResnetGenerator.stride_multiple
    size = 8 * ResnetGenerator.stride_multiple
    load_config(None, {"data.image_size": size})
    with pytest.raises(ConfigError, match=f"multiple of {ResnetGenerator.stride_multiple}"):
        load_config(None, {"data.image_size": size + 1})


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_discriminator_min_size_is_the_real_networks_limit(n_layers: int) -> None:
    smallest = discriminator_min_size(n_layers)
    net = PatchGAN(1, ndf=2, n_layers=n_layers)  # training mode, as in training
    with torch.no_grad():
        assert min(net(torch.zeros(1, 1, smallest, smallest)).shape[-2:]) >= 1
        with pytest.raises((RuntimeError, ValueError)):  # too small: a conv or an InstanceNorm refuses
            below = smallest - 4
            net(torch.zeros(1, 1, below, below))
