"""UNIT (issue 15 point 2): its networks, the shared latent layers, the loss terms, exact resume,
conversion, ``info`` and augment from a UNIT run, the reference's parameter counts, one-line errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny import TINY_RUN, files, one_error_line, tiny_config, write_config_yaml, write_domain

from medcyclegan.augment import augment_dataset
from medcyclegan.checkpoint import checkpoint_config, load_checkpoint
from medcyclegan.config import load_config
from medcyclegan.convert import load_model
from medcyclegan.errors import ConfigError
from medcyclegan.losses import latent_kl_loss
from medcyclegan.losses import multiscale_discriminator_loss as multiscale_lsgan_discriminator_loss
from medcyclegan.losses import multiscale_generator_loss as multiscale_lsgan_generator_loss
from medcyclegan.models import model_class
from medcyclegan.models.unit import Unit
from medcyclegan.nets.munit_blocks import MsImageDis
from medcyclegan.nets.unit import UnitLayerNorm, latent_shape
from medcyclegan.train.schedule import lr_rule
from medcyclegan.train.trainer import Trainer

# The tiny UNIT: 8 filters, 2 residual blocks per encoder/decoder (1 of them shared), a 2-scale
# discriminator of 2 layers; 32 px slices (TINY_RUN).
TINY_UNIT: dict[str, Any] = {
    "model.kind": "unit",
    "unit.dim": 8,
    "unit.n_res": 2,
    "unit.shared_blocks": 1,
    "unit.dis_dim": 8,
    "unit.dis_n_layer": 2,
    "unit.dis_num_scales": 2,
}
CPU = torch.device("cpu")


def tiny_unit(**overrides: Any) -> Unit:
    cfg = tiny_config(**{**TINY_UNIT, **overrides})
    model = model_class("unit")(cfg, CPU, lr_rule(cfg.optim))
    assert isinstance(model, Unit)
    return model


def batch(seed: int = 0, size: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        d: {"image": torch.rand(2, 1, size, size, generator=g) * 2 - 1, "mask": torch.ones(2, 1, size, size)}
        for d in "AB"
    }


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("unit")
    return write_domain(root / "mr", "mr", 2, 1), write_domain(root / "ct", "ct", 2, 2)


@pytest.fixture(scope="module")
def unit_run(domains, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, float]]]:
    """A UNIT run of one epoch (4 steps) validated on the MR/CT pairs: (run folder, validation history)."""
    root = tmp_path_factory.mktemp("unit_run")
    mr, ct = (files(d) for d in domains)
    trainer = Trainer(
        tiny_config(**{**TINY_UNIT, "train.max_steps": 4}), root / "run", mr, ct,
        val_src_paths=mr[:1], val_tgt_paths=ct[:1], show_progress=False,
    )  # fmt: skip
    trainer.fit()
    return root / "run", trainer.val_history


# ------------------------------------------------------------------ networks


def test_translators_keep_the_shape_and_encoders_give_the_latent_shape() -> None:
    model = tiny_unit()
    x = torch.rand(3, 1, 20, 28) * 2 - 1
    for direction in ("AB", "BA"):
        translator = model.translator(direction).eval()
        y = translator(x)
        assert y.shape == x.shape and y.abs().max() <= 1
        assert torch.equal(y, translator(x)), "the translation is deterministic"
        assert translator.stride_multiple == 4 and translator.min_input_size == 5
    assert model.generators.encode(x, "A").shape == latent_shape(model.cfg.unit, x) == (3, 32, 5, 7)
    outputs = model.dis_A(torch.zeros(2, 1, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    assert (
        model.translator("BA").encoder is model.gen_B.enc
        and model.translator("BA").decoder is model.gen_A.dec
    )


def test_layer_norm_is_the_references() -> None:
    """Per sample over (C, H, W), unbiased std, eps added to the std (not GroupNorm's sqrt(var + eps))."""
    norm = UnitLayerNorm(3)
    x = torch.randn(2, 3, 4, 5)
    flat = x.flatten(1)
    expected = (x - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-5)
    expected = expected * norm.gamma.view(1, -1, 1, 1) + norm.beta.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    assert ((norm.gamma >= 0) & (norm.gamma < 1)).all() and not norm.beta.any()


def test_the_shared_layers_are_one_set_of_parameter_tensors() -> None:
    model = tiny_unit()
    ab, ba = model.translator("AB"), model.translator("BA")
    assert ab.shared is ba.shared is model.shared
    shared = {p.data_ptr() for p in model.shared.parameters()}
    assert len(shared) == 8  # a shared block in the encoder and one in the decoder: 2 convs each, w + b
    for name, params in (("AB", ab.parameters()), ("BA", ba.parameters())):
        assert shared <= {p.data_ptr() for p in params}, name
    # Neither domain's own networks hold a copy of them.
    own = {p.data_ptr() for net in (model.gen_A, model.gen_B) for p in net.parameters()}
    assert not shared & own
    # The checkpoint's translator entries are views of the same storage (written once by torch.save).
    state = model.state_dict()
    assert (
        state["translator_AB"]["shared.encoder.0.model.0.1.weight"].data_ptr()
        == state["shared"]["encoder.0.model.0.1.weight"].data_ptr()
        == state["translator_BA"]["shared.encoder.0.model.0.1.weight"].data_ptr()
    )
    # One step moves the shared weights once, and both translators see the move.
    before = model.shared.encoder[0].model[0][1].weight.clone()
    model.train_step(batch())
    after = model.shared.encoder[0].model[0][1].weight
    assert not torch.equal(before, after)
    assert ab.shared.encoder[0].model[0][1].weight is after is ba.shared.encoder[0].model[0][1].weight
    # Without sharing (the reference's master branch) the shared module is empty.
    assert not list(tiny_unit(**{"unit.shared_blocks": 0}).shared.parameters())


# ------------------------------------------------------------------ losses


def test_the_multiscale_lsgan_and_kl_terms_follow_the_reference() -> None:
    g = torch.Generator().manual_seed(3)
    real = [torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 2, 2, generator=g)]
    fake = [torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 2, 2, generator=g)]
    # MsImageDis.calc_dis_loss / calc_gen_loss: summed over scales, not halved.
    expected_d = sum(torch.mean((f - 0) ** 2) + torch.mean((r - 1) ** 2) for r, f in zip(real, fake))
    expected_g = sum(torch.mean((f - 1) ** 2) for f in fake)
    torch.testing.assert_close(multiscale_lsgan_discriminator_loss(real, fake), expected_d)
    torch.testing.assert_close(multiscale_lsgan_generator_loss(fake), expected_g)
    mu = torch.randn(2, 8, 3, 3, generator=g)
    torch.testing.assert_close(latent_kl_loss(mu), torch.mean(torch.pow(mu, 2)))  # __compute_kl


def test_each_generator_term_is_its_definition_on_a_tiny_batch() -> None:
    model = tiny_unit()
    w = model.cfg.unit
    data = batch(1)
    a, b = data["A"]["image"], data["B"]["image"]
    noise_state = model.noise_rng.get_state()
    out = model.forward(a, b)
    losses = model.generator_losses(a, b, out)

    # The reference's gen_update by hand, with the same four noise draws in its order.
    g = torch.Generator()
    g.set_state(noise_state)
    n_a, n_b, n_b2, n_a2 = (torch.randn(latent_shape(w, x), generator=g) for x in (a, b, b, a))
    enc = {"A": model.gen_A.enc, "B": model.gen_B.enc}
    dec = {"A": model.gen_A.dec, "B": model.gen_B.dec}

    def encode(x: torch.Tensor, d: str) -> torch.Tensor:
        return model.shared.encoder(enc[d](x))

    def decode(z: torch.Tensor, d: str) -> torch.Tensor:
        return dec[d](model.shared.decoder(z))

    with torch.no_grad():
        h_a, h_b = encode(a, "A"), encode(b, "B")
        x_aa, x_bb = decode(h_a + n_a, "A"), decode(h_b + n_b, "B")
        x_ba, x_ab = decode(h_b + n_b, "A"), decode(h_a + n_a, "B")
        h_b2, h_a2 = encode(x_ba, "A"), encode(x_ab, "B")
        x_aba, x_bab = decode(h_a2 + n_a2, "A"), decode(h_b2 + n_b2, "B")

        def adv(dis: MsImageDis, x: torch.Tensor) -> torch.Tensor:
            return sum(torch.mean((o - 1) ** 2) for o in dis(x))

        expected = {
            "G_adv_A": w.gan_w * adv(model.dis_A, x_ba),
            "G_adv_B": w.gan_w * adv(model.dis_B, x_ab),
            "recon_A": w.recon_x_w * torch.mean(torch.abs(x_aa - a)),
            "recon_B": w.recon_x_w * torch.mean(torch.abs(x_bb - b)),
            "kl_A": w.recon_kl_w * torch.mean(h_a**2),
            "kl_B": w.recon_kl_w * torch.mean(h_b**2),
            "cycle_A": w.recon_x_cyc_w * torch.mean(torch.abs(x_aba - a)),
            "cycle_B": w.recon_x_cyc_w * torch.mean(torch.abs(x_bab - b)),
            "kl_cycle_A": w.recon_kl_cyc_w * torch.mean(h_a2**2),
            "kl_cycle_B": w.recon_kl_cyc_w * torch.mean(h_b2**2),
        }
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)
    torch.testing.assert_close(losses["loss_G"], sum(expected.values()))
    assert set(losses) | {"loss_D", "D_A", "D_B"} == set(model.loss_columns)


def test_the_discriminator_update_moves_only_the_discriminators_and_the_generator_update_only_the_generators() -> (
    None
):
    model = tiny_unit()
    data = batch(2)
    a, b = data["A"]["image"], data["B"]["image"]

    def snapshot() -> dict[str, dict[str, torch.Tensor]]:
        return {k: copy.deepcopy(net.state_dict()) for k, net in model.networks().items()}

    def moved(before: dict[str, dict[str, torch.Tensor]]) -> set[str]:
        now = snapshot()
        return {k for k in before if any(not torch.equal(before[k][p], now[k][p]) for p in before[k])}

    noise_state = model.noise_rng.get_state()
    before = snapshot()
    losses = model.dis_update(a, b)
    assert moved(before) == {"dis_A", "dis_B"}
    # loss_D: gan_w * (D_A's LSGAN on (A, x_ba) + D_B's on (B, x_ab)), the translations with fresh noise.
    g = torch.Generator()
    g.set_state(noise_state)
    n_a, n_b = (torch.randn(latent_shape(model.cfg.unit, x), generator=g) for x in (a, b))
    dis = {k: v for k, v in before.items() if k.startswith("dis")}
    check = tiny_unit()
    check.load_state_dict({**model.state_dict(), **dis})
    with torch.no_grad():
        x_ba = check.generators.decode(check.generators.encode(b, "B") + n_b, "A")
        x_ab = check.generators.decode(check.generators.encode(a, "A") + n_a, "B")
        d_a = sum(
            torch.mean(f**2) + torch.mean((r - 1) ** 2) for r, f in zip(check.dis_A(a), check.dis_A(x_ba))
        )
        d_b = sum(
            torch.mean(f**2) + torch.mean((r - 1) ** 2) for r, f in zip(check.dis_B(b), check.dis_B(x_ab))
        )
    torch.testing.assert_close(losses["D_A"], d_a)
    torch.testing.assert_close(losses["D_B"], d_b)
    torch.testing.assert_close(losses["loss_D"], d_a + d_b)

    before = snapshot()
    model.gen_update(a, b)
    assert moved(before) == {"gen_A", "gen_B", "shared"}


def test_the_optimisers_are_the_references() -> None:
    model = tiny_unit(**{"unit.lr": 3e-4})
    for optimizer in (model.opt_G, model.opt_D):
        group = optimizer.param_groups[0]
        assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-4)
    n_gen = sum(p.numel() for k in ("gen_A", "gen_B", "shared") for p in model.networks()[k].parameters())
    assert sum(p.numel() for p in model.opt_G.param_groups[0]["params"]) == n_gen


def test_a_channels_last_step_gives_the_plain_steps_losses() -> None:
    torch.manual_seed(0)
    plain = tiny_unit()
    torch.manual_seed(0)
    cfg = tiny_config(**TINY_UNIT)
    nhwc = Unit(cfg, CPU, lr_rule(cfg.optim), channels_last=True)
    assert next(nhwc.gen_A.parameters()).is_contiguous(memory_format=torch.channels_last)
    ours, theirs = nhwc.train_step(batch(4)), plain.train_step(batch(4))
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------ training, resume, conversion


def test_an_interrupted_run_resumes_to_the_same_weights(domains, tmp_path: Path) -> None:
    mr, ct = (files(d) for d in domains)
    settings = {**TINY_UNIT, "train.max_steps": 4}
    straight = Trainer(tiny_config(**settings), tmp_path / "a", mr, ct, show_progress=False)
    straight.fit()
    Trainer(
        tiny_config(**{**settings, "train.max_steps": 2}), tmp_path / "b", mr, ct, show_progress=False
    ).fit()
    resumed = Trainer(
        tiny_config(**settings), tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False
    )
    assert resumed.global_step == 2
    resumed.fit()
    # The unit section is part of the stored experiment: a resume may not change it.
    with pytest.raises(ConfigError, match=r"cannot change unit\.shared_blocks \(stored 1, given 0\)"):
        changed = tiny_config(**{**settings, "unit.shared_blocks": 0})
        Trainer(changed, tmp_path / "b", mr, ct, resume=tmp_path / "b", show_progress=False)
    ours, theirs = (load_checkpoint(p / "checkpoints" / "last.pt") for p in (tmp_path / "b", tmp_path / "a"))
    for name in (*Unit.network_names, "translator_AB"):
        for key, value in theirs[name].items():
            assert torch.equal(ours[name][key], value), f"{name}.{key}"
    assert torch.equal(ours["noise_rng"], theirs["noise_rng"])
    assert theirs["parameters"] == {
        name: sum(p.numel() for p in net.parameters()) for name, net in straight.model.networks().items()
    }
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,epoch,lr," + ",".join(Unit.loss_columns)


def test_a_unit_run_validates_converts_onto_the_input_grid_and_describes_itself(
    unit_run, domains, cli, tmp_path: Path
) -> None:
    cli_run, history = unit_run
    # Both directions: translation metrics on the pairs and cycle metrics; best.pt by val/mae.
    assert history and "val/mae" in history[0] and any("cycle" in key for key in history[0])
    assert load_checkpoint(cli_run / "checkpoints" / "last.pt")["best"]["metric"] == "val/mae"
    mr = files(domains[0])[0]
    out = tmp_path / "synthetic_ct.nii.gz"
    result = cli("convert", mr, "-m", cli_run, "-o", out, "--device", "cpu")
    assert result.code == 0, result.err
    source, written = nib.load(mr), nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.get_fdata().min() >= -1024
    # The conversion is the checkpoint's translator: A's encoder, the shared layers, B's decoder.
    model = load_model(cli_run, device="cpu")
    assert type(model.generator).__name__ == "UnitTranslator" and model.stride_multiple == 4
    back = tmp_path / "synthetic_mr.nii.gz"
    assert cli("convert", files(domains[1])[0], "-m", cli_run, "-o", back, "--to", "mr").code == 0
    assert nib.load(back).shape == nib.load(files(domains[1])[0]).shape

    shown = cli("info", cli_run, "--json")
    assert shown.code == 0, shown.err
    summary = json.loads(shown.out)
    assert summary["model"] == "unit" and summary["step"] == 4


def test_train_model_unit_from_the_command_line(domains, cli, tmp_path: Path) -> None:
    mr, ct = domains
    sizes = {k: v for k, v in TINY_UNIT.items() if k != "model.kind"}
    config = write_config_yaml(tmp_path / "unit.yaml", {**TINY_RUN, **sizes, "data.val_fraction": 0.0})
    out = tmp_path / "run"
    result = cli("train", "--model", "unit", "--src", mr, "--tgt", ct, "--out", out, "-c", config,
                 "--max-steps", 1, "--no-progress")  # fmt: skip
    assert result.code == 0, result.err
    path = out / "checkpoints" / "last.pt"
    data = load_checkpoint(path)
    assert checkpoint_config(data, path).model.kind == "unit" and data["step"] == 1
    assert set(data["parameters"]) == set(Unit.network_names)


def test_augment_translates_a_labelled_dataset_with_a_unit_model(unit_run, tmp_path: Path) -> None:
    cli_run = unit_run[0]
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    rng = np.random.default_rng(0)
    nib.save(
        nib.Nifti1Image(rng.uniform(0, 600, (24, 20, 3)).astype(np.float32), affine), images / "p1.nii.gz"
    )
    label = np.zeros((24, 20, 3), dtype=np.uint8)
    label[5:10, 5:10, 1] = 1
    nib.save(nib.Nifti1Image(label, affine), labels / "p1.nii.gz")
    result = augment_dataset(images, labels, cli_run, tmp_path / "raw", dataset_id=9, device="cpu")
    synthetic = next((result.dataset_dir / "imagesTr").glob("*.nii.gz"))
    assert nib.load(synthetic).shape == (24, 20, 3)


# ------------------------------------------------------------------ reference configuration


def test_parameter_counts_of_the_reference_configuration() -> None:
    """Counted by running mingyuliutw/UNIT's own networks.py (master 28d5982) with
    configs/unit_summer2winter_yosemite256_folder.yaml and one input channel: VAEGen(1, gen) has
    11,127,937 parameters (encoder 5,379,584, decoder 5,748,353), MsImageDis(1, dis) 8,265,027."""
    nets = Unit.build_networks(load_config(None, {"model.kind": "unit"}))
    count = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    # One shared residual block each side: 2 x (2 x (3 * 3 * 256 * 256 + 256)) parameters.
    assert count == {
        "gen_A": 8_767_617,
        "gen_B": 8_767_617,
        "shared": 2_360_320,
        "dis_A": 8_265_027,
        "dis_B": 8_265_027,
    }
    # A domain's own layers plus the shared ones are the reference's VAEGen, layer for layer.
    assert count["gen_A"] + count["shared"] == 11_127_937
    unshared = Unit.build_networks(load_config(None, {"model.kind": "unit", "unit.shared_blocks": 0}))
    assert sum(p.numel() for p in unshared["gen_A"].parameters()) == 11_127_937
    assert not list(unshared["shared"].parameters())


def test_the_defaults_are_the_references() -> None:
    unit = load_config(None, {"model.kind": "unit"}).unit
    assert (unit.dim, unit.n_downsample, unit.n_res, unit.shared_blocks) == (64, 2, 4, 1)
    assert (unit.dis_dim, unit.dis_n_layer, unit.dis_num_scales) == (64, 4, 3)
    assert (unit.gan_w, unit.recon_x_w, unit.recon_kl_w, unit.recon_x_cyc_w, unit.recon_kl_cyc_w) == (
        1.0, 10.0, 0.01, 10.0, 0.01,
    )  # fmt: skip
    assert (unit.lr, unit.beta1, unit.beta2, unit.weight_decay) == (1e-4, 0.5, 0.999, 1e-4)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"unit.shared_blocks": 3}, "unit.shared_blocks 3 is more than the unit.n_res 2"),
        ({"data.image_size": 30}, "data.image_size must be a multiple of 4"),
        (
            {"unit.dis_n_layer": 4, "unit.dis_num_scales": 3},
            "data.image_size 32 is too small for UNIT's discriminator",
        ),
        (
            {"model.generator": "resnet-attention"},
            "model.generator 'resnet-attention' does not apply to model.kind unit",
        ),
        ({"model.ema_decay": 0.999}, "model.kind unit keeps none"),
        ({"unit.dim": 512}, "unit.dim 512 gives 2048 filters"),
        ({"unit.lr": 0}, "unit.lr must be > 0"),
    ],
)
def test_impossible_options_are_refused_in_one_line(overrides, message, domains, cli, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_config(**{**TINY_UNIT, **overrides})
    mr, ct = domains
    config = write_config_yaml(tmp_path / "unit.yaml", {**TINY_RUN, **TINY_UNIT})
    sets = [a for key, value in overrides.items() for a in ("--set", f"{key}={value}")]
    result = cli(
        "train", "--src", mr, "--tgt", ct, "--out", tmp_path / "run", "-c", config, *sets, "--no-progress"
    )
    assert message in one_error_line(result)
