"""What the training loop, validation, conversion and export ask of a translation model.

Vocabulary (the one place it is defined): at the command line and in configs the two domains are the
**source** (``--src``, ``data.src_modality``, e.g. MR) and the **target** (``--tgt``, e.g. CT). Inside
models they are **A** (source) and **B** (target), as in the CycleGAN paper: ``G_AB`` translates A to
B, ``D_B`` judges images of B. A *direction* is ``"AB"`` (source to target, what ``convert`` does by
default) or ``"BA"`` (back, for a model that learns both).

A model owns its networks, optimisers, learning-rate schedulers and any other training state (image
pools); the loop (:class:`medcyclegan.train.trainer.Trainer`) owns steps, epochs, checkpoints, logs,
signals and validation, and never names a network. A checkpoint is the loop's counters plus
:meth:`TranslationModel.state_dict`, whose top-level keys are the model's own (CycleGAN's are
``G_AB``, ``G_BA``, ``D_A``, ``D_B``, ``opt_G``, ... exactly as medcyclegan 0.1.0 wrote them).

Adding a model: one module ``medcyclegan/models/<kind>.py`` with a subclass registered under its name
(``@register_model("pix2pix")``), and its config: the name in :data:`medcyclegan.config.MODEL_KINDS`
and its own hyperparameters as a config section; see the README's development section.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from medcyclegan.config import Config
from medcyclegan.inference import context_stack, translate_array
from medcyclegan.nets import describe_discriminator, describe_generator
from medcyclegan.runtime.distributed import DistributedContext

Direction = Literal["AB", "BA"]
# A batch as the loop hands it to a model: the items of domain A and of domain B, each a dict with
# ``image`` (N, C, H, W) in [-1, 1] and ``mask`` (N, 1, H, W) body mask. Unpaired models get
# independent draws of A and B; paired models (pix2pix) get registered pairs.
Batch = Mapping[str, Mapping[str, torch.Tensor]]
# The learning-rate factor of a schedule step (an epoch, or a step with ``optim.n_steps``).
LrRule = Callable[[int], float]


def describe_generator_and_discriminator(
    cfg: Config,
    parameters: Mapping[str, int],
    generator_key: str,
    discriminator_key: str,
    *,
    conditional: bool = False,
) -> dict[str, dict[str, Any]]:
    """``info``'s ``generator`` and ``discriminator`` entries for a model built from ``model.generator``
    and the PatchGAN of the model section (CycleGAN, pix2pix, CUT), with the parameters of the
    networks ``generator_key`` and ``discriminator_key``; ``conditional``: D sees (source, target)."""
    model = cfg.model
    g_fields, g_text = describe_generator(cfg)
    g_parameters = int(parameters.get(generator_key, 0))
    ema = f", EMA {model.ema_decay}" if model.ema_decay else ", no EMA"
    d_fields, d_text = describe_discriminator(model)
    d_parameters = int(parameters.get(discriminator_key, 0))
    d_text = ("conditional " if conditional else "") + d_text
    return {
        "generator": {
            **g_fields,
            "ema_decay": model.ema_decay,  # 0: no average of its weights
            "parameters": g_parameters,
            "summary": f"{g_text}: {g_parameters:,} parameters{ema}",
        },
        "discriminator": {
            **d_fields,
            "conditional": conditional,
            "parameters": d_parameters,
            "summary": f"{d_text}: {d_parameters:,} parameters",
        },
    }


class TranslationModel(abc.ABC):
    """A trainable image-to-image translation model between domains A and B.

    Args:
        cfg: the run's resolved config (read, never changed).
        device: where the networks live and the step runs.
        lr_rule: the learning-rate factor per scheduler step, given by the loop's schedule.
        amp: run the step in bf16 autocast (CUDA only; see :mod:`medcyclegan.runtime.precision`).
        channels_last: networks and batches in the NHWC memory layout.
        dist: the process group of a multi-process run (each process keeps its own pools).

    Subclasses set :attr:`kind`, :attr:`directions`, :attr:`loss_columns`, :attr:`watched_losses` and
    :attr:`network_names` (and :attr:`paired` for a model trained on registered pairs), and implement
    the abstract methods.
    """

    kind: ClassVar[str]
    # The directions it can translate; a one-way model (pix2pix, CUT) has only "AB".
    directions: ClassVar[tuple[Direction, ...]] = ("AB",)
    # Loss terms a step returns, in the order logs show them.
    loss_columns: ClassVar[tuple[str, ...]]
    # Terms whose NaN or Inf stops training (the totals each optimiser minimises).
    watched_losses: ClassVar[tuple[str, ...]]
    # State keys of its networks (checkpoint keys, parameter counts in ``info``).
    network_names: ClassVar[tuple[str, ...]]
    # Trains on registered pairs (pix2pix): --src and --tgt volumes matched by case name on one grid,
    # each batch the same slices of both (medcyclegan.train.data_module.pair_files); unpaired
    # models get independent draws of A and B.
    paired: ClassVar[bool] = False

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
        self.cfg = cfg
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.dist = dist or DistributedContext()

    def __repr__(self) -> str:
        parameters = ", ".join(
            f"{name}={sum(p.numel() for p in net.parameters()):,}" for name, net in self.networks().items()
        )
        arrow = "<->" if len(self.directions) > 1 else "->"
        return f"{type(self).__name__}({self.cfg.data.src_modality} {arrow} {self.cfg.data.tgt_modality}, {parameters})"

    # ------------------------------------------------------------ building
    @classmethod
    @abc.abstractmethod
    def build_translator(cls, cfg: Config, direction: Direction) -> nn.Module:
        """An untrained network of the translator for ``direction`` (conversion loads its weights).

        It maps (N, C, H, W) to (N, C, H, W) in [-1, 1] and has ``stride_multiple``: the slice-wise
        inference path (:mod:`medcyclegan.inference`) pads whole slices to multiples of it.
        """

    @classmethod
    @abc.abstractmethod
    def translator_key(cls, direction: Direction) -> str:
        """The state key holding the weights of the translator for ``direction``."""

    @classmethod
    def translator_state_key(cls, cfg: Config, direction: Direction) -> str:
        """The checkpoint key conversion loads the translator for ``direction`` from.

        :meth:`translator_key` unless the run's config (``cfg``, the checkpoint's) has the model keep
        an average of the translator's weights (CycleGAN's ``model.ema_decay``): then the average's.
        """
        return cls.translator_key(direction)

    @classmethod
    @abc.abstractmethod
    def build_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        """Every network, by state key, untrained (``info`` checks a checkpoint's weights with them)."""

    @classmethod
    def describe_networks(cls, cfg: Config, parameters: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """What ``medcyclegan info`` says of the networks: entries by name, each JSON-ready with a
        one-line ``summary`` for the table.

        Args:
            cfg: the run's config.
            parameters: the parameter count of each network, by state key (as the checkpoint stores them).

        The default lists every network of :attr:`network_names` with its parameter count; a model
        overrides it to name its architecture (CycleGAN: ``generator`` and ``discriminator``).
        """
        return {
            name: {
                "parameters": int(parameters.get(name, 0)),
                "summary": f"{int(parameters.get(name, 0)):,} parameters",
            }
            for name in cls.network_names
        }

    # ------------------------------------------------------------- training
    @abc.abstractmethod
    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the :attr:`loss_columns` as 0-d tensors (not synchronised)."""

    @abc.abstractmethod
    def step_schedulers(self) -> None:
        """Advances every learning-rate scheduler by one schedule step."""

    @abc.abstractmethod
    def learning_rate(self) -> float:
        """The current learning rate (logged)."""

    def wrap_for_training(self, compile_: bool) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Wraps the networks the step calls (DistributedDataParallel, ``torch.compile``) when asked.

        The plain networks stay what :meth:`networks` returns (checkpoints, validation, samples).
        """

    # ------------------------------------------------------------ state
    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The plain networks by state key."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume this process's training exactly (networks, optimisers, ...)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
        """Restores :meth:`state_dict` (``source`` names the checkpoint in errors).

        Raises:
            CheckpointError: a network of another architecture.
            KeyError, ValueError, RuntimeError: other state that does not fit (the loop reports them).
        """

    def process_state(self) -> dict[str, Any]:
        """State that differs between the processes of a multi-process run (image pools), by key.

        The loop gathers it from every rank into the checkpoint's ``"pools"`` entry (the name 0.1.0
        gave it): ``{key: [state of rank 0, rank 1, ...]}``.
        """
        return {}

    def load_process_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restores this rank's :meth:`process_state`."""

    # ------------------------------------------------------------ translating
    def translator(self, direction: Direction) -> nn.Module:
        """The plain network translating ``direction`` (validation, samples, export).

        A model that keeps an average of the translator's weights returns the average (the weights
        of :meth:`translator_state_key`, which conversion loads).
        """
        if direction not in self.directions:
            raise ValueError(f"{self.kind} translates only {', '.join(self.directions)}; not {direction}")
        return self.networks()[self.translator_key(direction)]

    def modality(self, domain: str) -> str:
        """The modality of domain ``"A"`` (the source) or ``"B"`` (the target)."""
        return self.cfg.data.src_modality if domain == "A" else self.cfg.data.tgt_modality

    @torch.no_grad()
    def sample_rows(
        self, slabs: Mapping[str, np.ndarray], centres: Mapping[str, int]
    ) -> list[tuple[list[np.ndarray], list[str]]]:
        """The tiles of a sample grid: per domain, its slice, the translation and the way back.

        Args:
            slabs: per domain (``"A"``, ``"B"``), a normalised slab (X, Y, z) around the slice shown,
                with the 2.5D context it needs.
            centres: per domain, the index of the slice shown inside its slab.

        Returns:
            Rows of (images (X, Y), tile names: a modality or ``"attention"``): ``A, G_AB(A),
            G_BA(G_AB(A))`` and ``B, G_BA(B), G_AB(G_BA(B))``, each with the attention mask of an
            attention generator as a fourth tile. A one-way model shows ``A, G_AB(A)`` and ``B``.
        """
        k, canvas = self.cfg.data.context_slices, self.cfg.data.image_size
        rows = []
        for domain, other in (("A", "B"), ("B", "A")):
            slab = slabs[domain]
            centre = np.array([centres[domain]])
            forward_direction = f"{domain}{other}"
            if forward_direction not in self.directions:
                rows.append(([context_stack(slab, centre, 0)[0, 0]], [self.modality(domain)]))
                continue
            forward = self.translator(forward_direction)  # type: ignore[arg-type]
            fake, mask = translate_array(
                forward,
                slab,
                context_slices=k,
                device=self.device,
                amp=self.amp,
                return_attention=True,
                canvas=canvas,
            )
            arrays, names = [slab, fake], [self.modality(domain), self.modality(other)]
            if f"{other}{domain}" in self.directions:
                backward = self.translator(f"{other}{domain}")  # type: ignore[arg-type]
                arrays.append(
                    translate_array(
                        backward, fake, context_slices=k, device=self.device, amp=self.amp, canvas=canvas
                    )
                )
                names.append(self.modality(domain))
            if hasattr(forward, "forward_with_attention"):
                arrays.append(mask)
                names.append("attention")
            rows.append(([context_stack(a, centre, 0)[0, 0] for a in arrays], names))
        return rows
