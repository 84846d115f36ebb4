"""CUT / FastCUT (``model.kind: cut``): PatchNCE, the NCE layers of the generator, the step, resume,
the CLI (train, convert, info, augment) and its one-line errors.

Reference numbers come from running the reference code (taesungp/contrastive-unpaired-translation,
``models/networks.py``: ``define_G``, ``define_D``, ``define_F`` with one input channel) outside this
project.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import (
    AFFINE,
    TINY_RUN,
    assert_clean_error,
    files,
    head,
    save_volume,
    tiny_config,
    write_config_yaml,
)
from tiny import write_domain as write_phantoms
from torch import nn

import medcyclegan.nets
from medcyclegan.checkpoint import load_checkpoint
from medcyclegan.config import CUT_MODES, load_config
from medcyclegan.errors import ConfigError
from medcyclegan.losses import NCE_SELF_LOGIT, PatchNCELoss, outline_loss
from medcyclegan.models import model_class
from medcyclegan.models.cut import CUT
from medcyclegan.nets import AttentionResnetGenerator, ResnetGenerator, count_parameters, encoder_layer_count
from medcyclegan.nets.generator import R
from medcyclegan.train.resume import merge_resume_config
from medcyclegan.train.schedule import lr_rule
from medcyclegan.train.trainer import Trainer

# The tiny networks of TINY_MODEL have 2 residual blocks: encoder layers 0 .. 11.
TINY_CUT: dict[str, Any] = {"model.kind": "cut", "cut.nce_layers": [0, 4, 8, 11], "cut.num_patches": 16}


def tiny_cut(**overrides: Any):
    return tiny_config(**{**TINY_CUT, **overrides})


# ------------------------------------------------------------------------------------------ PatchNCE
def patch_nce_by_definition(q: torch.Tensor, k: torch.Tensor, tau: float, all_negatives: bool) -> float:
    """Eq. 5 of Park et al. 2020, one patch at a time, with the reference's filled diagonal."""
    n, p, _ = q.shape
    losses = []
    for image in range(n):
        for i in range(p):
            query = q[image, i]
            keys = k.reshape(n * p, -1) if all_negatives else k[image]
            own = image * p + i if all_negatives else i
            positive = math.exp(float(query @ k[image, i]) / tau)
            negatives = sum(math.exp(float(query @ keys[j]) / tau) for j in range(len(keys)) if j != own)
            self_term = math.exp(NCE_SELF_LOGIT / tau)
            losses.append(-math.log(positive / (positive + negatives + self_term)))
    return float(np.mean(losses))


@pytest.mark.parametrize("all_negatives", [False, True])
def test_patch_nce_is_its_definition_and_gives_no_gradient_to_the_keys(all_negatives: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    q = nn.functional.normalize(torch.randn(2, 5, 4, generator=generator, dtype=torch.float64), dim=-1)
    k = nn.functional.normalize(torch.randn(2, 5, 4, generator=generator, dtype=torch.float64), dim=-1)
    q.requires_grad_(True)
    k.requires_grad_(True)
    loss = PatchNCELoss(0.07, all_negatives)(q, k)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert float(loss.detach()) == pytest.approx(
        patch_nce_by_definition(q.detach(), k.detach(), 0.07, all_negatives), rel=1e-5
    )
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None


def test_patch_nce_of_identical_orthonormal_features() -> None:
    # q = k, rows orthonormal: the positive logit is 1/tau, every negative 0, the diagonal -10/tau.
    features = torch.eye(6)[:4].reshape(1, 4, 6)
    for tau in (0.5, 0.07):
        expected = math.log(1 + 3 * math.exp(-1 / tau) + math.exp((NCE_SELF_LOGIT - 1) / tau))
        assert float(PatchNCELoss(tau)(features, features)) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # At the reference's tau each patch picks itself almost surely: the loss is about 0.
    assert float(PatchNCELoss(0.07)(features, features)) < 1e-5
    with pytest.raises(ValueError, match="one shape"):
        PatchNCELoss()(features, features[:, :3])
    with pytest.raises(ConfigError, match="temperature"):
        PatchNCELoss(0.0)


# ------------------------------------------------------------------------- the generator's NCE layers
def test_encoder_features_are_the_reference_layers_of_a_full_size_generator() -> None:
    """ngf 64, 9 blocks: the reference's layers 0, 4, 8, 12, 16 (its ``--no_antialias`` numbering).

    The reference (``ResnetGenerator(1, 1, 64, n_blocks=9, no_antialias=True, no_antialias_up=True)``
    given the weights of ours) returns exactly these tensors for a 64 x 64 input: the padded input
    (1, 70, 70), the first stride-2 convolution (128, 32, 32), the second down layer's norm (256, 16,
    16) and the residual blocks 3 and 7 (256, 16, 16); at 256 px the sides are 262, 128, 64, 64, 64.
    """
    generator = ResnetGenerator(1, 1, ngf=64, n_blocks=9)
    layers = generator.encoder_layers()
    assert len(layers) == 19 == ResnetGenerator.config_encoder_layer_count(load_config(None))
    assert [type(layers[i]) for i in (0, 4, 8, 12, 16)] == [
        nn.ReflectionPad2d,
        nn.Conv2d,
        nn.InstanceNorm2d,
        R,
        R,
    ]
    assert layers[12] is generator.blocks[2] and layers[16] is generator.blocks[6]
    with torch.no_grad():
        features = generator.encoder_features(torch.zeros(1, 1, 64, 64), [0, 4, 8, 12, 16])
    shapes = [tuple(f.shape[1:]) for f in features]
    assert shapes == [(1, 70, 70), (128, 32, 32), (256, 16, 16), (256, 16, 16), (256, 16, 16)]
    with pytest.raises(ValueError, match="does not exist"):
        generator.encoder_features(torch.zeros(1, 1, 8, 8), [0, 19])
    with pytest.raises(ValueError, match="increasing"):
        generator.encoder_features(torch.zeros(1, 1, 8, 8), [4, 0])
    attention = AttentionResnetGenerator(1, 1, ngf=8, n_blocks=2)
    assert [f.shape[1] for f in attention.encoder_features(torch.zeros(1, 1, 8, 8), [0, 4, 8, 11])] == [
        1,
        16,
        32,
        32,
    ]


def test_parameter_counts_of_the_reference_configuration() -> None:
    """G, D, F of the reference's CUT with one channel (define_G resnet_9blocks, define_D basic,
    PatchSampleF mlp_sample of netF_nc 256 on layers 0,4,8,12,16): 11,365,633, 2,762,689 and 559,872.

    The reference's defaults (anti-aliased) have the same counts: its blur filters are buffers.
    At the quick CPU size (ngf 16, 3 blocks, ndf 16, layers 0,4,8,12) the reference has 269,377,
    174,577 and 305,408.
    """
    cfg = load_config(None, {"model.kind": "cut", "data.image_size": 32})
    counts = {name: count_parameters(net) for name, net in CUT.build_networks(cfg).items()}
    assert counts == {"G_AB": 11_365_633, "D_B": 2_762_689, "F": 559_872}
    quick = load_config(
        None,
        {
            "model.kind": "cut",
            "data.image_size": 32,
            "model.ngf": 16,
            "model.n_blocks": 3,
            "model.ndf": 16,
            "cut.nce_layers": [0, 4, 8, 12],
        },
    )
    counts = {name: count_parameters(net) for name, net in CUT.build_networks(quick).items()}
    assert counts == {"G_AB": 269_377, "D_B": 174_577, "F": 305_408}


# ------------------------------------------------------------------------------------------- config
def test_the_modes_take_the_reference_defaults_and_explicit_values_win() -> None:
    cut = load_config(None, {"model.kind": "cut"}).cut.resolved()
    assert (cut.mode, cut.lambda_gan, cut.lambda_nce, cut.nce_idt, cut.flip_equivariance) == (
        "cut",
        1.0,
        1.0,
        True,
        False,
    )
    assert (cut.nce_layers, cut.num_patches, cut.netf_nc, cut.nce_temperature) == (
        (0, 4, 8, 12, 16),
        256,
        256,
        0.07,
    )
    assert not cut.nce_includes_all_negatives_from_minibatch and cut.init_type == "xavier"
    fast = load_config(None, {"model.kind": "cut", "cut.mode": "fastcut"}).cut.resolved()
    assert (fast.lambda_nce, fast.nce_idt, fast.flip_equivariance) == (10.0, False, True)
    mine = load_config(None, {"cut.mode": "fastcut", "cut.nce_idt": True, "cut.nce_layers": "0,4"}).cut
    assert mine.resolved().nce_idt and mine.nce_layers == [0, 4]
    assert CUT_MODES == ("cut", "fastcut") and model_class("cut") is CUT


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cut.mode": "fast"}, "cut.mode must be one of cut, fastcut; got 'fast'"),
        ({"cut.nce_layers": [4, 0]}, "cut.nce_layers must be in increasing order"),
        ({"cut.nce_layers": []}, "cut.nce_layers must be a non-empty list"),
        ({"cut.nce_layers": [0, -1]}, "cut.nce_layers must hold integers >= 0"),
        ({"cut.nce_idt": "maybe"}, "cut.nce_idt must be true or false"),
        ({"cut.num_patches": 0}, "cut.num_patches must be > 0"),
        ({"cut.init_type": "kaiming"}, "cut.init_type must be one of normal, xavier"),
        (
            {"model.kind": "cut", "model.n_blocks": 6},
            "cut.nce_layers 16 is beyond the generator's encoder: model.generator 'resnet' "
            "(model.n_blocks 6) has encoder layers 0 to 15",
        ),
        ({"model.kind": "cut", "model.ema_decay": 0.999}, "model.ema_decay is CycleGAN's"),
    ],
)
def test_impossible_settings_are_one_line_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


class PlainGenerator(nn.Conv2d):
    """A generator without encoder_features."""

    stride_multiple = 1

    @classmethod
    def from_config(cls, model_cfg, in_channels: int, out_channels: int) -> nn.Module:
        return cls(in_channels, out_channels, 3, padding=1)

    @classmethod
    def config_stride_multiple(cls, model_cfg) -> int:
        return 1

    @classmethod
    def config_min_input_size(cls, model_cfg) -> int:
        return 1


def test_a_generator_without_encoder_features_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(medcyclegan.nets._GENERATORS, "resnet-attention", PlainGenerator)
    cfg = load_config(None, {"model.generator": "resnet-attention"})
    with pytest.raises(ConfigError, match=r"model\.generator 'resnet-attention' has no encoder_features"):
        encoder_layer_count(cfg.model)
    with pytest.raises(ConfigError, match="has no encoder_features"):
        load_config(None, {"model.generator": "resnet-attention", "model.kind": "cut"})


def test_resume_refuses_another_mode() -> None:
    stored = tiny_cut()
    with pytest.raises(ConfigError, match=r"cut\.mode \(stored 'cut', given 'fastcut'\)"):
        merge_resume_config(stored, tiny_cut(**{"cut.mode": "fastcut"}))


# --------------------------------------------------------------------------------------------- step
def tiny_batch(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    body = torch.zeros(2, 1, 32, 32)
    body[..., 6:26, 4:24] = 1  # off-centre: a left-right flip moves it
    return {
        domain: {"image": torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1, "mask": body}
        for domain in ("A", "B")
    }


@pytest.mark.parametrize("mode", CUT_MODES)
def test_a_step_on_a_tiny_batch_updates_g_d_and_f(mode: str) -> None:
    # FastCUT with this package's optional outline and structure terms as well.
    extras = {"loss.lambda_mask": 1.0, "loss.lambda_structure": 1.0} if mode == "fastcut" else {}
    cfg = tiny_cut(**{"cut.mode": mode, **extras})
    torch.manual_seed(0)
    model = CUT(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in model.networks().items()}
    losses = model.train_step(tiny_batch(0))
    assert set(losses) == set(CUT.loss_columns)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    for name, net in model.networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    if mode == "cut":  # identity NCE on B, lambda_NCE 1
        assert float(losses["NCE_Y"]) > 0
        assert float(losses["loss_G"]) == pytest.approx(
            float(losses["G_GAN"] + (losses["NCE"] + losses["NCE_Y"]) / 2), rel=1e-6
        )
        assert float(losses["mask_A"]) == float(losses["struct_A"]) == 0
    else:  # no identity NCE, lambda_NCE 10, flip equivariance
        assert float(losses["NCE_Y"]) == 0 and float(losses["mask_A"]) > 0 and float(losses["struct_A"]) > 0
        total = losses["G_GAN"] + losses["NCE"] + losses["mask_A"] + losses["struct_A"]
        assert float(losses["loss_G"]) == pytest.approx(float(total), rel=1e-6)
    assert set(model.state_dict()) == {
        "G_AB",
        "D_B",
        "F",
        "opt_G",
        "opt_D",
        "opt_F",
        "sched_G",
        "sched_D",
        "sched_F",
        "sampling",
    }
    assert model.translator("AB") is model.G_AB
    with pytest.raises(ValueError, match="translates only AB"):
        model.translator("BA")


# ------------------------------------------------------------------------- the loop: resume, validation
@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("cut")
    return files(write_phantoms(root / "mr", "mr", 2, 1)), files(write_phantoms(root / "ct", "ct", 2, 2))


def test_an_interrupted_run_resumes_exactly(domains, tmp_path: Path) -> None:
    mr, ct = domains
    # Identity NCE and flip equivariance both on: every random draw of a step goes through a resume.
    overrides = {**TINY_CUT, "cut.flip_equivariance": True, "train.max_steps": 4}
    straight = Trainer(
        tiny_config(**overrides),
        tmp_path / "a",
        mr,
        ct,
        val_src_paths=mr[:1],
        val_tgt_paths=ct[:1],
        show_progress=False,
    )
    straight.fit()
    # Validation of the pair (same case name and grid) scores the translation; auto picks val/mae.
    assert straight.best_metric == "val/mae" and "val/mae" in straight.val_history[0]
    assert not any("cycle" in key for key in straight.val_history[0])
    expected = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert expected["parameters"] == {
        name: count_parameters(net) for name, net in straight.model.networks().items()
    }

    first = Trainer(
        tiny_config(**{**overrides, "train.max_steps": 2}), tmp_path / "b", mr, ct, show_progress=False
    )
    first.fit()
    resumed = Trainer(
        tiny_config(**overrides), tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False
    )
    assert resumed.global_step == 2
    resumed.fit()
    got = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for name in ("G_AB", "D_B", "F"):
        for key, value in expected[name].items():
            assert torch.equal(got[name][key], value), f"{name}.{key}"
    assert torch.equal(got["sampling"], expected["sampling"])


def test_without_validation_pairs_nothing_is_scored_and_no_best_is_written(
    domains, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mr, ct = domains
    # case00 against case01: validation volumes of both domains, but no pair (other case names).
    trainer = Trainer(
        tiny_cut(**{"train.max_steps": 4}),
        tmp_path,
        mr,
        ct,
        val_src_paths=mr[:1],
        val_tgt_paths=ct[1:],
        show_progress=False,
    )
    trainer.fit()
    assert "validation skipped: a cut model is scored on validation pairs only" in caplog.text
    assert trainer.val_history == [] and trainer.epoch == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0001.pt", "last.pt"]


# ---------------------------------------------------------------------------------------------- CLI
def test_the_cli_trains_converts_onto_the_input_grid_and_augments(cli, domains, tmp_path: Path) -> None:
    mr, ct = domains
    config = write_config_yaml(
        tmp_path / "tiny.yaml", {**TINY_RUN, "cut.nce_layers": [0, 4, 8, 11], "cut.num_patches": 16}
    )
    run = tmp_path / "run"
    result = cli(
        "train", "--src", mr[0].parent, "--tgt", ct[0].parent, "--out", run, "-c", config,
        "--model", "cut", "--max-steps", "2", "--set", "cut.mode=fastcut", "--no-progress",
    )  # fmt: skip
    assert result.code == 0, result.err
    summary = json.loads(cli("info", run, "--json").out)
    assert summary["step"] == 2 and summary["direction"] == "mr -> ct"
    stored = load_config(run / "config.yaml")
    assert stored.model.kind == "cut" and stored.cut.mode == "fastcut"

    affine = np.array([[0.0, -1.5, 0.0, 12.0], [2.5, 0.0, 0.0, -7.0], [0.0, 0.0, 3.0, 20.0], [0, 0, 0, 1]])
    source = save_volume(tmp_path / "in" / "case9.nii.gz", head((21, 27, 5), "mr"), affine)
    out = tmp_path / "case9_ct.nii.gz"
    result = cli("convert", source, "-m", run, "-o", out, "--device", "cpu")
    assert result.code == 0, result.err
    written = nib.load(out)
    assert written.shape == (21, 27, 5) and written.get_data_dtype() == np.int16
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    one_line = assert_clean_error(cli("convert", source, "-m", run, "--to", "mr", "--device", "cpu"))
    assert "mr" in one_line

    images, labels = tmp_path / "images", tmp_path / "labels"
    save_volume(images / "p1.nii.gz", head((24, 24, 4), "mr"))
    label = np.zeros((24, 24, 4), np.uint8)
    label[8:16, 8:16, 1:3] = 1
    save_volume(labels / "p1.nii.gz", label)
    result = cli(
        "augment",
        "--images",
        images,
        "--labels",
        labels,
        "-m",
        run,
        "-o",
        tmp_path / "raw",
        "--dataset-id",
        "9",
        "--device",
        "cpu",
    )
    assert result.code == 0, result.err
    synthetic = next((tmp_path / "raw").rglob("imagesTr/*.nii.gz"))
    np.testing.assert_allclose(nib.load(synthetic).affine, AFFINE, atol=1e-6)


def test_the_cli_refuses_nce_layers_beyond_the_generator_in_one_line(cli, domains, tmp_path: Path) -> None:
    mr, ct = domains
    result = cli(
        "train", "--src", mr[0].parent, "--tgt", ct[0].parent, "--out", tmp_path / "run",
        "--model", "cut", "--n-blocks", "2", "--device", "cpu",
    )  # fmt: skip
    assert result.code == 2
    assert_clean_error(result, "cut.nce_layers 12 is beyond the generator's encoder")
    assert not (tmp_path / "run").exists()


def test_the_optional_terms_compare_a_flipped_batch_with_its_flipped_input() -> None:
    cfg = tiny_cut(**{"cut.mode": "fastcut", "loss.lambda_mask": 1.0})
    model = CUT(cfg, torch.device("cpu"), lr_rule(cfg.optim))
    batch = tiny_batch(1)
    real_a, mask_a = batch["A"]["image"], batch["A"]["mask"]
    fake_b = real_a.clone()
    with torch.no_grad():
        model.flipped_for_equivariance = True
        flipped = model.compute_G_loss(real_a, batch["B"]["image"], fake_b, None, mask_a)["mask_A"]
        model.flipped_for_equivariance = False
        plain = model.compute_G_loss(real_a, batch["B"]["image"], fake_b, None, mask_a)["mask_A"]
    assert float(flipped) == pytest.approx(float(outline_loss(fake_b, torch.flip(mask_a, [3]))))
    assert float(plain) == pytest.approx(float(outline_loss(fake_b, mask_a))) and float(plain) != float(
        flipped
    )
