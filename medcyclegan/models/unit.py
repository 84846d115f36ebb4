"""UNIT (Liu et al. 2017, "Unsupervised Image-to-Image Translation Networks"), as its reference trains it.

Two VAEs, one per domain (A: the source, B: the target), whose encoders end and whose decoders begin
in shared layers (the shared latent space, :mod:`medcyclegan.nets.unit`), and two multi-scale LSGAN
discriminators. A translation A -> B encodes with A's encoder, takes the latent code's mean and
decodes with B's decoder.

One step, in the reference's order (mingyuliutw/UNIT, ``train.py``: ``dis_update`` then
``gen_update`` of ``trainer.py``'s ``UNIT_Trainer``), each phase drawing its own latent noise:

    1. :meth:`Unit.dis_update`: x_ba = dec_A(mu_b + n), x_ab = dec_B(mu_a + n) (no gradient);
       loss_D = gan_w * (LSGAN(D_A; x_ba, A) + LSGAN(D_B; x_ab, B)), summed over the scales.
    2. :meth:`Unit.gen_update` (:meth:`Unit.forward` computes its translations):
       within-domain reconstructions x_aa = dec_A(mu_a + n), x_bb; translations x_ab, x_ba;
       re-encoded mu_a' = enc_B(x_ab), mu_b' = enc_A(x_ba); cycles x_aba = dec_A(mu_a' + n), x_bab;
       loss_G = gan_w * (G-LSGAN(D_A(x_ba)) + G-LSGAN(D_B(x_ab)))
              + recon_x_w * (|x_aa - A| + |x_bb - B|) + recon_kl_w * (mean(mu_a^2) + mean(mu_b^2))
              + recon_x_cyc_w * (|x_aba - A| + |x_bab - B|)
              + recon_kl_cyc_w * (mean(mu_a'^2) + mean(mu_b'^2)).
       The reference lets this pass put gradients into the discriminators and clears them in the
       next ``dis_update``; here they are frozen for it, which gives the same updates.

Adam (``unit.lr``, ``unit.beta1``/``beta2``, ``unit.weight_decay``) for the generators (both VAEs and
the shared layers) and for the discriminators, with the loop's learning-rate schedule (the reference
halves the rate every 100000 steps; see :class:`~medcyclegan.config.UnitConfig`). The latent noise
comes from the model's own generator (seeded from ``train.seed`` and the rank, saved in the
checkpoint), so that a resumed run continues exactly. Not implemented: the reference's optional
VGG perceptual loss (``vgg_w``, 0 in its UNIT configs but gta2city's) and ``recon_h_w`` (unused by its
code).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medcyclegan.config import Config
from medcyclegan.losses import (
    AdversarialLoss,
    l1_loss,
    latent_kl_loss,
    multiscale_discriminator_loss,
    multiscale_generator_loss,
)
from medcyclegan.models.base import Batch, Direction, LrRule, TranslationModel
from medcyclegan.models.registry import register_model
from medcyclegan.models.training_utils import Optimisation, load_training_state, set_requires_grad
from medcyclegan.nets.unit import (
    UnitSharedLayers,
    UnitVAE,
    build_unit_networks,
    latent_shape,
    unit_translator,
)
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.runtime.precision import autocast_context
from medcyclegan.runtime.seeds import derived_seed

# The loss terms as logged, each already multiplied by its weight; loss_G and loss_D are the totals
# the two optimisers minimise.
LOSS_COLUMNS = (
    "loss_G",
    "loss_D",
    "D_A",
    "D_B",
    "G_adv_A",
    "G_adv_B",
    "recon_A",
    "recon_B",
    "kl_A",
    "kl_B",
    "cycle_A",
    "cycle_B",
    "kl_cycle_A",
    "kl_cycle_B",
)
NETWORK_NAMES = ("gen_A", "gen_B", "shared", "dis_A", "dis_B")
# State keys of the translators (modules made of the networks' parts; no extra storage on disk).
TRANSLATOR_KEYS: dict[str, str] = {"AB": "translator_AB", "BA": "translator_BA"}
# derived_seed stream of the latent noise (the image pools of CycleGAN use 10 and 11).
NOISE_STREAM = 20


class UnitGenerators(nn.Module):
    """Both VAEs and their shared layers, with the passes of a step as methods.

    :meth:`forward` is the generator update's whole forward pass, so that one
    ``DistributedDataParallel`` wrapper (or one ``torch.compile``) covers every generator parameter.
    The noise tensors are drawn by the caller (:func:`~medcyclegan.nets.unit.latent_shape`).
    """

    def __init__(self, gen_a: UnitVAE, gen_b: UnitVAE, shared: UnitSharedLayers) -> None:
        super().__init__()
        self.gen_A = gen_a
        self.gen_B = gen_b
        self.shared = shared

    def encode(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """The latent code's mean of images of ``domain``."""
        gen = self.gen_A if domain == "A" else self.gen_B
        return self.shared.encoder(gen.enc(x))

    def decode(self, z: torch.Tensor, domain: str) -> torch.Tensor:
        """Images of ``domain`` from latent codes."""
        gen = self.gen_A if domain == "A" else self.gen_B
        return gen.dec(self.shared.decoder(z))

    def forward(
        self,
        real_a: torch.Tensor,
        real_b: torch.Tensor,
        noise: tuple[torch.Tensor, ...],
        cross_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The reference's ``gen_update`` passes (``cross_only``: only its translations, as ``dis_update``).

        Args:
            noise: N(0, 1) draws of the latent shape: (n_a, n_b), plus (n_b', n_a') for the cycle
                unless ``cross_only``, in the reference's order.
        """
        h_a, h_b = self.encode(real_a, "A"), self.encode(real_b, "B")
        z_a, z_b = h_a + noise[0], h_b + noise[1]
        x_ba, x_ab = self.decode(z_b, "A"), self.decode(z_a, "B")
        if cross_only:
            return {"x_ba": x_ba, "x_ab": x_ab}
        out = {"x_ba": x_ba, "x_ab": x_ab, "h_a": h_a, "h_b": h_b}
        out["x_aa"], out["x_bb"] = self.decode(z_a, "A"), self.decode(z_b, "B")
        # Encode again: x_ba is of domain A and holds B's content, x_ab the other way round.
        out["h_b_cycle"], out["h_a_cycle"] = self.encode(x_ba, "A"), self.encode(x_ab, "B")
        out["x_aba"] = self.decode(out["h_a_cycle"] + noise[3], "A")
        out["x_bab"] = self.decode(out["h_b_cycle"] + noise[2], "B")
        return out


@register_model("unit")
class Unit(TranslationModel):
    """UNIT: VAE-GANs with a shared latent space (see the module docstring).

    Example:
        >>> import torch
        >>> from medcyclegan.config import load_config
        >>> cfg = load_config(None, {"model.kind": "unit", "unit.dim": 8, "unit.n_res": 1,
        ...     "unit.dis_dim": 8, "unit.dis_n_layer": 2, "unit.dis_num_scales": 2, "data.image_size": 32})
        >>> model = Unit(cfg, torch.device("cpu"), lambda step: 1.0)
        >>> model.translator("AB")(torch.zeros(1, 1, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    kind: ClassVar[str] = "unit"
    directions: ClassVar[tuple[Direction, ...]] = ("AB", "BA")
    loss_columns: ClassVar[tuple[str, ...]] = LOSS_COLUMNS
    watched_losses: ClassVar[tuple[str, ...]] = ("loss_G", "loss_D")
    network_names: ClassVar[tuple[str, ...]] = NETWORK_NAMES

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
        nets = self.build_networks(cfg)
        self.gen_A, self.gen_B, self.shared, self.dis_A, self.dis_B = (
            nets[k].to(device) for k in NETWORK_NAMES
        )
        if channels_last:
            for net in self.networks().values():
                net.to(memory_format=torch.channels_last)  # in place: the optimisers keep the same tensors
        self.generators = UnitGenerators(self.gen_A, self.gen_B, self.shared)
        self.translators = {
            "AB": unit_translator(self.gen_A, self.shared, self.gen_B, cfg.unit),
            "BA": unit_translator(self.gen_B, self.shared, self.gen_A, cfg.unit),
        }
        unit = cfg.unit
        adam = {
            "lr": unit.lr,
            "betas": (unit.beta1, unit.beta2),
            "weight_decay": unit.weight_decay,
            "fused": device.type == "cuda",
        }
        self.opt_G = torch.optim.Adam(self.generators.parameters(), **adam)
        self.opt_D = torch.optim.Adam([*self.dis_A.parameters(), *self.dis_B.parameters()], **adam)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lr_rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lr_rule)
        # The latent noise, one stream per process (rank 0 keeps the seed of a single-process run).
        rank = [self.dist.rank] if self.dist.rank else []
        self.noise_rng = torch.Generator(device=device)
        self.noise_rng.manual_seed(derived_seed(cfg.train.seed, NOISE_STREAM, *rank))
        # The reference's UNIT has ``gan_type: lsgan`` (no option here).
        self.adversarial = AdversarialLoss("lsgan")
        # Plain until the loop wraps them (after a resume has loaded the weights).
        self._step_generators: nn.Module = self.generators
        self._step_dis_A: nn.Module = self.dis_A
        self._step_dis_B: nn.Module = self.dis_B
        self._frozen_dis_A: nn.Module = self.dis_A
        self._frozen_dis_B: nn.Module = self.dis_B

    # ------------------------------------------------------------ building
    @classmethod
    def build_translator(cls, cfg: Config, direction: Direction) -> nn.Module:
        nets = cls.build_networks(cfg)
        source, target = ("gen_A", "gen_B") if direction == "AB" else ("gen_B", "gen_A")
        return unit_translator(nets[source], nets["shared"], nets[target], cfg.unit)

    @classmethod
    def translator_key(cls, direction: Direction) -> str:
        return TRANSLATOR_KEYS[direction]

    @classmethod
    def build_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        return build_unit_networks(cfg.unit, cfg.data.in_channels)

    def networks(self) -> dict[str, nn.Module]:
        return {
            "gen_A": self.gen_A,
            "gen_B": self.gen_B,
            "shared": self.shared,
            "dis_A": self.dis_A,
            "dis_B": self.dis_B,
        }

    def translator(self, direction: Direction) -> nn.Module:
        """Encoder of one domain, shared layers, decoder of the other (the latent code's mean)."""
        if direction not in self.directions:
            raise ValueError(f"{self.kind} translates only {', '.join(self.directions)}; not {direction}")
        return self.translators[direction]

    def wrap_for_training(self, compile_: bool) -> None:
        """The generators (one module) and the discriminators' own update through DDP and/or compiled.

        The frozen discriminators of the generator update are called unwrapped in a multi-process
        run (they get no gradient there, so DDP must not wait for one). Called once, by the loop.
        """

        def compiled(module: nn.Module) -> nn.Module:
            return torch.compile(module) if compile_ else module

        def trained(module: nn.Module) -> nn.Module:
            return compiled(distributed.wrap_ddp(module, self.dist, self.device))

        self._step_generators = trained(self.generators)
        self._step_dis_A = trained(self.dis_A)
        self._step_dis_B = trained(self.dis_B)
        if self.dist.is_distributed:
            self._frozen_dis_A = compiled(self.dis_A)
            self._frozen_dis_B = compiled(self.dis_B)
        else:
            self._frozen_dis_A, self._frozen_dis_B = self._step_dis_A, self._step_dis_B

    # ------------------------------------------------------------- training
    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        real_a = batch["A"]["image"].to(self.device, non_blocking=True)
        real_b = batch["B"]["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            # After the copy: converting first would copy from unpinned memory, i.e. synchronously.
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        return real_a, real_b

    def draw_noise(self, real_a: torch.Tensor, real_b: torch.Tensor, cycle: bool) -> tuple[torch.Tensor, ...]:
        """N(0, 1) latent noise from the model's own stream: (n_a, n_b), then (n_b', n_a') with ``cycle``."""
        shapes = [latent_shape(self.cfg.unit, real_a), latent_shape(self.cfg.unit, real_b)]
        if cycle:
            # The cycle re-encodes x_ba (shaped as B's images) first, then x_ab.
            shapes += shapes[::-1]
        return tuple(torch.randn(s, generator=self.noise_rng, device=self.device) for s in shapes)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One reference UNIT iteration: :meth:`dis_update`, then :meth:`gen_update`."""
        real_a, real_b = self._to_device(batch)
        losses = self.dis_update(real_a, real_b)
        losses.update(self.gen_update(real_a, real_b))
        return {k: v.detach() for k, v in losses.items()}

    def dis_update(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's ``dis_update``: translations with fresh noise, both discriminators' step."""
        weight = self.cfg.unit.gan_w
        noise = self.draw_noise(real_a, real_b, cycle=False)
        with torch.no_grad(), autocast_context(self.device, self.amp):
            fakes = self._step_generators(real_a, real_b, noise, cross_only=True)
        set_requires_grad([self.dis_A, self.dis_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp):
            loss_a = weight * multiscale_discriminator_loss(
                self._step_dis_A(real_a), self._step_dis_A(fakes["x_ba"]), self.adversarial
            )
            loss_b = weight * multiscale_discriminator_loss(
                self._step_dis_B(real_b), self._step_dis_B(fakes["x_ab"]), self.adversarial
            )
            loss_d = loss_a + loss_b
        loss_d.backward()
        self.opt_D.step()
        return {"loss_D": loss_d, "D_A": loss_a, "D_B": loss_b}

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every image and latent code of the generator update, with fresh noise (see UnitGenerators)."""
        noise = self.draw_noise(real_a, real_b, cycle=True)
        with autocast_context(self.device, self.amp):
            return self._step_generators(real_a, real_b, noise)

    def generator_losses(
        self, real_a: torch.Tensor, real_b: torch.Tensor, out: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The weighted terms of the reference's ``loss_gen_total`` and their sum ``loss_G``."""
        w = self.cfg.unit
        set_requires_grad([self.dis_A, self.dis_B], False)
        with autocast_context(self.device, self.amp):
            losses = {
                "G_adv_A": w.gan_w
                * multiscale_generator_loss(self._frozen_dis_A(out["x_ba"]), self.adversarial),
                "G_adv_B": w.gan_w
                * multiscale_generator_loss(self._frozen_dis_B(out["x_ab"]), self.adversarial),
            }
        losses["recon_A"] = w.recon_x_w * l1_loss(out["x_aa"], real_a)
        losses["recon_B"] = w.recon_x_w * l1_loss(out["x_bb"], real_b)
        losses["kl_A"] = w.recon_kl_w * latent_kl_loss(out["h_a"])
        losses["kl_B"] = w.recon_kl_w * latent_kl_loss(out["h_b"])
        losses["cycle_A"] = w.recon_x_cyc_w * l1_loss(out["x_aba"], real_a)
        losses["cycle_B"] = w.recon_x_cyc_w * l1_loss(out["x_bab"], real_b)
        losses["kl_cycle_A"] = w.recon_kl_cyc_w * latent_kl_loss(out["h_a_cycle"])
        losses["kl_cycle_B"] = w.recon_kl_cyc_w * latent_kl_loss(out["h_b_cycle"])
        losses["loss_G"] = torch.stack(list(losses.values())).sum()
        return losses

    def gen_update(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's ``gen_update``: :meth:`forward`, :meth:`generator_losses`, the generators' step."""
        out = self.forward(real_a, real_b)
        losses = self.generator_losses(real_a, real_b, out)
        self.opt_G.zero_grad(set_to_none=True)
        losses["loss_G"].backward()
        self.opt_G.step()
        return losses

    def step_schedulers(self) -> None:
        self.sched_G.step()
        self.sched_D.step()

    def learning_rate(self) -> float:
        return float(self.opt_G.param_groups[0]["lr"])

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: net.state_dict() for name, net in self.networks().items()},
            # The same tensors as gen_*/shared: torch.save writes each storage once.
            **{TRANSLATOR_KEYS[d]: t.state_dict() for d, t in self.translators.items()},
            **{key: part.state_dict() for key, part in self._optimisation().items()},
            "noise_rng": self.noise_rng.get_state(),
        }

    def _optimisation(self) -> dict[str, Optimisation]:
        """The optimisers and schedulers by checkpoint key."""
        return {"opt_G": self.opt_G, "opt_D": self.opt_D, "sched_G": self.sched_G, "sched_D": self.sched_D}

    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        load_training_state(state, self.networks(), self._optimisation(), source)
        self.noise_rng.set_state(state["noise_rng"])

    def process_state(self) -> dict[str, Any]:
        return {"noise": self.noise_rng.get_state()}

    def load_process_state(self, state: Mapping[str, Any]) -> None:
        self.noise_rng.set_state(state["noise"])
