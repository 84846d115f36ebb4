"""pix2pix (Isola et al. 2017), as the reference implementation trains it, on registered MR/CT pairs.

Reference: junyanz/pytorch-CycleGAN-and-pix2pix, ``models/pix2pix_model.py``. Domain A is the source
modality, B the target; ``G_AB`` translates A to B (one way only), ``D_B`` is a *conditional*
PatchGAN: it judges the target-side image together with its source, ``cat(A, B)`` on the channel
axis (``2 * (2k + 1)`` channels with k context slices), so it learns whether B belongs to this A.

One step, in the reference's order (its ``forward``, ``backward_D``, ``backward_G``):
    1. ``fake_B = G_AB(A)``
    2. D update: ``0.5 * (loss(D(cat(A, B)), real) + loss(D(pool(cat(A, fake_B))), fake))``
    3. G update (D frozen): ``loss(D(cat(A, fake_B)), real) + lambda_l1 * |fake_B - B|``

The batches are registered pairs (:attr:`paired`): A and B of an item are the same slice of the two
volumes of one case, with the same crop and flip (:class:`~medcyclegan.data.slices.PairedSliceDataset`).

Defaults (the reference's, :data:`medcyclegan.config.MODEL_DEFAULTS` and the ``pix2pix`` section):
the U-Net generator ``unet_256`` (``model.generator unet``, ``unet_downs 8``, batch norm, dropout
0.5), ``pix2pix.lambda_l1`` 100, ``loss.gan_mode vanilla`` (BCE), no image pool
(``optim.pool_size 0``), Adam lr 2e-4 with beta1 0.5, 100 + 100 epochs of linear decay, batch 1.
``--generator resnet`` (or any ``model.generator``) gives the ResNet instead. The discriminator is
the package's PatchGAN (``model.ndf``, ``n_layers_d``, ``spectral_norm_d``, ``n_scales_d``), which
uses InstanceNorm as CycleGAN's: the reference pix2pix's D follows ``--norm batch`` too (BatchNorm,
2,764,609 parameters for 1 + 1 channels against 2,763,713 here); its learning-rate schedule is the
loop's (the same linear rule).

Also here: ``loss.mask_loss`` makes the L1 term a masked mean inside B's body mask (air weighted by
``loss.background_weight``), and ``model.ema_decay`` keeps a weight average of ``G_AB`` (stored as
``G_AB_ema``, used by validation and conversion) as CycleGAN does. The CycleGAN terms (cycle,
identity, outline, attention, structure losses) have no meaning without a second generator and are
not used; a run that switches one on is told so once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medcyclegan.checkpoint import load_state_strict
from medcyclegan.config import Config
from medcyclegan.losses import AdversarialLoss, l1_loss, masked_l1
from medcyclegan.models.base import (
    Batch,
    Direction,
    LrRule,
    TranslationModel,
    describe_generator_and_discriminator,
)
from medcyclegan.models.cyclegan import EMA_SUFFIX, EMA_UPDATES_KEY
from medcyclegan.models.ema import WeightAverage
from medcyclegan.models.pool import ImagePool
from medcyclegan.models.registry import register_model
from medcyclegan.models.training_utils import match_state_layout, set_requires_grad, state_to_cpu
from medcyclegan.nets import build_domain_discriminator, build_generator
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.runtime.precision import autocast_context
from medcyclegan.runtime.seeds import derived_seed

logger = logging.getLogger("medcyclegan")

# CycleGAN's loss weights a pix2pix run does not use, and the value that means "off".
_UNUSED_CYCLEGAN_TERMS = {"lambda_mask": 0.0, "lambda_structure": 0.0}


@register_model("pix2pix")
class Pix2Pix(TranslationModel):
    """One U-Net (or ResNet) generator A -> B and one conditional PatchGAN (see the module docstring).

    Example:
        >>> import torch
        >>> from medcyclegan.config import load_config
        >>> cfg = load_config(None, {"model.kind": "pix2pix", "model.ngf": 4, "model.unet_downs": 5,
        ...                          "data.image_size": 32, "model.ndf": 4, "model.n_layers_d": 1})
        >>> model = Pix2Pix(cfg, torch.device("cpu"), lambda step: 1.0)
        >>> model.translator("AB")(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    directions: ClassVar[tuple[Direction, ...]] = ("AB",)
    paired: ClassVar[bool] = True
    # The two totals, then the generator's terms by the reference's names (G_GAN, G_L1).
    loss_columns: ClassVar[tuple[str, ...]] = ("loss_G", "loss_D", "G_GAN", "G_L1")
    watched_losses: ClassVar[tuple[str, ...]] = ("loss_G", "loss_D")
    network_names: ClassVar[tuple[str, ...]] = ("G_AB", "D_B")

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        lr_rule: LrRule,
        *,
        amp: bool = False,
        channels_last: bool = False,
        dist: DistributedContext | None = None,
    ) -> None:
        super().__init__(cfg, device, lr_rule, amp=amp, channels_last=channels_last, dist=dist)
        # Built in this order: each draws its initial weights from the global torch generator.
        nets = self.build_networks(cfg)
        self.G_AB, self.D_B = (nets[k].to(device) for k in self.network_names)
        if channels_last:
            for net in self.networks().values():
                net.to(memory_format=torch.channels_last)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        fused = device.type == "cuda"
        self.opt_G = torch.optim.Adam(self.G_AB.parameters(), lr=cfg.optim.lr, betas=betas, fused=fused)
        lr_d = cfg.optim.lr if cfg.optim.lr_d is None else cfg.optim.lr_d
        self.opt_D = torch.optim.Adam(self.D_B.parameters(), lr=lr_d, betas=betas, fused=fused)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lr_rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lr_rule)
        # The reference's fake_AB_pool (of (A, fake B) pairs); size 0 by default: a pass-through.
        rank = [self.dist.rank] if self.dist.rank else []
        self.pool_AB = ImagePool(cfg.optim.pool_size, seed=derived_seed(cfg.train.seed, 12, *rank))
        self.adversarial = AdversarialLoss(cfg.loss.gan_mode)
        self.average = WeightAverage(self.G_AB, cfg.model.ema_decay) if cfg.model.ema_decay > 0 else None
        # Plain until the loop wraps them (after a resume has loaded the weights).
        self._step_G: nn.Module = self.G_AB
        self._step_D: nn.Module = self.D_B
        self._frozen_D: nn.Module = self.D_B
        unused = [f"loss.{k}" for k, off in _UNUSED_CYCLEGAN_TERMS.items() if getattr(cfg.loss, k) != off]
        if unused and self.dist.is_main:
            logger.warning("pix2pix has one generator: %s (CycleGAN terms) are not used", ", ".join(unused))

    # ------------------------------------------------------------ building
    @classmethod
    def build_translator(cls, cfg: Config, direction: Direction) -> nn.Module:
        channels = cfg.data.in_channels
        return build_generator(cfg, channels, channels)

    @classmethod
    def translator_key(cls, direction: Direction) -> str:
        return "G_AB"

    @classmethod
    def translator_state_key(cls, cfg: Config, direction: Direction) -> str:
        return "G_AB" + EMA_SUFFIX if cfg.model.ema_decay > 0 else "G_AB"

    @classmethod
    def build_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        channels = cfg.data.in_channels
        return {
            "G_AB": build_generator(cfg, channels, channels),
            # Conditional: it sees the source and the (real or generated) target, stacked.
            "D_B": build_domain_discriminator(cfg, (cfg.data.src_modality, cfg.data.tgt_modality), channels),
        }

    @classmethod
    def describe_networks(cls, cfg: Config, parameters: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """The generator and the discriminator with their options (D conditional on the source)."""
        return describe_generator_and_discriminator(cfg, parameters, "G_AB", "D_B", conditional=True)

    def networks(self) -> dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "D_B": self.D_B}

    def translator(self, direction: Direction) -> nn.Module:
        """``G_AB``, or its weight average with ``model.ema_decay``."""
        network = super().translator(direction)
        return network if self.average is None else self.average.network

    def wrap_for_training(self, compile_: bool) -> None:
        """DDP-wraps (multi-process) and/or compiles the generator and the discriminator's own update.

        The frozen discriminator of the generator update is called unwrapped in a multi-process run
        (it gets no gradient, so DDP must not wait for one), as in CycleGAN.
        """

        def compiled(module: nn.Module) -> nn.Module:
            return torch.compile(module) if compile_ else module

        self._step_G = compiled(distributed.wrap_ddp(self.G_AB, self.dist, self.device))
        self._step_D = compiled(distributed.wrap_ddp(self.D_B, self.dist, self.device))
        self._frozen_D = compiled(self.D_B) if self.dist.is_distributed else self._step_D

    # ------------------------------------------------------------- training
    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        real_a = batch["A"]["image"].to(self.device, non_blocking=True)
        real_b = batch["B"]["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        mask_b = batch["B"]["mask"].to(self.device, non_blocking=True)
        return real_a, real_b, mask_b

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One reference pix2pix step: forward, backward_D (D update), backward_G (G update)."""
        real_a, real_b, mask_b = self._to_device(batch)
        fake_b = self.forward(real_a)
        set_requires_grad([self.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        losses = self.backward_D(real_a, real_b, fake_b)
        self.opt_D.step()
        set_requires_grad([self.D_B], False)
        self.opt_G.zero_grad(set_to_none=True)
        losses.update(self.backward_G(real_a, real_b, fake_b, mask_b))
        self.opt_G.step()
        if self.average is not None:
            self.average.update(self.G_AB)
        return {k: v.detach() for k, v in losses.items()}

    def forward(self, real_a: torch.Tensor) -> torch.Tensor:
        """``fake_B = G_AB(A)`` (the graph is kept for the generator update)."""
        with autocast_context(self.device, self.amp):
            return self._step_G(real_a)

    def backward_D(
        self, real_a: torch.Tensor, real_b: torch.Tensor, fake_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The discriminator's loss ``0.5 * (loss(real pair) + loss(pooled fake pair))``, backpropagated."""
        with autocast_context(self.device, self.amp):
            fake_ab = self.pool_AB.query(torch.cat([real_a, fake_b], dim=1).detach())
            real_ab = torch.cat([real_a, real_b], dim=1)
            # Separate passes, as the reference's: the fake pair, then the real one.
            pred_fake = self._step_D(fake_ab)
            pred_real = self._step_D(real_ab)
            loss_d = self.adversarial.discriminator_loss(pred_real, pred_fake)
        loss_d.backward()
        return {"loss_D": loss_d}

    def backward_G(
        self, real_a: torch.Tensor, real_b: torch.Tensor, fake_b: torch.Tensor, mask_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The generator's loss: fool D on ``(A, fake_B)`` and match B (L1 times ``pix2pix.lambda_l1``)."""
        loss_cfg = self.cfg.loss
        with autocast_context(self.device, self.amp):
            g_gan = self.adversarial.generator_loss(self._frozen_D(torch.cat([real_a, fake_b], dim=1)))
            if loss_cfg.mask_loss:
                l1 = masked_l1(fake_b, real_b, mask_b, background_weight=loss_cfg.background_weight)
            else:
                l1 = l1_loss(fake_b, real_b)
            g_l1 = l1 * self.cfg.pix2pix.lambda_l1
            loss_g = g_gan + g_l1
        loss_g.backward()
        return {"loss_G": loss_g, "G_GAN": g_gan, "G_L1": g_l1}

    def step_schedulers(self) -> None:
        self.sched_G.step()
        self.sched_D.step()

    def learning_rate(self) -> float:
        return float(self.opt_G.param_groups[0]["lr"])

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            **{name: net.state_dict() for name, net in self.networks().items()},
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "sched_G": self.sched_G.state_dict(),
            "sched_D": self.sched_D.state_dict(),
            "pool_AB": self.pool_AB.state_dict(),
        }
        if self.average is not None:
            state["G_AB" + EMA_SUFFIX] = self.average.network.state_dict()
            state[EMA_UPDATES_KEY] = self.average.updates
        return state

    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        for name, net in self.networks().items():
            load_state_strict(net, state[name], name, source)
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.sched_G.load_state_dict(state["sched_G"])
        self.sched_D.load_state_dict(state["sched_D"])
        self.pool_AB.load_state_dict(state["pool_AB"])
        if self.average is not None:
            key = "G_AB" + EMA_SUFFIX
            load_state_strict(self.average.network, state[key], key, source)
            self.average.updates = int(state[EMA_UPDATES_KEY])
        for optimizer in (self.opt_G, self.opt_D):
            match_state_layout(optimizer)

    def process_state(self) -> dict[str, Any]:
        return {"AB": state_to_cpu(self.pool_AB.state_dict())}

    def load_process_state(self, state: Mapping[str, Any]) -> None:
        self.pool_AB.load_state_dict(state["AB"])
