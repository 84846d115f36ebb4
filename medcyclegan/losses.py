"""Loss functions of training: adversarial, L1 (plain and masked), outline, attention, structure, and
UNIT's and MUNIT's multi-scale adversarial terms, UNIT's latent KL term; CUT's contrastive PatchNCE.

All losses return 0-d float32 tensors and compute in float32 even inside a bf16 autocast region
(the inputs are cast up and autocast is switched off for the reduction), so that small differences
are not lost to bf16's 8-bit mantissa. Images are in the normalised range [-1, 1] where air is -1.

Masks are (N, 1, H, W) body masks (bool or float in {0, 1}; soft masks act as weights) of the slice
the image shows; they broadcast over the image's channels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medcyclegan.config import GAN_MODES, STRUCTURE_LOSSES
from medcyclegan.data.normalise import AIR_NORMALISED
from medcyclegan.errors import ConfigError


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Switches autocast off for ``device`` so that reductions run in float32."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


# ------------------------------------------------------------------ adversarial
class AdversarialLoss:
    """GAN objectives on discriminator logits (PatchGAN maps or any shape).

    Modes:
        - ``"lsgan"`` (reference CycleGAN): least squares, ``D: 0.5 * (mean((real - 1)^2) + mean(fake^2))``,
          ``G: mean((fake - 1)^2)``; through MONAI's ``PatchAdversarialLoss(criterion="least_squares",
          no_activation_leastsq=True)`` (without that flag MONAI applies a LeakyReLU to the logits first).
        - ``"vanilla"``: binary cross-entropy with logits (the original GAN),
          ``D: 0.5 * (BCE(real, 1) + BCE(fake, 0))``, ``G: BCE(fake, 1)`` (non-saturating).
        - ``"hinge"``: ``D: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``, ``G: -mean(fake)``.

    The discriminator loss is halved in every mode, as the reference does, so that D learns at half
    the rate of G. A multi-scale discriminator (:class:`~medcyclegan.nets.MultiScalePatchGAN`) gives
    a list of logits, one per scale: the loss is then the mean of the per-scale losses (pix2pixHD).

    Args:
        mode: ``"lsgan"``, ``"vanilla"`` or ``"hinge"``.

    Raises:
        ConfigError: for an unknown mode.
    """

    def __init__(self, mode: str = "lsgan") -> None:
        if mode not in GAN_MODES:
            raise ConfigError(f"gan mode must be one of {', '.join(GAN_MODES)}; got {mode!r}")
        self.mode = mode
        # lazy: MONAI costs about 1.6 s to import (python -X importtime); convert reaches this module
        # through the model registry but never builds a loss.
        from monai.losses import PatchAdversarialLoss  # noqa: PLC0415

        self._least_squares = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)

    def __repr__(self) -> str:
        return f"AdversarialLoss(mode={self.mode!r})"

    def generator_loss(self, fake_logits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Loss of the generator: the discriminator should call its outputs real.

        Args:
            fake_logits: discriminator logits on generated images (or a list of them, one per scale).

        Returns:
            0-d float32 tensor.
        """
        if isinstance(fake_logits, list):
            return torch.stack([self.generator_loss(fake) for fake in fake_logits]).mean()
        with _no_autocast(fake_logits.device):
            fake = fake_logits.float()
            if self.mode == "lsgan":
                return self._least_squares(fake, target_is_real=True, for_discriminator=False)
            if self.mode == "vanilla":
                return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            return -fake.mean()

    def discriminator_loss(
        self, real_logits: torch.Tensor | list[torch.Tensor], fake_logits: torch.Tensor | list[torch.Tensor]
    ) -> torch.Tensor:
        """Loss of the discriminator, already multiplied by 0.5.

        Args:
            real_logits: discriminator logits on real images (or a list of them, one per scale).
            fake_logits: discriminator logits on generated (pooled, detached) images, alike.

        Returns:
            0-d float32 tensor.
        """
        if isinstance(real_logits, list) and isinstance(fake_logits, list):
            per_scale = [self.discriminator_loss(r, f) for r, f in zip(real_logits, fake_logits, strict=True)]
            return torch.stack(per_scale).mean()
        with _no_autocast(real_logits.device):
            real = real_logits.float()
            fake = fake_logits.float()
            if self.mode == "lsgan":
                loss_real = self._least_squares(real, target_is_real=True, for_discriminator=True)
                loss_fake = self._least_squares(fake, target_is_real=False, for_discriminator=True)
            elif self.mode == "vanilla":
                loss_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                loss_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            else:
                loss_real = F.relu(1.0 - real).mean()
                loss_fake = F.relu(1.0 + fake).mean()
            return 0.5 * (loss_real + loss_fake)


def multiscale_discriminator_loss(
    real_logits: list[torch.Tensor],
    fake_logits: list[torch.Tensor],
    adversarial: AdversarialLoss | None = None,
) -> torch.Tensor:
    """UNIT's and MUNIT's discriminator loss (the reference's ``MsImageDis.calc_dis_loss``).

    Per scale ``loss(real) + loss(fake)`` of ``adversarial``'s mode, summed over the scales and not
    halved: twice :meth:`AdversarialLoss.discriminator_loss` (CycleGAN's halved loss, which
    pix2pixHD's scales average). With ``gan_type: lsgan`` (``adversarial`` ``None``: an LSGAN loss)
    ``sum over scales of mean(fake^2) + mean((real - 1)^2)``.

    Returns:
        0-d float32 tensor.
    """
    adversarial = adversarial if adversarial is not None else AdversarialLoss("lsgan")
    per_scale = [adversarial.discriminator_loss(r, f) for r, f in zip(real_logits, fake_logits, strict=True)]
    return 2.0 * torch.stack(per_scale).sum()


def multiscale_generator_loss(
    fake_logits: list[torch.Tensor], adversarial: AdversarialLoss | None = None
) -> torch.Tensor:
    """UNIT's and MUNIT's generator loss (the reference's ``MsImageDis.calc_gen_loss``).

    :meth:`AdversarialLoss.generator_loss` of ``adversarial`` (``None``: LSGAN, ``mean((fake - 1)^2)``)
    summed over the scales. Returns a 0-d float32 tensor.
    """
    adversarial = adversarial if adversarial is not None else AdversarialLoss("lsgan")
    return torch.stack([adversarial.generator_loss(fake) for fake in fake_logits]).sum()


# ------------------------------------------------------------------ reconstruction
def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over every element, in float32 (the reference cycle/identity loss)."""
    with _no_autocast(a.device):
        return F.l1_loss(a.float(), b.float())


def latent_kl_loss(mu: torch.Tensor) -> torch.Tensor:
    """UNIT's KL term of a latent code of unit variance (``UNIT_Trainer.__compute_kl``): ``mean(mu^2)``.

    The KL divergence of N(mu, 1) from N(0, 1) is ``sum(mu^2) / 2``; the reference takes the mean
    of ``mu^2`` instead (its weight ``recon_kl_w`` is set for that). Returns a 0-d float32 tensor.
    """
    with _no_autocast(mu.device):
        return (mu.float() ** 2).mean()


def _check_mask(image: torch.Tensor, mask: torch.Tensor, what: str) -> torch.Tensor:
    """Validates that ``mask`` broadcasts onto ``image`` and returns it as float32."""
    if image.ndim != 4:
        raise ValueError(f"{what}: expected (N, C, H, W) images; got shape {tuple(image.shape)}")
    if mask.ndim != 4 or mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"{what}: mask of shape {tuple(mask.shape)} does not match images of shape {tuple(image.shape)}; "
            "expected (N, 1, H, W)"
        )
    if mask.shape[1] not in (1, image.shape[1]):
        raise ValueError(f"{what}: mask must have 1 or {image.shape[1]} channels; got {mask.shape[1]}")
    return mask.detach().float()


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)`` with ``w`` broadcast onto ``values``; 0 (not NaN) when all weights are 0."""
    weights = weights.expand_as(values)
    total = weights.sum()
    # With all weights 0 the numerator is exactly 0 too, so dividing by the smallest positive float
    # gives 0 and a zero gradient; with any positive weight the clamp does nothing.
    return (weights * values).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def masked_l1(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, background_weight: float = 0.0
) -> torch.Tensor:
    """Masked mean absolute error ``sum(w * |pred - target|) / sum(w)``, ``w = mask + bw * (1 - mask)``.

    A true masked mean: every voxel inside the body counts once and background voxels count
    ``background_weight`` times, whatever the share of the slice the body covers (MONAI's
    ``MaskedLoss`` instead divides by all voxels, so small bodies get small losses).

    Args:
        pred: (N, C, H, W) prediction.
        target: (N, C, H, W) target.
        mask: (N, 1, H, W) body mask (or (N, C, H, W)); broadcast over channels.
        background_weight: weight of voxels outside the mask, >= 0 (0 ignores the background).

    Returns:
        0-d float32 tensor; 0 when every weight is 0 (empty mask and ``background_weight`` 0).

    Raises:
        ValueError: for mismatched shapes or a negative ``background_weight``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"masked_l1: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if not background_weight >= 0:
        raise ValueError(f"masked_l1: background_weight must be >= 0; got {background_weight!r}")
    weights = _check_mask(pred, mask, "masked_l1")
    with _no_autocast(pred.device):
        weights = weights + background_weight * (1.0 - weights)
        return _weighted_mean((pred.float() - target.float()).abs(), weights)


# ------------------------------------------------------------------ anatomy preservation
def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Erosion by a (2r+1)^2 square, per channel: a pixel stays if its whole neighbourhood is inside.

    Pixels beyond the image border count as inside the mask, so a body cut by the field of view is
    not eroded along the cut (that edge is not a body outline).
    """
    # min-filter = -maxpool(-x); max_pool2d's implicit padding is -inf, i.e. "inside" after negation.
    return -F.max_pool2d(-mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def outline_loss(
    output: torch.Tensor,
    input_mask: torch.Tensor,
    *,
    air_value: float = AIR_NORMALISED,
    tissue_threshold: float = -0.8,
    band: int = 2,
) -> torch.Tensor:
    """Background and body-outline preservation: the translation keeps the input's body shape.

    The sum of two masked means (each 0 when its region is empty):

    (a) background: ``mean |output - air_value|`` over the pixels outside ``input_mask``, so that
        nothing appears where the input had air (the outline may not grow);
    (b) outline: ``mean relu(tissue_threshold - output)`` over the band of ``band`` pixels just
        inside the mask's boundary (the mask minus its erosion by a (2 band + 1)^2 square), so that
        output values below the tissue threshold there, i.e. a vanishing or shrinking outline, cost.

    It is exactly 0 for an output that is ``air_value`` outside the mask and at least
    ``tissue_threshold`` on the edge band. The interior of the body is left free (that is the
    translation's job).

    Args:
        output: (N, C, H, W) generated image, normalised so that air is ``air_value``.
        input_mask: (N, 1, H, W) body mask of the generator's input slice. With a 1-channel mask and
            a 2.5D output of C channels, only the centre channel (the slice the mask belongs to) is
            compared: neighbouring slices legitimately have other outlines. A C-channel mask is
            compared channel by channel.
        air_value: normalised value of air (-1 for the [-1, 1] CT and MR maps).
        tissue_threshold: normalised value below which a pixel counts as air in the outline band
            (-0.8 is about -620 HU with the default CT window of [-1024, 3000] HU).
        band: width of the outline band in pixels, >= 0 (0 switches term (b) off).

    Returns:
        0-d float32 tensor.

    Raises:
        ValueError: for mismatched shapes or a negative ``band``.
    """
    if isinstance(band, bool) or not isinstance(band, int) or band < 0:
        raise ValueError(f"outline_loss: band must be an integer >= 0 pixels; got {band!r}")
    mask = _check_mask(output, input_mask, "outline_loss")
    if mask.shape[1] == 1 and output.shape[1] > 1:
        centre = output.shape[1] // 2
        output = output[:, centre : centre + 1]
    with _no_autocast(output.device):
        out = output.float()
        background = _weighted_mean((out - air_value).abs(), 1.0 - mask)
        if band == 0:
            return background
        edge = mask - _erode(mask, band)
        return background + _weighted_mean(F.relu(tissue_threshold - out), edge)


def attention_regulariser(attention: torch.Tensor) -> torch.Tensor:
    """Sparsity plus smoothness of an attention mask m (N, 1, H, W) in [0, 1].

    ``mean(m) + TV(m)``, with ``TV(m) = mean |m[y+1, x] - m[y, x]| + mean |m[y, x+1] - m[y, x]|``
    (anisotropic total variation, mean absolute difference of vertical and horizontal neighbours).
    The sparsity term pushes m towards 0, i.e. towards keeping the input where the translation has
    nothing to change, so the generator opens the mask only where it must; the TV term penalises
    speckled masks and favours compact regions with clean edges. Both terms lie in [0, 1] (TV in
    [0, 2]); weight them together with ``loss.lambda_attention``.

    Args:
        attention: (N, 1, H, W) attention mask.

    Returns:
        0-d float32 tensor.
    """
    if attention.ndim != 4:
        raise ValueError(f"attention_regulariser: expected (N, 1, H, W); got shape {tuple(attention.shape)}")
    with _no_autocast(attention.device):
        m = attention.float()
        sparsity = m.mean()
        total_variation = torch.zeros((), device=m.device)
        if m.shape[-2] > 1:
            total_variation = total_variation + (m[..., 1:, :] - m[..., :-1, :]).abs().mean()
        if m.shape[-1] > 1:
            total_variation = total_variation + (m[..., :, 1:] - m[..., :, :-1]).abs().mean()
        return sparsity + total_variation


# ------------------------------------------------------------------ structure consistency
# Unit offsets of the 2D neighbourhoods of MIND, (dy, dx), scaled by the radius.
_FOUR_NEIGHBOURS = ((0, 1), (1, 0), (0, -1), (-1, 0))
_EIGHT_NEIGHBOURS = (*_FOUR_NEIGHBOURS, (1, 1), (1, -1), (-1, 1), (-1, -1))
MIND_NEIGHBOURHOODS = ("four", "eight")
MIND_PATCHES = ("gaussian", "box")
# Heinrich's bounds on the local variance V, relative to its image mean, so that flat regions (V
# near 0) and very strong edges (V huge) do not dominate: V is clamped to [1e-3, 1e3] * mean(V).
_MIND_VARIANCE_RANGE = (1e-3, 1e3)
# Floor of V for a constant image (mean(V) = 0): MIND is then 1 everywhere, not 0/0.
_MIND_VARIANCE_FLOOR = 1e-12


def _check_images(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"{what}: expected two (N, C, H, W) images of one shape; got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def _patch_kernel(patch: str, sigma: float, patch_size: int, device: torch.device) -> torch.Tensor:
    """The (k, k) patch weights C(p), summing to 1: a Gaussian truncated at 3 sigma, or a box."""
    if patch == "gaussian":
        half = max(1, math.ceil(3.0 * sigma))
        offsets = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
        line = torch.exp(-(offsets**2) / (2.0 * sigma**2))
        kernel = line[:, None] * line[None, :]
    else:
        kernel = torch.ones(patch_size, patch_size, dtype=torch.float32, device=device)
    return kernel / kernel.sum()


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[y, x] = image[y + dy, x + dx]``, the border replicated beyond the image."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    h, w = image.shape[-2:]
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def mind_descriptor(
    image: torch.Tensor,
    *,
    radius: int = 1,
    neighbourhood: str = "four",
    patch: str = "gaussian",
    sigma: float = 0.5,
    patch_size: int = 3,
) -> torch.Tensor:
    """MIND, the modality independent neighbourhood descriptor (Heinrich et al. 2012), in 2D.

    For every pixel x and every offset r of the neighbourhood R (the 4-neighbourhood ``(0, ±d)``,
    ``(±d, 0)`` at distance ``d = radius``; ``"eight"`` adds the diagonals ``(±d, ±d)``, as the 2D
    slice form of Yang et al. 2018, "Unpaired brain MR-to-CT synthesis using a structure-constrained
    CycleGAN"):

    - ``D_p(I, x, r) = sum_p C(p) * (I(x + p) - I(x + r + p))^2``, the patch distance: the squared
      difference image of I and I shifted by r, filtered by the patch weights C (a Gaussian of
      standard deviation ``sigma`` truncated at ``ceil(3 sigma)`` pixels, or a ``patch_size`` box;
      both sum to 1);
    - ``V(I, x) = mean_{r in R} D_p(I, x, r)``, the local variance estimate, clamped to
      ``[1e-3, 1e3] * mean_x V`` (the mean over the pixels of that image and channel; Heinrich's
      reference implementation), then to at least 1e-12 (a constant image);
    - ``MIND(I, x, r) = exp(-D_p(I, x, r) / V(I, x)) / n(x)`` with ``n(x) = max_r exp(-D_p / V)``, so
      that the largest entry of every pixel's descriptor is 1 (computed as
      ``exp(-(D_p - min_r D_p) / V)``, the same value without underflow).

    Pixels beyond the border are the border's (replicate padding), for the shifts and the patch
    filter. Every channel (each slice of a 2.5D context stack) is described on its own.

    Since ``D_p`` and ``V`` both scale with ``a^2``, MIND of ``a * I + b`` equals MIND of ``I`` for
    every ``a != 0``: it describes where the edges are, not their sign or contrast, which is what
    makes it a structure loss between MR and CT (bone is dark in T1 MR and bright in CT).

    Defaults: ``radius`` 1 with the 4-neighbourhood (the 2D counterpart of Heinrich's
    six-neighbourhood) and a Gaussian patch of ``sigma`` 0.5 (Heinrich et al. 2012's choice; a 5 x 5
    kernel whose outer ring weighs 3e-4 of its centre); MONAI 1.6 has no MIND or structure-descriptor loss
    (``monai.losses`` has local NCC and mutual information only), hence this implementation.

    Args:
        image: (N, C, H, W) image (any intensity range; computed in float32).
        radius: distance d of the neighbours, pixels, >= 1.
        neighbourhood: ``"four"`` or ``"eight"``.
        patch: ``"gaussian"`` (weights of ``sigma``) or ``"box"`` (a ``patch_size`` square).
        sigma: standard deviation of the Gaussian patch, pixels, > 0.
        patch_size: side of the box patch, an odd number of pixels >= 1.

    Returns:
        (N, C, |R|, H, W) float32 descriptor in (0, 1], max 1 over the ``|R|`` axis.

    Raises:
        ValueError: for a non-4D image or a bad parameter.
    """
    if image.ndim != 4:
        raise ValueError(f"mind_descriptor: expected an (N, C, H, W) image; got shape {tuple(image.shape)}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"mind_descriptor: radius must be an integer >= 1 pixels; got {radius!r}")
    if neighbourhood not in MIND_NEIGHBOURHOODS:
        raise ValueError(
            f"mind_descriptor: neighbourhood must be one of {', '.join(MIND_NEIGHBOURHOODS)}; got {neighbourhood!r}"
        )
    if patch not in MIND_PATCHES:
        raise ValueError(f"mind_descriptor: patch must be one of {', '.join(MIND_PATCHES)}; got {patch!r}")
    if patch == "gaussian" and (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not (math.isfinite(sigma) and sigma > 0)
    ):
        raise ValueError(f"mind_descriptor: sigma must be a number > 0 pixels; got {sigma!r}")
    if patch == "box" and (
        isinstance(patch_size, bool)
        or not isinstance(patch_size, int)
        or patch_size < 1
        or patch_size % 2 == 0
    ):
        raise ValueError(f"mind_descriptor: patch_size must be an odd integer >= 1; got {patch_size!r}")
    offsets = _FOUR_NEIGHBOURS if neighbourhood == "four" else _EIGHT_NEIGHBOURS
    with _no_autocast(image.device):
        img = image.float()
        n, c, h, w = img.shape
        kernel = _patch_kernel(patch, float(sigma), patch_size, img.device)
        half = kernel.shape[-1] // 2
        # Channels and neighbours folded into the batch, so that one 1-channel filter serves them all.
        squared = torch.stack(
            [(img - _shift(img, dy * radius, dx * radius)) ** 2 for dy, dx in offsets], dim=2
        )
        flat = squared.reshape(-1, 1, h, w)
        flat = F.pad(flat, (half, half, half, half), mode="replicate")
        distance = F.conv2d(flat, kernel[None, None]).reshape(n, c, len(offsets), h, w)
        variance = distance.mean(dim=2, keepdim=True)
        mean_variance = variance.mean(dim=(-2, -1), keepdim=True)
        low, high = _MIND_VARIANCE_RANGE
        variance = torch.minimum(torch.maximum(variance, low * mean_variance), high * mean_variance)
        variance = variance.clamp_min(_MIND_VARIANCE_FLOOR)
        nearest = distance.min(dim=2, keepdim=True).values
        return torch.exp(-(distance - nearest) / variance)


def mind_loss(x: torch.Tensor, y: torch.Tensor, **descriptor: Any) -> torch.Tensor:
    """Structure loss of Yang et al. 2018: ``mean |MIND(x) - MIND(y)|`` over pixels, neighbours, channels.

    0 for images with the same edges whatever their contrast (``y = a * x + b``, ``a != 0``); used
    between a generator's input and its translation (``loss.structure: mind``).

    Args:
        x: (N, C, H, W) image.
        y: (N, C, H, W) image of the same shape (every channel compared with its own).
        **descriptor: parameters of :func:`mind_descriptor` (``radius``, ``neighbourhood``, ...).

    Returns:
        0-d float32 tensor in [0, 1).
    """
    _check_images(x, y, "mind_loss")
    with _no_autocast(x.device):
        return (mind_descriptor(x, **descriptor) - mind_descriptor(y, **descriptor)).abs().mean()


# Sobel derivative filters (d/dx along W, d/dy along H), as in Hiasa et al.'s gradient correlation.
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
# NCC's denominator floor: a flat gradient image (no edges at all) has NCC 0, not 0/0.
_NCC_FLOOR = 1e-12


def _normalised_cross_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NCC over H, W of every (n, c): ``sum(a' b') / sqrt(sum a'^2 * sum b'^2)``, a' = a - mean a."""
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    numerator = (a * b).sum(dim=(-2, -1))
    denominator = ((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1))).clamp_min(_NCC_FLOOR).sqrt()
    return numerator / denominator


def gradient_correlation_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient consistency loss of Hiasa et al. 2018: ``1 - GC(x, y)``, averaged over images and channels.

    ``GC = 0.5 * (NCC(dx/du, dy/du) + NCC(dx/dv, dy/dv))`` per image and channel, with the
    derivatives along W (u) and H (v) from Sobel filters on the replicate-padded image and NCC the
    plain normalised cross-correlation over the slice (Penney et al. 1998, as Hiasa et al. use it).
    The loss is 0 for ``y = a * x + b`` with ``a > 0``, 2 for ``a < 0``, and 1 when either image has
    no edges at all.

    It is sign-sensitive, as the paper defines it: an edge whose contrast is inverted between MR and
    CT (cortical bone is dark in T1 MR and bright in CT while air is dark in both) costs, and a
    global absolute value of NCC would not help, since one slice holds edges of both kinds (hence no
    such option). MIND (:func:`mind_loss`) is sign-invariant at every pixel but sees the MR's noise
    in flat regions as structure; which of the two helps a given contrast is for the quality
    benchmark to say.

    Args:
        x: (N, C, H, W) image.
        y: (N, C, H, W) image of the same shape (every channel compared with its own).

    Returns:
        0-d float32 tensor in [0, 2].
    """
    _check_images(x, y, "gradient_correlation_loss")
    with _no_autocast(x.device):
        sobel_x = torch.tensor(_SOBEL_X, dtype=torch.float32, device=x.device)
        kernels = torch.stack([sobel_x, sobel_x.T])[:, None]  # (2, 1, 3, 3): d/du, d/dv

        def gradients(image: torch.Tensor) -> torch.Tensor:
            n, c, h, w = image.shape
            flat = F.pad(image.float().reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
            return F.conv2d(flat, kernels).reshape(n, c, 2, h, w)

        correlation = _normalised_cross_correlation(gradients(x), gradients(y))  # (N, C, 2)
        return 1.0 - correlation.mean()


STRUCTURE_LOSS_FUNCTIONS = {"mind": mind_loss, "gradient-correlation": gradient_correlation_loss}


def structure_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The structure-consistency loss ``loss.structure`` names (one of ``STRUCTURE_LOSSES``).

    Raises:
        ConfigError: for an unknown name.
    """
    if name not in STRUCTURE_LOSSES:
        raise ConfigError(f"loss.structure must be one of {', '.join(STRUCTURE_LOSSES)}; got {name!r}")
    return STRUCTURE_LOSS_FUNCTIONS[name]


# ------------------------------------------------------------------ contrastive (CUT)
# The logit given to a patch's similarity with itself among its negatives: exp(-10 / tau) is about
# zero (the reference fills the diagonal with this, models/patchnce.py).
NCE_SELF_LOGIT = -10.0


class PatchNCELoss:
    """PatchNCE (Park et al. 2020, eq. 5): each query patch should pick its own key among the keys.

    For image n and patch i, with unit feature vectors q (of the translation) and k (of the source,
    no gradient), the loss is the cross-entropy of picking k_i::

        -log( exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_{j != i} exp(q_i . k_j / tau)
                                      + exp(-10 / tau)) )

    where j runs over the other patches of the same image (or, with
    ``include_all_negatives_from_minibatch``, of every image of the batch), and the last term is the
    reference's filled diagonal (:data:`NCE_SELF_LOGIT`). The value is the mean over all patches and
    images, as the reference's ``PatchNCELoss(...).mean()`` (taesungp/contrastive-unpaired-translation,
    models/patchnce.py), computed in float32.

    Args:
        temperature: tau (``--nce_T``, 0.07).
        include_all_negatives_from_minibatch: the reference's option of that name (False for CUT and
            FastCUT; True for its single-image model).

    Raises:
        ConfigError: a temperature that is not > 0.
    """

    def __init__(self, temperature: float = 0.07, include_all_negatives_from_minibatch: bool = False) -> None:
        if not temperature > 0:
            raise ConfigError(f"PatchNCE temperature must be > 0; got {temperature!r}")
        self.temperature = temperature
        self.include_all_negatives_from_minibatch = include_all_negatives_from_minibatch

    def __repr__(self) -> str:
        return (
            f"PatchNCELoss(temperature={self.temperature}, "
            f"include_all_negatives_from_minibatch={self.include_all_negatives_from_minibatch})"
        )

    def __call__(self, feat_q: torch.Tensor, feat_k: torch.Tensor) -> torch.Tensor:
        """The loss of queries ``feat_q`` against keys ``feat_k``, both (N, P, D) unit vectors.

        Returns:
            0-d float32 tensor; no gradient flows into ``feat_k``.
        """
        if feat_q.ndim != 3 or feat_q.shape != feat_k.shape:
            raise ValueError(
                f"PatchNCE takes queries and keys of one shape (N, P, D); got {tuple(feat_q.shape)} "
                f"and {tuple(feat_k.shape)}"
            )
        with _no_autocast(feat_q.device):
            q = feat_q.float()
            k = feat_k.detach().float()
            positive = (q * k).sum(-1).reshape(-1, 1)
            if self.include_all_negatives_from_minibatch:
                q, k = q.reshape(1, -1, q.shape[-1]), k.reshape(1, -1, k.shape[-1])
            negative = torch.bmm(q, k.transpose(1, 2))
            n_patches = negative.shape[-1]
            diagonal = torch.eye(n_patches, device=q.device, dtype=torch.bool)[None]
            negative = negative.masked_fill(diagonal, NCE_SELF_LOGIT).reshape(-1, n_patches)
            logits = torch.cat((positive, negative), dim=1) / self.temperature
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, target)
