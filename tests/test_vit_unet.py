"""UVCGAN's ViT-UNet generator (issue 15 point 5): ``model.generator: vit-unet``, sized by ``vit_unet``.

The reference configuration's parameter count is the reference code's; the tiny configuration below
trains a CycleGAN through the loop and the CLI, resumes exactly and converts onto the input's grid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import TrainedRun, files, one_error_line, save_volume, tiny_config

from medcyclegan.checkpoint import checkpoint_config, load_checkpoint
from medcyclegan.config import ModelConfig, apply_overrides, load_config
from medcyclegan.errors import ConfigError
from medcyclegan.inference import translate_array
from medcyclegan.models import CycleGAN, model_class
from medcyclegan.nets import (
    ViTUNetGenerator,
    build_generator,
    count_parameters,
    encoder_layer_count,
    generator_min_input_size,
    generator_stride_multiple,
)
from medcyclegan.nets.vit_unet import token_coordinates
from medcyclegan.train.resume import merge_resume_config
from medcyclegan.train.trainer import Trainer

# The tiny ViT-UNet of these tests: 2 levels (stride 4), a one-block transformer of width 8.
TINY_VIT_UNET: dict[str, Any] = {
    "model.generator": "vit-unet",
    "vit_unet.unet_features": [4, 8],
    "vit_unet.features": 8,
    "vit_unet.n_heads": 2,
    "vit_unet.n_blocks": 1,
    "vit_unet.ffn_features": 16,
    "vit_unet.embed_features": 8,
}
# The CPU configuration proposed for configs/quick-cpu.yaml's 64 px slices (README): about the
# arithmetic of its ResNet generator (ngf 16, 3 blocks): 2.92 against 2.62 GFLOP for a forward and
# backward pass of a batch of 4 (torch.utils.flop_counter).
CPU_VIT_UNET: dict[str, Any] = {
    "model.generator": "vit-unet",
    "vit_unet.unet_features": [12, 24, 48, 96],
    "vit_unet.features": 96,
    "vit_unet.n_heads": 6,
    "vit_unet.n_blocks": 4,
    "vit_unet.ffn_features": 384,
    "vit_unet.embed_features": 96,
}


def tiny_generator(channels: int = 1, **overrides: Any) -> ViTUNetGenerator:
    cfg = load_config(None, {**TINY_VIT_UNET, "data.image_size": 32, **overrides})
    generator = build_generator(cfg, channels, channels)
    assert isinstance(generator, ViTUNetGenerator)
    return generator.eval()


# ------------------------------------------------------------------ the reference configuration


def test_the_reference_configuration_has_the_reference_codes_parameter_count() -> None:
    # LS4GAN/uvcgan (commit 2641c94), uvcgan/models/generator/vitunet.py ViTUNetGenerator built with
    # GEN_PRESETS['vit-unet-12'] of scripts/train/selfie2anime/cyclegan_selfie2anime-256.py and
    # image_shape (1, 256, 256): 31,359,277 parameters; (3, 256, 256): 31,360,239 (run in /tmp).
    cfg = load_config(None, {"model.generator": "vit-unet"})
    assert cfg.vit_unet.unet_features == [48, 96, 192, 384] and cfg.vit_unet.n_blocks == 12
    assert count_parameters(build_generator(cfg, 1, 1)) == 31_359_277
    assert count_parameters(ViTUNetGenerator(3, 3)) == 31_360_239
    # GEN_PRESETS['vit-unet-6'] (6 transformer blocks), 1 channel: 20,712,487.
    assert count_parameters(ViTUNetGenerator(1, 1, n_blocks=6)) == 20_712_487


def test_the_cpu_configuration_fits_quick_cpu() -> None:
    cfg = load_config("configs/quick-cpu.yaml", CPU_VIT_UNET)
    assert generator_stride_multiple(cfg) == 16 and cfg.data.image_size == 64
    assert count_parameters(build_generator(cfg, 1, 1)) == 1_077_677


# ------------------------------------------------------------------ shapes and size rules


@pytest.mark.parametrize(("channels", "height", "width"), [(1, 4, 4), (1, 32, 32), (3, 8, 20), (1, 44, 40)])
def test_output_has_the_input_shape_in_minus_one_to_one(channels: int, height: int, width: int) -> None:
    generator = tiny_generator(channels, **{"data.context_slices": (channels - 1) // 2})
    x = torch.rand(2, channels, height, width) * 2 - 1
    with torch.no_grad():
        y = generator(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all() and y.abs().max() <= 1


def test_encoder_features_are_the_input_each_levels_skip_and_the_bottleneck() -> None:
    generator = tiny_generator()
    x = torch.rand(1, 1, 16, 24)
    maps = generator.encoder_features(x, list(range(len(generator.encoder) + 2)))
    assert [tuple(m.shape) for m in maps] == [(1, 1, 16, 24), (1, 4, 16, 24), (1, 8, 8, 12), (1, 8, 4, 6)]
    assert maps[0] is x


def test_stride_is_two_to_the_depth_and_any_padded_size_works() -> None:
    cfg = load_config(None, {**TINY_VIT_UNET, "data.image_size": 32})
    assert generator_stride_multiple(cfg) == 4 == build_generator(cfg, 1, 1).stride_multiple
    assert generator_stride_multiple(load_config(None, {"model.generator": "vit-unet"})) == 16
    assert generator_min_input_size(cfg) == 1
    # A 1 x 3 slice is padded to 4 x 4 by the one slice-wise path (a 1 x 1 token grid inside).
    slab = np.full((1, 3, 2), -0.5, dtype=np.float32)
    out = translate_array(tiny_generator(), slab, context_slices=0, device=torch.device("cpu"))
    assert out.shape == slab.shape and np.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny_generator()(torch.zeros(1, 1, 6, 8))


def test_token_positions_are_the_references_normalised_coordinates_on_every_grid() -> None:
    # The reference: 2 i / (n - 1) - 1 for i in 0 .. n-1, rows and columns of the token grid.
    coords = token_coordinates(3, 5, torch.device("cpu"))
    assert coords.shape == (15, 2)
    assert torch.allclose(coords[:5, 0], torch.full((5,), -1.0))
    assert torch.allclose(coords[:5, 1], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.allclose(coords[::5, 0], torch.tensor([-1.0, 0.0, 1.0]))
    # A single token sits at the centre (the reference's formula is 0 / 0 there).
    assert torch.equal(token_coordinates(1, 1, torch.device("cpu")), torch.zeros(1, 2))


def test_the_positions_reach_the_transformer() -> None:
    # Two inputs equal everywhere: the bottleneck still differs between its tokens only through
    # their positions, so a constant input gives a non-constant bottleneck.
    generator = tiny_generator()
    with torch.no_grad():
        bottleneck = generator.encoder_features(torch.zeros(1, 1, 16, 16), [len(generator.encoder) + 1])[-1]
    assert bottleneck[0, 0].std() > 0


def test_rezero_weights_follow_the_section() -> None:
    plain = count_parameters(tiny_generator(**{"vit_unet.rezero": False}))
    assert count_parameters(tiny_generator()) == plain + 1  # one weight per transformer block
    assert count_parameters(tiny_generator(**{"vit_unet.unet_rezero": True})) == plain + 1 + 2


def test_the_model_section_alone_is_refused_for_the_vit_unet() -> None:
    with pytest.raises(TypeError, match="vit_unet section too: pass the whole run config"):
        build_generator(ModelConfig(generator="vit-unet"), 1, 1)


# ------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--generator", "vit-unet", "--image-size", "40"),
            "data.image_size must be a multiple of 16 (the generator's stride-2 layers); got 40, use 32 or 48",
        ),
        (
            (
                "--generator",
                "vit-unet",
                "--image-size",
                "96",
                "--set",
                "vit_unet.unet_features=[4, 4, 4, 4, 4, 4]",
            ),
            "data.image_size must be a multiple of 64 (the generator's stride-2 layers); got 96, use 64 or 128",
        ),
        (("--set", "vit_unet.unet_features=[]"), "vit_unet.unet_features must be a list of 1 to 8"),
        (("--set", "vit_unet.unet_features=[16, 0]"), "vit_unet.unet_features must be a list of 1 to 8"),
        (("--set", "vit_unet.unet_features=64"), "vit_unet.unet_features must be a list of 1 to 8"),
        (("--set", "vit_unet.n_heads=5"), "vit_unet.features 384 must be a multiple of vit_unet.n_heads 5"),
        (("--set", "vit_unet.features=0"), "vit_unet.features must be > 0; got 0"),
        (("--set", "vit_unet.n_blocks=-1"), "vit_unet.n_blocks must be >= 0; got -1"),
        (("--set", "vit_unet.n_blocks=1000"), "vit_unet.n_blocks must be at most 64; got 1000"),
        (("--set", "vit_unet.rezero=maybe"), "vit_unet.rezero must be true or false"),
        (("--set", "vit_unet.depth=4"), "unknown config key 'vit_unet.depth'"),
    ],
)
def test_impossible_vit_unet_settings_are_one_line(
    cli, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = cli("train", "--src", tmp_path, "--tgt", tmp_path, "--out", tmp_path / "run", *args)
    assert expected in one_error_line(result)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ training, resume, conversion


def generator_weights(run: Path) -> dict[str, torch.Tensor]:
    data = load_checkpoint(run / "checkpoints" / "last.pt")
    return {f"{net}.{k}": v for net in CycleGAN.network_names for k, v in data[net].items()}


def test_a_cyclegan_with_the_vit_unet_resumes_exactly(trained_run: TrainedRun, tmp_path: Path) -> None:
    mr, ct = files(trained_run.mr), files(trained_run.ct)
    settings = {**TINY_VIT_UNET, "data.val_fraction": 0.0, "train.max_steps": 4}
    straight = Trainer(tiny_config(**settings), tmp_path / "a", mr, ct, show_progress=False)
    assert isinstance(straight.model.G_AB, ViTUNetGenerator)
    straight.fit()
    Trainer(
        tiny_config(**{**settings, "train.max_steps": 2}), tmp_path / "b", mr, ct, show_progress=False
    ).fit()
    resumed = Trainer(
        tiny_config(**settings), tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False
    )
    assert resumed.global_step == 2
    resumed.fit()
    a, b = generator_weights(tmp_path / "a"), generator_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # The ReZero weights left 0: the transformer trained.
    assert any(k.endswith("re_alpha") and v.abs().item() > 0 for k, v in a.items())


def test_train_convert_and_info_from_the_cli(trained_run: TrainedRun, cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [
        f"--set={key}={json.dumps(value)}"
        for key, value in TINY_VIT_UNET.items()
        if key.startswith("vit_unet.")
    ]
    result = cli(
        "train", "--src", trained_run.mr, "--tgt", trained_run.ct, "--out", run, "-c", trained_run.config,
        "--generator", "vit-unet", *sets, "--max-steps", 2, "--no-progress",
    )  # fmt: skip
    assert result.code == 0, result.err
    source = files(trained_run.mr)[0]
    out = tmp_path / "synth.nii.gz"
    result = cli("convert", source, "-o", out, "-m", run, "--device", "cpu")
    assert result.code == 0, result.err
    # On the input's grid: its 40 x 44 slices, not the 32 px training crops, translated whole.
    given, written = nib.load(source), nib.load(out)
    assert written.shape == given.shape and np.allclose(written.affine, given.affine)
    assert np.isfinite(np.asarray(written.dataobj)).all()
    result = cli("info", run, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    generator = summary["networks"]["generator"]
    assert generator["type"] == "vit-unet"
    assert generator["parameters"] == count_parameters(tiny_generator())
    path = run / "checkpoints" / "last.pt"
    assert checkpoint_config(load_checkpoint(path), path).vit_unet.unet_features == [4, 8]
    # augment: a synthetic-CT segmentation dataset from the labelled MR, through the same translator.
    labels = tmp_path / "labels"
    for image in files(trained_run.mr):
        label = (np.asarray(nib.load(image).dataobj) > 0).astype(np.uint8)
        save_volume(labels / image.name, label)
    dataset = tmp_path / "raw"
    result = cli(
        "augment", "--images", trained_run.mr, "--labels", labels, "--out", dataset, "--dataset-id", 5,
        "-m", run, "--device", "cpu",
    )  # fmt: skip
    assert result.code == 0, result.err
    written = sorted((dataset / "Dataset005_SynthCT" / "imagesTr").iterdir())
    assert len(written) == len(files(trained_run.mr))
    assert nib.load(written[0]).shape == given.shape


def test_a_slice_larger_than_the_training_crops_is_translated_whole_and_deterministically() -> None:
    # Trained on 32 px crops, a 44 x 40 slice goes through at its own size (its tokens' positions
    # normalised across it), deterministic in eval mode.
    generator = tiny_generator()
    slab = np.random.default_rng(0).uniform(-1, 1, (44, 40, 3)).astype(np.float32)
    first = translate_array(generator, slab, context_slices=0, device=torch.device("cpu"))
    again = translate_array(generator, slab, context_slices=0, device=torch.device("cpu"))
    assert first.shape == slab.shape and np.array_equal(first, again)


def test_a_bad_vit_unet_value_in_a_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  generator: vit-unet\nvit_unet:\n  n_heads: 7\n")
    with pytest.raises(
        ConfigError, match=r"vit_unet\.features 384 must be a multiple of vit_unet\.n_heads 7"
    ) as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_channels_last_changes_nothing_beyond_rounding() -> None:
    generator = tiny_generator()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        plain = generator(x)
        generator.to(memory_format=torch.channels_last)
        nhwc = generator(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, nhwc, atol=1e-6)


def test_resuming_refuses_another_vit_unet_size() -> None:
    stored = load_config(None, TINY_VIT_UNET)
    asked = apply_overrides(stored, {"vit_unet.n_blocks": 2})
    with pytest.raises(ConfigError, match=r"cannot change vit_unet\.n_blocks \(stored 1, given 2\)"):
        merge_resume_config(stored, asked, keys=["vit_unet.n_blocks"], announce=False)


def test_cut_trains_a_step_with_the_vit_unet_generator() -> None:
    """The CUT generator contract: PatchNCE over the ViT-UNet's encoder maps (input, levels, bottleneck)."""
    cfg = load_config(
        None,
        {
            **TINY_VIT_UNET,
            "model.kind": "cut",
            "data.image_size": 32,
            "model.ndf": 4,
            "model.n_layers_d": 2,
            "cut.nce_layers": [0, 1, 2, 3],
            "cut.num_patches": 16,
            "cut.netf_nc": 8,
        },
    )
    assert encoder_layer_count(cfg) == len(cfg.vit_unet.unet_features) + 2
    with pytest.raises(ConfigError, match=r"cut\.nce_layers 9 is beyond"):
        load_config(
            None, {**TINY_VIT_UNET, "model.kind": "cut", "data.image_size": 32, "cut.nce_layers": [0, 9]}
        )
    model = model_class("cut")(cfg, torch.device("cpu"), lambda step: 1.0)
    batch = {
        domain: {"image": torch.rand(2, 1, 32, 32) * 2 - 1, "mask": torch.ones(2, 1, 32, 32)}
        for domain in "AB"
    }
    before = [p.detach().clone() for p in model.networks()["G_AB"].parameters()]
    losses = model.train_step(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    after = list(model.networks()["G_AB"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_pix2pix_trains_a_step_with_the_vit_unet_generator() -> None:
    """pix2pix takes any model.generator: the ViT-UNet with the conditional PatchGAN."""
    cfg = load_config(
        None,
        {
            **TINY_VIT_UNET,
            "model.kind": "pix2pix",
            "data.image_size": 32,
            "model.ndf": 4,
            "model.n_layers_d": 2,
        },
    )
    model = model_class("pix2pix")(cfg, torch.device("cpu"), lambda step: 1.0)
    assert isinstance(model.translator("AB"), ViTUNetGenerator)
    image = torch.rand(2, 1, 32, 32) * 2 - 1
    batch = {
        "A": {"image": image, "mask": torch.ones_like(image)},
        "B": {"image": -image, "mask": torch.ones_like(image)},
    }
    losses = model.train_step(batch)
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["G_L1"]) > 0
