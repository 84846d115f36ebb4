"""Typed run configuration: dataclasses loaded from and saved to YAML.

A :class:`Config` is the single source of truth of a run. It is read from a YAML file
(``configs/default.yaml`` holds the reference CycleGAN defaults), overridden by CLI flags or
``--set section.key=value`` strings, validated, and written fully resolved into every run folder and
checkpoint, together with the normalisation parameters measured on the training data and the package
version.

Example:
    >>> cfg = load_config("configs/quick-cpu.yaml", overrides={"optim.batch_size": 2})
    >>> cfg.model.ngf
    16
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medcyclegan.errors import ConfigError
from medcyclegan.runtime import check_device_name

# The option lists, each written once here; the modules that act on an option import its list.
MODALITIES = ("mr", "ct")
# Translation models (medcyclegan.models registers one class under each name).
MODEL_KINDS = ("cyclegan", "pix2pix", "unit", "munit", "cut")
GENERATORS = (
    "resnet",
    "resnet-attention",
    "unet",
    "vit-unet",
)  # the classes: medcyclegan.nets, in this order
UPSAMPLE_MODES = ("transpose", "resize")
# Normalisation layers of the U-Net generator (model.unet_norm): the reference's get_norm_layer names.
UNET_NORMS = ("batch", "instance")
GAN_MODES = ("lsgan", "vanilla", "hinge")
# Structure-consistency losses between a generator's input and its translation (losses.structure_loss).
STRUCTURE_LOSSES = ("mind", "gradient-correlation")
MASK_METHODS = ("auto", "otsu", "threshold")
AMP_MODES = ("auto", "bf16", "off")
BEST_MODES = ("auto", "max", "min")
# train.best_metric "auto": val/mae (min) where validation has MR/CT pairs, else val/cycle_ssim (max).
AUTO = "auto"
# Segmentation dataset layouts of ``medcyclegan augment`` (nnU-Net v2, Medical Segmentation Decathlon).
DATASET_FORMATS = ("nnunetv2", "msd")
# What convert writes (--output-format): a volume file (format from the -o suffix) or a DICOM CT series.
OUTPUT_FORMATS = ("volume", "dicom")
# Slice planes a 2D (axial) translator can run along (convert --planes: medcyclegan.inference.translate_planes).
PLANES = ("axial", "coronal", "sagittal")
# Engines conversion runs a translator on (convert --backend; "auto": see medcyclegan.convert.resolve_backend),
# and the one a checkpoint converts on by default (an .onnx model always runs on onnxruntime); "auto"
# takes onnxruntime on the CPU (decided from benchmarks/bench_onnx.py).
BACKENDS = ("auto", "torch", "onnxruntime")
DEFAULT_BACKEND = "torch"
# Upper bounds that catch typos (an image_size of 100000, ngf 64000) with one line, before any
# allocation fails with a traceback; far above every sensible value.
MAX_IMAGE_SIZE = 4096
MAX_CONTEXT_SLICES = 32
MAX_FILTERS = 1024
MAX_BLOCKS = 64
MAX_WORKERS = 256
MAX_STEPS_PER_EPOCH = 1_000_000  # an epoch's batch list is built up front
MAX_HU_WINDOWS = 4  # model.d_ct_windows: each adds the image's channels to D's input
MAX_DISCRIMINATOR_SCALES = 8  # pix2pixHD uses 2 or 3; each scale halves the side
# U-Net depth (model.unet_downs): its fixed outer levels need 5; 2**12 = MAX_IMAGE_SIZE.
MIN_UNET_DOWNS = 5
MAX_UNET_DOWNS = 12


def check_planes(planes: str | Sequence[str], option: str = "planes") -> tuple[str, ...]:
    """The slice planes to translate along, checked: a non-empty subset of :data:`PLANES`, no repeats.

    Args:
        planes: names, or one comma-separated string (``"axial,coronal"``).
        option: how the caller names the setting in the error (e.g. ``"--planes"``).

    Raises:
        ConfigError: empty, an unknown name, or a name given twice.
    """
    if isinstance(planes, str):
        names = [p.strip() for p in planes.split(",")]
    elif isinstance(planes, (list, tuple)) and all(isinstance(p, str) for p in planes):
        names = list(planes)
    else:
        raise ConfigError(f"{option} must be a list of plane names ({', '.join(PLANES)}); got {planes!r}")
    unknown = [name for name in names if name not in PLANES]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if not names or unknown or repeated:
        problem = (
            "is empty"
            if not names or names == [""]
            else f"has an unknown plane {unknown[0]!r}"
            if unknown
            else f"names {repeated[0]!r} twice"
        )
        raise ConfigError(
            f"{option} {problem}: give one or more of {', '.join(PLANES)}, comma-separated, without repeats"
        )
    return tuple(names)


def check_hu_windows(where: str, value: Any) -> list[list[float]]:
    """``[[low, high], ...]``: at most :data:`MAX_HU_WINDOWS` pairs of finite HU values, low < high."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list of [low, high] HU windows; got {value!r}")
    if len(value) > MAX_HU_WINDOWS:
        raise ConfigError(f"{where}: at most {MAX_HU_WINDOWS} windows; got {len(value)}")
    windows = []
    for window in value:
        numbers = isinstance(window, (list, tuple)) and len(window) == 2
        numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
        if not numbers or not all(math.isfinite(v) for v in window):
            raise ConfigError(
                f"{where}: each window must be [low, high], two finite HU values; got {window!r}"
            )
        low, high = float(window[0]), float(window[1])
        if not low < high:
            raise ConfigError(f"{where}: window [{low:g}, {high:g}] needs low < high")
        windows.append([low, high])
    return windows


def _check_choice(section: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    _check_choice_at(f"{section}.{name}", value, choices)


def _check_choice_at(where: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}; got {value!r}")


def _check_number(where: str, value: Any) -> None:
    """A finite float (records built in code are checked as strictly as those read from YAML)."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number; got {value!r}")


def _float_at(where: str, value: Any) -> float:
    """An int or float read from YAML as a float (a bool or a string is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number; got {value!r}")
    return float(value)


def _check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{name} must be {bound}; got {value!r}")


def _check_at_most(section: str, name: str, value: int, limit: int) -> None:
    if value > limit:
        raise ConfigError(f"{section}.{name} must be at most {limit}; got {value!r}")


def _check_finite(section: str, obj: Any) -> None:
    """Every float of a section (tuples too) is finite: NaN slips through every ``<``/``>`` check."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            shown = list(value) if isinstance(value, (tuple, list)) else value
            raise ConfigError(f"{section}.{f.name} must be a finite number; got {shown!r}")


@dataclass
class DataConfig:
    """How volumes become training slices.

    Attributes:
        src_modality: modality of the source domain A, ``"mr"`` or ``"ct"``.
        tgt_modality: modality of the target domain B, ``"mr"`` or ``"ct"``.
        image_size: side of the square training slices in pixels (pad or crop, never resize).
        context_slices: k neighbouring slices on each side as extra channels (2.5D); 0 is plain 2D.
        spacing: in-plane spacing in mm to resample to before slicing; ``None`` keeps the native grid.
        min_body_fraction: slices whose body mask covers less than this share of the slice are skipped.
        ct_window: HU window ``[low, high]`` mapped linearly to [-1, 1] (values outside are clipped).
        mr_percentiles: robust percentiles (in %) inside the body mask mapped to [-1, 1].
        mask_method: body mask method: ``"auto"`` (HU threshold for CT, Otsu for MR), ``"otsu"``,
            ``"threshold"``.
        mask_threshold_hu: HU threshold of the CT body mask.
        mask_dilation: body mask dilation in voxels.
        augment: random left-right flips and small in-plane shifts during training.
        flip_prob: probability of a left-right flip.
        max_shift: largest random in-plane shift, as a fraction of ``image_size``.
        cache_dir: folder for the on-disk cache of prepared volumes (memory-mapped); ``None`` keeps
            prepared volumes in memory only.
        val_fraction: share of the training volumes held out for validation when no validation
            folders are given (0 disables).
        num_workers: DataLoader worker processes (0 loads in the main process).
        planes: slice planes training slices are taken along (:data:`PLANES`): ``["axial"]``, or
            with ``coronal`` / ``sagittal`` also those slices of each volume resampled along Z to
            its in-plane spacing (:func:`~medcyclegan.data.prepare.plane_volume`).
    """

    src_modality: str = "mr"
    tgt_modality: str = "ct"
    image_size: int = 256
    context_slices: int = 0
    spacing: float | None = None
    min_body_fraction: float = 0.05
    ct_window: tuple[float, float] = (-1024.0, 3000.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    mask_method: str = "auto"
    mask_threshold_hu: float = -500.0
    mask_dilation: int = 2
    augment: bool = True
    flip_prob: float = 0.5
    max_shift: float = 0.05
    cache_dir: str | None = None
    val_fraction: float = 0.0
    num_workers: int = 0
    planes: list[str] = field(default_factory=lambda: ["axial"])

    def validate(self) -> None:
        _check_finite("data", self)
        # Checked and kept as a list ("axial,coronal" from --set becomes ["axial", "coronal"]).
        self.planes = list(check_planes(self.planes, "data.planes"))
        _check_choice("data", "src_modality", self.src_modality, MODALITIES)
        _check_choice("data", "tgt_modality", self.tgt_modality, MODALITIES)
        _check_choice("data", "mask_method", self.mask_method, MASK_METHODS)
        if self.image_size < 16:
            raise ConfigError(f"data.image_size must be >= 16 pixels; got {self.image_size}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"data.image_size must be at most {MAX_IMAGE_SIZE} pixels; got {self.image_size}"
            )
        _check_positive("data", "context_slices", self.context_slices, allow_zero=True)
        _check_at_most("data", "context_slices", self.context_slices, MAX_CONTEXT_SLICES)
        if self.spacing is not None:
            _check_positive("data", "spacing", self.spacing)
        if not 0 <= self.min_body_fraction < 1:
            raise ConfigError(f"data.min_body_fraction must be in [0, 1); got {self.min_body_fraction}")
        lo, hi = self.ct_window
        if not lo < hi:
            raise ConfigError(
                f"data.ct_window must be [low, high] with low < high; got {list(self.ct_window)}"
            )
        plo, phi = self.mr_percentiles
        if not 0 <= plo < phi <= 100:
            raise ConfigError(
                f"data.mr_percentiles must satisfy 0 <= low < high <= 100; got {list(self.mr_percentiles)}"
            )
        _check_positive("data", "mask_dilation", self.mask_dilation, allow_zero=True)
        if not 0 <= self.flip_prob <= 1:
            raise ConfigError(f"data.flip_prob must be in [0, 1]; got {self.flip_prob}")
        if not 0 <= self.max_shift < 0.5:
            raise ConfigError(f"data.max_shift must be in [0, 0.5); got {self.max_shift}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1); got {self.val_fraction}")
        _check_positive("data", "num_workers", self.num_workers, allow_zero=True)
        _check_at_most("data", "num_workers", self.num_workers, MAX_WORKERS)

    @property
    def in_channels(self) -> int:
        """Channels of a network input: the slice and its 2k neighbours."""
        return 2 * self.context_slices + 1


@dataclass
class ModelConfig:
    """The model and its networks, in the reference CycleGAN's terms.

    Attributes:
        kind: the translation model (:data:`MODEL_KINDS`; ``"cyclegan"``, which configs of
            medcyclegan 0.1.0 meant without saying).
        generator: ``"resnet"`` (reference), ``"resnet-attention"`` (Mask CycleGAN variant),
            ``"unet"`` (pix2pix's U-Net, :mod:`medcyclegan.nets.unet`) or ``"vit-unet"`` (UVCGAN's
            U-Net with a transformer bottleneck, sized by the ``vit_unet`` section; ``ngf``,
            ``n_blocks`` and ``upsample`` are the ResNet generators'). A model may have another
            default (pix2pix: ``"unet"``, see :data:`MODEL_DEFAULTS`).
        ngf: filters of the generator's first layer (c7s1-ngf).
        n_blocks: residual blocks (9 for 256 px, 6 for 128 px in the reference).
        upsample: ``"transpose"`` (reference, uk layers) or ``"resize"`` (nearest upsample + conv,
            no checkerboard artifacts).
        ndf: filters of the discriminator's first layer (C64 at ndf 64).
        n_layers_d: strided layers of the PatchGAN (3 gives the 70x70 PatchGAN).
        init_gain: standard deviation of the normal(0, gain) weight initialisation.
        ema_decay: decay of an exponential moving average of the generator weights, updated after
            every generator step (:mod:`medcyclegan.models.ema`, with TensorFlow's warm-up
            ``min(decay, (1 + n) / (10 + n))``); validation, samples and conversion then use the
            average. 0 (the default) keeps no average; e.g. 0.999.
        spectral_norm_d: spectral normalisation on every convolution of the discriminators (Miyato
            et al. 2018), which then have no InstanceNorm layers.
        n_scales_d: discriminators per domain at 1, 1/2, 1/4 ... of the resolution (pix2pixHD's
            multi-scale PatchGAN, Wang et al. 2018); the adversarial loss is their mean. 1 is the
            single PatchGAN of the reference.
        unet_downs: stride-2 levels of the ``"unet"`` generator (8: the reference's ``unet_256``, a
            256 px slice reaches 1 x 1; 7: ``unet_128``); slices must be multiples of 2**unet_downs.
        unet_norm: normalisation of the ``"unet"`` generator: ``"instance"`` or ``"batch"`` (the
            reference pix2pix's, and pix2pix's default here, see :data:`MODEL_DEFAULTS`).
        d_ct_windows: HU windows ``[[low, high], ...]`` the discriminator of the CT domain sees as
            extra input channels beside the CT itself (:class:`~medcyclegan.nets.discriminator.WindowedInput`;
            e.g. ``[[-160, 240]]``, the soft-tissue window W400 L40). Empty (the default): the
            reference's discriminator. CycleGAN, pix2pix (the CT half of its conditional input)
            and CUT; UNIT and MUNIT build their own discriminators from their sections, which
            take none of this section's discriminator options.
    """

    kind: str = "cyclegan"
    generator: str = "resnet"
    ngf: int = 64
    n_blocks: int = 9
    upsample: str = "transpose"
    ndf: int = 64
    n_layers_d: int = 3
    init_gain: float = 0.02
    ema_decay: float = 0.0
    spectral_norm_d: bool = False
    n_scales_d: int = 1
    unet_downs: int = 8
    unet_norm: str = "instance"
    d_ct_windows: list[list[float]] = field(default_factory=list)

    def validate(self) -> None:
        _check_finite("model", self)
        self.d_ct_windows = check_hu_windows("model.d_ct_windows", self.d_ct_windows)
        _check_choice("model", "kind", self.kind, MODEL_KINDS)
        _check_choice("model", "generator", self.generator, GENERATORS)
        _check_choice("model", "unet_norm", self.unet_norm, UNET_NORMS)
        if not MIN_UNET_DOWNS <= self.unet_downs <= MAX_UNET_DOWNS:
            raise ConfigError(
                f"model.unet_downs must be from {MIN_UNET_DOWNS} to {MAX_UNET_DOWNS}; got {self.unet_downs!r}"
            )
        _check_choice("model", "upsample", self.upsample, UPSAMPLE_MODES)
        for name in ("ngf", "ndf", "n_layers_d"):
            _check_positive("model", name, getattr(self, name))
        for name in ("ngf", "ndf"):
            _check_at_most("model", name, getattr(self, name), MAX_FILTERS)
        _check_positive("model", "n_blocks", self.n_blocks, allow_zero=True)
        _check_at_most("model", "n_blocks", self.n_blocks, MAX_BLOCKS)
        _check_positive("model", "init_gain", self.init_gain)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"model.ema_decay must be in [0, 1) (0 keeps no average); got {self.ema_decay}")
        _check_positive("model", "n_scales_d", self.n_scales_d)
        _check_at_most("model", "n_scales_d", self.n_scales_d, MAX_DISCRIMINATOR_SCALES)


@dataclass
class LossConfig:
    """Loss terms and weights.

    Attributes:
        gan_mode: adversarial loss: ``"lsgan"`` (reference), ``"vanilla"`` (BCE with logits), ``"hinge"``.
        lambda_cycle: weight of the L1 cycle loss, both directions.
        lambda_identity: identity loss weight as a fraction of ``lambda_cycle`` (reference semantics:
            0.5 gives an identity weight of 5 at lambda_cycle 10); 0 switches it off.
        mask_loss: compute cycle and identity L1 as masked means inside the body mask.
        background_weight: weight of background voxels in the masked L1 (0 ignores air entirely).
        lambda_mask: weight of the background / outline preservation loss (0 switches it off).
        lambda_attention: weight of the sparsity / smoothness regulariser of the attention mask.
        structure: structure-consistency loss between each generator's input and its translation:
            ``"mind"`` (MIND descriptors, Heinrich et al. 2012, as in Yang et al. 2018; invariant to
            inverted contrast) or ``"gradient-correlation"`` (Hiasa et al. 2018; sign-sensitive).
        lambda_structure: weight of that loss in each direction (0 switches it off).
        cycle_detach: the cycle loss trains only the generator that reconstructs (CycleGAN): in
            ``G_BA(G_AB(a)) = a`` the translation ``G_AB(a)`` is a fixed input, so each generator
            learns to invert the other's translations as from registered pairs, and no generator
            is rewarded for hiding its input in its output for the other to decode ("CycleGAN, a
            master of steganography", Chu et al. 2017). False: the reference (both generators).
            The other models ignore it (a config that sets it must still work with ``--model
            pix2pix``): pix2pix and CUT have no cycle, UNIT and MUNIT their own.
    """

    gan_mode: str = "lsgan"
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    mask_loss: bool = False
    background_weight: float = 0.1
    lambda_mask: float = 0.0
    lambda_attention: float = 0.01
    structure: str = "mind"
    lambda_structure: float = 0.0
    cycle_detach: bool = False

    def validate(self) -> None:
        _check_finite("loss", self)
        _check_choice("loss", "gan_mode", self.gan_mode, GAN_MODES)
        _check_choice("loss", "structure", self.structure, STRUCTURE_LOSSES)
        for name in (
            "lambda_cycle",
            "lambda_identity",
            "background_weight",
            "lambda_mask",
            "lambda_attention",
            "lambda_structure",
        ):
            _check_positive("loss", name, getattr(self, name), allow_zero=True)


@dataclass
class OptimConfig:
    """Optimisation, as in the reference unless changed.

    Attributes:
        lr: Adam learning rate of G (and of D unless ``lr_d`` is given).
        lr_d: Adam learning rate of the discriminators; ``None`` uses ``lr`` (the reference). The
            schedule scales both alike.
        beta1: Adam beta1.
        beta2: Adam beta2.
        batch_size: slices per step.
        n_epochs: epochs at the constant learning rate.
        n_epochs_decay: epochs of linear decay to zero after ``n_epochs``.
        pool_size: generated images kept in the history pool for D updates (0 disables the pool).
        n_steps: a step-based schedule of this many optimisation steps in all, instead of the epochs
            (as ganslate's ``n_iters`` + ``n_iters_decay``): the learning rate is constant, then
            decays linearly over the last ``decay_fraction`` of the steps; epochs (data passes,
            validation, samples, checkpoints) continue as needed. ``None`` keeps the epoch schedule
            of ``n_epochs`` and ``n_epochs_decay``.
        decay_fraction: share of ``n_steps`` with linear decay (0.5: half constant, half decay, the
            reference's 100 + 100 proportion); unused by the epoch schedule.
    """

    lr: float = 2e-4
    lr_d: float | None = None
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 1
    n_epochs: int = 100
    n_epochs_decay: int = 100
    pool_size: int = 50
    n_steps: int | None = None
    decay_fraction: float = 0.5

    def validate(self) -> None:
        _check_finite("optim", self)
        _check_positive("optim", "lr", self.lr)
        if self.lr_d is not None:
            _check_positive("optim", "lr_d", self.lr_d)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"optim.{name} must be in [0, 1); got {value}")
        _check_positive("optim", "batch_size", self.batch_size)
        _check_positive("optim", "n_epochs", self.n_epochs, allow_zero=True)
        _check_positive("optim", "n_epochs_decay", self.n_epochs_decay, allow_zero=True)
        if self.n_epochs + self.n_epochs_decay == 0:
            raise ConfigError("optim.n_epochs + optim.n_epochs_decay must be > 0")
        _check_positive("optim", "pool_size", self.pool_size, allow_zero=True)
        if self.n_steps is not None:
            _check_positive("optim", "n_steps", self.n_steps)
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction must be in [0, 1]; got {self.decay_fraction}")

    @property
    def total_epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay

    @property
    def decay_steps(self) -> int:
        """Steps of linear decay at the end of a step-based schedule (0 without ``n_steps``)."""
        return round((self.n_steps or 0) * self.decay_fraction)


@dataclass
class TrainConfig:
    """Run control: device, logging, checkpoints, validation.

    Attributes:
        seed: seed of every random generator (Python, NumPy, torch).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (GPU N).
        max_steps: stop after this many total optimisation steps (counted over resumes); ``None``
            runs the whole schedule. More steps than the schedule has are refused (for more, use
            ``optim.n_steps``, a step-based schedule, or more epochs).
        steps_per_epoch: steps in one epoch; ``None`` uses the larger domain's slice count divided by
            the batch size (as the reference does with its image counts).
        log_every: steps between rows of ``metrics.csv`` and TensorBoard scalars.
        sample_every: epochs between sample grids in ``samples/``.
        checkpoint_every: epochs between ``epoch_XXXX`` checkpoints (``last`` is always kept).
        keep_epoch_checkpoints: how many of the newest ``epoch_XXXX.pt`` to keep; older ones are
            deleted once a newer checkpoint is safely written (0: none is written). ``best.pt`` and
            ``last.pt`` are always kept.
        save_every_steps: steps between refreshes of ``last.pt`` inside an epoch, so a killed run
            loses at most this many steps (0: only at epoch ends, interrupts and the end).
        val_every: epochs between validations.
        best_metric: validation metric that selects ``best.pt`` (e.g. ``"val/cycle_ssim"``);
            ``"auto"`` (default): ``val/mae`` when the validation data has pairs (same case name and
            grid: the translation is scored against its true target, SynthRAD2023 MAE in HU for
            CT), else ``val/cycle_ssim``. A name the run does not compute is refused before
            training (:func:`medcyclegan.train.validation.validation_metric_names`).
        best_mode: ``"max"`` or ``"min"`` for ``best_metric``; ``"auto"`` (default): ``"min"`` for
            an error (a name with ``mae``), ``"max"`` for PSNR and SSIM.
        amp: mixed precision: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bf16"`` or ``"off"``.
        deterministic: force ``torch.use_deterministic_algorithms``. Off by default: CPU training is
            already bit-reproducible for a fixed thread count (tested), and the forced mode makes CPU
            convolutions about 13x slower; on CUDA it also turns cuDNN autotuning off.
        channels_last: networks and images in the channels-last (NHWC) memory layout, which the
            tensor cores of recent GPUs prefer; ``None`` (default) means on for CUDA, off for the CPU
            (where it made training slower). Changes no result beyond rounding.
        compile: ``torch.compile`` the generators and discriminators for training (minutes of
            compilation at the start, then faster steps on CUDA); off by default. Changes no result
            beyond rounding.
    """

    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None
    steps_per_epoch: int | None = None
    log_every: int = 50
    sample_every: int = 1
    checkpoint_every: int = 10
    keep_epoch_checkpoints: int = 3
    save_every_steps: int = 500
    val_every: int = 1
    best_metric: str = AUTO
    best_mode: str = AUTO
    amp: str = "auto"
    deterministic: bool = False
    channels_last: bool | None = None
    compile: bool = False

    def validate(self) -> None:
        _check_finite("train", self)
        if not -(2**63) <= self.seed < 2**63:
            raise ConfigError(f"train.seed must be a 64-bit integer; got {self.seed}")
        check_device_name(self.device, "train.device")
        for name in ("channels_last", "compile"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name == "channels_last")):
                raise ConfigError(f"train.{name} must be true or false; got {value!r}")
        _check_choice("train", "best_mode", self.best_mode, BEST_MODES)
        if not isinstance(self.best_metric, str) or not self.best_metric:
            raise ConfigError(f"train.best_metric must be a metric name or auto; got {self.best_metric!r}")
        _check_choice("train", "amp", self.amp, AMP_MODES)
        if self.max_steps is not None:
            _check_positive("train", "max_steps", self.max_steps)
        if self.steps_per_epoch is not None:
            _check_positive("train", "steps_per_epoch", self.steps_per_epoch)
            _check_at_most("train", "steps_per_epoch", self.steps_per_epoch, MAX_STEPS_PER_EPOCH)
        for name in ("log_every", "sample_every", "checkpoint_every", "val_every"):
            _check_positive("train", name, getattr(self, name))
        _check_positive("train", "save_every_steps", self.save_every_steps, allow_zero=True)
        _check_positive("train", "keep_epoch_checkpoints", self.keep_epoch_checkpoints, allow_zero=True)


# The largest U-Net of the ViT-UNet: each level halves the slice (2**8 = 256).
MAX_VIT_UNET_DEPTH = 8
MAX_TRANSFORMER_FEATURES = 8192


@dataclass
class ViTUNetConfig:
    """The ViT-UNet generator of UVCGAN (``model.generator: vit-unet``; :mod:`medcyclegan.nets.vit_unet`).

    The defaults are the reference's ``vit-unet-12`` preset, the generator of every UVCGAN training
    script (LS4GAN/uvcgan, ``scripts/train/selfie2anime/cyclegan_selfie2anime-256.py`` and
    ``scripts/train/celeba/cyclegan_celeba_preproc-256.py``, ``GEN_PRESETS``): 31,359,277 parameters
    with 1 channel. Its fixed choices are kept and not options: GELU and layer norm in the
    transformer, leaky ReLU and InstanceNorm in the U-Net, 2x2 stride-2 convolutions down
    (``unet_downsample: conv``), nearest upsampling + 3x3 convolution up (``upsample-conv``). The
    output ends in tanh for our [-1, 1] slices (the reference: sigmoid, for [0, 1] images).

    Attributes:
        unet_features: channels of the U-Net levels, outermost first (``unet_features_list``);
            their number is the depth: H and W must be multiples of ``2**depth`` (16 by default).
        features: width of the transformer (``features``).
        n_heads: attention heads; must divide ``features`` (``n_heads``).
        n_blocks: transformer blocks (``n_blocks``; the ``vit-unet-6`` preset has 6).
        ffn_features: hidden width of each block's feed-forward network (``ffn_features``).
        embed_features: width of the Fourier positional embedding (``embed_features``).
        rezero: ReZero weights (starting at 0) on the transformer blocks' residual branches
            (``rezero``).
        unet_rezero: ReZero weights on the U-Net decoder's upsampled branches (``unet_rezero``; off
            in the reference presets).
    """

    unet_features: list[int] = field(default_factory=lambda: [48, 96, 192, 384])  # GEN_PRESETS
    features: int = 384  # GEN_PRESETS['vit-unet-12']
    n_heads: int = 6  # GEN_PRESETS['vit-unet-12']
    n_blocks: int = 12  # GEN_PRESETS['vit-unet-12']
    ffn_features: int = 1536  # GEN_PRESETS['vit-unet-12']
    embed_features: int = 384  # GEN_PRESETS['vit-unet-12']
    rezero: bool = True  # GEN_PRESETS['vit-unet-12']
    unet_rezero: bool = False  # ViTUNetGenerator's default (the presets do not set it)

    def validate(self) -> None:
        widths = self.unet_features
        if (
            not isinstance(widths, (list, tuple))
            or not 1 <= len(widths) <= MAX_VIT_UNET_DEPTH
            or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_FILTERS for w in widths)
        ):
            raise ConfigError(
                f"vit_unet.unet_features must be a list of 1 to {MAX_VIT_UNET_DEPTH} channel counts "
                f"from 1 to {MAX_FILTERS}; got {widths!r}"
            )
        self.unet_features = list(widths)
        for name in ("features", "n_heads", "ffn_features", "embed_features"):
            _check_positive("vit_unet", name, getattr(self, name))
            _check_at_most("vit_unet", name, getattr(self, name), MAX_TRANSFORMER_FEATURES)
        _check_positive("vit_unet", "n_blocks", self.n_blocks, allow_zero=True)
        _check_at_most("vit_unet", "n_blocks", self.n_blocks, MAX_BLOCKS)
        if self.features % self.n_heads:
            raise ConfigError(
                f"vit_unet.features {self.features} must be a multiple of vit_unet.n_heads {self.n_heads}"
            )
        for name in ("rezero", "unet_rezero"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"vit_unet.{name} must be true or false; got {getattr(self, name)!r}")


def check_own_networks(kind: str, networks: str, model: ModelConfig) -> None:
    """Refuses the model-section options a model that builds its own networks (UNIT, MUNIT) would
    silently ignore: another ``model.generator`` and a generator weight average.

    Raises:
        ConfigError: one line naming the option.
    """
    if model.generator != "resnet":
        raise ConfigError(
            f"model.generator {model.generator!r} does not apply to model.kind {kind}, which has its own "
            f"{networks} (the {kind} section); leave --generator out"
        )
    if model.ema_decay > 0:
        raise ConfigError(f"model.ema_decay (a weight average) is CycleGAN's; model.kind {kind} keeps none")


# ------------------------------------------------------------------ UNIT (issue 15)
# UNIT's encoders and each scale of its discriminators have at most this many stride-2 layers (2 and 4
# in its reference).
MAX_UNIT_DIS_LAYERS = 8


@dataclass
class UnitConfig:
    """UNIT (Liu et al. 2017), ``model.kind: unit``: its networks, loss weights and optimiser.

    Defaults are the published configuration of the reference (mingyuliutw/UNIT, master, file
    ``configs/unit_summer2winter_yosemite256_folder.yaml``; the same values in every
    ``configs/unit_*.yaml`` and in NVlabs/MUNIT's UNIT configs). UNIT builds its own networks from
    this section: ``model.ngf``, ``n_blocks``, ``ndf``, ``n_layers_d``, ``n_scales_d``, the ``loss``
    section and ``optim.lr``/``beta1``/``beta2``/``lr_d``/``pool_size`` are CycleGAN's and unused.
    Kept from the loop instead of the reference: the learning-rate schedule (``optim.n_epochs`` +
    ``n_epochs_decay`` or ``optim.n_steps``; the reference halves the rate every 100000 steps,
    ``lr_policy: step``) and the batch size (``optim.batch_size``; the reference's is 1).

    Attributes:
        dim: filters of the encoders' first layer (reference ``gen.dim`` 64).
        n_downsample: stride-2 layers of each encoder, upsamplings of each decoder (``gen.n_downsample`` 2).
        n_res: residual blocks of each encoder and of each decoder (``gen.n_res`` 4), shared ones included.
        shared_blocks: of those, the last of each encoder and the first of each decoder are one
            module for both domains (the shared high-level layers of the paper's shared latent space;
            1 as the paper's code, UNIT ``version_02`` ``exps/unit/*.yaml``: ``n_enc_shared_blk: 1``,
            ``n_gen_shared_blk: 1``). 0 gives the networks of the master branch, which shares no
            weights and ties the latent spaces through the losses alone.
        dis_dim: filters of the discriminators' first layer (``dis.dim`` 64).
        dis_n_layer: stride-2 layers of each scale of the discriminators (``dis.n_layer`` 4).
        dis_num_scales: scales of the multi-scale discriminators (``dis.num_scales`` 3).
        gan_w: weight of the adversarial terms (``gan_w`` 1).
        recon_x_w: weight of the within-domain reconstruction L1 (``recon_x_w`` 10).
        recon_kl_w: weight of the KL term of the latent codes, mean(mu^2) (``recon_kl_w`` 0.01).
        recon_x_cyc_w: weight of the cycle reconstruction L1 (``recon_x_cyc_w`` 10).
        recon_kl_cyc_w: weight of the KL term of the cycle's latent codes (``recon_kl_cyc_w`` 0.01).
        lr: Adam learning rate of the generators and the discriminators (``lr`` 0.0001).
        beta1: Adam beta1 (``beta1`` 0.5).
        beta2: Adam beta2 (``beta2`` 0.999).
        weight_decay: Adam weight decay (L2 added to the gradients; ``weight_decay`` 0.0001).
    """

    dim: int = 64
    n_downsample: int = 2
    n_res: int = 4
    shared_blocks: int = 1
    dis_dim: int = 64
    dis_n_layer: int = 4
    dis_num_scales: int = 3
    gan_w: float = 1.0
    recon_x_w: float = 10.0
    recon_kl_w: float = 0.01
    recon_x_cyc_w: float = 10.0
    recon_kl_cyc_w: float = 0.01
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-4

    def validate(self) -> None:
        _check_finite("unit", self)
        for name in ("dim", "dis_dim", "dis_n_layer", "dis_num_scales", "n_downsample"):
            _check_positive("unit", name, getattr(self, name))
        _check_at_most("unit", "n_downsample", self.n_downsample, MAX_UNIT_DIS_LAYERS)
        _check_at_most("unit", "dis_n_layer", self.dis_n_layer, MAX_UNIT_DIS_LAYERS)
        # The widest layers: dim * 2**n_downsample and dis_dim * 2**(dis_n_layer - 1) filters.
        for name, widest in (
            ("dim", self.dim * 2**self.n_downsample),
            ("dis_dim", self.dis_dim * 2 ** (self.dis_n_layer - 1)),
        ):
            if widest > MAX_FILTERS:
                raise ConfigError(
                    f"unit.{name} {getattr(self, name)} gives {widest} filters in the widest layer; "
                    f"at most {MAX_FILTERS}"
                )
        _check_at_most("unit", "dis_num_scales", self.dis_num_scales, MAX_DISCRIMINATOR_SCALES)
        _check_positive("unit", "n_res", self.n_res, allow_zero=True)
        _check_at_most("unit", "n_res", self.n_res, MAX_BLOCKS)
        _check_positive("unit", "shared_blocks", self.shared_blocks, allow_zero=True)
        if self.shared_blocks > self.n_res:
            raise ConfigError(
                f"unit.shared_blocks {self.shared_blocks} is more than the unit.n_res {self.n_res} residual "
                "blocks of each encoder and decoder: lower unit.shared_blocks or raise unit.n_res"
            )
        for name in ("gan_w", "recon_x_w", "recon_kl_w", "recon_x_cyc_w", "recon_kl_cyc_w", "weight_decay"):
            _check_positive("unit", name, getattr(self, name), allow_zero=True)
        _check_positive("unit", "lr", self.lr)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"unit.{name} must be in [0, 1); got {value}")

    @property
    def stride_multiple(self) -> int:
        """H and W of a translator's input must be multiples of this (the encoders' stride-2 layers)."""
        return 2**self.n_downsample

    @property
    def dis_min_size(self) -> int:
        """Smallest square input of the multi-scale discriminator.

        Each scale's 4x4 stride-2 convolutions with reflection padding 1 floor-halve the side and need
        2 pixels, so a scale needs ``2**dis_n_layer``; its coarsest scale sees the input after
        ``dis_num_scales - 1`` average poolings (3x3, stride 2, padding 1), ``ceil(side / 2)`` each.
        """
        return (2**self.dis_n_layer - 1) * 2 ** (self.dis_num_scales - 1) + 1

    def check_run(self, model: ModelConfig, image_size: int) -> None:
        """What a UNIT run needs of the other sections (the slice size, no CycleGAN-only option).

        Raises:
            ConfigError: one line naming the option.
        """
        check_own_networks("unit", "VAE encoders and decoders", model)
        multiple, smallest = self.stride_multiple, self.dis_min_size
        if image_size % multiple:
            lower = image_size - image_size % multiple
            options = (
                f"{lower} or {lower + multiple}" if lower >= max(16, smallest) else str(lower + multiple)
            )
            raise ConfigError(
                f"data.image_size must be a multiple of {multiple} (the {self.n_downsample} stride-2 layers "
                f"of unit.n_downsample); got {image_size}, use {options}"
            )
        if image_size < smallest:
            raise ConfigError(
                f"data.image_size {image_size} is too small for UNIT's discriminator (unit.dis_n_layer "
                f"{self.dis_n_layer}, unit.dis_num_scales {self.dis_num_scales}): it needs at least "
                f"{smallest} pixels (raise the size or lower those)"
            )


# ------------------------------------------------------------------ CUT / FastCUT (model.kind: cut)
# Park et al. 2020; reference: taesungp/contrastive-unpaired-translation (models/cut_model.py).
CUT_MODES = ("cut", "fastcut")
# What the fields left at None take in each mode (models/cut_model.py, modify_commandline_options).
CUT_MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cut": {"lambda_nce": 1.0, "nce_idt": True, "flip_equivariance": False},
    "fastcut": {"lambda_nce": 10.0, "nce_idt": False, "flip_equivariance": True},
}
# Weight initialisations of the CUT networks (the reference's init_type; xavier is its default).
INIT_TYPES = ("normal", "xavier")


@dataclass(frozen=True)
class CUTSettings:
    """The CUT settings of a run with the mode's defaults filled in (:meth:`CUTConfig.resolved`)."""

    mode: str
    lambda_gan: float
    lambda_nce: float
    nce_idt: bool
    flip_equivariance: bool
    nce_layers: tuple[int, ...]
    num_patches: int
    netf_nc: int
    nce_temperature: float
    nce_includes_all_negatives_from_minibatch: bool
    init_type: str


@dataclass
class CUTConfig:
    """CUT and FastCUT (``model.kind: cut``), with the reference's defaults.

    The sources: ``options/base_options.py``, ``options/train_options.py`` and ``models/cut_model.py``
    of taesungp/contrastive-unpaired-translation. Three fields depend on the mode and default to
    ``None``, meaning "the mode's value" (:data:`CUT_MODE_DEFAULTS`), so that ``cut.mode=fastcut``
    alone gives FastCUT; a value given explicitly wins, as on the reference's command line.

    Taken from the other sections, where their defaults already are the reference's values:
    ``optim.lr`` 2e-4, ``optim.beta1`` 0.5, ``optim.beta2`` 0.999 (G, D and F alike), ``loss.gan_mode``
    lsgan, ``model.init_gain`` 0.02, the generator (``model.generator``, ``ngf`` 64, ``n_blocks`` 9 =
    resnet_9blocks) and the PatchGAN (``ndf`` 64, ``n_layers_d`` 3 = basic). Not kept: the reference
    trains 200 + 200 epochs (CUT) or 150 + 50 (FastCUT) with its own epoch counting; here the loop's
    schedule applies (``optim.n_epochs`` / ``n_epochs_decay`` or ``optim.n_steps``). CUT has no
    image pool (the reference sets pool_size 0; ``optim.pool_size`` is unused).

    Attributes:
        mode: ``"cut"`` or ``"fastcut"`` (``--CUT_mode``).
        lambda_gan: weight of the adversarial term of G (``--lambda_GAN`` 1).
        lambda_nce: weight of PatchNCE (``--lambda_NCE``); None: 1 (CUT) or 10 (FastCUT).
        nce_idt: identity PatchNCE on target images, NCE(G(B), B) (``--nce_idt``); None: on for CUT,
            off for FastCUT.
        flip_equivariance: translate a horizontally flipped batch half the time and flip the
            features back (``--flip_equivariance``); None: off for CUT, on for FastCUT.
        nce_layers: generator layers PatchNCE compares, indices of the generator's encoder layers
            as the reference numbers its ResnetGenerator's ``nn.Sequential`` (``--nce_layers``
            0,4,8,12,16; see :meth:`medcyclegan.nets.ResnetGenerator.encoder_features`).
        num_patches: patches sampled per layer and image (``--num_patches`` 256).
        netf_nc: features of the projection head's 2-layer MLP (``--netF_nc`` 256).
        nce_temperature: temperature tau of PatchNCE (``--nce_T`` 0.07).
        nce_includes_all_negatives_from_minibatch: negatives from every image of the batch, not
            only the patch's own image (``--nce_includes_all_negatives_from_minibatch`` False).
        init_type: weight initialisation of G, D and F: ``"xavier"`` (the reference's
            ``--init_type`` default: Xavier normal with gain ``model.init_gain``) or ``"normal"``
            (normal(0, ``model.init_gain``), as CycleGAN).
    """

    mode: str = "cut"
    lambda_gan: float = 1.0
    lambda_nce: float | None = None
    nce_idt: bool | None = None
    flip_equivariance: bool | None = None
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16])
    num_patches: int = 256
    netf_nc: int = 256
    nce_temperature: float = 0.07
    nce_includes_all_negatives_from_minibatch: bool = False
    init_type: str = "xavier"

    def validate(self) -> None:
        _check_finite("cut", self)
        _check_choice("cut", "mode", self.mode, CUT_MODES)
        _check_choice("cut", "init_type", self.init_type, INIT_TYPES)
        _check_positive("cut", "lambda_gan", self.lambda_gan, allow_zero=True)
        if self.lambda_nce is not None:
            _check_positive("cut", "lambda_nce", self.lambda_nce, allow_zero=True)
        for name in ("nce_idt", "flip_equivariance"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(
                    f"cut.{name} must be true, false or null (the mode's default); got {value!r}"
                )
        self.nce_layers = _check_layer_list("cut.nce_layers", self.nce_layers)
        for name in ("num_patches", "netf_nc"):
            _check_positive("cut", name, getattr(self, name))
        _check_at_most("cut", "netf_nc", self.netf_nc, MAX_FILTERS)
        _check_positive("cut", "nce_temperature", self.nce_temperature)

    def resolved(self) -> CUTSettings:
        """The settings with the mode's defaults in place of the fields left at None."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, default in CUT_MODE_DEFAULTS[self.mode].items():
            if values[name] is None:
                values[name] = default
        values["nce_layers"] = tuple(values["nce_layers"])
        return CUTSettings(**values)

    def check_model(self, cfg: Config) -> None:
        """The model section suits CUT: its generator has the encoder layers :attr:`nce_layers` names.

        Raises:
            ConfigError: a generator without ``encoder_features``, an index beyond its layers, or
                ``model.ema_decay`` (CUT keeps no weight average).
        """
        # lazy: circular (medcyclegan.nets imports this module for its option lists) and torch
        from medcyclegan.nets import encoder_layer_count  # noqa: PLC0415 (see the comment above)

        model_cfg = cfg.model
        if model_cfg.ema_decay > 0:
            raise ConfigError(
                "model.ema_decay is CycleGAN's generator weight average; CUT keeps none (set it to 0)"
            )
        count = encoder_layer_count(cfg)
        beyond = [i for i in self.nce_layers if i >= count]
        if beyond:
            blocks = (
                f" (model.n_blocks {model_cfg.n_blocks})" if model_cfg.generator.startswith("resnet") else ""
            )
            raise ConfigError(
                f"cut.nce_layers {beyond[0]} is beyond the generator's encoder: model.generator "
                f"{model_cfg.generator!r}{blocks} has encoder layers 0 to {count - 1}"
            )


def _check_layer_list(where: str, value: Any) -> list[int]:
    """A non-empty, strictly increasing list of layer indices >= 0 (a list, or ``"0,4,8"`` from --set)."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{where} must be a non-empty list of layer indices; got {value!r}")
    layers = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(f"{where} must hold integers >= 0; got {value!r}")
        layers.append(item)
    if any(b <= a for a, b in itertools.pairwise(layers)):
        raise ConfigError(f"{where} must be in increasing order without repeats; got {layers}")
    return layers


# MUNIT (model.kind munit): its own section, ``munit:``. The style encoder's stride-2 layers, fixed
# in the reference's AdaINGen (``StyleEncoder(4, ...)``, NVlabs/MUNIT networks.py).
MUNIT_STYLE_DOWNSAMPLE = 4
MAX_MUNIT_DOWNSAMPLE = 5
MAX_MUNIT_DIS_LAYERS = 8


@dataclass
class MunitConfig:
    """MUNIT (Huang et al. 2018, ``model.kind: munit``): networks, loss weights and optimiser.

    The defaults are the reference's: NVlabs/MUNIT ``configs/edges2handbags_folder.yaml`` (the main
    config, ``train.py``'s default) for every value, read by ``trainer.py`` (``MUNIT_Trainer``:
    ``gen_update``, ``dis_update``, Adam on all generator / all discriminator parameters) and
    ``networks.py`` (``AdaINGen``, ``MsImageDis``). Kept from the reference: kaiming-normal
    initialisation of the generators (``init: kaiming``), normal(0, 0.02) of the discriminators
    (``weights_init('gaussian')``), ReLU generators and LeakyReLU(0.2) discriminators without
    normalisation, reflection padding. Not kept: its step learning-rate decay (``lr_policy: step``,
    halved every 100,000 iterations of 1,000,000): the loop owns the schedule (``optim.n_epochs`` /
    ``n_epochs_decay`` or ``optim.n_steps``); and its VGG perceptual loss (``vgg_w``, 0 in the main
    config), which needs downloaded VGG-16 weights. MUNIT reads its losses and its optimiser's
    hyper-parameters from here, not from ``loss:`` or ``optim.lr`` / ``lr_d`` / ``beta1`` / ``beta2``
    / ``pool_size`` (CycleGAN's); the batch size and the schedule are ``optim``'s.

    Attributes:
        dim: filters of the first layer of the encoders (``gen.dim`` 64).
        style_dim: length of the style code (``gen.style_dim`` 8).
        mlp_dim: width of the MLP from the style code to the AdaIN parameters (``gen.mlp_dim`` 256;
            3 layers, fixed in ``AdaINGen``).
        n_downsample: stride-2 layers of the content encoder, and upsamplings of the decoder
            (``gen.n_downsample`` 2): slices must be multiples of ``2 ** n_downsample``.
        n_res: residual blocks of the content encoder, and AdaIN residual blocks of the decoder
            (``gen.n_res`` 4).
        dis_dim: filters of the discriminators' first layer (``dis.dim`` 64).
        dis_n_layer: stride-2 layers of each discriminator (``dis.n_layer`` 4).
        dis_num_scales: discriminators per domain at 1, 1/2, 1/4 ... of the resolution
            (``dis.num_scales`` 3); their losses are summed, as the reference does.
        gan_mode: ``"lsgan"`` (``dis.gan_type``), ``"vanilla"`` (the reference's ``nsgan``) or ``"hinge"``.
        gan_w: weight of the adversarial terms (``gan_w`` 1), in both updates.
        recon_x_w: weight of the within-domain image reconstruction L1 (``recon_x_w`` 10).
        recon_s_w: weight of the style reconstruction L1 (``recon_s_w`` 1).
        recon_c_w: weight of the content reconstruction L1 (``recon_c_w`` 1).
        recon_x_cyc_w: weight of the explicit style-augmented cycle L1 (``recon_x_cyc_w``: 0 in the
            main config, 10 in ``summer2winter_yosemite256_folder.yaml`` and
            ``synthia2cityscape_folder.yaml``); 0 skips the cycle decode.
        lr: Adam learning rate of both optimisers (``lr`` 0.0001).
        beta1: Adam beta1 (``beta1`` 0.5).
        beta2: Adam beta2 (``beta2`` 0.999).
        weight_decay: Adam's L2 weight decay (``weight_decay`` 0.0001).
    """

    dim: int = 64
    style_dim: int = 8
    mlp_dim: int = 256
    n_downsample: int = 2
    n_res: int = 4
    dis_dim: int = 64
    dis_n_layer: int = 4
    dis_num_scales: int = 3
    gan_mode: str = "lsgan"
    gan_w: float = 1.0
    recon_x_w: float = 10.0
    recon_s_w: float = 1.0
    recon_c_w: float = 1.0
    recon_x_cyc_w: float = 0.0
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-4

    def validate(self) -> None:
        _check_finite("munit", self)
        _check_choice("munit", "gan_mode", self.gan_mode, GAN_MODES)
        for name in (
            "dim",
            "style_dim",
            "mlp_dim",
            "n_downsample",
            "dis_dim",
            "dis_n_layer",
            "dis_num_scales",
        ):
            _check_positive("munit", name, getattr(self, name))
        for name in ("dim", "mlp_dim", "dis_dim"):
            _check_at_most("munit", name, getattr(self, name), MAX_FILTERS)
        _check_at_most("munit", "style_dim", self.style_dim, MAX_FILTERS)
        _check_at_most("munit", "n_downsample", self.n_downsample, MAX_MUNIT_DOWNSAMPLE)
        _check_positive("munit", "n_res", self.n_res, allow_zero=True)
        _check_at_most("munit", "n_res", self.n_res, MAX_BLOCKS)
        _check_at_most("munit", "dis_n_layer", self.dis_n_layer, MAX_MUNIT_DIS_LAYERS)
        _check_at_most("munit", "dis_num_scales", self.dis_num_scales, MAX_DISCRIMINATOR_SCALES)
        for name in ("gan_w", "recon_x_w", "recon_s_w", "recon_c_w", "recon_x_cyc_w", "weight_decay"):
            _check_positive("munit", name, getattr(self, name), allow_zero=True)
        _check_positive("munit", "lr", self.lr)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"munit.{name} must be in [0, 1); got {value}")

    @property
    def stride_multiple(self) -> int:
        """H and W of a translator's input must be multiples of this (the content encoder's stride)."""
        return 2**self.n_downsample

    def min_image_size(self) -> int:
        """Smallest training slice side every network takes (reflection padding needs a side > pad).

        Each 4x4 stride-2 convolution (padding 1) of a discriminator floor-halves its input, which
        must be at least 2 pixels, so its input must be at least ``2 ** dis_n_layer``; the coarsest
        scale sees the slice after ``dis_num_scales - 1`` average poolings (3x3, stride 2, padding
        1: ``ceil(side / 2)`` each). The style encoder's 4 stride-2 layers need ``2 ** 4``, the
        content code at least 2 pixels (twice the stride multiple). Tested against the networks in
        ``tests/test_munit.py``.
        """
        discriminator = (2**self.dis_n_layer - 1) * 2 ** (self.dis_num_scales - 1) + 1
        return max(discriminator, 2**MUNIT_STYLE_DOWNSAMPLE, 2 * self.stride_multiple)

    def check_image_size(self, size: int) -> None:
        """Refuses a ``data.image_size`` the MUNIT networks cannot take (one line naming the fix).

        Raises:
            ConfigError: not a multiple of :attr:`stride_multiple`, or below :meth:`min_image_size`.
        """
        multiple, smallest = self.stride_multiple, self.min_image_size()
        if size % multiple:
            lower, upper = size - size % multiple, size - size % multiple + multiple
            options = f"{lower} or {upper}" if lower >= max(16, smallest) else str(upper)
            raise ConfigError(
                f"data.image_size must be a multiple of {multiple} for munit.n_downsample "
                f"{self.n_downsample}; got {size}, use {options}"
            )
        if size < smallest:
            raise ConfigError(
                f"data.image_size {size} is too small for MUNIT's networks (munit.dis_n_layer "
                f"{self.dis_n_layer}, munit.dis_num_scales {self.dis_num_scales}, munit.n_downsample "
                f"{self.n_downsample}): they need at least {smallest} pixels (raise the size or lower those)"
            )


# ---------------------------------------------------------------- pix2pix (issue 15, point 1)
@dataclass
class Pix2PixConfig:
    """pix2pix (Isola et al. 2017, :mod:`medcyclegan.models.pix2pix`): its own hyperparameters.

    The reference (junyanz/pytorch-CycleGAN-and-pix2pix, ``models/pix2pix_model.py``) also changes
    shared defaults; those stay one setting each and get the reference's values through
    :data:`MODEL_DEFAULTS` (``model.generator``, ``model.unet_norm``, ``loss.gan_mode``,
    ``optim.pool_size``).

    Attributes:
        lambda_l1: weight of the L1 loss ``|G(A) - B|`` (``--lambda_L1 100``, pix2pix_model.py).
    """

    lambda_l1: float = 100.0  # junyanz/pytorch-CycleGAN-and-pix2pix models/pix2pix_model.py

    def validate(self) -> None:
        _check_finite("pix2pix", self)
        _check_positive("pix2pix", "lambda_l1", self.lambda_l1, allow_zero=True)


# The defaults a model changes in the shared sections, as the reference's
# ``modify_commandline_options`` does with ``parser.set_defaults``: applied by :func:`load_config` to
# the keys that neither the config file nor an override names (a named key is kept as given).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # junyanz/pytorch-CycleGAN-and-pix2pix models/pix2pix_model.py: set_defaults(norm='batch',
    # netG='unet_256') and, for training, set_defaults(pool_size=0, gan_mode='vanilla').
    "pix2pix": {
        "model.generator": "unet",
        "model.unet_downs": 8,
        "model.unet_norm": "batch",
        "loss.gan_mode": "vanilla",
        "optim.pool_size": 0,
    },
}


# How each modality is normalised (see medcyclegan.data.normalise): CT through the fixed HU window
# data.ct_window, MR through percentiles measured per volume (data.mr_percentiles).
NORMALISATION_METHODS = {"ct": "window", "mr": "percentiles"}
# The keys of the two domains in the YAML of config.yaml and of checkpoints (written so since 0.1.0).
_NORMALISATION_KEYS = ("src", "tgt")


@dataclass(frozen=True)
class DomainNormalisation:
    """How the training volumes of one domain were normalised (a record of the run's config).

    Conversion, validation and sample grids denormalise what a generator makes for this domain
    with ``lower`` and ``upper`` (:func:`medcyclegan.data.normalise.output_params`). Written as a
    mapping of plain values (:meth:`to_dict`), in the same keys and order as version 0.1.0.

    Attributes:
        modality: ``"ct"`` or ``"mr"``.
        method: ``"window"`` (CT) or ``"percentiles"`` (MR), see :data:`NORMALISATION_METHODS`.
        lower: the value mapped to -1 (CT: HU; MR: the median over the training volumes of their
            lower percentile, in MR units).
        upper: the value mapped to +1; greater than ``lower``.
        window: CT only: the HU window ``(low, high)`` of ``data.ct_window``.
        percentiles: MR only: the percentiles (%) ``data.mr_percentiles`` measured in each volume.
        n_volumes: MR only: how many training volumes the medians are taken over.
        where: where the record comes from, named in errors (e.g. ``"normalisation.src"``); not
            stored.

    Raises:
        ConfigError: a value that no training run writes, naming the field.
    """

    modality: str
    method: str
    lower: float
    upper: float
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None
    n_volumes: int | None = None
    where: dataclasses.InitVar[str] = "normalisation"

    def __post_init__(self, where: str) -> None:
        _check_choice_at(f"{where}.modality", self.modality, MODALITIES)
        expected = NORMALISATION_METHODS[self.modality]
        if self.method != expected:
            raise ConfigError(
                f"{where}.method must be {expected!r} for modality {self.modality!r}; got {self.method!r}"
            )
        for name in ("lower", "upper"):
            _check_number(f"{where}.{name}", getattr(self, name))
        if not self.lower < self.upper:
            raise ConfigError(
                f"{where}.lower must be less than {where}.upper; got {self.lower!r} and {self.upper!r}"
            )
        # A window record has its window only; a percentiles record its percentiles and n_volumes.
        own = ("window",) if self.method == "window" else ("percentiles", "n_volumes")
        for name in ("window", "percentiles", "n_volumes"):
            if name not in own and getattr(self, name) is not None:
                raise ConfigError(f"{where}.{name} does not belong to a {self.method!r} record")
        pair_name = own[0]
        pair = getattr(self, pair_name)
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigError(f"{where}.{pair_name} must be a list of 2 numbers; got {pair!r}")
        for i, value in enumerate(pair):
            _check_number(f"{where}.{pair_name}[{i}]", value)
        low, high = pair
        if not low < high or (pair_name == "percentiles" and not 0 <= low < high <= 100):
            bounds = "0 <= low < high <= 100" if pair_name == "percentiles" else "low < high"
            raise ConfigError(f"{where}.{pair_name} must satisfy {bounds}; got {list(pair)!r}")
        if self.n_volumes is not None and (
            isinstance(self.n_volumes, bool) or not isinstance(self.n_volumes, int) or self.n_volumes < 1
        ):
            raise ConfigError(f"{where}.n_volumes must be an integer >= 1; got {self.n_volumes!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for YAML, in the keys and order version 0.1.0 wrote."""
        out: dict[str, Any] = {"modality": self.modality, "method": self.method}
        if self.window is not None:
            out["window"] = list(self.window)
        if self.percentiles is not None:
            out["percentiles"] = list(self.percentiles)
        out["lower"], out["upper"] = self.lower, self.upper
        if self.n_volumes is not None:
            out["n_volumes"] = self.n_volumes
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "normalisation") -> DomainNormalisation:
        """Inverse of :meth:`to_dict` (integers become floats); ConfigError naming a bad field."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping; got {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {[f'{where}.{k}' for k in unknown]}")
        missing = [k for k in ("modality", "method", "lower", "upper") if k not in data]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}")
        values = dict(data)
        for name in ("lower", "upper"):
            values[name] = _float_at(f"{where}.{name}", values[name])
        for name in ("window", "percentiles"):
            pair = values.get(name)
            if pair is not None:
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise ConfigError(f"{where}.{name} must be a list of 2 numbers; got {pair!r}")
                values[name] = tuple(_float_at(f"{where}.{name}[{i}]", v) for i, v in enumerate(pair))
        for name in ("modality", "method"):
            if not isinstance(values[name], str):
                raise ConfigError(f"{where}.{name} must be a string; got {values[name]!r}")
        return cls(**values, where=where)


@dataclass(frozen=True)
class Normalisation:
    """The normalisation records of the run's two domains, as training measured them.

    Stored in ``config.yaml`` and in every checkpoint's config as ``normalisation: {src: ..., tgt:
    ...}`` (the keys of version 0.1.0); :meth:`to_dict` and :meth:`from_dict` are the only places
    that know those keys.

    Attributes:
        source: the record of domain A (``data.src_modality``).
        target: the record of domain B (``data.tgt_modality``).
    """

    source: DomainNormalisation
    target: DomainNormalisation

    def to_dict(self) -> dict[str, Any]:
        """``{"src": {...}, "tgt": {...}}`` of plain values."""
        return dict(zip(_NORMALISATION_KEYS, (self.source.to_dict(), self.target.to_dict())))

    @classmethod
    def from_dict(cls, data: Any) -> Normalisation | None:
        """Inverse of :meth:`to_dict`; ``None`` for an empty or missing record (a config before training).

        Raises:
            ConfigError: not a mapping, a domain missing or an extra key, or a bad record (naming the
                field, e.g. ``normalisation.tgt.upper``).
        """
        if not data:  # missing, null or {} (as 0.1.0 read them: "or {}")
            return None
        if not isinstance(data, dict):
            raise ConfigError(f"normalisation must be a mapping of src and tgt; got {data!r}")
        if sorted(map(str, data)) != sorted(_NORMALISATION_KEYS):
            raise ConfigError(
                f"normalisation must hold exactly the keys src and tgt; got {sorted(map(str, data))}"
            )
        source, target = (
            DomainNormalisation.from_dict(data[key], where=f"normalisation.{key}")
            for key in _NORMALISATION_KEYS
        )
        return cls(source, target)


@dataclass
class Config:
    """A whole run: data, model, loss, optimisation, run control, plus what was measured.

    ``normalisation`` is filled by training with the parameters of each domain (see
    :mod:`medcyclegan.data.normalise`), so that conversion applies exactly what training saw;
    ``None`` before training.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vit_unet: ViTUNetConfig = field(default_factory=ViTUNetConfig)
    unit: UnitConfig = field(default_factory=UnitConfig)
    cut: CUTConfig = field(default_factory=CUTConfig)
    munit: MunitConfig = field(default_factory=MunitConfig)
    pix2pix: Pix2PixConfig = field(default_factory=Pix2PixConfig)
    normalisation: Normalisation | None = None
    version: str = ""

    def validate(self) -> Config:
        for name in _SECTIONS:  # every section, the models' and generators' own too
            getattr(self, name).validate()
        self._check_image_size()
        if self.model.d_ct_windows:
            self._check_d_ct_windows()
        if self.model.kind == "cut":
            self.cut.check_model(self)
        n_steps, max_steps = self.optim.n_steps, self.train.max_steps
        if n_steps is not None and max_steps is not None and max_steps > n_steps:
            # Checked here, before any data is read; the epoch schedule's length needs the data
            # (steps per epoch), so the trainer checks that one.
            raise ConfigError(
                f"train.max_steps {max_steps} is more than the {n_steps} steps of optim.n_steps; "
                f"raise --steps to {max_steps}"
            )
        return self

    def _check_d_ct_windows(self) -> None:
        """``model.d_ct_windows`` needs a CT domain (UNIT and MUNIT build their own discriminators)."""
        if "ct" not in (self.data.src_modality, self.data.tgt_modality):
            raise ConfigError(
                "model.d_ct_windows needs a CT domain (data.src_modality or data.tgt_modality ct)"
            )
        ct_low, ct_high = self.data.ct_window
        for low, high in self.model.d_ct_windows:
            if high <= ct_low or low >= ct_high:
                # The CT is clipped to data.ct_window first: such a window would be a constant channel.
                raise ConfigError(
                    f"model.d_ct_windows: window [{low:g}, {high:g}] HU lies outside data.ct_window "
                    f"[{ct_low:g}, {ct_high:g}], where the CT is clipped; it would show nothing"
                )

    def _check_image_size(self) -> None:
        """The slice size against the networks: a multiple of the generator's stride, big enough for D.

        UNIT builds its own networks from the ``unit`` section, which checks the size (and what it
        needs of the model section) itself (:meth:`UnitConfig.check_run`).

        The networks know their own limits; imported here, not at the top, because the config is
        the bottom layer (and most of its users never validate a whole run config).
        """
        # lazy: circular (medcyclegan.nets imports this module for its option lists) and torch
        from medcyclegan.nets import discriminator_min_size, generator_stride_multiple  # noqa: PLC0415 (see the comment above)

        size = self.data.image_size
        if self.model.kind == "unit":  # its own networks, sized by the unit section
            self.unit.check_run(self.model, size)
            return
        if self.model.kind == "munit":
            # Its own networks (the munit section), not model.generator and the PatchGAN.
            check_own_networks("munit", "content/style encoders and AdaIN decoders", self.model)
            self.munit.check_image_size(size)
            return
        multiple = generator_stride_multiple(self)
        n_layers, n_scales = self.model.n_layers_d, self.model.n_scales_d
        smallest = discriminator_min_size(n_layers, n_scales)
        if size % multiple:
            lower, upper = size - size % multiple, size - size % multiple + multiple
            options = f"{lower} or {upper}" if lower >= max(16, smallest) else str(upper)
            fits = [n for n in range(MIN_UNET_DOWNS, MAX_UNET_DOWNS + 1) if size % 2**n == 0]
            if self.model.generator == "unet" and fits:
                # A U-Net's stride is its depth's: a shallower one takes the size as it is.
                options += f", or model.unet_downs {fits[-1]} (a U-Net of n levels needs multiples of 2**n)"
            raise ConfigError(
                f"data.image_size must be a multiple of {multiple} (the generator's stride-2 layers); "
                f"got {size}, use {options}"
            )
        if size < smallest:
            scales = f" at model.n_scales_d {n_scales}" if n_scales > 1 else ""
            lower = "n_layers_d or n_scales_d" if n_scales > 1 else "n_layers_d"
            raise ConfigError(
                f"data.image_size {size} is too small for model.n_layers_d {n_layers}{scales}: "
                f"the discriminator needs at least {smallest} pixels (raise the size or lower {lower})"
            )

    def to_dict(self) -> dict[str, Any]:
        raw = _plain(asdict(self))
        # Its own YAML form (the 0.1.0 keys src/tgt), in place: the key order of the file is kept.
        raw["normalisation"] = self.normalisation.to_dict() if self.normalisation is not None else {}
        return raw


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "vit_unet": ViTUNetConfig,
    "unit": UnitConfig,
    "cut": CUTConfig,
    "munit": MunitConfig,
    "pix2pix": Pix2PixConfig,
}
# Every section of a config, in the order of its YAML file (resume compares them all).
SECTION_NAMES = tuple(_SECTIONS)


def _plain(value: Any) -> Any:
    """Tuples become lists, so YAML stays plain and safe_load-able."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Checks ``value`` against a dataclass field annotation and converts ints to floats etc."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(where, value, non_none[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} numbers; got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false; got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer; got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number; got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Builds a validated :class:`Config` from a plain mapping; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    known = set(_SECTIONS) | {"normalisation", "version"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping")
        hints = _hints(cls)
        names = {f.name for f in fields(cls)}
        bad = set(section) - names
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(f'{name}.{k}' for k in bad)}")
        kwargs[name] = cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in section.items()})
    cfg = Config(
        **kwargs,
        normalisation=Normalisation.from_dict(raw.get("normalisation")),
        version=str(raw.get("version") or ""),
    )
    return cfg.validate()


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``section.key=value`` (value in YAML syntax, e.g. ``data.ct_window=[-1000,2000]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from None
    return key.strip(), parsed


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Returns a new validated config with ``{"section.key": value}`` overrides applied."""
    raw = cfg.to_dict()
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in _SECTIONS:
            raise ConfigError(f"override key {key!r} must be section.key with section in {sorted(_SECTIONS)}")
        section, name = parts
        if name not in {f.name for f in fields(_SECTIONS[section])}:
            raise ConfigError(f"unknown config key {key!r}")
        raw[section][name] = value
    return config_from_dict(raw, source="overrides")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Loads a YAML config (or the built-in defaults when ``path`` is None) and applies overrides.

    The model's own defaults (:data:`MODEL_DEFAULTS`, e.g. pix2pix's U-Net) replace the dataclass
    defaults of the keys that neither the file nor ``overrides`` names: ``--model pix2pix`` alone
    gives the reference's pix2pix, ``--model pix2pix --generator resnet`` (or a file saying
    ``generator: resnet``) keeps the ResNet.
    """
    overrides = overrides or {}
    raw: Any = {}
    if path is None:
        cfg = Config().validate()
    else:
        path = Path(path)
        if path.is_dir():
            raise ConfigError("is a folder, not a YAML config file", path)
        if not path.is_file():
            raise ConfigError("config file not found", path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"not valid YAML{where}", path) from None
        except UnicodeDecodeError:
            # e.g. -c scan.nii.gz or a model file: not text at all.
            raise ConfigError("not a YAML config file (not UTF-8 text)", path) from None
        except OSError as exc:
            raise ConfigError(f"cannot be read ({exc.strerror or exc})", path) from None
        try:
            cfg = config_from_dict(raw, source=str(path))
        except ConfigError as exc:
            # Name the file for a wrong value too ("data.image_size must be an integer" alone
            # does not say where it came from).
            if str(path) in str(exc):
                raise
            raise ConfigError(str(exc), path) from None
    named = set(overrides) | {
        f"{section}.{key}" for section, keys in raw.items() if isinstance(keys, dict) for key in keys
    }
    kind = overrides.get("model.kind", cfg.model.kind)
    model_defaults = MODEL_DEFAULTS.get(kind, {}) if isinstance(kind, str) else {}
    return apply_overrides(cfg, {**{k: v for k, v in model_defaults.items() if k not in named}, **overrides})


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_yaml(text: str, source: str = "config") -> Config:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    return config_from_dict(raw, source=source)


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config atomically."""
    # lazy: io is above config in the import arrows (io -> config); only writing needs it
    from medcyclegan.io.atomic import atomic_write_text  # noqa: PLC0415 (see the comment above)

    atomic_write_text(Path(path), config_to_yaml(cfg))


def replace(cfg: Config, **changes: Any) -> Config:
    """``dataclasses.replace`` for the top level, validated."""
    return dataclasses.replace(cfg, **changes).validate()


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped with the package (``default``, ``quick-cpu``, ...)."""
    folder = Path(__file__).parent / "configs"
    path = folder / f"{name}.yaml"
    if "/" in name or os.sep in name:
        # A path, not a name: "./my-config" or "configs/run" that does not exist.
        raise ConfigError("config file not found", name)
    if not path.is_file():
        choices = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"no built-in config {name!r}; choose from {choices}")
    return path


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to an existing YAML file, or the name of a built-in config."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return builtin_config_path(str(name_or_path))
