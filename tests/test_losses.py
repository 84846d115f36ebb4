"""Losses on known values: adversarial modes, plain and masked L1, outline, attention regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from medcyclegan.errors import ConfigError
from medcyclegan.losses import AdversarialLoss, attention_regulariser, l1_loss, masked_l1, outline_loss


def close(value: torch.Tensor, expected: float, tol: float = 1e-6) -> bool:
    return value.ndim == 0 and value.dtype == torch.float32 and abs(float(value) - expected) <= tol


# ------------------------------------------------------------------ adversarial
def test_lsgan_known_values() -> None:
    loss = AdversarialLoss("lsgan")
    ones, zeros = torch.ones(2, 1, 30, 30), torch.zeros(2, 1, 30, 30)
    assert close(loss.discriminator_loss(ones, zeros), 0.0)
    assert close(loss.discriminator_loss(zeros, ones), 1.0)  # 0.5 * (1 + 1)
    assert close(loss.generator_loss(zeros), 1.0)
    assert close(loss.generator_loss(ones), 0.0)
    # No activation before the squares: logits -1 give (−1 − 1)^2 = 4 (MONAI's LeakyReLU would not).
    assert close(loss.generator_loss(-ones), 4.0)


def test_lsgan_random_values_match_definition() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    loss = AdversarialLoss("lsgan")
    expected_d = 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean())
    assert close(loss.discriminator_loss(real, fake), float(expected_d), 1e-5)
    assert close(loss.generator_loss(fake), float(((fake - 1) ** 2).mean()), 1e-5)


def test_vanilla_known_values() -> None:
    loss = AdversarialLoss("vanilla")
    zeros = torch.zeros(1, 1, 4, 4)
    assert close(loss.generator_loss(zeros), math.log(2.0))
    assert close(loss.discriminator_loss(zeros, zeros), math.log(2.0))  # 0.5 * (log 2 + log 2)
    x = torch.tensor([[[[2.0, -1.0]]]])
    # BCE(x, 1) = -log(sigmoid(x)); BCE(x, 0) = -log(1 - sigmoid(x)), by hand.
    g = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    assert close(loss.generator_loss(x), g, 1e-6)
    d_fake = -(math.log(1 - 1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    assert close(loss.discriminator_loss(x, x), 0.5 * (g + d_fake), 1e-6)


def test_vanilla_is_stable_for_large_logits() -> None:
    loss = AdversarialLoss("vanilla")
    huge = torch.full((1, 1, 2, 2), 200.0)
    assert close(loss.generator_loss(-huge), 200.0, 1e-3)
    assert close(loss.discriminator_loss(huge, -huge), 0.0)


def test_hinge_known_values() -> None:
    loss = AdversarialLoss("hinge")
    assert close(loss.discriminator_loss(torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), -2.0)), 0.0)
    assert close(loss.discriminator_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), 1.0)
    real = torch.tensor([[[[0.5, 3.0]]]])  # relu(1 - real) = [0.5, 0]
    fake = torch.tensor([[[[0.0, -3.0]]]])  # relu(1 + fake) = [1, 0]
    assert close(loss.discriminator_loss(real, fake), 0.5 * (0.25 + 0.5))
    assert close(loss.generator_loss(torch.full((1, 1, 2, 2), 3.0)), -3.0)


def test_adversarial_mode_is_validated() -> None:
    with pytest.raises(ConfigError, match="lsgan, vanilla, hinge"):
        AdversarialLoss("wgangp")


@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "hinge"])
def test_adversarial_losses_are_float32_from_bf16_and_differentiable(mode: str) -> None:
    loss = AdversarialLoss(mode)
    torch.manual_seed(0)
    fake32 = torch.randn(2, 1, 6, 6)
    fake = fake32.to(torch.bfloat16).requires_grad_(True)
    real = torch.randn(2, 1, 6, 6).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = loss.generator_loss(fake)
        d = loss.discriminator_loss(real, fake)
    assert g.dtype == torch.float32 and d.dtype == torch.float32
    reference = loss.generator_loss(fake.detach().float())
    assert abs(float(g.detach()) - float(reference)) < 1e-6  # same bf16 inputs, float32 arithmetic
    g.backward()
    assert fake.grad is not None and torch.isfinite(fake.grad.float()).all()


# ------------------------------------------------------------------ L1
def test_l1_loss() -> None:
    a = torch.zeros(1, 2, 2, 2)
    b = torch.tensor([1.0, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 4.0]).reshape(1, 2, 2, 2)
    assert close(l1_loss(a, b), 1.0)


def test_masked_l1_is_the_masked_mean() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert close(masked_l1(pred, target, mask), (1 + 3) / 2)
    # background weight 0.5: (1 + 3 + 0.5 * (2 + 4)) / (2 + 0.5 * 2)
    assert close(masked_l1(pred, target, mask, background_weight=0.5), 7 / 3, 1e-6)
    # background weight 1 is the plain L1
    assert close(masked_l1(pred, target, mask, background_weight=1.0), float(l1_loss(pred, target)))
    # a bool mask is accepted
    assert close(masked_l1(pred, target, mask.bool()), 2.0)


def test_masked_l1_broadcasts_the_mask_over_channels() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    expanded = mask.expand(-1, 3, -1, -1)
    expected = ((pred - target).abs() * expanded).sum() / expanded.sum()
    assert close(masked_l1(pred, target, mask), float(expected), 1e-5)


def test_masked_l1_ignores_the_background_when_its_weight_is_zero() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    changed = pred + 5.0 * (1 - mask)
    assert float(masked_l1(pred, target, mask)) == float(masked_l1(changed, target, mask))
    assert float(masked_l1(pred, target, mask, 0.1)) != float(masked_l1(changed, target, mask, 0.1))
    # a small body gets the same loss as a large one with the same per-voxel error (not MONAI's MaskedLoss)
    small = torch.zeros_like(mask)
    small[..., 0, 0] = 1
    assert close(masked_l1(torch.ones_like(pred), torch.zeros_like(pred), small), 1.0)


def test_masked_l1_empty_mask_is_zero_without_nan() -> None:
    pred = torch.randn(1, 1, 8, 8, requires_grad=True)
    loss = masked_l1(pred, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_masked_l1_validates_inputs() -> None:
    x = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="mask"):
        masked_l1(x, x, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        masked_l1(x, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="background_weight"):
        masked_l1(x, x, torch.zeros(1, 1, 8, 8), background_weight=-0.1)


# ------------------------------------------------------------------ outline
def disk(size: int = 32, radius: float = 9.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    return (((yy - centre) ** 2 + (xx - centre) ** 2) <= radius**2).float()[None, None]


def test_outline_loss_is_zero_for_air_outside_and_tissue_on_the_edge() -> None:
    mask = disk()
    # tissue (0.0) inside the body, air (-1) outside
    assert float(outline_loss(mask * 1.0 - (1 - mask), mask)) == 0.0
    # only the edge band needs tissue: an air-filled interior (a lung) is allowed
    interior = disk(radius=6.0)
    assert float(outline_loss(torch.where(interior.bool() | ~mask.bool(), -1.0, 0.5), mask)) == 0.0
    # values exactly at the threshold on the edge are still tissue
    assert float(outline_loss(torch.where(mask.bool(), -0.8, -1.0), mask)) == 0.0


def test_outline_loss_is_positive_when_the_outline_grows() -> None:
    mask = disk(radius=9.0)
    grown = disk(radius=11.0)
    output = torch.where(grown.bool(), 0.0, -1.0)
    loss = float(outline_loss(output, mask))
    ring = grown - mask  # pixels outside the mask with |0 - (-1)| = 1
    assert loss == pytest.approx(float(ring.sum() / (1 - mask).sum()), rel=1e-6)
    assert loss > 0


def test_outline_loss_is_positive_when_the_outline_shrinks_or_vanishes() -> None:
    mask = disk(radius=9.0)
    shrunk = disk(radius=6.0)
    loss_shrunk = float(outline_loss(torch.where(shrunk.bool(), 0.0, -1.0), mask))
    loss_vanished = float(outline_loss(-torch.ones_like(mask), mask))
    assert loss_shrunk > 0
    # vanished: every band pixel is air, relu(-0.8 - (-1)) = 0.2 on each
    assert loss_vanished == pytest.approx(0.2, rel=1e-6)
    assert loss_vanished >= loss_shrunk


def test_outline_band_width_and_field_of_view_edge() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1  # body cut by the left image border: only column 7 side is an outline
    output = torch.where(mask.bool(), 0.0, -1.0)
    output[..., :, 0] = -1.0  # air along the field-of-view cut: not an outline, must not cost
    assert float(outline_loss(output, mask, band=2)) == 0.0
    output[..., :, 6] = -1.0  # air 2 pixels inside the outline: inside the band of 2
    assert float(outline_loss(output, mask, band=2)) > 0
    assert float(outline_loss(output, mask, band=1)) == 0.0  # outside the band of 1
    assert float(outline_loss(output, mask, band=0)) == 0.0  # band term off, background is air


def test_outline_loss_uses_the_centre_channel_for_25d() -> None:
    mask = disk()
    centre = mask * 1.0 - (1 - mask)
    output = torch.cat([torch.ones_like(mask), centre, torch.ones_like(mask)], dim=1)  # neighbours differ
    assert float(outline_loss(output, mask)) == 0.0
    output = torch.cat([centre, -torch.ones_like(mask), centre], dim=1)
    assert float(outline_loss(output, mask)) > 0


def test_outline_loss_gradient_and_validation() -> None:
    mask = disk()
    output = torch.zeros_like(mask, requires_grad=True)
    outline_loss(output, mask).backward()
    assert torch.isfinite(output.grad).all() and float(output.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="band"):
        outline_loss(output, mask, band=-1)
    assert float(outline_loss(torch.zeros_like(mask), torch.ones_like(mask))) == 0.0  # empty background


# ------------------------------------------------------------------ attention regulariser
def test_attention_regulariser_known_values() -> None:
    assert close(attention_regulariser(torch.full((2, 1, 8, 8), 0.3)), 0.3)  # flat: no TV
    assert close(attention_regulariser(torch.zeros(1, 1, 8, 8)), 0.0)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    # mean 0.5, vertical and horizontal neighbours always differ by 1
    assert close(attention_regulariser(checker.float()[None, None]), 0.5 + 1.0 + 1.0)
    half = torch.zeros(1, 1, 4, 4)
    half[..., 2:] = 1.0  # one vertical edge: 4 of the 12 horizontal pairs differ
    assert close(attention_regulariser(half), 0.5 + 4 / 12)


def test_attention_regulariser_prefers_compact_masks() -> None:
    torch.manual_seed(0)
    speckled = (torch.rand(1, 1, 32, 32) < 0.25).float()
    compact = torch.zeros(1, 1, 32, 32)
    compact[..., :16, :16] = 1.0  # same area
    assert float(attention_regulariser(compact)) < float(attention_regulariser(speckled))
    m = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)
    attention_regulariser(m).backward()
    assert float(m.grad.sum()) > 0  # pushes the mask towards 0


def test_losses_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        attention_regulariser(torch.zeros(8, 8))
    with pytest.raises(ValueError):
        outline_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        masked_l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 8))
