"""Whole-volume translation: a scan in, the translated scan out on exactly the input's grid.

The path is the training path run forwards and then inverted:
read (any format) -> RAS -> body mask + normalisation with the checkpoint's recorded parameters
(MR percentiles of the input itself, the CT window of training) -> in-plane resampling as in training
-> the generator over every whole axial slice (padded to its stride multiple, cropped back, slices
batched) -> in-plane resampling back onto the original grid -> denormalisation (CT in HU) ->
original voxel order -> written with the input's shape, affine, orientation and spacing.
CT is written as int16 HU, MR as float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medcyclegan.config import Config
from medcyclegan.errors import CheckpointError, InputError, OutputError
from medcyclegan.io.atomic import check_can_write

logger = logging.getLogger("medcyclegan")

AIR_VALUE = {"ct": -1000.0, "mr": 0.0}
OUTPUT_DTYPE = {"ct": "int16", "mr": "float32"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class TranslationModel:
    """A generator ready to translate, with what training recorded about its data.

    Attributes:
        generator: the network (eval mode, on ``device``).
        cfg: the run's resolved config (normalisation parameters included).
        source_modality: modality the generator reads.
        target_modality: modality it writes.
        checkpoint: where it was loaded from.
        device: where it runs.
    """

    generator: torch.nn.Module
    cfg: Config
    source_modality: str
    target_modality: str
    checkpoint: Path
    device: torch.device

    @property
    def amp(self) -> bool:
        return self.cfg.train.amp == "bf16" or (self.cfg.train.amp == "auto" and self.device.type == "cuda")


def load_model(model: str | Path | None, *, to: str | None = None, device: str = "auto") -> TranslationModel:
    """Loads the generator that translates into modality ``to`` from a run folder or checkpoint.

    Args:
        model: a run folder (``checkpoints/best.pt`` is used, else ``last.pt``), a checkpoint file,
            or ``None`` for the newest run under ``./runs``.
        to: target modality (``"ct"`` or ``"mr"``); default: the training target modality.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    from medcyclegan.nets import build_generator
    from medcyclegan.train.checkpoint import (
        checkpoint_config,
        find_checkpoint,
        load_checkpoint,
        load_state_strict,
        newest_run,
    )
    from medcyclegan.train.trainer import resolve_device

    path = find_checkpoint(newest_run() if model is None else model)
    data = load_checkpoint(path)
    cfg = checkpoint_config(data, path)
    src, tgt = cfg.data.src_modality, cfg.data.tgt_modality
    to = tgt if to is None else to
    if to not in (src, tgt):
        raise CheckpointError(f"this model translates {src} <-> {tgt}; it cannot produce {to!r}", path)
    if not cfg.normalisation:
        raise CheckpointError("checkpoint has no recorded normalisation parameters", path)
    key = "G_AB" if to == tgt else "G_BA"
    source = src if key == "G_AB" else tgt
    channels = cfg.data.in_channels
    generator = build_generator(cfg.model, channels, channels)
    load_state_strict(generator, data[key], key, path)
    torch_device = resolve_device(device)
    generator.to(torch_device).eval()
    return TranslationModel(generator, cfg, source, to, path, torch_device)


def default_output_path(input_path: Path, output_dir: Path) -> Path:
    """``output_dir/<name>``: NIfTI and ITK files keep their name; DICOM folders become ``<case>.nii.gz``."""
    from medcyclegan.io.discovery import case_name

    if input_path.is_file() and input_path.name.endswith(OUTPUT_SUFFIXES):
        return output_dir / input_path.name
    return output_dir / f"{case_name(input_path)}.nii.gz"


def translate_volume(
    model: TranslationModel,
    input_path: str | Path,
    *,
    batch_size: int = 16,
    mask_path: str | Path | None = None,
    mask_background: bool = False,
    return_attention: bool = False,
) -> tuple[np.ndarray, object, np.ndarray | None]:
    """Translates one volume in memory.

    Returns:
        (translated array in RAS voxel order and output units, the input's Geometry, attention
        volume in RAS order or None).
    """
    from medcyclegan.data.normalise import denormalise, output_params
    from medcyclegan.data.prepare import prepare_volume, restore_inplane
    from medcyclegan.io.readers import read_mask, read_volume
    from medcyclegan.nets.slicewise import translate_array

    volume = read_volume(input_path)
    mask = read_mask(mask_path, like=volume.geometry) if mask_path is not None else None
    cfg = model.cfg
    record_key = "tgt" if model.source_modality == cfg.data.src_modality else "src"
    # CT inputs use the training window; MR inputs their own percentiles, exactly as in training.
    prepared = prepare_volume(volume, model.source_modality, cfg.data, mask=mask)
    result = translate_array(
        model.generator,
        prepared.image,
        context_slices=cfg.data.context_slices,
        batch_size=batch_size,
        device=model.device,
        amp=model.amp,
        return_attention=return_attention,
    )
    translated, attention = result if return_attention else (result, None)
    translated = restore_inplane(translated, prepared, mode="bilinear")
    out = denormalise(translated, output_params(cfg.normalisation[record_key]))
    if attention is not None:
        attention = restore_inplane(attention, prepared, mode="bilinear")
    if mask_background:
        body = restore_inplane(prepared.mask.astype(np.float32), prepared, mode="nearest") > 0.5
        out = np.where(body, out, np.float32(AIR_VALUE[model.target_modality]))
    return out.astype(np.float32), volume.geometry, attention


def convert_file(
    model: TranslationModel,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 16,
    mask_path: str | Path | None = None,
    mask_background: bool = False,
    attention_path: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Translates ``input_path`` and writes it to ``output_path`` on the input's exact grid."""
    from medcyclegan.io.writers import write_volume

    output_path = check_can_write(output_path, overwrite)
    if attention_path is not None:
        check_can_write(attention_path, overwrite)
    out, geometry, attention = translate_volume(
        model,
        input_path,
        batch_size=batch_size,
        mask_path=mask_path,
        mask_background=mask_background,
        return_attention=attention_path is not None,
    )
    written = write_volume(
        out, geometry, output_path, dtype=OUTPUT_DTYPE[model.target_modality], overwrite=overwrite
    )
    if attention_path is not None and attention is not None:
        write_volume(attention, geometry, attention_path, dtype="float32", overwrite=overwrite)
    return written


def plan_outputs(inputs: Sequence[Path], output: Path | None, input_is_folder: bool, to: str) -> list[Path]:
    """Output paths for the inputs; a folder input needs a folder output."""
    if input_is_folder:
        if output is None:
            raise OutputError("a folder input needs -o OUTPUT_FOLDER")
        if output.exists() and not output.is_dir():
            raise OutputError("is a file, but the input is a folder: give an output folder", output)
        return [default_output_path(p, output) for p in inputs]
    (single,) = inputs
    if output is None:
        from medcyclegan.io.discovery import case_name

        return [single.parent / f"{case_name(single)}_synth{to}.nii.gz"]
    if output.is_dir():
        return [default_output_path(single, output)]
    if not output.name.endswith(OUTPUT_SUFFIXES):
        raise OutputError(f"unknown output format; use one of {', '.join(OUTPUT_SUFFIXES)}", output)
    return [output]


def convert_paths(
    model: TranslationModel,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    batch_size: int = 16,
    mask_background: bool = False,
    save_attention: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Converts a file or every volume of a folder. Every output is checked before any work starts."""
    from medcyclegan.io.discovery import find_volumes

    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError("no such file or folder", input_path)
    is_folder = input_path.is_dir() and not _is_dicom_folder(input_path)
    inputs = find_volumes(input_path) if is_folder else [input_path]
    outputs = plan_outputs(inputs, None if output is None else Path(output), is_folder, model.target_modality)
    if len(set(outputs)) != len(outputs):
        raise OutputError("two inputs would be written to the same output name; rename one of them")
    attention_paths = [_attention_path(p) if save_attention else None for p in outputs]
    for out, att in zip(outputs, attention_paths):
        if out.resolve() in {p.resolve() for p in inputs}:
            raise OutputError("output would replace its own input", out)
        check_can_write(out, overwrite)
        if att is not None:
            check_can_write(att, overwrite)
    if save_attention and model.cfg.model.generator != "resnet-attention":
        raise InputError(
            "--save-attention needs a model trained with --generator resnet-attention", model.checkpoint
        )
    written = []
    for inp, out, att in zip(inputs, outputs, attention_paths):
        written.append(
            convert_file(
                model,
                inp,
                out,
                batch_size=batch_size,
                mask_background=mask_background,
                attention_path=att,
                overwrite=overwrite,
            )
        )
        logger.info("%s -> %s", inp, out)
    return written


def _attention_path(output: Path) -> Path:
    name = output.name
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)] + "_attention" + suffix)
    return output.with_name(name + "_attention.nii.gz")


def _is_dicom_folder(path: Path) -> bool:
    from medcyclegan.io.discovery import find_volumes

    try:
        found = find_volumes(path)
    except InputError:
        return False
    return found == [path]
