"""CUT and FastCUT (Park et al. 2020, "Contrastive Learning for Unpaired Image-to-Image Translation").

One-way (A -> B only): a generator ``G_AB`` (``model.generator``, the ResNet generator by default),
one PatchGAN ``D_B`` and the projection head ``F`` (:class:`~medcyclegan.nets.patch_sample.PatchSampleF`).
Instead of a cycle, PatchNCE (:class:`~medcyclegan.losses.PatchNCELoss`) asks each patch of the
translation's encoder features to match the patch at the same place in the source's features rather
than the other patches of the image. The reference is taesungp/contrastive-unpaired-translation
(``models/cut_model.py``, ``models/patchnce.py``, ``models/networks.py``); its settings are the
defaults of the ``cut:`` section (:class:`~medcyclegan.config.CUTConfig`, ``cut.mode: cut|fastcut``).

One step, in the reference's order and with its names (``optimize_parameters``):
    1. :meth:`CUT.forward`: ``real = cat(A, B)`` with identity NCE (else A), flipped left-right with
       probability 1/2 under flip equivariance, ``fake = G(real)``: ``fake_B`` and ``idt_B``.
    2. D update: :meth:`CUT.compute_D_loss` = 0.5 * (loss(D(B)) + loss(D(fake_B.detach()))).
    3. G and F update (D frozen): :meth:`CUT.compute_G_loss` = lambda_GAN * GAN(D(fake_B)) + NCE, where
       NCE = :meth:`CUT.calculate_NCE_loss` (A, fake_B), averaged with (B, idt_B) under identity NCE:
       per NCE layer, the mean PatchNCE of F's projections of ``cut.num_patches`` (256) locations,
       times lambda_NCE, averaged over the layers.

Differences from the reference; the first three change nothing a step computes:
    - F's MLPs are built with G in ``__init__`` (their input channels measured by one forward of the
      encoder on an empty slice) instead of on the first batch, and F's optimiser with them, so that
      checkpoints hold F from the start and resume exactly.
    - Patch locations and the flip coin come from the model's own ``torch.Generator`` (seeded from
      ``train.seed``, stored in checkpoints) instead of NumPy's global one.
    - The source's features (PatchNCE's keys, which get no gradient) are computed without a graph.
    - The generator is ours: the reference's ``--no_antialias --no_antialias_up`` layout, module
      for module (its default instead blurs at each down- and upsampling, with the same parameter
      count), and the NCE layer indices are that layout's (mapped as
      :meth:`medcyclegan.nets.ResnetGenerator.encoder_features` documents). The discriminator
      likewise is our PatchGAN (the same parameters, stride-2 convolutions instead of blur pooling).
    - The loop's schedule (``optim``) replaces the reference's 200 + 200 (CUT) or 150 + 50
      (FastCUT) epochs.

Of the ``loss`` section CUT reads ``gan_mode`` and two optional terms this package adds, both 0 by
default (the reference's CUT): ``lambda_mask`` (the outline loss of fake_B against A's body mask,
``mask_A``) and ``lambda_structure`` (``loss.structure`` between A and fake_B, ``struct_A``). The
cycle, identity-L1 and attention weights are CycleGAN's and unused here.

Validation: CUT translates A -> B only, so it has no cycle metrics; with validation pairs it is
scored on them (``val/mae`` ...) and ``train.best_metric auto`` picks ``val/mae``. Without pairs
nothing is scored and no ``best.pt`` is written: ``last.pt`` is the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medcyclegan.config import Config
from medcyclegan.losses import AdversarialLoss, PatchNCELoss, outline_loss, structure_loss
from medcyclegan.models.base import (
    Batch,
    Direction,
    LrRule,
    TranslationModel,
    describe_generator_and_discriminator,
)
from medcyclegan.models.registry import register_model
from medcyclegan.models.training_utils import Optimisation, load_training_state, set_requires_grad
from medcyclegan.nets import (
    build_domain_discriminator,
    build_generator,
    generator_min_input_size,
    generator_stride_multiple,
    init_weights,
)
from medcyclegan.nets.patch_sample import PatchSampleF, sample_patch_ids
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.runtime.precision import autocast_context
from medcyclegan.runtime.seeds import derived_seed

# G_GAN, NCE, NCE_Y: the reference's; mask_A, struct_A: this package's optional terms (loss section).
LOSS_COLUMNS = ("loss_G", "loss_D", "G_GAN", "NCE", "NCE_Y", "mask_A", "struct_A")
# The stream of patch locations and flip coins (derived_seed(train.seed, SAMPLING_STREAM[, rank])).
SAMPLING_STREAM = 20


class _EncoderStep(nn.Module):
    """The generator as the step calls it: ``forward(x)`` translates, ``forward(x, layers)`` encodes.

    ``DistributedDataParallel`` and ``torch.compile`` wrap only ``forward``; this gives
    ``encoder_features`` a path through it.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, layers: Sequence[int] | None = None) -> Any:
        if layers is None:
            return self.generator(x)
        return self.generator.encoder_features(x, layers)


def _encoder_channels(generator: nn.Module, cfg: Config) -> list[int]:
    """Channels of the generator's NCE layers, from one forward of an empty slice (no random draw).

    The slice is the smallest the generator translates (every generator takes any multiple of its
    stride from its minimum size on, as the slice-wise inference path needs): channels do not
    depend on the size.
    """
    multiple = generator_stride_multiple(cfg)
    size = math.ceil(generator_min_input_size(cfg) / multiple) * multiple
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        empty = torch.zeros(1, cfg.data.in_channels, size, size)
        features = generator.encoder_features(empty, cfg.cut.resolved().nce_layers)
    generator.train(was_training)
    return [int(f.shape[1]) for f in features]


@register_model("cut")
class CUT(TranslationModel):
    """CUT / FastCUT: G_AB, D_B and the projection head F (see the module docstring).

    Example:
        >>> import torch
        >>> from medcyclegan.config import load_config
        >>> cfg = load_config(None, {"model.kind": "cut", "model.ngf": 8, "model.n_blocks": 3,
        ...     "model.ndf": 8, "model.n_layers_d": 1, "data.image_size": 32, "cut.nce_layers": [0, 4, 8, 12]})
        >>> model = CUT(cfg, torch.device("cpu"), lambda step: 1.0)
        >>> model.translator("AB")(torch.zeros(1, 1, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    kind: ClassVar[str] = "cut"
    directions: ClassVar[tuple[Direction, ...]] = ("AB",)
    loss_columns: ClassVar[tuple[str, ...]] = LOSS_COLUMNS
    watched_losses: ClassVar[tuple[str, ...]] = ("loss_G", "loss_D")
    network_names: ClassVar[tuple[str, ...]] = ("G_AB", "D_B", "F")

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
        self.settings = cfg.cut.resolved()
        # Built in this order: each draws its initial weights from the global torch generator.
        nets = self.build_networks(cfg)
        self.G_AB, self.D_B, self.F = (nets[k].to(device) for k in self.network_names)
        if channels_last:
            for net in (self.G_AB, self.D_B):
                net.to(memory_format=torch.channels_last)  # in place: the optimisers keep the same tensors
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        fused = device.type == "cuda"
        lr_d = cfg.optim.lr if cfg.optim.lr_d is None else cfg.optim.lr_d
        self.opt_G = torch.optim.Adam(self.G_AB.parameters(), lr=cfg.optim.lr, betas=betas, fused=fused)
        self.opt_D = torch.optim.Adam(self.D_B.parameters(), lr=lr_d, betas=betas, fused=fused)
        # The reference's optimizer_F: Adam with G's learning rate and betas, on its schedule.
        self.opt_F = torch.optim.Adam(self.F.parameters(), lr=cfg.optim.lr, betas=betas, fused=fused)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, lr_rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, lr_rule)
        self.sched_F = torch.optim.lr_scheduler.LambdaLR(self.opt_F, lr_rule)
        # One stream per process; rank 0 keeps the seed of a single-process run.
        rank = [self.dist.rank] if self.dist.rank else []
        self.sampling = torch.Generator().manual_seed(derived_seed(cfg.train.seed, SAMPLING_STREAM, *rank))
        self.adversarial = AdversarialLoss(cfg.loss.gan_mode)
        self.patch_nce = PatchNCELoss(
            self.settings.nce_temperature, self.settings.nce_includes_all_negatives_from_minibatch
        )
        # Plain until the loop wraps them (after a resume has loaded the weights).
        self._step_G: nn.Module = _EncoderStep(self.G_AB)
        self._step_F: nn.Module = self.F
        self._step_D: nn.Module = self.D_B
        self._frozen_D: nn.Module = self.D_B
        # Whether this step's batch was flipped (the reference's attribute of that name).
        self.flipped_for_equivariance = False

    # ------------------------------------------------------------ building
    @classmethod
    def build_translator(cls, cfg: Config, direction: Direction) -> nn.Module:
        channels = cfg.data.in_channels
        return build_generator(cfg, channels, channels, init_method=cfg.cut.init_type)

    @classmethod
    def translator_key(cls, direction: Direction) -> str:
        return "G_AB"

    @classmethod
    def build_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        """G_AB, D_B and F, initialised as ``cut.init_type`` says (the reference: Xavier, gain 0.02).

        Raises:
            ConfigError: a generator without ``encoder_features`` or NCE layers beyond its encoder.
        """
        cfg.cut.check_model(cfg)
        settings = cfg.cut.resolved()
        channels = cfg.data.in_channels
        generator = cls.build_translator(cfg, "AB")
        discriminator = build_domain_discriminator(
            cfg, cfg.data.tgt_modality, channels, init_method=settings.init_type
        )
        head = PatchSampleF(_encoder_channels(generator, cfg), nc=settings.netf_nc)
        # The reference initialises F as G and D (init_net on the whole PatchSampleF).
        init_weights(head, gain=cfg.model.init_gain, method=settings.init_type)
        return {"G_AB": generator, "D_B": discriminator, "F": head}

    @classmethod
    def describe_networks(cls, cfg: Config, parameters: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """The generator and the discriminator with their options, and the projection head F."""
        entries = describe_generator_and_discriminator(cfg, parameters, "G_AB", "D_B")
        nce = int(parameters.get("F", 0))
        layers = ",".join(map(str, cfg.cut.resolved().nce_layers))
        entries["F"] = {"parameters": nce, "summary": f"PatchNCE head, layers {layers}: {nce:,} parameters"}
        return entries

    def networks(self) -> dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "D_B": self.D_B, "F": self.F}

    def wrap_for_training(self, compile_: bool) -> None:
        """The networks as the step calls them: DDP-wrapped and/or compiled when asked.

        G (through :class:`_EncoderStep`), F and D's own update go through DistributedDataParallel in
        a multi-process run; the frozen D of the generator update is called unwrapped (it gets no
        gradient). Called once, by the loop.
        """

        def compiled(module: nn.Module) -> nn.Module:
            return torch.compile(module) if compile_ else module

        def trained(module: nn.Module) -> nn.Module:
            return compiled(distributed.wrap_ddp(module, self.dist, self.device))

        self._step_G = trained(_EncoderStep(self.G_AB))
        self._step_F = trained(self.F)
        self._step_D = trained(self.D_B)
        self._frozen_D = compiled(self.D_B) if self.dist.is_distributed else self._step_D

    # ------------------------------------------------------------- training
    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        real_a = batch["A"]["image"].to(self.device, non_blocking=True)
        real_b = batch["B"]["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            real_a = real_a.contiguous(memory_format=torch.channels_last)
            real_b = real_b.contiguous(memory_format=torch.channels_last)
        return real_a, real_b, batch["A"]["mask"].to(self.device, non_blocking=True)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One reference CUT step (``optimize_parameters``): forward, D update, G and F update."""
        real_a, real_b, mask_a = self._to_device(batch)
        with autocast_context(self.device, self.amp):
            fake_b, idt_b = self.forward(real_a, real_b)
        set_requires_grad([self.D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d = self.compute_D_loss(real_b, fake_b)
        loss_d.backward()
        self.opt_D.step()

        set_requires_grad([self.D_B], False)
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_F.zero_grad(set_to_none=True)
        losses = self.compute_G_loss(real_a, real_b, fake_b, idt_b, mask_a)
        losses["loss_G"].backward()
        self.opt_G.step()
        self.opt_F.step()
        set_requires_grad([self.D_B], True)
        losses["loss_D"] = loss_d
        return {k: v.detach() for k, v in losses.items()}

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reference's ``forward``: (fake_B, idt_B) of one ``G`` call (idt_B None without identity NCE)."""
        real = torch.cat((real_a, real_b)) if self.settings.nce_idt else real_a
        self.flipped_for_equivariance = False
        if self.settings.flip_equivariance:
            self.flipped_for_equivariance = bool(torch.rand((), generator=self.sampling) < 0.5)
            if self.flipped_for_equivariance:
                real = torch.flip(real, [3])
        fake = self._step_G(real)
        n = real_a.shape[0]
        return fake[:n], (fake[n:] if self.settings.nce_idt else None)

    def compute_D_loss(self, real_b: torch.Tensor, fake_b: torch.Tensor) -> torch.Tensor:
        """0.5 * (loss(D(real_B)) + loss(D(fake_B))), fake_B detached (CUT has no image pool)."""
        with autocast_context(self.device, self.amp):
            return self.adversarial.discriminator_loss(self._step_D(real_b), self._step_D(fake_b.detach()))

    def compute_G_loss(
        self,
        real_a: torch.Tensor,
        real_b: torch.Tensor,
        fake_b: torch.Tensor,
        idt_b: torch.Tensor | None,
        mask_a: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The terms of G's loss: ``G_GAN``, ``NCE``, ``NCE_Y`` (0 without identity NCE), the optional
        ``mask_A`` and ``struct_A`` (0 unless ``loss.lambda_mask`` / ``loss.lambda_structure``), and
        their sum ``loss_G``."""
        s = self.settings
        zero = torch.zeros((), device=self.device)
        # The optional terms compare fake_B with the input as G saw it (flipped with the batch).
        seen_a, seen_mask = real_a, mask_a
        if self.flipped_for_equivariance:
            seen_a, seen_mask = torch.flip(real_a, [3]), torch.flip(mask_a, [3])
        with autocast_context(self.device, self.amp):
            gan = (
                self.adversarial.generator_loss(self._frozen_D(fake_b)) * s.lambda_gan
                if s.lambda_gan > 0
                else zero
            )
            nce = self.calculate_NCE_loss(real_a, fake_b) if s.lambda_nce > 0 else zero
            if s.nce_idt and s.lambda_nce > 0 and idt_b is not None:
                nce_y = self.calculate_NCE_loss(real_b, idt_b)
                nce_both = (nce + nce_y) * 0.5
            else:
                nce_y, nce_both = zero, nce
            loss = self.cfg.loss
            # The translation keeps the input's body outline, and its structure (as in CycleGAN).
            mask = outline_loss(fake_b, seen_mask) * loss.lambda_mask if loss.lambda_mask > 0 else zero
            struct = (
                structure_loss(loss.structure)(seen_a, fake_b) * loss.lambda_structure
                if loss.lambda_structure > 0
                else zero
            )
        return {
            "loss_G": gan + nce_both + mask + struct,
            "G_GAN": gan,
            "NCE": nce,
            "NCE_Y": nce_y,
            "mask_A": mask,
            "struct_A": struct,
        }

    def calculate_NCE_loss(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """lambda_NCE * PatchNCE between ``tgt``'s and ``src``'s encoder features, averaged over layers."""
        layers = self.settings.nce_layers
        feat_q = self._step_G(tgt, layers)
        if self.flipped_for_equivariance:
            feat_q = [torch.flip(f, [3]) for f in feat_q]
        # The keys get no gradient (PatchNCE detaches them), so they need no graph.
        with torch.no_grad():
            feat_k = self._step_G(src, layers)
        patch_ids = sample_patch_ids(feat_k, self.settings.num_patches, self.sampling)
        with torch.no_grad():
            pool_k = self._step_F(feat_k, patch_ids)
        pool_q = self._step_F(feat_q, patch_ids)
        total = sum(self.patch_nce(q, k) * self.settings.lambda_nce for q, k in zip(pool_q, pool_k))
        return total / len(layers)

    def step_schedulers(self) -> None:
        self.sched_G.step()
        self.sched_D.step()
        self.sched_F.step()

    def learning_rate(self) -> float:
        return float(self.opt_G.param_groups[0]["lr"])

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: net.state_dict() for name, net in self.networks().items()},
            **{key: part.state_dict() for key, part in self._optimisation().items()},
            "sampling": self.sampling.get_state(),
        }

    def _optimisation(self) -> dict[str, Optimisation]:
        """The optimisers and schedulers by checkpoint key."""
        keys = ("opt_G", "opt_D", "opt_F", "sched_G", "sched_D", "sched_F")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        load_training_state(state, self.networks(), self._optimisation(), source)
        self.sampling.set_state(state["sampling"].cpu())

    def process_state(self) -> dict[str, Any]:
        return {"sampling": self.sampling.get_state()}

    def load_process_state(self, state: Mapping[str, Any]) -> None:
        self.sampling.set_state(state["sampling"].cpu())
