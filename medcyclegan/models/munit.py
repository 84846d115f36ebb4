"""MUNIT (Huang et al. 2018), as NVlabs/MUNIT's ``MUNIT_Trainer`` trains it (``trainer.py``).

Each domain has an auto-encoder ``G_A`` / ``G_B`` (:class:`~medcyclegan.nets.munit.AdaINGen`): a
content code shared between the domains and a style code of its own, drawn from N(0, I) to
translate; ``D_A`` / ``D_B`` are multi-scale discriminators
(:class:`~medcyclegan.nets.munit_blocks.MsImageDis`). Hyper-parameters: the ``munit:`` config section
(:class:`~medcyclegan.config.MunitConfig`, the reference's values and their sources).

One step, in the reference's order (``train.py`` calls ``dis_update`` then ``gen_update``), each
update drawing its own random styles ``s_a``, ``s_b`` (one per image):

1. ``dis_update``: ``x_ba = G_A.decode(c_b, s_a)``, ``x_ab = G_B.decode(c_a, s_b)`` (no gradient),
   ``loss_D = gan_w * (D_A(x_ba) vs x_a + D_B(x_ab) vs x_b)``, each the sum over the scales of
   ``mean(D(fake)^2) + mean((D(real) - 1)^2)`` (LSGAN).
2. ``gen_update``: encode both, decode within domain (``x_a_recon``) and across
   (``x_ba``, ``x_ab``), encode the translations again; ``loss_G = gan_w * (adversarial A + B)`` (the
   sum over scales of ``mean((D(fake) - 1)^2)``) ``+ recon_x_w * |x_a_recon - x_a| + recon_s_w *
   |s_a_recon - s_a| + recon_c_w * |c_a_recon - c_a| (+ recon_x_cyc_w * |x_aba - x_a|)`` and the
   same for B (every term a mean absolute error).

The adversarial terms are :func:`~medcyclegan.losses.multiscale_discriminator_loss` and
:func:`~medcyclegan.losses.multiscale_generator_loss` (UNIT's too) of ``munit.gan_mode``: per scale
:class:`~medcyclegan.losses.AdversarialLoss`, summed, the discriminator's not halved. The logged
terms are weighted (``loss_G`` is their sum). There is no image pool (the reference has none).

Conversion (and validation, sample grids) translate with
:class:`~medcyclegan.nets.munit.StyleTranslator`: the content encoder of one domain, the MLP and
decoder of the other, at one fixed style code, zeros: the mean (and mode) of the N(0, I) prior
the styles were trained to follow, so the output is deterministic and the most typical style, not
one random draw. ``convert --samples K`` draws K styles instead and writes their mean and
voxel-wise standard deviation. The translators share their parameter tensors with ``G_A`` and
``G_B`` and are stored as ``G_AB`` and ``G_BA`` in checkpoints (torch.save writes a shared tensor
once). The random styles of training come from the model's own generator, seeded from
``train.seed`` and stored in every checkpoint, so a resumed run continues exactly.
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
    multiscale_discriminator_loss,
    multiscale_generator_loss,
)
from medcyclegan.models.base import Batch, Direction, LrRule, TranslationModel
from medcyclegan.models.registry import register_model
from medcyclegan.models.training_utils import Optimisation, load_training_state, set_requires_grad
from medcyclegan.nets.munit import AdaINGen, StyleTranslator
from medcyclegan.nets.munit_blocks import MsImageDis
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.runtime.precision import autocast_context
from medcyclegan.runtime.seeds import derived_seed

LOSS_COLUMNS = (
    "loss_G",
    "loss_D_A",
    "loss_D_B",
    "G_adv_A",
    "G_adv_B",
    "recon_x_A",
    "recon_x_B",
    "recon_s_A",
    "recon_s_B",
    "recon_c_A",
    "recon_c_B",
    "cycle_x_A",
    "cycle_x_B",
)
# The checkpoint key of the state of the generator the random styles are drawn from.
STYLE_GENERATOR_KEY = "style_generator"
# derived_seed part of that generator (the image pools of CycleGAN use 10 and 11).
_STYLE_SEED_PART = 20


class _GeneratorStep(nn.Module):
    """An :class:`AdaINGen` as the step calls it, every call through ``forward`` (which DDP wraps).

    ``forward(images=x)`` encodes to (content, style); ``forward(content=c, style=s)`` decodes.
    """

    def __init__(self, generator: AdaINGen) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self,
        images: torch.Tensor | None = None,
        content: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
    ) -> Any:
        if images is not None:
            return self.generator.encode(images)
        if content is None or style is None:
            raise ValueError("give images (to encode) or content and style (to decode)")
        return self.generator.decode(content, style)


@register_model("munit")
class MUNIT(TranslationModel):
    """Two AdaIN auto-encoders and two multi-scale discriminators (see the module docstring).

    Example:
        >>> import torch
        >>> from medcyclegan.config import load_config
        >>> cfg = load_config(None, {"model.kind": "munit", "munit.dim": 8, "munit.n_res": 1,
        ...     "munit.mlp_dim": 16, "munit.dis_dim": 8, "munit.dis_n_layer": 2, "data.image_size": 32})
        >>> model = MUNIT(cfg, torch.device("cpu"), lambda step: 1.0)
        >>> model.translator("AB")(torch.zeros(1, 1, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    kind: ClassVar[str] = "munit"
    directions: ClassVar[tuple[Direction, ...]] = ("AB", "BA")
    loss_columns: ClassVar[tuple[str, ...]] = LOSS_COLUMNS
    watched_losses: ClassVar[tuple[str, ...]] = ("loss_G", "loss_D_A", "loss_D_B")
    network_names: ClassVar[tuple[str, ...]] = ("G_A", "G_B", "D_A", "D_B")

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
        self.G_A, self.G_B = (nets[k].to(device) for k in ("G_A", "G_B"))
        self.D_A, self.D_B = (nets[k].to(device) for k in ("D_A", "D_B"))
        if channels_last:
            for net in self.networks().values():
                net.to(memory_format=torch.channels_last)  # in place: the optimisers keep the same tensors
        self.translators: dict[str, StyleTranslator] = {
            "AB": StyleTranslator(self.G_A, self.G_B).to(device),
            "BA": StyleTranslator(self.G_B, self.G_A).to(device),
        }
        munit = cfg.munit
        settings: dict[str, Any] = {
            "lr": munit.lr,
            "betas": (munit.beta1, munit.beta2),
            "weight_decay": munit.weight_decay,
            "fused": device.type == "cuda",
        }
        self.opt_G = torch.optim.Adam([*self.G_A.parameters(), *self.G_B.parameters()], **settings)
        self.opt_D = torch.optim.Adam([*self.D_A.parameters(), *self.D_B.parameters()], **settings)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lr_rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lr_rule)
        # The random styles: a CPU generator of the model's own (its state is a plain byte tensor,
        # and the draws are the same on any device); one per process, rank 0 keeps the seed of a
        # single-process run.
        rank = [self.dist.rank] if self.dist.rank else []
        self.style_generator = torch.Generator(device="cpu")
        self.style_generator.manual_seed(derived_seed(cfg.train.seed, _STYLE_SEED_PART, *rank))
        self.adversarial = AdversarialLoss(munit.gan_mode)
        # Plain until the loop wraps them (after a resume has loaded the weights).
        self._step_G_A: nn.Module = _GeneratorStep(self.G_A)
        self._step_G_B: nn.Module = _GeneratorStep(self.G_B)
        self._step_D_A: nn.Module = self.D_A
        self._step_D_B: nn.Module = self.D_B
        self._frozen_D_A: nn.Module = self.D_A
        self._frozen_D_B: nn.Module = self.D_B

    # ------------------------------------------------------------ building
    @classmethod
    def build_translator(cls, cfg: Config, direction: Direction) -> nn.Module:
        """A :class:`StyleTranslator` of untrained parts (conversion loads its weights)."""
        channels = cfg.data.in_channels
        source, target = (AdaINGen.from_config(cfg.munit, channels, initialise=False) for _ in range(2))
        return StyleTranslator(source, target)

    @classmethod
    def translator_key(cls, direction: Direction) -> str:
        return "G_AB" if direction == "AB" else "G_BA"

    @classmethod
    def build_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        channels = cfg.data.in_channels
        return {
            "G_A": AdaINGen.from_config(cfg.munit, channels),
            "G_B": AdaINGen.from_config(cfg.munit, channels),
            "D_A": MsImageDis.from_config(cfg.munit, channels),
            "D_B": MsImageDis.from_config(cfg.munit, channels),
        }

    def networks(self) -> dict[str, nn.Module]:
        return {"G_A": self.G_A, "G_B": self.G_B, "D_A": self.D_A, "D_B": self.D_B}

    def translator(self, direction: Direction) -> nn.Module:
        """The fixed-style :class:`StyleTranslator` for ``direction`` (parts of ``G_A`` and ``G_B``)."""
        if direction not in self.directions:
            raise ValueError(f"{self.kind} translates only {', '.join(self.directions)}; not {direction}")
        return self.translators[direction]

    def wrap_for_training(self, compile_: bool) -> None:
        """The networks as the step calls them: DDP-wrapped and/or compiled when asked (see CycleGAN's)."""

        def compiled(module: nn.Module) -> nn.Module:
            return torch.compile(module) if compile_ else module

        def trained(module: nn.Module) -> nn.Module:
            return compiled(distributed.wrap_ddp(module, self.dist, self.device))

        self._step_G_A = trained(_GeneratorStep(self.G_A))
        self._step_G_B = trained(_GeneratorStep(self.G_B))
        self._step_D_A = trained(self.D_A)
        self._step_D_B = trained(self.D_B)
        if self.dist.is_distributed:
            # The frozen discriminators of the generator update get no gradient: not through DDP.
            self._frozen_D_A = compiled(self.D_A)
            self._frozen_D_B = compiled(self.D_B)
        else:
            self._frozen_D_A, self._frozen_D_B = self._step_D_A, self._step_D_B

    # ------------------------------------------------------------- training
    def draw_styles(self, n: int) -> torch.Tensor:
        """``n`` style codes from N(0, I), (n, style_dim), from the model's own generator."""
        styles = torch.randn(n, self.cfg.munit.style_dim, generator=self.style_generator)
        return styles.to(self.device)

    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        real_a = batch["A"]["image"].to(self.device, non_blocking=True)
        real_b = batch["B"]["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        return real_a, real_b

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One reference step: ``dis_update`` then ``gen_update``, each with its own random styles."""
        real_a, real_b = self._to_device(batch)
        losses = self.dis_update(real_a, real_b)
        losses.update(self.gen_update(real_a, real_b))
        return {k: v.detach() for k, v in losses.items()}

    def dis_update(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's ``dis_update``: translations at random styles judged against real images."""
        gan_w = self.cfg.munit.gan_w
        style_a, style_b = self.draw_styles(real_a.shape[0]), self.draw_styles(real_b.shape[0])
        # The translations are detached in the reference: computed without a graph here (same values).
        with torch.no_grad(), autocast_context(self.device, self.amp):
            fake_a = self.G_A.decode(self.G_B.enc_content(real_b), style_a)
            fake_b = self.G_B.decode(self.G_A.enc_content(real_a), style_b)
        self.opt_D.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp):
            loss_a = gan_w * multiscale_discriminator_loss(
                self._step_D_A(real_a), self._step_D_A(fake_a), self.adversarial
            )
            loss_b = gan_w * multiscale_discriminator_loss(
                self._step_D_B(real_b), self._step_D_B(fake_b), self.adversarial
            )
        (loss_a + loss_b).backward()
        self.opt_D.step()
        return {"loss_D_A": loss_a, "loss_D_B": loss_b}

    def gen_update(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's ``gen_update``: reconstructions, translations and their codes, adversarial terms."""
        w = self.cfg.munit
        g_a, g_b = self._step_G_A, self._step_G_B
        style_a, style_b = self.draw_styles(real_a.shape[0]), self.draw_styles(real_b.shape[0])
        set_requires_grad([self.D_A, self.D_B], False)
        losses: dict[str, torch.Tensor] = {}
        with autocast_context(self.device, self.amp):
            content_a, style_a_own = g_a(images=real_a)
            content_b, style_b_own = g_b(images=real_b)
            recon_a = g_a(content=content_a, style=style_a_own)
            recon_b = g_b(content=content_b, style=style_b_own)
            fake_a = g_a(content=content_b, style=style_a)  # x_ba
            fake_b = g_b(content=content_a, style=style_b)  # x_ab
            content_b_recon, style_a_recon = g_a(images=fake_a)
            content_a_recon, style_b_recon = g_b(images=fake_b)
            losses["G_adv_A"] = w.gan_w * multiscale_generator_loss(
                self._frozen_D_A(fake_a), self.adversarial
            )
            losses["G_adv_B"] = w.gan_w * multiscale_generator_loss(
                self._frozen_D_B(fake_b), self.adversarial
            )
            losses["recon_x_A"] = w.recon_x_w * l1_loss(recon_a, real_a)
            losses["recon_x_B"] = w.recon_x_w * l1_loss(recon_b, real_b)
            losses["recon_s_A"] = w.recon_s_w * l1_loss(style_a_recon, style_a)
            losses["recon_s_B"] = w.recon_s_w * l1_loss(style_b_recon, style_b)
            losses["recon_c_A"] = w.recon_c_w * l1_loss(content_a_recon, content_a)
            losses["recon_c_B"] = w.recon_c_w * l1_loss(content_b_recon, content_b)
            if w.recon_x_cyc_w > 0:
                cycle_a = g_a(content=content_a_recon, style=style_a_own)  # x_aba
                cycle_b = g_b(content=content_b_recon, style=style_b_own)  # x_bab
                losses["cycle_x_A"] = w.recon_x_cyc_w * l1_loss(cycle_a, real_a)
                losses["cycle_x_B"] = w.recon_x_cyc_w * l1_loss(cycle_b, real_b)
            else:
                losses["cycle_x_A"] = losses["cycle_x_B"] = torch.zeros((), device=self.device)
            loss_g = sum(losses[k] for k in LOSS_COLUMNS if k in losses)
        losses["loss_G"] = loss_g  # type: ignore[assignment]
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()  # type: ignore[union-attr]
        self.opt_G.step()
        set_requires_grad([self.D_A, self.D_B], True)
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
            # The translators' tensors are G_A's and G_B's: stored once by torch.save.
            **{self.translator_key(d): t.state_dict() for d, t in self.translators.items()},  # type: ignore[arg-type]
            **{key: part.state_dict() for key, part in self._optimisation().items()},
            STYLE_GENERATOR_KEY: self.style_generator.get_state(),
        }

    def _optimisation(self) -> dict[str, Optimisation]:
        """The optimisers and schedulers by checkpoint key."""
        return {"opt_G": self.opt_G, "opt_D": self.opt_D, "sched_G": self.sched_G, "sched_D": self.sched_D}

    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        load_training_state(state, self.networks(), self._optimisation(), source)
        self.style_generator.set_state(state[STYLE_GENERATOR_KEY])

    def process_state(self) -> dict[str, Any]:
        return {STYLE_GENERATOR_KEY: self.style_generator.get_state()}

    def load_process_state(self, state: Mapping[str, Any]) -> None:
        self.style_generator.set_state(state[STYLE_GENERATOR_KEY])
