"""ONNX export: one direction's translator, as conversion loads it, in one self-contained ``.onnx`` file.

The translator is exactly what :func:`medcyclegan.convert.load_model` builds for the direction
(``model_class(kind).build_translator(cfg, direction)`` with the weights of
``translator_state_key``: the weight average where the run kept one), exported with dynamic batch,
height and width (H and W multiples of its stride multiple; the 2k+1 channels of the 2.5D context
fixed) and the metadata convert needs (:class:`~medcyclegan.onnx_model.OnnxModelInfo`), so that a
``.onnx`` file alone converts (``convert --model model.onnx``).

Every translator kind exports: the ResNet, attention ResNet (two outputs, translation and attention
mask), U-Net and ViT-UNet generators (CycleGAN, pix2pix, CUT), UNIT's translator and MUNIT's (whose
style code is a second graph input, so ``convert --samples`` works from the file too).

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), the maintained path; the
TorchScript exporter it replaces (deprecated) fixes the token count of the ViT-UNet's attention
at the example's size. Every export is checked before it is written: the graph must keep batch,
height and width symbolic, pass medcyclegan's own model checks (:func:`~medcyclegan.onnx_model.parse_onnx`)
and give the torch translator's output, within :data:`VERIFY_TOLERANCE`, on a batch of another size
than the one it was traced with (users of the reference saw accuracy lost after export: here a
wrong export is refused, not written).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from medcyclegan import __version__
from medcyclegan.checkpoint import find_checkpoint, is_onnx_path, newest_run
from medcyclegan.convert import ConversionModel, load_model, model_label
from medcyclegan.errors import CheckpointError, ConfigError, OutputError
from medcyclegan.io.atomic import atomic_write_bytes, check_can_write
from medcyclegan.onnx_model import (
    ATTENTION_OUTPUT_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    STYLE_INPUT_NAME,
    OnnxModelInfo,
    check_graph,
    onnx_translator,
    parse_onnx,
)

logger = logging.getLogger("medcyclegan")

# The ONNX opset written by default, and the range accepted: the dynamo exporter starts at 18;
# onnxruntime 1.20 and later run up to 23.
DEFAULT_OPSET = 18
MIN_OPSET = 18
MAX_OPSET = 23
# Largest |ONNX - torch| accepted at export, in the network's normalised output units ([-1, 1]):
# 1e-4 is 0.2 HU of the default CT window (4095 HU wide); float32 exports differ by about 1e-6.
VERIFY_TOLERANCE = 1e-4


class _ExportedGraph(nn.Module):
    """The translator as the exported graph calls it: slices (and a style code) in, outputs out."""

    def __init__(self, translator: nn.Module, *, attention: bool, styles: bool) -> None:
        super().__init__()
        self.translator = translator
        self.attention = attention
        self.styles = styles

    def forward(self, slices: torch.Tensor, style: torch.Tensor | None = None) -> object:
        if self.styles:
            return self.translator.translate(slices, style)  # type: ignore[operator]
        if self.attention:
            return self.translator.forward_with_attention(slices)  # type: ignore[operator]
        return self.translator(slices)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_opset(opset: int) -> int:
    """Refuses an ONNX opset outside [:data:`MIN_OPSET`, :data:`MAX_OPSET`]; returns it."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset must be an integer from {MIN_OPSET} to {MAX_OPSET}; got {opset!r}")
    return opset


def model_info(model: ConversionModel, checkpoint_sha256: str) -> OnnxModelInfo:
    """The metadata of ``model``'s translator (a torch model from :func:`~medcyclegan.convert.load_model`)."""
    cfg = model.cfg
    direction = "AB" if model.source_modality == cfg.data.src_modality else "BA"
    style_dim = model.generator.style_dim if model.has_styles else None  # type: ignore[union-attr]
    return OnnxModelInfo(
        cfg=cfg,
        direction=direction,
        source_modality=model.source_modality,
        target_modality=model.target_modality,
        context_slices=int(cfg.data.context_slices),
        stride_multiple=model.stride_multiple,
        min_input_size=model.min_slice_voxels,
        style_dim=None if style_dim is None else int(style_dim),
        attention=hasattr(model.generator, "forward_with_attention"),
        version=__version__,
        checkpoint=model_label(model.checkpoint),
        checkpoint_sha256=checkpoint_sha256,
    )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines, warnings and log records kept off the user's terminal."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example_size(info: OnnxModelInfo) -> int:
    """Stride multiples per side of the traced example: at least 2, and at least the smallest input."""
    return max(2, math.ceil(info.min_input_size / info.stride_multiple))


def export_onnx(
    model: ConversionModel, *, opset: int = DEFAULT_OPSET, checkpoint_sha256: str = ""
) -> tuple[bytes, OnnxModelInfo]:
    """``model``'s translator as a checked, self-contained ONNX model in memory.

    Args:
        model: a torch model from :func:`~medcyclegan.convert.load_model` (its device is not changed:
            the export runs on a CPU copy of the translator).
        opset: the ONNX opset (:func:`check_opset`).
        checkpoint_sha256: the SHA-256 of the checkpoint file, recorded in the metadata.

    Returns:
        (the serialised model, its metadata).

    Raises:
        ConfigError: an opset out of range, or an ONNX model given.
        CheckpointError: the exporter failed, fixed a dynamic size, or its graph does not give the
            torch translator's output (see the module docstring).
    """
    check_opset(opset)
    if not isinstance(model.generator, nn.Module):
        raise ConfigError(
            "this model is already an ONNX model; export a run folder or checkpoint", model.checkpoint
        )
    info = model_info(model, checkpoint_sha256)
    where = model.checkpoint
    translator = model.generator
    if translator.training or next(translator.parameters()).device.type != "cpu":
        translator = _cpu_copy(translator)
    graph = _ExportedGraph(translator, attention=info.attention, styles=info.style_dim is not None).eval()
    units = _example_size(info)
    multiple = info.stride_multiple
    example = torch.zeros(2, info.in_channels, units * multiple, (units + 1) * multiple)
    batch = Dim("batch", min=1)
    height, width = Dim("height_units", min=1), Dim("width_units", min=1)
    shapes: dict[str, object] = {"slices": {0: batch, 2: multiple * height, 3: multiple * width}}
    args: tuple[torch.Tensor, ...] = (example,)
    input_names = [INPUT_NAME]
    if info.style_dim is not None:
        args += (torch.zeros(1, info.style_dim),)
        shapes["style"] = None
        input_names.append(STYLE_INPUT_NAME)
    output_names = [OUTPUT_NAME] + ([ATTENTION_OUTPUT_NAME] if info.attention else [])
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                graph,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter's own errors (torch.export, onnxscript) are many classes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"the translator cannot be exported to ONNX ({type(exc).__name__}: {first})", where
        ) from None
    proto = program.model_proto
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    _check_dynamic(proto, where)
    proto.producer_name = "medcyclegan"
    proto.producer_version = __version__
    proto.doc_string = (
        f"medcyclegan {info.cfg.model.kind} translator {info.source_modality} -> {info.target_modality}"
    )
    del proto.metadata_props[:]
    for key, value in info.to_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    data = proto.SerializeToString()
    # What is written must pass what reading checks (no foreign operator, no external data).
    check_graph(parse_onnx(data, where), info, where)
    _verify(data, info, translator, where)
    return data, info


def _cpu_copy(translator: nn.Module) -> nn.Module:
    """A CPU copy of ``translator`` in eval mode (the model's own network is left where it is)."""
    return copy.deepcopy(translator).cpu().eval()


def _check_dynamic(proto: onnx.ModelProto, where: Path) -> None:
    """The batch, height and width of the slices input must stay symbolic (the exporter may fix them)."""
    for value in proto.graph.input:
        if value.name != INPUT_NAME:
            continue
        dims = value.type.tensor_type.shape.dim
        fixed = [axis for axis in (0, 2, 3) if len(dims) == 4 and dims[axis].HasField("dim_value")]
        if len(dims) != 4 or fixed:
            raise CheckpointError(
                "the ONNX exporter fixed the slices' "
                + ", ".join(("batch", "", "height", "width")[a] for a in fixed)
                + " of this translator; it cannot be exported with dynamic sizes",
                where,
            )


def _verify(data: bytes, info: OnnxModelInfo, translator: nn.Module, where: Path) -> None:
    """The exported graph against the torch translator on a batch unlike the traced example.

    Raises:
        CheckpointError: a larger difference than :data:`VERIFY_TOLERANCE`, or a non-finite output.
    """
    units = _example_size(info)
    multiple = info.stride_multiple
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, info.in_channels, (units + 1) * multiple, units * multiple, generator=generator) * 2 - 1
    session = onnx_translator(data, info, where, device="cpu")
    try:
        with torch.no_grad():
            if info.style_dim is not None:
                code = torch.randn(1, info.style_dim, generator=generator)
                expected = [translator.translate(x, code)]  # type: ignore[operator]
                session.set_style(code)
                got = [session(x)]
            elif info.attention:
                expected = list(translator.forward_with_attention(x))  # type: ignore[operator]
                got = list(session.forward_with_attention(x))  # type: ignore[attr-defined]
            else:
                expected, got = [translator(x)], [session(x)]
    except CheckpointError as exc:
        # e.g. a size the exporter fixed inside the graph although its inputs look dynamic
        raise CheckpointError(
            f"the exported ONNX graph does not run on a batch of another size than it was traced with "
            f"({exc}); not written",
            where,
        ) from None
    for name, ours, theirs in zip((OUTPUT_NAME, ATTENTION_OUTPUT_NAME), got, expected):
        a, b = ours.numpy(), theirs.detach().float().numpy()
        difference = float(np.max(np.abs(a - b))) if a.shape == b.shape else math.inf
        if not math.isfinite(difference) or difference > VERIFY_TOLERANCE:
            raise CheckpointError(
                f"the exported ONNX graph's {name} differs from the torch translator by {difference:.3g} "
                f"(more than {VERIFY_TOLERANCE:g}) on a {tuple(x.shape)} batch; not written",
                where,
            )


def export_model(
    source: str | Path | None,
    output: str | Path,
    *,
    to: str | None = None,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, OnnxModelInfo]:
    """``medcyclegan export``: the translator into ``to`` of a run folder or checkpoint, as ``output``.

    Args:
        source: a run folder (``best.pt``, else ``last.pt``), a checkpoint, or ``None`` for the
            newest run under ``./runs`` (as ``convert --model``).
        output: the ``.onnx`` file to write (atomically; never over an existing file without
            ``overwrite``).
        to: the modality to translate into (default: the training target).
        overwrite: replace an existing ``output``.
        opset: the ONNX opset (:func:`check_opset`).

    Returns:
        (the written file, its metadata).

    Raises:
        ConfigError: a bad opset or ``to``.
        OutputError: an output not named ``*.onnx``, or one that exists without ``overwrite``.
        CheckpointError: the checkpoint cannot be loaded, has no translator into ``to`` (pix2pix
            and CUT translate one way), changed while it was read, or cannot be exported.
    """
    check_opset(opset)
    if to is not None and to not in ("ct", "mr"):
        raise ConfigError(f"--to must be ct or mr; got {to!r}")
    output = Path(output)
    if not is_onnx_path(output):
        raise OutputError("an exported model is an ONNX file: name it *.onnx", output)
    if source is not None and is_onnx_path(source):
        raise ConfigError("is already an ONNX model; export a run folder or checkpoint", source)
    check_can_write(output, overwrite)
    path = find_checkpoint(newest_run() if source is None else source)
    # The digest is of the file that is loaded: a checkpoint replaced meanwhile is refused.
    before = _identity(path)
    digest = file_sha256(path)
    model = load_model(path, to=to, device="cpu", backend="torch")
    data, info = export_onnx(model, opset=opset, checkpoint_sha256=digest)
    if _identity(path) != before:
        raise CheckpointError("changed while it was exported (a training run writing it?); try again", path)
    atomic_write_bytes(output, data, overwrite=overwrite)
    return output, info


def _identity(path: Path) -> tuple[int, int, int]:
    """What says a file is still the one that was read: inode, size, modification time."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
