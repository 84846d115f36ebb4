"""Whole-volume translation: a scan in, the translated scan out on exactly the input's grid.

The path is the training path run forwards and then inverted:
read (any format) -> RAS -> body mask + normalisation with the checkpoint's recorded parameters
(MR percentiles of the input itself, the CT window of training) -> in-plane resampling as in training
-> the generator over every whole axial slice (the one slice-wise path, :mod:`medcyclegan.inference`:
padded to its stride multiple, cropped back, slices batched) -> in-plane resampling back onto the original grid -> denormalisation (CT in HU) ->
original voxel order -> written with the input's shape, affine, orientation and spacing.
CT is written as int16 HU, MR as float32. Optional test-time averaging (``flip_average``, ``planes``,
see :func:`translate_loaded`) is recorded in the output's description. A translator with styles
(MUNIT's) translates at its fixed style, or with ``samples`` K at K styles drawn from N(0, I): the
output is then their mean, and a second volume their voxel-wise standard deviation
(:func:`translate_samples`, :func:`convert_file`).

Memory: the input is read once and the whole-volume statistics (MR percentiles, body mask as bool)
are computed once; then every step after them runs slab by slab (``batch_size`` axial slices plus
their 2.5D context) and writes straight into one preallocated output array of the output dtype. The
peak is therefore about the input array + the output array (+ the bool mask when one is needed),
not several float32 copies of the volume. Each step acts on every slice on its own, so the result
equals a whole-volume pass (see ``tests/test_reliability.py``). Planes other than axial are the
exception: their slices cross every slab, so the whole prepared volume is translated at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcyclegan import __version__
from medcyclegan.checkpoint import (
    checkpoint_config,
    find_checkpoint,
    is_onnx_path,
    load_checkpoint,
    load_state_strict,
    newest_run,
)
from medcyclegan.config import BACKENDS, DEFAULT_BACKEND, OUTPUT_FORMATS, Config, check_planes
from medcyclegan.data.normalise import NormParams, denormalise, output_params
from medcyclegan.data.prepare import (
    fit_volume,
    isotropic_depth,
    normalise_slices,
    prepared_inplane_shape,
    prepared_spacing,
    resample_slices,
)
from medcyclegan.errors import CheckpointError, ConfigError, InputError, OutputError
from medcyclegan.inference import Translator, translate_planes, translate_slices

# readers by module: its functions are looked up at call time (tests count the reads through it).
from medcyclegan.io import readers
from medcyclegan.io.atomic import check_can_write
from medcyclegan.io.dicom_writer import (
    KEEPS_ITS_IDENTITY,
    DicomIdentity,
    check_can_write_series,
    dicom_output_source,
    write_dicom_series,
)
from medcyclegan.io.discovery import (
    case_name,
    files_of_volume,
    find_volumes,
    is_inside,
    path_key,
    shared_file,
    split_series,
)
from medcyclegan.io.volume import Geometry, Volume
from medcyclegan.io.writers import cast_values, files_written_by, write_volume
from medcyclegan.models import Direction, model_class
from medcyclegan.nets import generator_min_input_size, generator_stride_multiple
from medcyclegan.runtime import check_device_name, distributed, resolve_device
from medcyclegan.runtime.precision import use_bf16
from medcyclegan.runtime.threads import adjust_threads

logger = logging.getLogger("medcyclegan")

AIR_VALUE = {"ct": -1000.0, "mr": 0.0}
OUTPUT_DTYPE = {"ct": "int16", "mr": "float32"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Slice planes translated by default: the axial ones the model was trained on (see translate_planes).
DEFAULT_PLANES = ("axial",)


@dataclass
class ConversionModel:
    """A generator ready to translate, with what training recorded about its data.

    Attributes:
        generator: the network (eval mode, on ``device``), or an onnxruntime session translator
            (:class:`~medcyclegan.onnx_model.OnnxTranslator`) with ``backend`` onnxruntime.
        cfg: the run's resolved config (normalisation parameters included).
        source_modality: modality the generator reads.
        target_modality: modality it writes.
        checkpoint: where it was loaded from (a checkpoint, or an ``.onnx`` file).
        device: where its input tensors go (the CPU for onnxruntime, which places them itself).
        backend: ``"torch"`` or ``"onnxruntime"``.
    """

    generator: Translator
    cfg: Config
    source_modality: str
    target_modality: str
    checkpoint: Path
    device: torch.device
    backend: str = "torch"

    @property
    def amp(self) -> bool:
        """bf16 autocast as training used it (``train.amp``, see :func:`~medcyclegan.runtime.precision.use_bf16`)."""
        return use_bf16(self.cfg.train.amp, self.device)

    @property
    def stride_multiple(self) -> int:
        """The generator's input H and W are padded to multiples of this (its architecture's).

        The translator's own ``stride_multiple`` where it has one (a model's own translator, e.g.
        MUNIT's), else that of the config's ``model.generator``.
        """
        multiple = getattr(self.generator, "stride_multiple", None)
        return int(multiple) if isinstance(multiple, int) else generator_stride_multiple(self.cfg)

    @property
    def canvas(self) -> int:
        """Slices smaller than this (``data.image_size``) are translated centred on air of this size,
        as training padded them (:func:`~medcyclegan.inference.canvas_padding`)."""
        return int(self.cfg.data.image_size)

    @property
    def min_slice_voxels(self) -> int:
        """The smallest in-plane size (voxels per axis, at the model's spacing) the generator takes
        (the translator's ``min_input_size`` where it has one)."""
        smallest = getattr(self.generator, "min_input_size", None)
        return int(smallest) if isinstance(smallest, int) else generator_min_input_size(self.cfg)

    @property
    def has_styles(self) -> bool:
        """True for a translator with styles (MUNIT's): it has ``style_dim`` and ``set_style(code)``."""
        return isinstance(getattr(self.generator, "style_dim", None), int) and callable(
            getattr(self.generator, "set_style", None)
        )


def load_model(
    model: str | Path | None, *, to: str | None = None, device: str = "auto", backend: str | None = None
) -> ConversionModel:
    """Loads the generator that translates into modality ``to`` from a run folder, checkpoint or ``.onnx`` file.

    The checkpoint is loaded without unpickling code (``weights_only``); its weights must match the
    architecture of its stored config exactly and be finite. An ``.onnx`` file (``medcyclegan
    export``) is checked and run by onnxruntime (:func:`~medcyclegan.onnx_model.read_onnx_model`):
    its metadata's config is validated as a checkpoint's.

    Args:
        model: a run folder (``checkpoints/best.pt`` is used, else ``last.pt``), a checkpoint file,
            an exported ``.onnx`` model, or ``None`` for the newest run under ``./runs``.
        to: target modality (``"ct"`` or ``"mr"``); default: the training target modality (an
            ``.onnx`` model translates into its one target).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`~medcyclegan.runtime.resolve_device`;
            onnxruntime: :func:`~medcyclegan.onnx_model.execution_providers`).
        backend: ``torch``, ``onnxruntime`` (a checkpoint is exported in memory, then run by
            onnxruntime) or ``auto`` (:func:`resolve_backend`); default :data:`DEFAULT_BACKEND`,
            and onnxruntime for an ``.onnx`` model.

    Raises:
        ConfigError: an unknown device or one this machine does not have; an unknown backend,
            onnxruntime asked and not installed, or ``torch`` for an ``.onnx`` model.
        CheckpointError: missing, corrupted or unsafe checkpoint or model file, weights of another
            architecture, non-finite weights, no recorded normalisation, or a modality the model
            cannot produce.
    """
    check_device_name(device)
    is_onnx = is_onnx_path(model)
    chosen = resolve_backend(backend, device, is_onnx=is_onnx)
    if is_onnx:
        if chosen != "onnxruntime":
            raise ConfigError(
                "is an ONNX model: it runs on onnxruntime (--backend onnxruntime, or leave --backend out)",
                model,
            )
        return _load_onnx_model(Path(model), to=to, device=device)  # type: ignore[arg-type]
    if chosen == "onnxruntime":
        onnx_model = _onnx_model_module()
        onnx_model.execution_providers(device)  # an unusable device fails before the checkpoint is read
        loaded = _load_torch_model(model, to=to, device="cpu")
        logger.info("%s: exporting the translator to ONNX in memory for onnxruntime", loaded.checkpoint)
        # lazy: circular (medcyclegan.export builds on load_model)
        from medcyclegan.export import export_onnx  # noqa: PLC0415 (see the comment above)

        data, info = export_onnx(loaded)
        translator = onnx_model.onnx_translator(data, info, loaded.checkpoint, device=device)
        return ConversionModel(
            translator, loaded.cfg, loaded.source_modality, loaded.target_modality, loaded.checkpoint,
            torch.device("cpu"), backend="onnxruntime",
        )  # fmt: skip
    return _load_torch_model(model, to=to, device=device)


def resolve_backend(backend: str | None, device: str, *, is_onnx: bool = False) -> str:
    """The engine a conversion runs on: ``"torch"`` or ``"onnxruntime"``.

    ``None``: :data:`DEFAULT_BACKEND` (onnxruntime for an ``.onnx`` model). ``auto``: onnxruntime
    for an ``.onnx`` model, and for a checkpoint on the CPU (``--device cpu``, or ``auto`` without a
    CUDA GPU) when onnxruntime is installed; torch otherwise.

    Raises:
        ConfigError: an unknown backend, or onnxruntime asked and not installed (how to install it).
    """
    if backend is None:
        backend = "onnxruntime" if is_onnx else DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if not is_onnx and not on_cpu:
            return "torch"
        if is_onnx:
            backend = "onnxruntime"
        else:
            return "onnxruntime" if _onnx_model_module().onnxruntime_available() else "torch"
    if backend == "onnxruntime":
        _onnx_model_module().onnxruntime()  # not installed: one line saying how to install it
    return backend


def _onnx_model_module() -> Any:
    """:mod:`medcyclegan.onnx_model`, imported on first use."""
    # lazy: importing onnx costs about 1.0 s (python -X importtime), which torch conversions skip
    from medcyclegan import onnx_model  # noqa: PLC0415 (see the comment above)

    return onnx_model


def _load_onnx_model(path: Path, *, to: str | None, device: str) -> ConversionModel:
    """An exported model (see :func:`load_model`), run by onnxruntime on ``device``."""
    onnx_model = _onnx_model_module()
    onnx_model.execution_providers(device)  # an unusable device fails before the file is read
    data, info = onnx_model.read_onnx_model(path)
    if to is not None and to != info.target_modality:
        raise CheckpointError(
            f"this exported model translates {info.source_modality} -> {info.target_modality} only; it "
            f"cannot produce {to!r} (export that direction: medcyclegan export RUN --to {to})",
            path,
        )
    translator = onnx_model.onnx_translator(data, info, path, device=device)
    return ConversionModel(
        translator, info.cfg, info.source_modality, info.target_modality, path, torch.device("cpu"),
        backend="onnxruntime",
    )  # fmt: skip


def _load_torch_model(model: str | Path | None, *, to: str | None, device: str) -> ConversionModel:
    """A checkpoint's translator on torch (see :func:`load_model`)."""
    # The device choice is checked first: a typo fails before the checkpoint is read.
    requested = resolve_device(device)
    path = find_checkpoint(newest_run() if model is None else model)
    try:
        data = load_checkpoint(path)
    except CheckpointError as exc:
        last = path.with_name("last.pt")
        picked = model is None or Path(model) != path
        if picked and path.name == "best.pt" and last.is_file():
            # The run folder named best.pt for the user; its last.pt is the other model they have.
            raise CheckpointError(
                f"{exc}; to convert with the run's last checkpoint instead, give -m {last}"
            ) from None
        raise
    cfg = checkpoint_config(data, path)
    src, tgt = cfg.data.src_modality, cfg.data.tgt_modality
    to = tgt if to is None else to
    if to not in (src, tgt):
        raise CheckpointError(f"this model translates {src} <-> {tgt}; it cannot produce {to!r}", path)
    if not cfg.normalisation:
        raise CheckpointError("checkpoint has no recorded normalisation parameters", path)
    model_type = model_class(cfg.model.kind)
    direction: Direction = "AB" if to == tgt else "BA"
    if direction not in model_type.directions:
        raise CheckpointError(
            f"this {cfg.model.kind} model translates only {src} -> {tgt}; it cannot produce {to!r}", path
        )
    # The translator's own weights, or their average when the run kept one (model.ema_decay).
    key = model_type.translator_state_key(cfg, direction)
    source = src if direction == "AB" else tgt
    state = data.get(key)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint has no {key} network weights", path)
    generator = model_type.build_translator(cfg, direction)
    load_state_strict(generator, state, key, path)
    bad = [
        name
        for name, tensor in state.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise CheckpointError(
            f"network {key} has NaN or Inf weights ({len(bad)} tensor(s), e.g. {bad[0]}): training diverged "
            "before this checkpoint; use an earlier one",
            path,
        )
    # Under torchrun each process takes its own GPU (cuda:LOCAL_RANK).
    torch_device = distributed.local_device(distributed.detect(), requested)
    generator.to(torch_device).eval()
    return ConversionModel(generator, cfg, source, to, path, torch_device)


def synthetic_description(
    model: ConversionModel,
    *,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
    samples: int = 1,
    seed: int = 0,
) -> str:
    """The description a translated volume carries in its header instead of its input's.

    E.g. ``"synthetic CT from MR by medcyclegan 0.4.0, model 20250101-1200/best.pt"``: what it is,
    what made it, and which checkpoint (run folder and file), most important first because NIfTI
    keeps only 79 characters. Test-time averaging, when used, follows (``", flip-avg"``,
    ``", planes axial+coronal"``, ``", mean of 8 styles seed 0"``; NIfTI may cut it, NRRD and MHA
    keep it); the default conversion adds nothing.
    """
    model_name = model_label(model.checkpoint)
    settings = (
        (", flip-avg" if flip_average else "")
        + (f", planes {'+'.join(planes)}" if tuple(planes) != DEFAULT_PLANES else "")
        + (f", mean of {samples} styles seed {seed}" if samples > 1 else "")
    )
    return (
        f"synthetic {model.target_modality.upper()} from {model.source_modality.upper()} "
        f"by medcyclegan {__version__}, model {model_name}{settings}"
    )


def model_label(checkpoint: Path) -> str:
    """A model file by its run folder and name, e.g. ``20250101-1200/best.pt`` or ``models/sct.onnx``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return f"{run.name}/{checkpoint.name}" if run.name else checkpoint.name


def default_output_path(input_path: Path, output_dir: Path, output_format: str = "volume") -> Path:
    """``output_dir/<name>``: NIfTI and ITK files keep their name; DICOM folders become ``<case>.nii.gz``.

    With ``output_format`` ``"dicom"`` every input becomes the series folder ``output_dir/<case>``.
    """
    if output_format == "dicom":
        return output_dir / case_name(input_path)
    if input_path.is_file() and input_path.name.endswith(OUTPUT_SUFFIXES):
        return output_dir / input_path.name
    return output_dir / f"{case_name(input_path)}.nii.gz"


def translate_volume(
    model: ConversionModel,
    input_path: str | Path,
    *,
    batch_size: int = 16,
    mask_path: str | Path | None = None,
    mask_background: bool = False,
    return_attention: bool = False,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """Reads one volume (once) and translates it slab by slab (see :func:`translate_loaded`).

    Args:
        model: from :func:`load_model`.
        input_path: a volume file, a DICOM series folder, or ``FOLDER::SERIES_UID``.
        batch_size: axial slices per forward pass (and per slab).
        mask_path: a body mask file on the input's grid (default: the automatic body mask).
        mask_background: set voxels outside the body mask to air (-1000 HU for CT, 0 for MR).
        return_attention: also return the attention mask of an attention generator.
        flip_average: average with the R-L mirrored translation (see :func:`translate_loaded`).
        planes: slice planes to translate along and average (see :func:`translate_loaded`).

    Returns:
        (translated array in RAS voxel order, in the output dtype: int16 HU for CT, float32 for MR;
        the input's Geometry; the attention volume in RAS order as float32, or None).

    Raises:
        InputError: unreadable, constant or otherwise unusable input or mask.
    """
    volume, mask = _read_input(input_path, mask_path)
    out, attention = translate_loaded(
        model,
        volume,
        batch_size=batch_size,
        mask=mask,
        mask_background=mask_background,
        return_attention=return_attention,
        flip_average=flip_average,
        planes=planes,
    )
    return out, volume.geometry, attention


def _read_input(input_path: str | Path, mask_path: str | Path | None) -> tuple[Volume, np.ndarray | None]:
    """The input volume, and the user's body mask on its grid when one is given."""
    volume = readers.read_volume(input_path)
    mask = readers.read_mask(mask_path, like=volume.geometry) if mask_path is not None else None
    return volume, mask


def translate_loaded(
    model: ConversionModel,
    volume: Volume,
    *,
    batch_size: int = 16,
    mask: np.ndarray | None = None,
    mask_background: bool = False,
    return_attention: bool = False,
    dtype: str | np.dtype | None = None,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Translates a volume in memory, ``batch_size`` axial slices at a time.

    Whole-volume statistics first, once: the modality check, the normalisation (CT: the training
    window; MR: percentiles inside this volume's body mask) and, when needed, the body mask (bool).
    Then for each slab of slices ``[z0, z1)``: normalise slices ``[z0 - k, z1 + k)`` (the 2.5D
    context, clipped to the volume), resample them in-plane to the training spacing, run the
    generator, resample back, denormalise, set the background to air if asked, cast to the output
    dtype (rounded and clipped for integers, as the writer does) and store into the output array.

    Args:
        model: from :func:`load_model`.
        volume: the input as read (RAS voxel order, natural units).
        batch_size: axial slices per forward pass.
        mask: a user body mask (nonzero = body) in RAS order on the volume's grid.
        mask_background: set voxels outside the body mask to air.
        return_attention: also return the attention mask (zeros for a plain generator).
        dtype: output dtype; default ``OUTPUT_DTYPE`` of the target modality.
        flip_average: test-time flip averaging: each slice's translation is averaged with the R-L
            mirrored translation of its mirror image (the flip training augments with), in the
            network's normalised output space (:func:`~medcyclegan.inference.translate_slices`).
            Twice the generator time; the attention mask is averaged alike.
        planes: slice planes to translate along and average, a non-empty subset of
            ``axial, coronal, sagittal`` (:func:`~medcyclegan.inference.translate_planes`). The
            default, axial only, runs slab by slab; any other plane needs the whole prepared volume
            (resampled along Z to the in-plane spacing for the coronal and sagittal slices, then
            back) in memory, a few float32 copies of it, and one generator pass per plane.

    Returns:
        (translated array (X, Y, Z) in RAS voxel order and output units, attention or None).

    Raises:
        ConfigError: unknown or repeated ``planes``.
        InputError: a constant input, a mask on another grid, or a volume too thin for ``planes``.
        CheckpointError: the network produced NaN or Inf values.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    planes = check_planes(planes)
    prepared = _prepare(model, volume, mask=mask, mask_background=mask_background, planes=planes, dtype=dtype)
    nx, ny, nz = prepared.shape
    # (Z, Y, X) buffers: each slab is one contiguous block, and the result, seen as (X, Y, Z), is
    # Fortran-ordered like a NIfTI file, so the writer stores it without reordering the volume.
    out_zyx = np.empty((nz, ny, nx), dtype=prepared.out_dtype)
    attention_zyx = np.zeros((nz, ny, nx), dtype=np.float32) if return_attention else None
    across = (
        None
        if planes == DEFAULT_PLANES
        else _translate_across(
            model, prepared, planes, batch_size, flip_average=flip_average, return_attention=return_attention
        )
    )
    for z0 in range(0, nz, batch_size):
        z1 = min(nz, z0 + batch_size)
        adjust_threads()  # --threads auto: follow the machine's load between slabs
        translated_zxy, slab_attention = _translate_slab(model, prepared, z0, z1, across, flip_average)
        out_zyx[z0:z1] = cast_values(
            _slab_values(prepared, translated_zxy, z0, z1), prepared.out_dtype
        ).transpose(0, 2, 1)
        if attention_zyx is not None and slab_attention is not None:
            if prepared.resampled:
                slab_attention = resample_slices(slab_attention, (nx, ny), "bilinear")
            attention_zyx[z0:z1] = slab_attention.transpose(0, 2, 1)
    attention = None if attention_zyx is None else attention_zyx.T
    return out_zyx.T, attention


def draw_styles(style_dim: int, samples: int, seed: int) -> torch.Tensor:
    """``samples`` style codes from N(0, I), (samples, style_dim), for ``convert --samples``.

    From a CPU generator seeded with ``seed``: the same codes on every device and in every process
    of a multi-process conversion, so a volume's samples do not depend on where it is converted.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return torch.randn(samples, style_dim, generator=generator)


class RunningMoments:
    """Welford's running mean and variance per voxel over samples added one at a time.

    Memory is two float64 arrays of the accumulated shape, whatever the number of samples. A sample
    may arrive in parts (:meth:`add` of one part, then :meth:`end_sample`).

    Args:
        shape: the shape of one sample.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.samples = 0
        self.mean = np.zeros(shape, dtype=np.float64)
        self._m2 = np.zeros(shape, dtype=np.float64)

    def add(self, values: np.ndarray, part: Any = Ellipsis) -> None:
        """Adds ``values``, the part ``part`` (a slice, or ``...`` for all) of sample :attr:`samples` + 1."""
        n = self.samples + 1
        mean, m2 = self.mean[part], self._m2[part]  # views (a basic index): updated in place
        delta = values - mean
        mean += delta / n
        m2 += delta * (values - mean)

    def end_sample(self) -> None:
        """Counts the sample whose parts were added."""
        self.samples += 1

    def std(self) -> np.ndarray:
        """The population standard deviation (0 for a single sample), float32."""
        if self.samples == 0:
            raise ValueError("no samples added")
        return np.sqrt(np.maximum(self._m2 / self.samples, 0.0)).astype(np.float32)


def translate_samples(
    model: ConversionModel,
    volume: Volume,
    styles: torch.Tensor,
    *,
    batch_size: int = 16,
    mask: np.ndarray | None = None,
    mask_background: bool = False,
    dtype: str | np.dtype | None = None,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
) -> tuple[np.ndarray, np.ndarray]:
    """Translates a volume once per style code and returns the voxel-wise mean and standard deviation.

    Every sample is a whole translated volume at one style (every slice decoded with it), in output
    units (CT in HU) on the input's grid, exactly as :func:`translate_loaded` makes it before its
    cast to the output dtype; the mean and the standard deviation are taken over the samples
    per voxel with :class:`RunningMoments`. Axial slices go slab by slab (all styles of a slab,
    then the next slab): memory is that of :func:`translate_loaded` plus the standard deviation and
    a slab's accumulators. Other ``planes`` translate the whole volume once per style, with
    whole-volume accumulators.

    Args:
        model: from :func:`load_model`, with a translator with styles (:attr:`ConversionModel.has_styles`).
        volume: the input as read.
        styles: (K, style_dim) codes, e.g. from :func:`draw_styles`.
        batch_size, mask, mask_background, dtype, flip_average, planes: as :func:`translate_loaded`.

    Returns:
        (the mean (X, Y, Z) in the output dtype, the standard deviation (X, Y, Z) float32 in output
        units), RAS voxel order. The translator is back at its fixed style after.

    Raises:
        InputError, CheckpointError: as :func:`translate_loaded`.
        ValueError: a model without styles, or no style code.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if not model.has_styles:
        raise ValueError(f"the {model.cfg.model.kind} translator has no styles")
    if len(styles) == 0:
        raise ValueError("no style codes")
    planes = check_planes(planes)
    prepared = _prepare(model, volume, mask=mask, mask_background=mask_background, planes=planes, dtype=dtype)
    nx, ny, nz = prepared.shape
    translator = model.generator
    mean_zyx = np.empty((nz, ny, nx), dtype=prepared.out_dtype)
    std_zyx = np.empty((nz, ny, nx), dtype=np.float32)
    slabs = [(z0, min(nz, z0 + batch_size)) for z0 in range(0, nz, batch_size)]
    try:
        if planes == DEFAULT_PLANES:
            for z0, z1 in slabs:
                moments = RunningMoments((z1 - z0, nx, ny))
                for style in styles:
                    translator.set_style(style)  # type: ignore[operator]
                    translated_zxy, _ = _translate_slab(model, prepared, z0, z1, None, flip_average)
                    moments.add(_slab_values(prepared, translated_zxy, z0, z1))
                    moments.end_sample()
                mean_zyx[z0:z1] = cast_values(moments.mean, prepared.out_dtype).transpose(0, 2, 1)
                std_zyx[z0:z1] = moments.std().transpose(0, 2, 1)
        else:
            moments = RunningMoments((nz, nx, ny))
            for style in styles:
                translator.set_style(style)  # type: ignore[operator]
                across = _translate_across(
                    model, prepared, planes, batch_size, flip_average=flip_average, return_attention=False
                )
                for z0, z1 in slabs:
                    translated_zxy, _ = _translate_slab(model, prepared, z0, z1, across, flip_average)
                    moments.add(_slab_values(prepared, translated_zxy, z0, z1), np.s_[z0:z1])
                moments.end_sample()
                del across
            mean_zyx[:] = cast_values(moments.mean, prepared.out_dtype).transpose(0, 2, 1)
            std_zyx[:] = moments.std().transpose(0, 2, 1)
    finally:
        translator.set_style(None)  # type: ignore[operator]
    return mean_zyx.T, std_zyx.T


@dataclass
class _Prepared:
    """A volume ready to translate: what every slab needs, computed once from the whole volume.

    Attributes:
        array: the input (X, Y, Z), RAS order, natural units.
        shape: its (X, Y, Z).
        params: its normalisation parameters (CT: the training window; MR: its own percentiles).
        body: the body mask (bool, RAS) where the background is set to air, else None.
        size_xy: the in-plane size the network sees (at the training spacing).
        inplane_spacing: the spacing of that grid, mm.
        out_params: the denormalisation of the translated domain.
        out_dtype: the output dtype.
        air: the value of air in the output (-1000 HU for CT, 0 for MR).
        where: the input's name for messages.
    """

    array: np.ndarray
    shape: tuple[int, int, int]
    params: NormParams
    body: np.ndarray | None
    size_xy: tuple[int, int]
    inplane_spacing: tuple[float, float, float]
    out_params: NormParams
    out_dtype: np.dtype
    air: np.float32
    where: str

    @property
    def resampled(self) -> bool:
        """True when the slices are resampled in-plane to the training spacing (and back)."""
        return self.size_xy != self.shape[:2]


def _prepare(
    model: ConversionModel,
    volume: Volume,
    *,
    mask: np.ndarray | None,
    mask_background: bool,
    planes: Sequence[str],
    dtype: str | np.dtype | None,
) -> _Prepared:
    """The whole-volume statistics, once: size checks, normalisation, the body mask when needed."""
    cfg = model.cfg
    where = str(volume.geometry.source_path or "") or "volume"
    records = cfg.normalisation  # never None: load_model refuses a checkpoint without it
    produced = records.target if model.source_modality == cfg.data.src_modality else records.source
    array = volume.array
    nx, ny, nz = (int(n) for n in array.shape)
    size_xy = prepared_inplane_shape((nx, ny, nz), volume.spacing, cfg.data.spacing)
    _check_slice_size(
        (nx, ny),
        size_xy,
        model.min_slice_voxels,
        cfg.data.spacing,
        volume.geometry.source_path or None,
    )
    inplane_spacing = prepared_spacing((nx, ny, nz), volume.spacing, size_xy)
    if tuple(planes) != DEFAULT_PLANES:
        _check_plane_depth(
            nz, isotropic_depth((*size_xy, nz), inplane_spacing), model.min_slice_voxels, where
        )
    # CT parameters do not depend on the mask: skip it unless needed.
    params, body = fit_volume(volume, model.source_modality, cfg.data, mask=mask, need_mask=mask_background)
    if not mask_background:
        body = None  # MR percentiles needed it; nothing else does: free it now
    elif body is not None and not body.any():
        logger.warning("%s: the body mask is empty; --mask-background makes the whole output air", where)
    return _Prepared(
        array=array,
        shape=(nx, ny, nz),
        params=params,
        body=body,
        size_xy=size_xy,
        inplane_spacing=inplane_spacing,
        out_params=output_params(produced),
        out_dtype=np.dtype(OUTPUT_DTYPE[model.target_modality] if dtype is None else dtype),
        air=np.float32(AIR_VALUE[model.target_modality]),
        where=where,
    )


def _translate_across(
    model: ConversionModel,
    prepared: _Prepared,
    planes: Sequence[str],
    batch_size: int,
    *,
    flip_average: bool,
    return_attention: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Coronal and sagittal slices cross every slab: the whole prepared volume, translated at once.

    Returns (translation, attention or None), each (Z, X, Y) in normalised units.
    """
    whole, whole_attention = translate_planes(
        model.generator,
        np.moveaxis(normalise_slices(prepared.array, prepared.params, prepared.size_xy), 0, 2),
        prepared.inplane_spacing,
        planes,
        context_slices=int(model.cfg.data.context_slices),
        batch_size=batch_size,
        device=model.device,
        amp=model.amp,
        stride_multiple=model.stride_multiple,
        flip_average=flip_average,
        return_attention=return_attention,
        canvas=model.canvas,
    )
    return (
        np.moveaxis(whole, 2, 0),
        None if whole_attention is None else np.moveaxis(whole_attention, 2, 0),
    )


def _translate_slab(
    model: ConversionModel,
    prepared: _Prepared,
    z0: int,
    z1: int,
    across: tuple[np.ndarray, np.ndarray | None] | None,
    flip_average: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Slices ``[z0, z1)`` translated (normalised units, (n, X', Y') at the training spacing), checked finite.

    From ``across`` (the whole volume translated along other planes) when given, else through the
    generator, with the 2.5D context slices beyond the slab (clipped at the volume's ends, exactly
    as a whole-volume pass clips them).
    """
    if across is None:
        k = int(model.cfg.data.context_slices)
        nz = prepared.shape[2]
        lo, hi = max(0, z0 - k), min(nz, z1 + k)
        prepared_zxy = normalise_slices(prepared.array[:, :, lo:hi], prepared.params, prepared.size_xy)
        translated_zxy, slab_attention = translate_slices(
            model.generator,
            np.moveaxis(prepared_zxy, 0, 2),
            np.arange(z0, z1) - lo,
            context_slices=k,
            device=model.device,
            amp=model.amp,
            stride_multiple=model.stride_multiple,
            flip_average=flip_average,
            canvas=model.canvas,
        )
    else:
        translated_zxy = np.ascontiguousarray(across[0][z0:z1])
        slab_attention = None if across[1] is None else np.ascontiguousarray(across[1][z0:z1])
    if not np.isfinite(translated_zxy).all():
        raise CheckpointError(
            f"the network produced NaN or Inf values on slices {z0}-{z1 - 1} of {prepared.where}; "
            "the checkpoint may be damaged",
            model.checkpoint,
        )
    return translated_zxy, slab_attention


def _slab_values(prepared: _Prepared, translated_zxy: np.ndarray, z0: int, z1: int) -> np.ndarray:
    """A translated slab in output units (float32 (n, X, Y) on the input grid): resampled back,
    denormalised (CT in HU), the background set to air where asked."""
    nx, ny = prepared.shape[:2]
    if prepared.resampled:
        translated_zxy = resample_slices(translated_zxy, (nx, ny), "bilinear")
    values = denormalise(translated_zxy, prepared.out_params)
    if prepared.body is not None:
        inside = np.ascontiguousarray(np.moveaxis(prepared.body[:, :, z0:z1], 2, 0))
        if prepared.resampled:
            # The mask takes the same way as the image: onto the training grid and back.
            inside = resample_slices(
                resample_slices(inside, prepared.size_xy, "nearest"), (nx, ny), "nearest"
            )
        values = np.where(inside, values, prepared.air)
    return values


def _check_plane_depth(depth: int, isotropic: int, minimum: int, where: str) -> None:
    """Refuses coronal and sagittal planes of a volume with too few slices for the generator.

    Those slices are ``isotropic`` voxels tall (the ``depth`` axial slices resampled to the in-plane
    spacing); below ``minimum`` (the generator's ``min_input_size``) the generator cannot run.
    """
    if isotropic >= minimum:
        return
    raise InputError(
        f"its {depth} axial slices are {isotropic} voxels deep at the in-plane spacing; coronal and "
        f"sagittal slices need at least {minimum}: translate only axial slices (--planes axial)",
        where,
    )


def _check_slice_size(
    size: tuple[int, int], prepared: tuple[int, int], minimum: int, spacing_mm: float | None, path: str | None
) -> None:
    """Refuses axial slices too small for the generator (e.g. one coronal slice: 40 x 1 voxels).

    The model translates whole axial (x-y) slices; below ``minimum`` voxels per axis (the generator's
    ``min_input_size``), as the network sees them, it cannot run, and a thinner image is not one it
    could translate.
    """
    if min(prepared) >= minimum:
        return
    at_spacing = (
        f" ({prepared[0]} x {prepared[1]} at the model's {spacing_mm:g} mm spacing)"
        if prepared != size
        else ""
    )
    raise InputError(
        f"its axial slices are {size[0]} x {size[1]} voxels{at_spacing}; the model translates whole axial "
        f"slices and needs at least {minimum} x {minimum}: a single coronal or sagittal "
        "slice, or a volume this small, cannot be converted",
        path,
    )


def convert_file(
    model: ConversionModel,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 16,
    mask_path: str | Path | None = None,
    mask_background: bool = False,
    attention_path: str | Path | None = None,
    overwrite: bool = False,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
    samples: int = 1,
    seed: int = 0,
    std_path: str | Path | None = None,
    output_format: str = "volume",
    dicom_identity: DicomIdentity | None = None,
) -> Path:
    """Translates ``input_path`` and writes it to ``output_path`` on the input's exact grid.

    The outputs are checked before the input is read; each is written to a temporary name and
    renamed, so a failure never leaves a partial file nor damages an existing one.
    ``flip_average`` and ``planes``: test-time averaging (see :func:`translate_loaded`), recorded
    in the output's description.

    ``samples`` K > 1 (a model with styles, MUNIT's): K style codes drawn from N(0, I) with ``seed``
    (:func:`draw_styles`), one translation each; ``output_path`` gets their voxel-wise mean and
    ``std_path`` (default :func:`std_output_path` of the output) their voxel-wise standard
    deviation in output units (float32; HU for CT), an uncertainty map on the same grid
    (:func:`translate_samples`). K = 1 is the plain conversion (a model with styles translates at
    its fixed style).

    ``output_format`` ``"dicom"``: ``output_path`` is a folder that receives a CT Image Storage
    series (:func:`~medcyclegan.io.dicom_writer.write_dicom_series`): the patient, study and frame
    of reference of a DICOM source, else new ones (``dicom_identity``, default: the case name as
    patient name and ID, a new study). The source's attributes and the grid are checked before the
    translation. The attention map and the standard deviation stay volume files.

    Raises:
        ConfigError: ``samples`` below 1, or above 1 for a model without styles; ``"dicom"`` for an
            MR target.
        InputError: a DICOM source without the attributes a DICOM output needs.
        OutputError: a grid DICOM cannot store (sheared).
    """
    check_samples(model, samples)
    planes = check_planes(planes)
    dicom = check_output_format(output_format, model.target_modality) == "dicom"
    output_path = (check_can_write_series if dicom else check_can_write)(output_path, overwrite)
    if attention_path is not None:
        check_can_write(attention_path, overwrite)
    if samples > 1:
        std_path = check_can_write(std_output_path(output_path) if std_path is None else std_path, overwrite)
    description = synthetic_description(
        model, flip_average=flip_average, planes=planes, samples=samples, seed=seed
    )
    volume, mask = _read_input(input_path, mask_path)
    geometry = volume.geometry
    # Before the translation: a source a series cannot be made from fails at once.
    dicom_source = dicom_output_source(geometry, dicom_identity, case_name(input_path)) if dicom else None
    if samples > 1:
        styles = draw_styles(model.generator.style_dim, samples, seed)  # type: ignore[arg-type]
        out, std = translate_samples(
            model,
            volume,
            styles,
            batch_size=batch_size,
            mask=mask,
            mask_background=mask_background,
            flip_average=flip_average,
            planes=planes,
        )
        attention = None
    else:
        out, attention = translate_loaded(
            model,
            volume,
            batch_size=batch_size,
            mask=mask,
            mask_background=mask_background,
            return_attention=attention_path is not None,
            flip_average=flip_average,
            planes=planes,
        )
    del volume, mask
    if dicom_source is not None:
        written = write_dicom_series(
            out, geometry, output_path, source=dicom_source, description=description, overwrite=overwrite
        )
    else:
        # ``out`` already has the output dtype: the writer stores it without another copy.
        written = write_volume(
            out,
            geometry,
            output_path,
            dtype=OUTPUT_DTYPE[model.target_modality],
            overwrite=overwrite,
            description=description,
        )
    if attention_path is not None and attention is not None:
        write_volume(
            attention,
            geometry,
            attention_path,
            dtype="float32",
            overwrite=overwrite,
            description=f"attention mask of a {description}",
        )
    if samples > 1 and std_path is not None:
        write_volume(
            std,
            geometry,
            std_path,
            dtype="float32",
            overwrite=overwrite,
            description=f"std over {samples} styles (seed {seed}) of {description}",
        )
    return written


def check_samples(model: ConversionModel, samples: int) -> None:
    """Refuses a ``--samples`` count the model cannot give.

    Raises:
        ConfigError: ``samples`` below 1; above 1 for a deterministic model (without styles to draw).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"--samples must be an integer >= 1; got {samples!r}")
    if samples > 1 and not model.has_styles:
        raise ConfigError(
            f"--samples {samples} draws styles, but this {model.cfg.model.kind} model is deterministic "
            "(one translation per input); only munit models have styles"
            + (
                " (an exported munit model has a style input; this one has none)"
                if model.backend == "onnxruntime"
                else ""
            ),
            model.checkpoint,
        )


def std_output_path(output: Path) -> Path:
    """Where ``convert --samples`` writes the standard deviation beside ``output``: ``<name>_std<ext>``."""
    return _tagged_path(output, "_std")


def plan_outputs(
    inputs: Sequence[Path],
    output: Path | None,
    input_is_folder: bool,
    to: str,
    root: Path | None = None,
    output_format: str = "volume",
) -> list[Path]:
    """Output paths for the inputs; a folder input needs a folder output.

    The volumes of a folder input keep their place below it: ``root/patient1/series_T1`` (a DICOM
    series) becomes ``output/patient1/series_T1.nii.gz``, ``root/a/b.nrrd`` becomes
    ``output/a/b.nrrd``, so a patient/series tree converts as one folder.

    With ``output_format`` ``"dicom"`` each output is a series folder: ``-o`` itself for a single
    input (default ``<case>_synth<to>`` beside the input), ``output/<relative path>/<case>`` for
    each volume of a folder input (``output/patient1/series_T1/``, ``output/a/b/``).

    Args:
        inputs: the volumes (for a folder input, as :func:`~medcyclegan.io.discovery.find_volumes`
            found them below ``root``).
        output: ``-o`` as given, or ``None``.
        input_is_folder: the input was a folder of volumes.
        to: the target modality (names the default single output ``<case>_synth<to>.nii.gz``).
        root: the input folder (default: every output directly in ``output``).
        output_format: ``"volume"`` or ``"dicom"`` (:func:`check_output_format`).
    """
    check_output_format(output_format, to)
    if input_is_folder:
        if output is None:
            raise OutputError("a folder input needs -o OUTPUT_FOLDER")
        if output.exists() and not output.is_dir():
            raise OutputError("is a file, but the input is a folder: give an output folder", output)
        if not output.exists() and output.name.lower().endswith(OUTPUT_SUFFIXES):
            # Would silently become a folder named like a volume file.
            raise OutputError(
                f"is a file name, but the input is a folder of {len(inputs)} volume(s): give an output "
                "folder (each output keeps its input's name)",
                output,
            )
        if root is not None and is_inside(output, root):
            # The next conversion (or a training run) of that folder would take the outputs for inputs.
            raise OutputError(
                f"is inside the input folder {root}: the outputs would be found as inputs by the next "
                "run on that folder; give an output folder outside it",
                output,
            )
        return [_mirrored_output_path(p, root, output, output_format) for p in inputs]
    (single,) = inputs
    if output_format == "dicom":
        return [single.parent / f"{case_name(single)}_synth{to}" if output is None else output]
    if output is None:
        return [single.parent / f"{case_name(single)}_synth{to}.nii.gz"]
    if output.is_dir():
        return [default_output_path(single, output)]
    if not output.name.lower().endswith(OUTPUT_SUFFIXES):
        raise OutputError(f"unknown output format; use one of {', '.join(OUTPUT_SUFFIXES)}", output)
    return [output]


def _mirrored_output_path(
    input_path: Path, root: Path | None, output_dir: Path, output_format: str = "volume"
) -> Path:
    """:func:`default_output_path` in the sub-folder of ``output_dir`` that ``input_path`` has below ``root``."""
    if root is None:
        return default_output_path(input_path, output_dir, output_format)
    relative = input_path.relative_to(root)
    # The input folder itself may be a DICOM series (beside sub-folders of volumes): named after it.
    folder = output_dir if relative == Path(".") else output_dir / relative.parent
    return default_output_path(input_path, folder, output_format)


def check_output_format(output_format: str, to: str | None = None) -> str:
    """``output_format`` (one of :data:`~medcyclegan.config.OUTPUT_FORMATS`), checked against the
    target modality ``to`` when given.

    Raises:
        ConfigError: an unknown format, or ``"dicom"`` for a target other than CT (the series is
            CT Image Storage).
    """
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(
            f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}; got {output_format!r}"
        )
    if output_format == "dicom" and to not in (None, "ct"):
        raise ConfigError(
            f"--output-format dicom writes CT Image Storage series, but this conversion makes {to}: "
            "write it as a volume file (NIfTI, NRRD or MHA)"
        )
    return output_format


def _check_distinct_outputs(planned: Sequence[tuple[Path, Path | None]]) -> None:
    """Refuses two inputs with one output path (e.g. DICOM folder ``a`` beside ``a.nii.gz``), naming both.

    Args:
        planned: ``(input, output)`` pairs, every output of every input (volumes, attention maps);
            ``None`` outputs are skipped.
    """
    owners: dict[str, Path] = {}
    for source, out in planned:
        if out is None:
            continue
        # Case folded, detached data files included: a.mhd and A.MHD both write a.zraw.
        for written in files_written_by(out):
            other = owners.setdefault(path_key(written), source)
            if other != source:
                raise OutputError(
                    f"two inputs would be written to the same output name: {other} and {source}; "
                    "rename one of them",
                    out,
                )


@dataclass(frozen=True)
class ConversionJob:
    """One input to convert and where its outputs go (checked by :func:`plan_conversion`)."""

    input: Path
    output: Path
    attention: Path | None = None
    std: Path | None = None  # the standard deviation of convert --samples


def plan_conversion(
    model: ConversionModel,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    save_attention: bool = False,
    overwrite: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
    samples: int = 1,
    output_format: str = "volume",
    dicom_identity: DicomIdentity | None = None,
) -> list[ConversionJob]:
    """The conversions a :func:`convert_paths` call makes, every output checked, nothing read or written.

    ``planes`` and ``samples`` are checked too (:func:`~medcyclegan.config.check_planes`,
    :func:`check_samples`), so a bad value fails before any input is looked at. With ``samples`` > 1
    every output has a standard deviation beside it (:func:`std_output_path`), checked alike.

    ``output_format`` ``"dicom"``: every output is a series folder (:func:`plan_outputs`), checked by
    :func:`~medcyclegan.io.dicom_writer.check_can_write_series`; the attention map and the standard
    deviation are NIfTI files beside it (``<folder>_attention.nii.gz``, ``<folder>_std.nii.gz``:
    float maps, not CT images a planning system should import). ``dicom_identity`` (the patient and
    study of a non-DICOM input) is checked, and refused for a DICOM series input.

    Raises:
        ConfigError: unknown or repeated ``planes``; ``samples`` the model cannot give.
        InputError: a missing input, no volumes in a folder, or ``save_attention`` for a model
            without attention.
        OutputError: an existing output without ``overwrite``, an unwritable place, two inputs with
            one output name, or an output that would replace its own input.
    """
    check_planes(planes)
    check_samples(model, samples)
    dicom = check_output_format(output_format, model.target_modality) == "dicom"
    if dicom_identity is not None:
        dicom_identity.check()
    input_path = Path(input_path)
    folder, series_uid = split_series(input_path)
    if not folder.exists():
        raise InputError("no such file or folder", folder)
    if series_uid is not None or input_path.is_file():
        inputs, is_folder = [input_path], False
    else:
        # One search (its warnings about ignored files appear once): a folder that is itself the only
        # volume found is a DICOM series, anything else is a folder of volumes.
        found = find_volumes(input_path)
        is_folder = found != [input_path]
        inputs = found if is_folder else [input_path]
    outputs = plan_outputs(
        inputs,
        None if output is None else Path(output),
        is_folder,
        model.target_modality,
        root=input_path if is_folder else None,
        output_format=output_format,
    )
    attention_paths = [_attention_path(p) if save_attention else None for p in outputs]
    std_paths = [std_output_path(p) if samples > 1 else None for p in outputs]
    _check_distinct_outputs([*zip(inputs, outputs), *zip(inputs, attention_paths), *zip(inputs, std_paths)])
    input_files = [f for p in inputs for f in files_of_volume(p)]  # detached data files included
    if dicom:
        _check_dicom_outputs(inputs, outputs, input_files, dicom_identity)
    for out, *extra in zip(outputs, attention_paths, std_paths):
        beside = [p for p in extra if p is not None]
        if clash := shared_file(
            [*files_written_by(out), *(f for p in beside for f in files_written_by(p))], input_files
        ):
            raise OutputError(f"output would replace its own input file {clash[1]}", out)
        (check_can_write_series if dicom else check_can_write)(out, overwrite)
        for path in beside:
            check_can_write(path, overwrite)
    if save_attention and not hasattr(model.generator, "forward_with_attention"):
        raise InputError(
            "--save-attention needs a model trained with --generator resnet-attention", model.checkpoint
        )
    return [ConversionJob(i, o, a, d) for i, o, a, d in zip(inputs, outputs, attention_paths, std_paths)]


def _check_dicom_outputs(
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    input_files: Sequence[Path],
    identity: DicomIdentity | None,
) -> None:
    """What the series folders of ``convert --output-format dicom`` must not do.

    A series folder replaced as a whole (``--overwrite``) must not hold an input; no series folder
    may lie inside another (publishing one would replace or hide the other); a DICOM series input
    keeps its own patient and study (``identity`` is for other inputs).
    """
    # As is_inside decides (links resolved), through each path's ancestors: linear in the paths.
    folders = {Path(os.path.realpath(out)): out for out in outputs}
    for name in input_files:
        resolved = Path(os.path.realpath(name))
        if out := next((folders[p] for p in (resolved, *resolved.parents) if p in folders), None):
            raise OutputError(f"output series folder holds the input {name}; give another folder", out)
    for resolved, out in folders.items():
        if parent := next((folders[p] for p in resolved.parents if p in folders), None):
            raise OutputError(f"output series folder would lie inside the output series folder {parent}", out)
    if identity is not None and identity.given:
        for source in inputs:
            if source.is_dir() or split_series(source)[1] is not None:
                raise InputError(KEEPS_ITS_IDENTITY, source)


def convert_paths(
    model: ConversionModel,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    batch_size: int = 16,
    mask_background: bool = False,
    save_attention: bool = False,
    overwrite: bool = False,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
    samples: int = 1,
    seed: int = 0,
    output_format: str = "volume",
    dicom_identity: DicomIdentity | None = None,
) -> list[Path]:
    """Converts a file, a DICOM series (``FOLDER`` or ``FOLDER::SERIES_UID``) or every volume of a folder.

    A folder's volumes keep their relative paths in the output folder (a patient/series tree
    converts as one folder; see :func:`plan_outputs`).

    Every output is checked (exists without ``overwrite``, unwritable folder) before any input is
    read. Inputs are converted in order; a bad input stops the run with an error naming it, and the
    outputs already written are complete files.

    Under torchrun (``WORLD_SIZE`` > 1) every process checks every output, waits until all have
    (a barrier over a gloo group: no GPU involved), then converts its own share of the sorted inputs
    (every world_size-th one, :func:`~medcyclegan.runtime.distributed.shard`); each file is converted by
    exactly one process, and a single input by rank 0.

    ``flip_average`` and ``planes``: test-time averaging of every conversion (see :func:`translate_loaded`).
    ``samples`` and ``seed``: the mean and standard deviation over that many styles (see
    :func:`convert_file`); every input gets the same style codes, in every process.
    ``output_format`` and ``dicom_identity``: a DICOM CT series per input (see :func:`plan_conversion`
    and :func:`convert_file`).

    Returns:
        The outputs this process wrote.
    """
    jobs = plan_conversion(
        model,
        input_path,
        output,
        save_attention=save_attention,
        overwrite=overwrite,
        planes=planes,
        samples=samples,
        output_format=output_format,
        dicom_identity=dicom_identity,
    )
    context = distributed.detect()
    if context.is_distributed:
        # No process may write before all have checked: one's output would be another's "exists".
        distributed.cpu_barrier(context)
        total, jobs = len(jobs), distributed.shard(jobs, context.rank, context.world_size)
        logger.info(
            "process %d of %d converts %d of %d volume(s)", context.rank, context.world_size, len(jobs), total
        )
    return convert_jobs(
        model,
        jobs,
        batch_size=batch_size,
        mask_background=mask_background,
        overwrite=overwrite,
        flip_average=flip_average,
        planes=planes,
        samples=samples,
        seed=seed,
        output_format=output_format,
        dicom_identity=dicom_identity,
    )


def convert_jobs(
    model: ConversionModel,
    jobs: Sequence[ConversionJob],
    *,
    batch_size: int = 16,
    mask_background: bool = False,
    overwrite: bool = False,
    flip_average: bool = False,
    planes: Sequence[str] = DEFAULT_PLANES,
    samples: int = 1,
    seed: int = 0,
    output_format: str = "volume",
    dicom_identity: DicomIdentity | None = None,
) -> list[Path]:
    """Runs planned conversions in order (see :func:`convert_file`); returns the outputs written."""
    written = []
    for job in jobs:
        written.append(
            convert_file(
                model,
                job.input,
                job.output,
                batch_size=batch_size,
                mask_background=mask_background,
                attention_path=job.attention,
                overwrite=overwrite,
                flip_average=flip_average,
                planes=planes,
                samples=samples,
                seed=seed,
                std_path=job.std,
                output_format=output_format,
                dicom_identity=dicom_identity,
            )
        )
        logger.info("%s -> %s", job.input, job.output)
    return written


def _attention_path(output: Path) -> Path:
    return _tagged_path(output, "_attention")


def _tagged_path(output: Path, tag: str) -> Path:
    """``output`` with ``tag`` before its volume extension (``a.nii.gz`` -> ``a<tag>.nii.gz``)."""
    name = output.name
    for suffix in OUTPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            return output.with_name(name[: -len(suffix)] + tag + name[-len(suffix) :])
    return output.with_name(name + tag + ".nii.gz")
