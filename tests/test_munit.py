"""MUNIT (``model.kind: munit``): its networks against the reference, its step, exact resume, conversion
with styles (``convert --samples``), ``info`` and the one-line errors.

The tiny MUNIT of these tests (:data:`TINY_MUNIT`) is trained once per module through the public
API (``train_from_folders``, with validation pairs) and used read-only.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import (
    TINY_RUN,
    TrainedRun,
    assert_clean_error,
    files,
    free_port,
    join_process_group,
    tiny_config,
    write_config_yaml,
    write_domains,
)

from medcyclegan.augment import augment_dataset
from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.convert import (
    RunningMoments,
    convert_file,
    draw_styles,
    load_model,
    plan_conversion,
    std_output_path,
    translate_loaded,
    translate_samples,
)
from medcyclegan.errors import ConfigError, OutputError
from medcyclegan.io.readers import read_volume
from medcyclegan.models import model_class
from medcyclegan.models.munit import MUNIT, STYLE_GENERATOR_KEY
from medcyclegan.nets.munit import (
    AdaINGen,
    StyleEncoder,
    StyleTranslator,
    adaptive_instance_norm,
)
from medcyclegan.nets.munit_blocks import LayerNorm, MsImageDis
from medcyclegan.train.api import train_from_folders
from medcyclegan.train.schedule import lr_rule
from medcyclegan.train.trainer import Trainer

# The tiny MUNIT: a few thousand parameters, about 0.15 s a step on 2 CPU cores.
TINY_MUNIT = {
    "model.kind": "munit",
    "munit.dim": 8,
    "munit.n_res": 1,
    "munit.mlp_dim": 16,
    "munit.dis_dim": 8,
    "munit.dis_n_layer": 2,
    "munit.dis_num_scales": 2,
}
CPU = torch.device("cpu")


def munit_config(**overrides: object):
    return tiny_config(**{**TINY_MUNIT, **overrides})


@pytest.fixture(scope="module")
def munit_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A tiny MUNIT MR -> CT run of one epoch (4 steps) validated on MR/CT pairs (read-only)."""
    root = tmp_path_factory.mktemp("munit_run")
    mr, ct = write_domains(root)
    run = root / "run"
    cfg = load_config(None, {**TINY_RUN, **TINY_MUNIT, "train.max_steps": 4})
    train_from_folders(cfg, run, src=mr, tgt=ct, val_src=mr, val_tgt=ct, show_progress=False)
    return TrainedRun(root=root, mr=mr, ct=ct, run=run, config=root / "unused.yaml")


# ------------------------------------------------------------------------------------- networks
def test_reference_parameter_counts() -> None:
    # Computed by running NVlabs/MUNIT's own networks.py (AdaINGen, MsImageDis) with the gen and dis
    # sections of its configs/edges2handbags_folder.yaml, for input_dim 3 (the reference's RGB) and 1.
    for channels, generator, discriminator in ((3, 15_026_187, 8_271_171), (1, 15_007_369, 8_265_027)):
        assert sum(p.numel() for p in AdaINGen(channels).parameters()) == generator
        assert sum(p.numel() for p in MsImageDis(channels).parameters()) == discriminator
    # The default munit section is that configuration.
    counts = {
        name: sum(p.numel() for p in net.parameters())
        for name, net in MUNIT.build_networks(load_config(None, {"model.kind": "munit"})).items()
    }
    assert counts == {"G_A": 15_007_369, "G_B": 15_007_369, "D_A": 8_265_027, "D_B": 8_265_027}


def test_shapes_of_codes_translations_and_discriminator_scales() -> None:
    generator = AdaINGen(3, dim=8, style_dim=5, mlp_dim=16, n_downsample=2, n_res=2)
    x = torch.randn(2, 3, 32, 40)
    content, style = generator.encode(x)
    assert content.shape == (2, 32, 8, 10) and style.shape == (2, 5)
    assert generator.decode(content, torch.randn(2, 5)).shape == x.shape
    assert generator.dec.num_adain_params == 2 * 2 * 2 * 32  # 2 blocks x 2 norms x (mean, std) x 32
    logits = MsImageDis(3, dim=8, n_layer=2, num_scales=3)(x)
    assert [t.shape for t in logits] == [(2, 1, 8, 10), (2, 1, 4, 5), (2, 1, 2, 2)]
    translator = StyleTranslator(generator, AdaINGen(3, dim=8, style_dim=5, mlp_dim=16, n_res=2))
    out = translator(x)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert translator.stride_multiple == 4 and translator.min_input_size == 5


def test_adain_against_its_definition() -> None:
    # AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y), per sample and channel (Huang and
    # Belongie 2017), with the biased variance and eps 1e-5 inside the root, as the reference.
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6) * 3 + 2
    weight, bias = torch.rand(3, 4) + 0.5, torch.randn(3, 4)
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = weight[:, :, None, None] * (x - mu) / torch.sqrt(var + 1e-5) + bias[:, :, None, None]
    torch.testing.assert_close(adaptive_instance_norm(x, weight, bias), expected)
    out = adaptive_instance_norm(x, weight, bias)
    torch.testing.assert_close(out.mean(dim=(2, 3)), bias, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), weight, atol=1e-3, rtol=0)


def test_layer_norm_is_the_references() -> None:
    # networks.py's LayerNorm: (x - mean) / (std + eps) over C, H, W per sample, unbiased std.
    norm = LayerNorm(4)
    x = torch.randn(2, 4, 3, 3)
    flat = x.view(2, -1)
    expected = (x - flat.mean(1).view(2, 1, 1, 1)) / (flat.std(1).view(2, 1, 1, 1) + 1e-5)
    expected = expected * norm.gamma.view(1, -1, 1, 1) + norm.beta.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    gamma = norm.gamma.detach()
    assert float(gamma.min()) >= 0 and float(gamma.max()) < 1 and not norm.beta.any()


def test_initialisation_is_the_references() -> None:
    torch.manual_seed(0)
    nets = MUNIT.build_networks(load_config(None, {"model.kind": "munit"}))
    conv = nets["G_A"].enc_content.model[2].conv  # 128 -> 256, 4x4: kaiming normal, fan in
    assert abs(float(conv.weight.detach().std()) - (2 / (128 * 16)) ** 0.5) < 2e-3 and not conv.bias.any()
    d_conv = nets["D_A"].cnns[0][1].conv
    assert abs(float(d_conv.weight.detach().std()) - 0.02) < 1e-3 and not d_conv.bias.any()


def test_image_size_limits_match_the_networks() -> None:
    cfg = load_config(None, {"model.kind": "munit"})
    smallest = cfg.munit.min_image_size()
    assert smallest == 61  # 3 scales of 4 layers: ceil(ceil(61 / 2) / 2) = 16 = 2**4
    for size, ok in ((64, True), (60, False)):
        x = torch.randn(1, 1, size, size)
        if ok:
            MsImageDis(1)(x)
            StyleEncoder(1, 64, 8)(x)
        else:
            with pytest.raises(RuntimeError):
                MsImageDis(1)(x)
    with pytest.raises(
        ConfigError, match=r"data\.image_size must be a multiple of 4 for munit\.n_downsample 2"
    ):
        load_config(None, {"model.kind": "munit", "data.image_size": 66})
    with pytest.raises(
        ConfigError, match=r"data\.image_size 60 is too small for MUNIT's networks .* at least 61"
    ):
        load_config(None, {"model.kind": "munit", "data.image_size": 60})
    # The tiny networks: 2 scales of 2 layers and the style encoder's 16.
    assert munit_config().munit.min_image_size() == 16
    with pytest.raises(ConfigError, match=r"munit\.dis_n_layer must be > 0"):
        load_config(None, {"model.kind": "munit", "munit.dis_n_layer": 0})


# ---------------------------------------------------------------------------------------- step
def _batch(seed: int, n: int = 2, size: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(n, 1, size, size, generator=generator) * 2 - 1 for _ in range(2)]
    return {d: {"image": x, "mask": torch.ones_like(x)} for d, x in zip("AB", images)}


def test_loss_terms_are_the_references_on_a_tiny_batch() -> None:
    cfg = munit_config(**{"munit.recon_x_cyc_w": 10.0})
    torch.manual_seed(0)
    model = MUNIT(cfg, CPU, lr_rule(cfg.optim))
    batch = _batch(1)
    x_a, x_b = batch["A"]["image"], batch["B"]["image"]
    # The step's random styles, replayed from a copy of the model's own generator: dis_update draws
    # s_a, s_b, then gen_update draws its own.
    replay = torch.Generator().manual_seed(0)
    replay.set_state(model.style_generator.get_state())
    draws = [torch.randn(2, 8, generator=replay) for _ in range(4)]
    s_a, s_b = draws[2], draws[3]
    g_a, g_b = copy.deepcopy(model.G_A), copy.deepcopy(model.G_B)
    with torch.no_grad():
        c_a, s_a_own = g_a.encode(x_a)
        c_b, s_b_own = g_b.encode(x_b)
        x_ba, x_ab = g_a.decode(c_b, s_a), g_b.decode(c_a, s_b)
        c_b_re, s_a_re = g_a.encode(x_ba)
        c_a_re, s_b_re = g_b.encode(x_ab)
        expected = {
            "recon_x_A": 10 * (g_a.decode(c_a, s_a_own) - x_a).abs().mean(),
            "recon_x_B": 10 * (g_b.decode(c_b, s_b_own) - x_b).abs().mean(),
            "recon_s_A": (s_a_re - s_a).abs().mean(),
            "recon_s_B": (s_b_re - s_b).abs().mean(),
            "recon_c_A": (c_a_re - c_a).abs().mean(),
            "recon_c_B": (c_b_re - c_b).abs().mean(),
            "cycle_x_A": 10 * (g_a.decode(c_a_re, s_a_own) - x_a).abs().mean(),
            "cycle_x_B": 10 * (g_b.decode(c_b_re, s_b_own) - x_b).abs().mean(),
        }
        # The discriminators before the step judge the translations of the D update (styles 0, 1).
        d_a, d_b = copy.deepcopy(model.D_A), copy.deepcopy(model.D_B)
        fake_a, fake_b = g_a.decode(c_b, draws[0]), g_b.decode(c_a, draws[1])
        expected["loss_D_A"] = sum(
            (f**2).mean() + ((r - 1) ** 2).mean() for r, f in zip(d_a(x_a), d_a(fake_a))
        )
        expected["loss_D_B"] = sum(
            (f**2).mean() + ((r - 1) ** 2).mean() for r, f in zip(d_b(x_b), d_b(fake_b))
        )
    losses = model.train_step(batch)
    assert set(losses) == set(model.loss_columns)
    with torch.no_grad():
        # The generator update is judged by the discriminators after their update.
        expected["G_adv_A"] = sum(((o - 1) ** 2).mean() for o in model.D_A(x_ba))
        expected["G_adv_B"] = sum(((o - 1) ** 2).mean() for o in model.D_B(x_ab))
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value.float(), rtol=1e-4, atol=1e-6, msg=name)
    terms = [k for k in model.loss_columns if k not in ("loss_G", "loss_D_A", "loss_D_B")]
    torch.testing.assert_close(losses["loss_G"], sum(losses[k] for k in terms))
    # The reference's optimisers: Adam(lr 1e-4, betas (0.5, 0.999), weight decay 1e-4) for each.
    for optimizer in (model.opt_G, model.opt_D):
        group = optimizer.param_groups[0]
        assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.5, 0.999), 1e-4)
    # Without the cycle weight (the main config's 0) the cycle terms are 0 and not computed.
    plain = MUNIT(munit_config(), CPU, lr_rule(cfg.optim)).train_step(batch)
    assert float(plain["cycle_x_A"]) == 0 and all(torch.isfinite(v) for v in plain.values())


def test_translator_is_deterministic_and_its_style_settable() -> None:
    cfg = munit_config()
    model = MUNIT(cfg, CPU, lr_rule(cfg.optim))
    translator = model.translator("AB")
    x = torch.rand(2, 1, 24, 28) * 2 - 1
    with torch.no_grad():
        first, second = translator(x), translator(x)
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        # Zeros: the prior's mean; the same as decoding the content at the zero style by hand.
        expected = model.G_B.decode(model.G_A.enc_content(x), torch.zeros(2, 8))
        torch.testing.assert_close(first, expected, rtol=0, atol=0)
        translator.set_style(torch.ones(8))
        other = translator(x)
        translator.set_style(None)
        torch.testing.assert_close(translator(x), first, rtol=0, atol=0)
    assert not torch.equal(other, first)
    with pytest.raises(ValueError, match="a style code has 8 values; got 3"):
        translator.set_style(torch.ones(3))
    # The translators are parts of G_A and G_B (the same parameter tensors), stored under G_AB / G_BA.
    assert translator.enc_content is model.G_A.enc_content and translator.dec is model.G_B.dec
    state = model.state_dict()
    assert {"G_AB", "G_BA", STYLE_GENERATOR_KEY} <= set(state)
    assert "style" not in state["G_AB"]  # the fixed style is the translator's definition, not a weight


# --------------------------------------------------------------------------------- the loop
def test_training_resumes_exactly_with_the_style_generator(tmp_path: Path) -> None:
    mr, ct = (files(folder) for folder in write_domains(tmp_path / "data"))
    overrides = {"train.max_steps": 4}
    straight = Trainer(munit_config(**overrides), tmp_path / "a", mr, ct, show_progress=False)
    straight.fit()
    first = Trainer(munit_config(**{"train.max_steps": 2}), tmp_path / "b", mr, ct, show_progress=False)
    first.fit()
    resumed = Trainer(
        munit_config(**overrides), tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False
    )
    assert resumed.global_step == 2
    resumed.fit()
    ours = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    theirs = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert torch.equal(ours[STYLE_GENERATOR_KEY], theirs[STYLE_GENERATOR_KEY])
    for name in ("G_A", "G_B", "D_A", "D_B"):
        for key, value in theirs[name].items():
            assert torch.equal(ours[name][key], value), f"{name}.{key}"
    # The translators' weights are G_A's and G_B's tensors, stored once.
    key = "enc_content.model.0.conv.weight"
    assert ours["G_AB"][key].data_ptr() == ours["G_A"][key].data_ptr()
    assert theirs["parameters"]["G_A"] == sum(p.numel() for p in straight.model.G_A.parameters())


def test_a_run_validates_on_pairs_and_converts_onto_the_input_grid(
    munit_run: TrainedRun, tmp_path: Path
) -> None:
    rows = (munit_run.run / "val_metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "val/mae" in header and "val/cycle_ssim" in header
    best = load_checkpoint(munit_run.run / "checkpoints" / "best.pt")["best"]
    assert best["metric"] == "val/mae" and best["mode"] == "min"
    source = files(munit_run.mr)[0]
    model = load_model(munit_run.run, device="cpu")
    assert model.stride_multiple == 4 and model.has_styles
    out = convert_file(model, source, tmp_path / "synth.nii.gz")
    written, original = nib.load(out), nib.load(source)
    assert written.shape == original.shape and np.allclose(written.affine, original.affine)
    assert written.get_data_dtype() == np.int16
    assert "synthetic CT from MR" in written.header["descrip"].tobytes().decode()
    # Back to MR (the other direction) too.
    back = load_model(munit_run.run, to="mr", device="cpu")
    convert_file(back, files(munit_run.ct)[0], tmp_path / "synth_mr.nii.gz")


# -------------------------------------------------------------------------------- samples
def test_samples_mean_and_std_over_styles(munit_run: TrainedRun) -> None:
    model = load_model(munit_run.run, device="cpu")
    volume = read_volume(files(munit_run.mr)[0])
    styles = draw_styles(8, 3, seed=5)
    assert torch.equal(styles, draw_styles(8, 3, seed=5)) and not torch.equal(
        styles, draw_styles(8, 3, seed=6)
    )
    mean, std = translate_samples(model, volume, styles, batch_size=4)
    assert (
        mean.shape == std.shape == volume.array.shape and mean.dtype == np.int16 and std.dtype == np.float32
    )
    assert std.max() > 0 and std.min() >= 0
    # By hand: each style's translation in HU (float), then the mean and population std per voxel.
    samples = []
    for style in styles:
        model.generator.set_style(style)
        samples.append(translate_loaded(model, volume, batch_size=4, dtype="float32")[0])
    model.generator.set_style(None)
    np.testing.assert_allclose(std, np.std(samples, axis=0), atol=1e-2)
    assert np.abs(mean.astype(np.float64) - np.mean(samples, axis=0)).max() <= 0.5 + 1e-3
    # One style, or equal styles: no spread, and the mean is that style's translation.
    for same in (styles[:1], styles[:1].repeat(3, 1)):
        mean_one, std_one = translate_samples(model, volume, same, batch_size=4)
        assert not std_one.any()
        np.testing.assert_array_equal(mean_one, np.rint(samples[0]).astype(np.int16))
    # Along other planes too (the whole volume once per style): the same mean and std as by hand.
    planes = ("axial", "coronal")
    mean_planes, std_planes = translate_samples(model, volume, styles, batch_size=4, planes=planes)
    by_hand = []
    for style in styles:
        model.generator.set_style(style)
        by_hand.append(translate_loaded(model, volume, batch_size=4, dtype="float32", planes=planes)[0])
    model.generator.set_style(None)
    np.testing.assert_allclose(std_planes, np.std(by_hand, axis=0), atol=1e-2)
    assert np.abs(mean_planes.astype(np.float64) - np.mean(by_hand, axis=0)).max() <= 0.5 + 1e-3
    # The translator is back at its fixed style: the plain conversion is unchanged.
    plain = translate_loaded(model, volume, batch_size=4)[0]
    np.testing.assert_array_equal(plain, translate_loaded(load_model(munit_run.run, device="cpu"), volume)[0])


def test_running_moments_are_welfords() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(1000, 30, size=(5, 3, 4)).astype(np.float32)
    moments = RunningMoments((3, 4))
    for sample in values:
        moments.add(sample[:2], np.s_[:2])
        moments.add(sample[2:], np.s_[2:])
        moments.end_sample()
    np.testing.assert_allclose(moments.mean, values.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.std(), values.astype(np.float64).std(axis=0), rtol=1e-5)


def test_convert_samples_from_the_cli(cli, munit_run: TrainedRun, tmp_path: Path) -> None:
    source = files(munit_run.mr)[0]
    out = tmp_path / "synth.nii.gz"
    result = cli(
        "convert", source, "-o", out, "-m", munit_run.run, "--device", "cpu", "--samples", "3", "--seed", "2"
    )
    assert result.code == 0, result.err
    std_path = std_output_path(out)
    assert std_path == tmp_path / "synth_std.nii.gz"
    assert result.out.strip() == f"{out} (std: {std_path})"  # both files named
    mean_image, std_image, original = nib.load(out), nib.load(std_path), nib.load(source)
    for image in (mean_image, std_image):
        assert image.shape == original.shape and np.allclose(image.affine, original.affine)
    assert std_image.get_data_dtype() == np.float32 and np.asarray(std_image.dataobj).max() > 0
    assert "mean of 3 styles" in mean_image.header["descrip"].tobytes().decode()  # NIfTI keeps 79 characters
    # The std is never overwritten without --overwrite, and is checked before anything is written.
    out.unlink()
    again = cli("convert", source, "-o", out, "-m", munit_run.run, "--device", "cpu", "--samples", "3")
    assert_clean_error(again, std_path, "exists")
    assert not out.exists()
    # The default (K = 1): the fixed style, no std.
    plain = tmp_path / "plain.nii.gz"
    assert cli("convert", source, "-o", plain, "-m", munit_run.run, "--device", "cpu").code == 0
    assert not std_output_path(plain).exists()
    assert_clean_error(
        cli("convert", source, "-o", plain, "-m", munit_run.run, "--seed", "1"), "--seed", "--samples"
    )
    assert_clean_error(
        cli("convert", source, "-o", plain, "-m", munit_run.run, "--samples", "0"), "--samples"
    )


def test_samples_on_a_deterministic_model_is_one_error(cli, trained_run: TrainedRun, tmp_path: Path) -> None:
    result = cli(
        "convert",
        files(trained_run.mr)[0],
        "-o",
        tmp_path / "x.nii.gz",
        "-m",
        trained_run.run,
        "--samples",
        "4",
    )
    line = assert_clean_error(result, "--samples 4", "cyclegan", "deterministic")
    assert result.code == 2 and "last.pt" in line
    assert not list(tmp_path.iterdir())


def test_info_json_describes_a_munit_run(cli, munit_run: TrainedRun) -> None:
    result = cli("info", munit_run.run, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["model"] == "munit" and summary["step"] == 4
    assert summary["best"]["metric"] == "val/mae"


def test_the_registry_and_the_loop_know_munit() -> None:
    assert model_class("munit") is MUNIT
    model = MUNIT(munit_config(), CPU, lr_rule(munit_config().optim))
    assert model.translator("BA").enc_content is model.G_B.enc_content
    assert "G_A=" in repr(model)


# ----------------------------------------------------------------- the CLI, augment, processes
def test_trains_and_resumes_from_the_cli(cli, tmp_path: Path) -> None:
    mr, ct = write_domains(tmp_path / "data")
    config = write_config_yaml(tmp_path / "tiny.yaml", {**TINY_RUN, **TINY_MUNIT, "model.kind": "cyclegan"})
    run = tmp_path / "run"
    common = ("--src", mr, "--tgt", ct, "--out", run, "-c", config, "--model", "munit", "--no-progress")
    result = cli("train", *common, "--max-steps", "1")
    assert result.code == 0, result.err
    assert load_config(run / "config.yaml").model.kind == "munit"
    resumed = cli("train", *common, "--max-steps", "2", "--resume")
    assert resumed.code == 0, resumed.err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    # A changed MUNIT setting on resume is refused like any other.
    refused = cli("train", *common, "--max-steps", "3", "--resume", "--set", "munit.recon_x_w=5")
    assert_clean_error(refused, "munit.recon_x_w")


def test_augment_with_a_munit_model(munit_run: TrainedRun, tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    labels.mkdir()
    shutil.copytree(munit_run.mr, images)
    for path in files(images):
        image = nib.load(path)
        label = (np.asarray(image.dataobj) > 100).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, image.affine), labels / path.name)
    result = augment_dataset(images, labels, munit_run.run, tmp_path / "raw", dataset_id=9, device="cpu")
    assert result.check.ok and result.channel_name == "CT" and len(result.cases) == 2


def _two_rank_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank of a two-process MUNIT run (gloo): 2 steps; reports whether the weights agree."""
    join_process_group(rank, world_size, port)
    base = Path(root)
    cfg = munit_config(**{"train.max_steps": 2, "train.steps_per_epoch": 2})
    trainer = Trainer(cfg, base / "run", files(base / "mr"), files(base / "ct"), show_progress=False)
    trainer.fit()
    weights = torch.cat(
        [p.detach().reshape(-1) for net in trainer.model.networks().values() for p in net.parameters()]
    )
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, weights)
    same = all(torch.equal(gathered[0], w) for w in gathered)
    (base / f"report{rank}.json").write_text(json.dumps({"same_weights": same}))


def test_two_processes_average_gradients_and_keep_a_style_generator_each(tmp_path: Path) -> None:
    write_domains(tmp_path)
    port = free_port()
    # Forked (see tests/test_distributed.py): the ranks start with this process's imports.
    torch.multiprocessing.start_processes(
        _two_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    for rank in range(2):
        assert json.loads((tmp_path / f"report{rank}.json").read_text()) == {"same_weights": True}
    data = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    first, second = data["pools"][STYLE_GENERATOR_KEY]
    assert data["world_size"] == 2 and not torch.equal(first, second)  # each rank draws its own styles


def test_std_outputs_are_planned_with_the_others(munit_run: TrainedRun, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    source = files(munit_run.mr)[0]
    for name in ("a.nii.gz", "a_std.nii.gz"):
        shutil.copy(source, folder / name)
    model = load_model(munit_run.run, device="cpu")
    jobs = plan_conversion(model, folder / "a.nii.gz", tmp_path / "out.nrrd", samples=2)
    assert [job.std for job in jobs] == [tmp_path / "out_std.nrrd"]
    # a's std would be a_std's output: refused before anything is read, naming both inputs.
    with pytest.raises(OutputError, match="two inputs would be written to the same output name"):
        plan_conversion(model, folder, tmp_path / "out", samples=2)
    assert [job.std for job in plan_conversion(model, folder, tmp_path / "out")] == [None, None]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.generator": "vit-unet"}, r"model\.generator 'vit-unet' does not apply to model\.kind munit"),
        ({"model.generator": "unet"}, r"model\.generator 'unet' does not apply to model\.kind munit"),
        ({"model.ema_decay": 0.9}, r"model\.ema_decay .* model\.kind munit keeps none"),
    ],
)
def test_model_section_options_munit_would_ignore_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"model.kind": "munit", **overrides})
