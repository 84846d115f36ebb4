"""CycleGAN (Zhu et al. 2017), as the reference implementation trains it; Mask CycleGAN's terms added.

Notation of the paper: domain A is the source modality (e.g. MR), B the target (e.g. CT); ``G_AB``
translates A to B, ``G_BA`` B to A; ``D_A`` judges images of A, ``D_B`` images of B. The generators
are :class:`~medcyclegan.nets.ResnetGenerator` (c7s1-64, d128, d256, R256 x n, u128, u64, c7s1-1) or
its attention variant, the discriminators the 70x70 PatchGAN (C64-C128-C256-C512).

One step, in the reference's order (its ``forward``, ``backward_G``, ``backward_D_A/B``):
    1. fake_B = G_AB(A), rec_A = G_BA(fake_B), fake_A = G_BA(B), rec_B = G_AB(fake_A)
    2. G update (discriminators frozen): adversarial terms + lambda_cycle * (|rec_A - A| + |rec_B - B|)
       + lambda_cycle * lambda_identity * (|G_AB(B) - B| + |G_BA(A) - A|) [+ mask / outline terms]
    3. D update: 0.5 * (loss(D(real)) + loss(D(pool(fake)))) for D_A and D_B, one
       :meth:`CycleGAN.backward_D_basic` for both.

The image pools draw from their own generators, so a resumed run continues exactly.

Options (off by default): ``model.ema_decay`` keeps an exponential moving average of each generator
(:mod:`medcyclegan.models.ema`), updated after every generator step, stored as ``G_AB_ema`` and
``G_BA_ema`` (plain generator state dicts) with ``ema_updates``, and used by :meth:`translator` and
by conversion; ``optim.lr_d`` gives the discriminators their own learning rate;
``model.spectral_norm_d`` and ``model.n_scales_d`` choose the discriminator (:mod:`medcyclegan.nets`);
``model.d_ct_windows`` shows the CT domain's discriminator its image in extra HU windows;
``loss.cycle_detach`` lets the cycle terms train only the reconstructing generator.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medcyclegan.checkpoint import load_state_strict
from medcyclegan.config import Config
from medcyclegan.inference import forward_with_attention
from medcyclegan.losses import (
    AdversarialLoss,
    attention_regulariser,
    l1_loss,
    masked_l1,
    outline_loss,
    structure_loss,
)
from medcyclegan.models.base import (
    Batch,
    Direction,
    LrRule,
    TranslationModel,
    describe_generator_and_discriminator,
)
from medcyclegan.models.ema import WeightAverage
from medcyclegan.models.pool import ImagePool
from medcyclegan.models.registry import register_model
from medcyclegan.models.training_utils import (
    Optimisation,
    load_training_state,
    set_requires_grad,
    state_to_cpu,
)
from medcyclegan.nets import build_domain_discriminator, build_generator
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.runtime.precision import autocast_context
from medcyclegan.runtime.seeds import derived_seed

LOSS_COLUMNS = (
    "loss_G",
    "loss_D_A",
    "loss_D_B",
    "G_adv_AB",
    "G_adv_BA",
    "cycle_A",
    "cycle_B",
    "idt_A",
    "idt_B",
    "mask_A",
    "mask_B",
    "attention",
    "struct_A",
    "struct_B",
)
# The checkpoint key of a generator's weight average is the generator's key with this suffix; the
# average's update count (the same for both generators) is stored under EMA_UPDATES_KEY.
EMA_SUFFIX = "_ema"
EMA_UPDATES_KEY = "ema_updates"
GENERATOR_NAMES = ("G_AB", "G_BA")


class _GeneratorStep(nn.Module):
    """A generator as the training step calls it: ``forward(x, with_attention)``.

    ``DistributedDataParallel`` and ``torch.compile`` wrap only ``forward``; this gives the attention
    output of an attention generator a path through ``forward`` (``(output, mask)``; ``(output,
    None)`` for a plain generator) while ``forward(x)`` stays the plain translation.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, with_attention: bool = False) -> Any:
        if with_attention:
            return forward_with_attention(self.generator, x)
        return self.generator(x)


@register_model("cyclegan")
class CycleGAN(TranslationModel):
    """Two generators, two PatchGAN discriminators, two image pools (see the module docstring).

    Example:
        >>> import torch
        >>> from medcyclegan.config import load_config
        >>> cfg = load_config(None, {"model.ngf": 8, "model.n_blocks": 1, "model.ndf": 8, "model.n_layers_d": 1})
        >>> model = CycleGAN(cfg, torch.device("cpu"), lambda step: 1.0)
        >>> model.translator("AB")(torch.zeros(1, 1, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    kind: ClassVar[str] = "cyclegan"
    directions: ClassVar[tuple[Direction, ...]] = ("AB", "BA")
    loss_columns: ClassVar[tuple[str, ...]] = LOSS_COLUMNS
    watched_losses: ClassVar[tuple[str, ...]] = ("loss_G", "loss_D_A", "loss_D_B")
    network_names: ClassVar[tuple[str, ...]] = ("G_AB", "G_BA", "D_A", "D_B")

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
        self.G_AB, self.G_BA, self.D_A, self.D_B = (nets[k].to(device) for k in self.network_names)
        if channels_last:
            for net in self.networks().values():
                net.to(memory_format=torch.channels_last)  # in place: the optimisers keep the same tensors
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        fused = device.type == "cuda"
        self.opt_G = torch.optim.Adam(
            [*self.G_AB.parameters(), *self.G_BA.parameters()], lr=cfg.optim.lr, betas=betas, fused=fused
        )
        lr_d = cfg.optim.lr if cfg.optim.lr_d is None else cfg.optim.lr_d
        self.opt_D = torch.optim.Adam(
            [*self.D_A.parameters(), *self.D_B.parameters()], lr=lr_d, betas=betas, fused=fused
        )
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lr_rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lr_rule)
        # One pair of pools per process; rank 0 keeps the seeds of a single-process run.
        rank = [self.dist.rank] if self.dist.rank else []
        self.pool_A = ImagePool(cfg.optim.pool_size, seed=derived_seed(cfg.train.seed, 10, *rank))
        self.pool_B = ImagePool(cfg.optim.pool_size, seed=derived_seed(cfg.train.seed, 11, *rank))
        self.adversarial = AdversarialLoss(cfg.loss.gan_mode)
        # Copies of the generators as built (same device and layout): no random draw, so the runs
        # with and without an average start from the same weights.
        self.averages: dict[str, WeightAverage] = (
            {name: WeightAverage(self.networks()[name], cfg.model.ema_decay) for name in GENERATOR_NAMES}
            if cfg.model.ema_decay > 0
            else {}
        )
        # Plain until the loop wraps them (after a resume has loaded the weights).
        self._step_G_AB: nn.Module = _GeneratorStep(self.G_AB)
        self._step_G_BA: nn.Module = _GeneratorStep(self.G_BA)
        self._step_D_A: nn.Module = self.D_A
        self._step_D_B: nn.Module = self.D_B
        self._frozen_D_A: nn.Module = self.D_A
        self._frozen_D_B: nn.Module = self.D_B

    # ------------------------------------------------------------ building
    @classmethod
    def build_translator(cls, cfg: Config, direction: Direction) -> nn.Module:
        channels = cfg.data.in_channels
        return build_generator(cfg, channels, channels)

    @classmethod
    def translator_key(cls, direction: Direction) -> str:
        return "G_AB" if direction == "AB" else "G_BA"

    @classmethod
    def translator_state_key(cls, cfg: Config, direction: Direction) -> str:
        key = cls.translator_key(direction)
        return key + EMA_SUFFIX if cfg.model.ema_decay > 0 else key

    @classmethod
    def build_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        channels = cfg.data.in_channels
        return {
            "G_AB": build_generator(cfg, channels, channels),
            "G_BA": build_generator(cfg, channels, channels),
            "D_A": build_domain_discriminator(cfg, cfg.data.src_modality, channels),
            "D_B": build_domain_discriminator(cfg, cfg.data.tgt_modality, channels),
        }

    @classmethod
    def describe_networks(cls, cfg: Config, parameters: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """The generator and the discriminator (each of the pair), with their options."""
        return describe_generator_and_discriminator(cfg, parameters, "G_AB", "D_A")

    def networks(self) -> dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    def translator(self, direction: Direction) -> nn.Module:
        """The generator for ``direction``, or its weight average with ``model.ema_decay``."""
        network = super().translator(direction)
        average = self.averages.get(self.translator_key(direction))
        return network if average is None else average.network

    def wrap_for_training(self, compile_: bool) -> None:
        """The networks as the step calls them: DDP-wrapped and/or compiled when asked.

        The generators and the discriminators' own update go through DistributedDataParallel in a
        multi-process run; the frozen discriminators of the generator update are called unwrapped
        (they get no gradient, so DDP must not wait for one). Called once, by the loop.
        """

        def compiled(module: nn.Module) -> nn.Module:
            return torch.compile(module) if compile_ else module

        def trained(module: nn.Module) -> nn.Module:
            return compiled(distributed.wrap_ddp(module, self.dist, self.device))

        self._step_G_AB = trained(_GeneratorStep(self.G_AB))
        self._step_G_BA = trained(_GeneratorStep(self.G_BA))
        self._step_D_A = trained(self.D_A)
        self._step_D_B = trained(self.D_B)
        if self.dist.is_distributed:
            self._frozen_D_A = compiled(self.D_A)
            self._frozen_D_B = compiled(self.D_B)
        else:
            self._frozen_D_A, self._frozen_D_B = self._step_D_A, self._step_D_B

    # ------------------------------------------------------------- training
    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        real_a = batch["A"]["image"].to(self.device, non_blocking=True)
        real_b = batch["B"]["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            # After the copy: converting first would copy from unpinned memory, i.e. synchronously.
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        mask_a = batch["A"]["mask"].to(self.device, non_blocking=True)
        mask_b = batch["B"]["mask"].to(self.device, non_blocking=True)
        return real_a, real_b, mask_a, mask_b

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One reference CycleGAN step (forward, backward_G, backward_D_A, backward_D_B)."""
        real_a, real_b, mask_a, mask_b = self._to_device(batch)
        fake_a, fake_b, losses = self.backward_G(real_a, real_b, mask_a, mask_b)
        for name, average in self.averages.items():
            average.update(self.networks()[name])
        set_requires_grad([self.D_A, self.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp):
            pooled_a = self.pool_A.query(fake_a.detach())
            pooled_b = self.pool_B.query(fake_b.detach())
        # One discriminator at a time, as the reference does: the two have no parameter in common, so
        # the gradients are those of the summed loss exactly, and only one graph is held at a time.
        losses["loss_D_A"] = self.backward_D_basic(self._step_D_A, real_a, pooled_a)
        losses["loss_D_B"] = self.backward_D_basic(self._step_D_B, real_b, pooled_b)
        self.opt_D.step()
        return {k: v.detach() for k, v in losses.items()}

    def _reconstruction(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss = self.cfg.loss
        if loss.mask_loss:
            return masked_l1(pred, target, mask, background_weight=loss.background_weight)
        return l1_loss(pred, target)

    def backward_G(
        self, real_a: torch.Tensor, real_b: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Translations both ways and the generators' update; returns (fake_A, fake_B, loss terms)."""
        cfg = self.cfg.loss
        recon = self._reconstruction
        losses: dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=self.device)
        g_ab, g_ba = self._step_G_AB, self._step_G_BA
        with autocast_context(self.device, self.amp):
            # loss.cycle_detach: the reconstruction trains only the generator that reconstructs.
            fake_b, att_ab = g_ab(real_a, with_attention=True)
            rec_a = g_ba(fake_b.detach() if cfg.cycle_detach else fake_b)
            fake_a, att_ba = g_ba(real_b, with_attention=True)
            rec_b = g_ab(fake_a.detach() if cfg.cycle_detach else fake_a)

            set_requires_grad([self.D_A, self.D_B], False)
            losses["G_adv_AB"] = self.adversarial.generator_loss(self._frozen_D_B(fake_b))
            losses["G_adv_BA"] = self.adversarial.generator_loss(self._frozen_D_A(fake_a))
            losses["cycle_A"] = recon(rec_a, real_a, mask_a) * cfg.lambda_cycle
            losses["cycle_B"] = recon(rec_b, real_b, mask_b) * cfg.lambda_cycle
            if cfg.lambda_identity > 0:
                weight = cfg.lambda_cycle * cfg.lambda_identity
                losses["idt_A"] = recon(g_ba(real_a), real_a, mask_a) * weight
                losses["idt_B"] = recon(g_ab(real_b), real_b, mask_b) * weight
            else:
                losses["idt_A"] = losses["idt_B"] = zero
            if cfg.lambda_mask > 0:
                # The translation keeps the input's body: background stays air, outline stays put.
                losses["mask_A"] = outline_loss(fake_b, mask_a) * cfg.lambda_mask
                losses["mask_B"] = outline_loss(fake_a, mask_b) * cfg.lambda_mask
            else:
                losses["mask_A"] = losses["mask_B"] = zero
            if att_ab is not None and att_ba is not None and cfg.lambda_attention > 0:
                losses["attention"] = (
                    attention_regulariser(att_ab) + attention_regulariser(att_ba)
                ) * cfg.lambda_attention
            else:
                losses["attention"] = zero
            if cfg.lambda_structure > 0:
                # Each translation keeps its input's structure (edges where the input has edges).
                structure = structure_loss(cfg.structure)
                losses["struct_A"] = structure(real_a, fake_b) * cfg.lambda_structure
                losses["struct_B"] = structure(real_b, fake_a) * cfg.lambda_structure
            else:
                losses["struct_A"] = losses["struct_B"] = zero
            loss_g = sum(losses[k] for k in LOSS_COLUMNS if k in losses)
        losses["loss_G"] = loss_g
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        return fake_a, fake_b, losses

    def backward_D_basic(
        self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        """The reference's ``backward_D_basic``: 0.5 * (loss(D(real)) + loss(D(fake))), backpropagated."""
        with autocast_context(self.device, self.amp):
            loss = self.adversarial.discriminator_loss(discriminator(real), discriminator(fake))
        loss.backward()
        return loss

    def step_schedulers(self) -> None:
        self.sched_G.step()
        self.sched_D.step()

    def learning_rate(self) -> float:
        return float(self.opt_G.param_groups[0]["lr"])

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: net.state_dict() for name, net in self.networks().items()},
            **{key: part.state_dict() for key, part in self._optimisation().items()},
            "pool_A": self.pool_A.state_dict(),
            "pool_B": self.pool_B.state_dict(),
            **self._average_state(),
        }

    def _average_state(self) -> dict[str, Any]:
        """The weight averages' entries of the checkpoint (none without ``model.ema_decay``)."""
        if not self.averages:
            return {}
        state: dict[str, Any] = {
            name + EMA_SUFFIX: a.network.state_dict() for name, a in self.averages.items()
        }
        state[EMA_UPDATES_KEY] = next(iter(self.averages.values())).updates
        return state

    def _optimisation(self) -> dict[str, Optimisation]:
        """The optimisers and schedulers by checkpoint key."""
        return {"opt_G": self.opt_G, "opt_D": self.opt_D, "sched_G": self.sched_G, "sched_D": self.sched_D}

    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        load_training_state(state, self.networks(), self._optimisation(), source)
        self.pool_A.load_state_dict(state["pool_A"])
        self.pool_B.load_state_dict(state["pool_B"])
        for name, average in self.averages.items():
            load_state_strict(average.network, state[name + EMA_SUFFIX], name + EMA_SUFFIX, source)
            average.updates = int(state[EMA_UPDATES_KEY])

    def process_state(self) -> dict[str, Any]:
        return {"A": state_to_cpu(self.pool_A.state_dict()), "B": state_to_cpu(self.pool_B.state_dict())}

    def load_process_state(self, state: Mapping[str, Any]) -> None:
        self.pool_A.load_state_dict(state["A"])
        self.pool_B.load_state_dict(state["B"])
