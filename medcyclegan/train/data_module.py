"""The data of a training run: prepared volumes, slice datasets, validation pairs, epoch batches.

Training volumes of each domain are prepared once (:func:`~medcyclegan.data.cache.load_prepared`:
read, oriented, normalised, body-masked), held out for validation when no validation folders are
given, and served as :class:`~medcyclegan.data.slices.SliceDataset` batches. The batches of an epoch
are a pure function of (seed, epoch, domain) and augmentation of an item a pure function of (seed,
epoch, index): a resumed run sees exactly the batches an uninterrupted one sees.

A paired model (``TranslationModel.paired``, pix2pix) trains on registered pairs: :func:`pair_files`
matches the ``--src`` and ``--tgt`` volumes (and the validation ones) by case name, checks that
each pair is on one grid, and puts them in pair order, before any training work; its batches
then come from one :class:`~medcyclegan.data.slices.PairedSliceDataset` (the same z, crop and flip
for A and B), and a held-out validation share holds out whole pairs.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from medcyclegan.config import Config, Normalisation
from medcyclegan.data.cache import load_prepared
from medcyclegan.data.normalise import domain_record
from medcyclegan.data.prepare import PreparedVolume
from medcyclegan.data.slices import PairedSliceDataset, SliceDataset
from medcyclegan.errors import ConfigError, InputError
from medcyclegan.io.discovery import case_name, pair_by_case
from medcyclegan.io.pairs import check_registered_pairs
from medcyclegan.models.base import Batch
from medcyclegan.runtime import distributed
from medcyclegan.runtime.distributed import DistributedContext
from medcyclegan.runtime.seeds import derived_seed
from medcyclegan.train.data_record import ROLES
from medcyclegan.train.schedule import epoch_batches

logger = logging.getLogger("medcyclegan")

# The roles a paired model pairs: (sources, targets, the sources' masks, the targets' masks).
_PAIRED_ROLES = (("src", "tgt", "src_masks", "tgt_masks"), ("val_src", "val_tgt", None, None))


def pair_files(files: Mapping[str, Sequence[Path] | None], kind: str) -> dict[str, list[Path] | None]:
    """The files of a paired model's run, each role in pair order, or one error naming every bad pair.

    ``--src`` and ``--tgt`` (and ``--val-src`` and ``--val-tgt`` when given) must hold the same case
    names, each pair on one grid (:func:`~medcyclegan.io.pairs.check_registered_pairs`: headers
    only where the format allows). Pair ``i`` is then ``files["src"][i]`` and ``files["tgt"][i]``
    (masks follow their volumes), in the order of ``--src``.

    Args:
        files: the files of each role of :data:`~medcyclegan.train.data_record.ROLES`.
        kind: the model (named in the error).

    Raises:
        InputError: one line naming the unmatched case names, the names given twice, and the pairs
            on different grids (which of shape, spacing, origin, direction differs).
    """
    ordered: dict[str, list[Path] | None] = {
        k: (list(v) if v is not None else None) for k, v in files.items()
    }
    for source_role, target_role, source_masks, target_masks in _PAIRED_ROLES:
        sources, targets = ordered.get(source_role), ordered.get(target_role)
        if sources is None and targets is None:
            continue
        sources, targets = sources or [], targets or []
        check = check_registered_pairs(sources, targets)
        roles = (ROLES[source_role], ROLES[target_role])
        problems = check.problems(roles)
        if problems:
            raise InputError(
                f"{kind} trains on registered pairs (the same case names in {roles[0]} and {roles[1]}, "
                f"each pair on one grid): {'; '.join(problems)}"
            )
        for role, masks, side in ((source_role, source_masks, 1), (target_role, target_masks, 2)):
            order = [pair[side] for pair in check.pairs]
            for key in (role, masks):
                given = ordered.get(key) if key is not None else None
                if key is not None and given:
                    ordered[key] = [given[i] for i in order]
    return ordered


class TrainingData:
    """Prepares the files of a run and serves its batches.

    Args:
        cfg: the run config (``data``, ``optim.batch_size``, ``train.seed``, ``train.steps_per_epoch``).
        files: the files of each role of :data:`~medcyclegan.train.data_record.ROLES` (``src``,
            ``tgt``, ``val_src``, ``val_tgt``, ``src_masks``, ``tgt_masks``; None where not given).
        dist: the processes of the run (a global step takes ``batch_size`` slices on each).
        pin_memory: pin batches (CUDA).
        paired: serve registered pairs (a paired model): ``files`` in pair order (:func:`pair_files`);
            :attr:`src_dataset` and :attr:`tgt_dataset` are then the one
            :class:`~medcyclegan.data.slices.PairedSliceDataset` (:attr:`pairs`).

    Raises:
        ConfigError: a domain (or, paired, the pairs) has no slice with enough body.
        ValueError: ``paired`` with files not in pair order.
    """

    def __init__(
        self,
        cfg: Config,
        files: Mapping[str, Sequence[Path] | None],
        dist: DistributedContext,
        *,
        pin_memory: bool = False,
        paired: bool = False,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.pin_memory = pin_memory
        self.paired = paired
        data_cfg = cfg.data
        src_paths, tgt_paths = list(files["src"] or []), list(files["tgt"] or [])
        src_masks = list(files["src_masks"]) if files.get("src_masks") else None
        tgt_masks = list(files["tgt_masks"]) if files.get("tgt_masks") else None
        if paired:
            _check_pair_order(src_paths, tgt_paths)
        if files.get("val_src") is None and files.get("val_tgt") is None and data_cfg.val_fraction > 0:
            src_paths, val_src_list, src_masks = self._hold_out(src_paths, src_masks, 0)
            # Paired: the same volumes of the other side, so that whole pairs are held out.
            tgt_paths, val_tgt_list, tgt_masks = self._hold_out(tgt_paths, tgt_masks, 0 if paired else 1)
        else:
            val_src_list = list(files.get("val_src") or [])
            val_tgt_list = list(files.get("val_tgt") or [])
        cache_dir = data_cfg.cache_dir
        self.src_volumes = load_prepared(
            src_paths, data_cfg.src_modality, data_cfg, masks=src_masks, cache_dir=cache_dir
        )
        self.tgt_volumes = load_prepared(
            tgt_paths, data_cfg.tgt_modality, data_cfg, masks=tgt_masks, cache_dir=cache_dir
        )
        self.val_src = load_prepared(val_src_list, data_cfg.src_modality, data_cfg, cache_dir=cache_dir)
        self.val_tgt = load_prepared(val_tgt_list, data_cfg.tgt_modality, data_cfg, cache_dir=cache_dir)
        # Validation pairs (index into val_src, index into val_tgt): same case name and grid shape.
        pairing = pair_by_case(
            enumerate(self.val_src),
            enumerate(self.val_tgt),
            name=lambda item: case_name(Path(item[1].source)),
        )
        if pairing.duplicate_target is not None:
            name, first, second = pairing.duplicate_target
            raise InputError(
                f"two target validation volumes are named {name!r}: {first[1].source} and {second[1].source}; rename one"
            )
        self.val_pairs = [(i, j) for _, (i, s), (j, t) in pairing.pairs if s.image.shape == t.image.shape]
        seed = cfg.train.seed
        self.pairs: PairedSliceDataset | None = None
        if paired:
            self.pairs = PairedSliceDataset(
                self.src_volumes, self.tgt_volumes, data_cfg, train=True, seed=derived_seed(seed, 0)
            )
            self.src_dataset = self.tgt_dataset = self.pairs
            if len(self.pairs) == 0:
                raise ConfigError(
                    "no slice of the training pairs has enough body in both volumes "
                    f"(data.min_body_fraction={data_cfg.min_body_fraction}); lower it or check the body masks"
                )
        else:
            self.src_dataset = SliceDataset(
                self.src_volumes, data_cfg, train=True, seed=derived_seed(seed, 0)
            )
            self.tgt_dataset = SliceDataset(
                self.tgt_volumes, data_cfg, train=True, seed=derived_seed(seed, 1)
            )
        for name, dataset in (("source", self.src_dataset), ("target", self.tgt_dataset)):
            if len(dataset) == 0:
                raise ConfigError(
                    f"no {name} slice has enough body (data.min_body_fraction={data_cfg.min_body_fraction}); "
                    "lower it or check the body masks"
                )
        # A global step takes batch_size slices on each of world_size processes.
        global_batch = cfg.optim.batch_size * dist.world_size
        if dist.is_main:
            _warn_if_batches_repeat(cfg.optim.batch_size, dist.world_size, self.src_dataset, self.tgt_dataset)
        self.steps_per_epoch = cfg.train.steps_per_epoch or math.ceil(
            max(len(self.src_dataset), len(self.tgt_dataset)) / global_batch
        )

    def __repr__(self) -> str:
        return (
            f"TrainingData({len(self.src_volumes)} + {len(self.tgt_volumes)} volumes, "
            f"{len(self.src_dataset)} + {len(self.tgt_dataset)} slices, {len(self.val_src)} + "
            f"{len(self.val_tgt)} validation volumes, {self.steps_per_epoch} steps per epoch)"
        )

    def normalisation(self) -> Normalisation:
        """The normalisation record of each domain, measured on its training volumes (run config)."""
        data_cfg = self.cfg.data
        return Normalisation(
            source=domain_record([v.params for v in self.src_volumes], data_cfg.src_modality, data_cfg),
            target=domain_record([v.params for v in self.tgt_volumes], data_cfg.tgt_modality, data_cfg),
        )

    def sample_volumes(self) -> tuple[PreparedVolume, PreparedVolume]:
        """The volume of each domain that sample grids show (validation data if any)."""
        return (self.val_src or self.src_volumes)[0], (self.val_tgt or self.tgt_volumes)[0]

    def _hold_out(
        self, paths: list[Path], masks: list[Path] | None, domain: int
    ) -> tuple[list[Path], list[Path], list[Path] | None]:
        """Moves a seeded share of the volumes (at least one, never all) to validation."""
        n = len(paths)
        n_val = min(n - 1, max(1, round(n * self.cfg.data.val_fraction)))
        if n_val <= 0:
            logger.warning("too few volumes to hold out validation data (%d); validation is off", n)
            return paths, [], masks
        rng = np.random.default_rng(derived_seed(self.cfg.train.seed, 99, domain))
        val_idx = set(rng.choice(n, size=n_val, replace=False).tolist())
        train = [p for i, p in enumerate(paths) if i not in val_idx]
        val = [p for i, p in enumerate(paths) if i in val_idx]
        train_masks = [m for i, m in enumerate(masks) if i not in val_idx] if masks else None
        return train, val, train_masks

    def _loader(self, dataset: SliceDataset, batches: list[list[int]]) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            pin_memory=self.pin_memory,
            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from step ``start`` on, for this process: ``{"A": ..., "B": ...}``."""
        seed, batch, steps = self.cfg.train.seed, self.cfg.optim.batch_size, self.steps_per_epoch
        rank, world = self.dist.rank, self.dist.world_size
        # Global step s uses batches s * world ... s * world + world - 1 of the epoch's list, one per rank.
        batches_a = distributed.shard(
            epoch_batches(len(self.src_dataset), batch, steps * world, seed, epoch, 0), rank, world
        )[start:]
        batches_b = distributed.shard(
            epoch_batches(len(self.tgt_dataset), batch, steps * world, seed, epoch, 1), rank, world
        )[start:]
        if self.pairs is not None:
            # One batch list, one loader: item i holds both slices of pair slice i.
            self.pairs.set_epoch(epoch)
            yield from self._loader(self.pairs, batches_a)
            return
        self.src_dataset.set_epoch(epoch)
        self.tgt_dataset.set_epoch(epoch)
        for batch_a, batch_b in zip(
            self._loader(self.src_dataset, batches_a), self._loader(self.tgt_dataset, batches_b)
        ):
            yield {"A": batch_a, "B": batch_b}


def _check_pair_order(sources: Sequence[Path], targets: Sequence[Path]) -> None:
    """Refuses files of a paired run that :func:`pair_files` did not put in pair order (a caller's bug)."""
    names = [(case_name(s), case_name(t)) for s, t in zip(sources, targets)]
    if len(sources) != len(targets) or any(a != b for a, b in names):
        raise ValueError(
            "the files of a paired model must be in pair order: pass them through pair_files first"
        )


def _warn_if_batches_repeat(batch_size: int, world_size: int, *datasets: Any) -> None:
    """One warning line when a batch is larger than a domain's slice count.

    The batches cycle through the slices, and a slice's augmentation depends only on (seed, epoch,
    index): such a batch holds identical copies, so it costs more and teaches nothing more than a
    batch of the distinct slices. Not an error: the training is still correct, only slower.
    """
    global_batch = batch_size * world_size
    counts = {name: len(ds) for name, ds in zip(("source", "target"), datasets) if len(ds) < global_batch}
    if not counts:
        return
    per = f"batch size {batch_size}" + (f" x {world_size} processes" if world_size > 1 else "")
    slices = " and ".join(f"{n} {name}" for name, n in counts.items())
    fewest = min(counts.values())
    logger.warning(
        "%s is larger than the %s training slices: each batch repeats the same slices (about %d times each), "
        "which costs time and adds nothing; use --batch-size %d or less",
        per,
        slices,
        math.ceil(global_batch / fewest),
        max(1, fewest // world_size),
    )


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the training loop.

    Ctrl-C and a batch system's SIGTERM reach the whole process group: a worker that died of them
    made the trainer fail with "DataLoader worker ... is killed by signal" (a traceback, and the
    steps since the last checkpoint lost) instead of saving ``last.pt`` and stopping. The loop
    shuts its workers down itself; a worker whose trainer died exits on its own (PyTorch's watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
