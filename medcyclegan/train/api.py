"""``train_from_folders``: the importable form of ``medcyclegan train``.

Resolves folders into volume lists (and body masks paired by case name), records the data sources
in the run folder so that ``--resume`` needs only the run folder, and runs the :class:`Trainer`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medcyclegan.checkpoint import checkpoint_config, load_checkpoint
from medcyclegan.config import Config, apply_overrides, load_config
from medcyclegan.errors import ConfigError, InputError, OutputError
from medcyclegan.io.atomic import atomic_write_text
from medcyclegan.io.discovery import case_name, find_volumes, is_inside, pair_by_case, shared_file
from medcyclegan.models import model_class
from medcyclegan.train.data_module import pair_files
from medcyclegan.train.data_record import ROLES
from medcyclegan.train.resume import merge_resume_config
from medcyclegan.train.trainer import Trainer, TrainResult

logger = logging.getLogger("medcyclegan")

SOURCES_FILE = "sources.json"


def paired_masks(volumes: list[Path], mask_dir: Path | None) -> list[Path] | None:
    """Mask files for ``volumes``, paired by case name; every volume needs one.

    Raises:
        InputError: a volume has no mask, or two masks have one case name (which one belongs to the
            volume cannot be told).
    """
    if mask_dir is None:
        return None
    pairing = pair_by_case(volumes, find_volumes(mask_dir))
    if pairing.duplicate_target is not None:
        name, first, second = pairing.duplicate_target
        raise InputError(f"two masks are named {name!r}: {first} and {second}; rename one", mask_dir)
    missing = [case_name(v) for v in pairing.unmatched_sources]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"no mask for {len(missing)} volume(s): {shown}", mask_dir)
    return [mask for _, _, mask in pairing.pairs]


def _resolve(folder: Path | None) -> list[Path] | None:
    if folder is None:
        return None

    return find_volumes(folder)


def check_run_dir_outside_inputs(out: Path, inputs: dict[str, Path | None]) -> None:
    """Refuses a run folder that is an input folder or lies inside one.

    The run would write its checkpoints, logs and samples among the user's data, an --overwrite
    would clean up in it, and every later discovery of that folder (a resume, another run) would
    walk through the run's files.

    Args:
        out: the run folder (need not exist yet).
        inputs: ``{role: path}`` as in :data:`~medcyclegan.train.data_record.ROLES` (None: not given).

    Raises:
        OutputError: ``out`` is, or is inside, one of the input folders (named by its option).
    """

    for role, given in inputs.items():
        if given is None or not Path(given).is_dir() or not is_inside(out, given):
            continue
        where = "is" if os.path.realpath(out) == os.path.realpath(given) else "is inside"
        raise OutputError(
            f"{where} the {ROLES[role]} folder {given}: the run would write its files among the input "
            "data; choose an --out outside it",
            out,
        )


def _check_domains_differ(src: list[Path], tgt: list[Path]) -> None:
    """Refuses a volume given as both domains (e.g. ``--src mr --tgt mr``).

    It trained without a word: the MR scans were normalised as CT and the model learnt nothing of
    the other modality.
    """

    if clash := shared_file(src, tgt):  # by name (case folded) and by inode: one pass over each list
        raise ConfigError(
            f"--src and --tgt both hold {clash[0]}: the two domains must be different scans "
            "(e.g. --src MR_FOLDER --tgt CT_FOLDER)"
        )


def new_run_dir(root: Path, name: str) -> Path:
    """Creates and returns a new, empty run folder ``root/name`` (``name-2``, ``name-3``... if taken).

    The default ``--out`` (the start time to the second) is taken by ``mkdir``, which only one
    process can win: two jobs started in the same second (a job array) each get their own folder,
    and an existing folder is never trained into without the user naming it.
    """
    for n in range(1, 1000):
        candidate = root / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot create run folder ({exc.strerror or exc})", candidate) from None
        return candidate
    raise OutputError(f"no free run folder name {name}-N; give --out", root)


def auto_resume(out: str | Path) -> bool:
    """Whether ``--auto-resume`` resumes: ``out`` holds ``checkpoints/last.pt``; otherwise the run starts.

    Starting goes through the fresh-run checks: what a job killed before its first checkpoint left
    (its config and log rows, which describe no saved state) is replaced with a warning, and files
    of that name that no trainer wrote are refused, as without ``--auto-resume``.
    """
    return (Path(out) / "checkpoints" / "last.pt").is_file()


def resume_config(out: str | Path, overrides: dict[str, Any], config: str | Path | None = None) -> Config:
    """The config stored in ``out/checkpoints/last.pt`` with the run-control changes the user gave.

    A requeued job repeats its command line: values equal to the stored ones are accepted, from
    ``overrides`` and from a ``config`` file alike. Only fields that change how a run is watched or
    stopped (``RESUMABLE_OVERRIDES``) may take another value; any other difference is refused naming
    the key, the stored and the given value (see :func:`medcyclegan.train.resume.merge_resume_config`).
    """

    checkpoint = Path(out) / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise InputError("no checkpoints/last.pt to resume from", out)
    stored = checkpoint_config(load_checkpoint(checkpoint), checkpoint)
    if config is not None:
        # A whole config file: every field is given, so every field is compared.
        return merge_resume_config(stored, load_config(config, overrides), announce=False)
    return merge_resume_config(stored, apply_overrides(stored, overrides), keys=overrides, announce=False)


def check_pairs(
    cfg: Config,
    *,
    src: str | Path,
    tgt: str | Path,
    val_src: str | Path | None = None,
    val_tgt: str | Path | None = None,
) -> dict[str, list[Path] | None]:
    """``train --check-pairs``: the registered pairs a paired model would train on, checked, nothing trained.

    The same checks as the start of a run (:func:`~medcyclegan.train.data_module.pair_files`):
    every case name in both folders, each pair on one grid.

    Returns:
        The volumes of each role (``src``, ``tgt``, ``val_src``, ``val_tgt``) in pair order: pair
        ``i`` is ``result["src"][i]`` and ``result["tgt"][i]``.

    Raises:
        ConfigError: the model of ``cfg`` is not a paired one, or only one validation folder is given.
        InputError: the pairs as :func:`~medcyclegan.train.data_module.pair_files` refuses them.
    """
    kind = cfg.model.kind
    if not model_class(kind).paired:
        raise ConfigError(
            f"--check-pairs checks the registered pairs of a paired model (--model pix2pix); {kind} "
            "trains on unpaired volumes"
        )
    if (val_src is None) != (val_tgt is None):
        raise ConfigError("give both --val-src and --val-tgt, or neither")
    src_list, tgt_list = find_volumes(src), find_volumes(tgt)
    _check_domains_differ(src_list, tgt_list)
    files = {
        "src": src_list,
        "tgt": tgt_list,
        "val_src": _resolve(Path(val_src) if val_src is not None else None),
        "val_tgt": _resolve(Path(val_tgt) if val_tgt is not None else None),
    }
    return pair_files(files, kind)


def train_from_folders(
    cfg: Config,
    out: str | Path,
    *,
    src: str | Path | None,
    tgt: str | Path | None,
    val_src: str | Path | None = None,
    val_tgt: str | Path | None = None,
    src_masks: str | Path | None = None,
    tgt_masks: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Trains (or resumes) a run in ``out`` from folders of volumes.

    On resume the folders default to those recorded in ``out/sources.json`` and the config comes from
    the checkpoint (only run-control fields such as ``train.max_steps`` may change).
    """
    out = Path(out)
    checkpoint = out / "checkpoints" / "last.pt"
    recorded: dict[str, str | None] = {}
    if resume:
        if not checkpoint.is_file():
            raise InputError("no checkpoints/last.pt to resume from", out)
        sources_file = out / SOURCES_FILE
        if sources_file.is_file():
            recorded = json.loads(sources_file.read_text())
    sources = {
        "src": src if src is not None else recorded.get("src"),
        "tgt": tgt if tgt is not None else recorded.get("tgt"),
        "val_src": val_src if val_src is not None else recorded.get("val_src"),
        "val_tgt": val_tgt if val_tgt is not None else recorded.get("val_tgt"),
        "src_masks": src_masks if src_masks is not None else recorded.get("src_masks"),
        "tgt_masks": tgt_masks if tgt_masks is not None else recorded.get("tgt_masks"),
    }
    if sources["src"] is None or sources["tgt"] is None:
        raise ConfigError("--src and --tgt are required (folders or files of the two domains)")
    paths = {k: (Path(v) if v is not None else None) for k, v in sources.items()}
    if (paths["val_src"] is None) != (paths["val_tgt"] is None):
        raise ConfigError("give both --val-src and --val-tgt, or neither")
    check_run_dir_outside_inputs(out, paths)
    src_list = _resolve(paths["src"])
    tgt_list = _resolve(paths["tgt"])
    assert src_list is not None and tgt_list is not None
    _check_domains_differ(src_list, tgt_list)
    trainer = Trainer(
        cfg,
        out,
        src_list,
        tgt_list,
        val_src_paths=_resolve(paths["val_src"]),
        val_tgt_paths=_resolve(paths["val_tgt"]),
        src_mask_paths=paired_masks(src_list, paths["src_masks"]),
        tgt_mask_paths=paired_masks(tgt_list, paths["tgt_masks"]),
        resume=checkpoint if resume else None,
        show_progress=show_progress,
        overwrite=overwrite,
    )
    record = {k: (str(Path(v).resolve()) if v is not None else None) for k, v in sources.items()}
    atomic_write_text(out / SOURCES_FILE, json.dumps(record, indent=2) + "\n")
    logger.info(
        "training %s -> %s on %s: %d + %d volumes, %d + %d slices, %d steps per epoch, %d steps in all",
        cfg.data.src_modality,
        cfg.data.tgt_modality,
        trainer.device,
        len(trainer.data.src_volumes),
        len(trainer.data.tgt_volumes),
        len(trainer.data.src_dataset),
        len(trainer.data.tgt_dataset),
        trainer.steps_per_epoch,
        trainer.total_steps,
    )
    return trainer.fit()
