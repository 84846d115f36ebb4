"""Exported (ONNX) translators: the metadata they carry, reading a ``.onnx`` file safely, and the
onnxruntime session as a translator of the one slice-wise path (:mod:`medcyclegan.inference`).

A medcyclegan ``.onnx`` file (written by :mod:`medcyclegan.export`) holds one direction's translator
with dynamic batch, height and width (the 2.5D channel count is fixed) and, in the model's
``metadata_props``, everything conversion needs (:class:`OnnxModelInfo`): the run's resolved config
(its normalisation record included), the modalities and direction, the spacing, the context slices,
the stride multiple and smallest input size, the style code length of a model with styles (MUNIT's:
a second graph input), the medcyclegan version and the SHA-256 of the checkpoint it came from.

A model file is untrusted input. :func:`read_onnx_model` reads it once and checks the very bytes the
session is then built from: it must parse, pass ``onnx.checker``, carry our metadata (whose config
is validated exactly as a checkpoint's is), and use only standard ONNX operators with every tensor
inside the file: external data (which would make onnxruntime read files the user did not name) and
operators of other domains (custom kernels) are refused.

Graph interface: input ``slices`` (N, 2k+1, H, W) float32 in [-1, 1], H and W multiples of the
stride multiple; with styles also ``style`` (1, style_dim); outputs ``translation`` (N, 2k+1, H, W)
and, for the attention generator, ``attention`` (N, 1, H, W).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError

from medcyclegan.checkpoint import checkpoint_config
from medcyclegan.config import MAX_FILTERS, MAX_IMAGE_SIZE, Config, config_to_yaml
from medcyclegan.errors import CheckpointError, ConfigError
from medcyclegan.models import model_class
from medcyclegan.runtime import check_device_name, distributed

try:  # an optional engine at run time: its absence is one line (see onnxruntime()), not an ImportError
    import onnxruntime as _onnxruntime
except ImportError:  # pragma: no cover - installed with medcyclegan
    _onnxruntime = None

logger = logging.getLogger("medcyclegan")

FORMAT = "medcyclegan-onnx"
FORMAT_VERSION = 1
# Keys of metadata_props are "medcyclegan.<field>" (other tools, e.g. Netron, show them as they are).
METADATA_PREFIX = "medcyclegan."
INPUT_NAME = "slices"
STYLE_INPUT_NAME = "style"
OUTPUT_NAME = "translation"
ATTENTION_OUTPUT_NAME = "attention"
# Operator domains a model may use: ONNX's standard operators ("" and its alias "ai.onnx") only.
STANDARD_DOMAINS = ("", "ai.onnx")
# A larger file is not one of ours (the reference ResNet is 45 MB; protobuf's own limit is 2 GiB).
MAX_MODEL_BYTES = 2**31 - 1
ONNXRUNTIME_INSTALL = "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an exported translator's metadata records (``metadata_props``, see the module docstring).

    Attributes:
        cfg: the run's resolved config (normalisation record included), validated as a checkpoint's.
        direction: ``"AB"`` (source to target) or ``"BA"``.
        source_modality: the modality the translator reads.
        target_modality: the modality it writes.
        context_slices: k: the input has 2k+1 channels.
        stride_multiple: H and W of an input must be multiples of this.
        min_input_size: the smallest H and W (before padding) it translates.
        style_dim: the style code's length (a second graph input), or None for a deterministic model.
        attention: the graph has an ``attention`` output (the attention generator).
        version: the medcyclegan version that exported it.
        checkpoint: the checkpoint it was exported from, by run folder and name (``run/best.pt``).
        checkpoint_sha256: that file's SHA-256 (hex).
    """

    cfg: Config
    direction: str
    source_modality: str
    target_modality: str
    context_slices: int
    stride_multiple: int
    min_input_size: int
    style_dim: int | None
    attention: bool
    version: str
    checkpoint: str
    checkpoint_sha256: str

    @property
    def in_channels(self) -> int:
        """2k+1: the slice and its k neighbours each side."""
        return 2 * self.context_slices + 1

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries (strings); the normalisation record also on its own, for
        other tools (reading checks it against the config's)."""
        spacing = self.cfg.data.spacing
        fields = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "version": self.version,
            "model_kind": self.cfg.model.kind,
            "direction": self.direction,
            "source_modality": self.source_modality,
            "target_modality": self.target_modality,
            "spacing_mm": "native" if spacing is None else repr(float(spacing)),
            "context_slices": str(self.context_slices),
            "stride_multiple": str(self.stride_multiple),
            "min_input_size": str(self.min_input_size),
            "style_dim": "" if self.style_dim is None else str(self.style_dim),
            "attention": "1" if self.attention else "0",
            "normalisation": json.dumps(self.cfg.normalisation.to_dict() if self.cfg.normalisation else {}),
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "config": config_to_yaml(self.cfg),
        }
        return {METADATA_PREFIX + key: value for key, value in fields.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], path: str | Path) -> OnnxModelInfo:
        """Reads and checks the metadata of the model file ``path``.

        Raises:
            CheckpointError: no medcyclegan metadata, a newer format, a config that fails the
                checks of a checkpoint's config, or fields that contradict it.
        """
        fields = {k[len(METADATA_PREFIX) :]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        if fields.get("format") != FORMAT:
            raise CheckpointError(
                "has no medcyclegan metadata: not a model written by `medcyclegan export` (or truncated)",
                path,
            )
        version = _metadata_int(fields, "format_version", path, 1, 10**6)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"model format {version} is newer than this medcyclegan reads ({FORMAT_VERSION}); upgrade",
                path,
            )
        if "config" not in fields:
            raise CheckpointError("its medcyclegan metadata has no config", path)
        # The checks of a checkpoint's stored config, word for word.
        cfg = checkpoint_config({"config_yaml": fields["config"]}, path)
        if not cfg.normalisation:
            raise CheckpointError("its config has no recorded normalisation parameters", path)
        direction = fields.get("direction")
        directions = model_class(cfg.model.kind).directions
        if direction not in directions:
            raise CheckpointError(
                f"metadata direction {direction!r} is not one of this {cfg.model.kind} model's ({', '.join(directions)})",
                path,
            )
        src, tgt = cfg.data.src_modality, cfg.data.tgt_modality
        expected = {
            "model_kind": cfg.model.kind,
            "source_modality": src if direction == "AB" else tgt,
            "target_modality": tgt if direction == "AB" else src,
            "context_slices": str(cfg.data.context_slices),
            "spacing_mm": "native" if cfg.data.spacing is None else repr(float(cfg.data.spacing)),
            "normalisation": json.dumps(cfg.normalisation.to_dict()),
        }
        for key, value in expected.items():
            if fields.get(key) != value:
                raise CheckpointError(
                    f"metadata {key} {fields.get(key)!r} contradicts its config ({value!r})", path
                )
        stride = _metadata_int(fields, "stride_multiple", path, 1, MAX_IMAGE_SIZE)
        if stride & (stride - 1):
            raise CheckpointError(f"metadata stride_multiple {stride} is not a power of 2", path)
        style_text = fields.get("style_dim", "")
        style_dim = None if style_text == "" else _metadata_int(fields, "style_dim", path, 1, MAX_FILTERS)
        if fields.get("attention") not in ("0", "1"):
            raise CheckpointError(f"metadata attention must be 0 or 1; got {fields.get('attention')!r}", path)
        digest = fields.get("checkpoint_sha256", "")
        return cls(
            cfg=cfg,
            direction=direction,
            source_modality=expected["source_modality"],
            target_modality=expected["target_modality"],
            context_slices=int(cfg.data.context_slices),
            stride_multiple=stride,
            min_input_size=_metadata_int(fields, "min_input_size", path, 1, MAX_IMAGE_SIZE),
            style_dim=style_dim,
            attention=fields["attention"] == "1",
            version=fields.get("version", ""),
            checkpoint=fields.get("checkpoint", ""),
            checkpoint_sha256=digest,
        )


def _metadata_int(fields: dict[str, str], key: str, path: str | Path, low: int, high: int) -> int:
    text = fields.get(key, "")
    if not text.isdigit() or not low <= int(text) <= high:
        raise CheckpointError(f"metadata {key} must be an integer in [{low}, {high}]; got {text!r}", path)
    return int(text)


def read_onnx_model(path: str | Path) -> tuple[bytes, OnnxModelInfo]:
    """Reads a medcyclegan ``.onnx`` file once and checks it (see the module docstring).

    Returns:
        (the file's bytes, exactly as checked: build the session from them, not from the path again;
        its metadata).

    Raises:
        CheckpointError: missing, empty, corrupted or truncated file, not a valid ONNX model, no
            medcyclegan metadata or a config that fails validation, external data, non-standard
            operators, or inputs and outputs other than the metadata says.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("model file not found", path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("model file is empty (0 bytes)", path)
    if size > MAX_MODEL_BYTES:
        raise CheckpointError(f"model file is {size} bytes, more than an ONNX file can hold", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot be read ({exc.strerror or exc})", path) from None
    model = parse_onnx(data, path)
    info = OnnxModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, path)
    check_graph(model, info, path)
    return data, info


def parse_onnx(data: bytes, path: str | Path) -> onnx.ModelProto:
    """The ONNX model in ``data`` (bytes of ``path``), checked by ``onnx.checker`` and for safety.

    Raises:
        CheckpointError: not a parsable or valid ONNX model, external data, non-standard operators.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise CheckpointError("corrupted or truncated ONNX file (it does not parse)", path) from None
    if not model.HasField("graph") or not model.opset_import:
        raise CheckpointError("not an ONNX model (no graph or no opset; corrupted or truncated?)", path)
    # Before the checker: it would resolve external data relative to the file's folder.
    check_self_contained(model, path)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or ["invalid"])[0][:160]
        raise CheckpointError(f"not a valid ONNX model ({first})", path) from None
    return model


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph below it (If / Loop / Scan bodies)."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                found.extend(_graphs(sub))
    return found


def check_self_contained(model: onnx.ModelProto, path: str | Path) -> None:
    """Refuses tensors stored outside the file and operators outside the standard ONNX domains.

    Raises:
        CheckpointError: naming the first offending tensor or operator.
    """
    if model.functions:
        raise CheckpointError(
            f"refused: the model defines {len(model.functions)} function(s) of its own; "
            "medcyclegan models use standard ONNX operators only",
            path,
        )
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise CheckpointError(
                f"refused: the model imports operator domain {opset.domain!r}; only standard ONNX "
                "operators are run (custom operators could run code this file brings)",
                path,
            )
    for graph in _graphs(model.graph):
        tensors = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                raise CheckpointError(
                    f"refused: operator {node.op_type!r} of domain {node.domain!r}; only standard ONNX "
                    "operators are run",
                    path,
                )
            for attribute in node.attribute:
                tensors += [*([attribute.t] if attribute.HasField("t") else []), *attribute.tensors]
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
                raise CheckpointError(
                    f"refused: tensor {tensor.name!r} is stored in an external file; a model must be "
                    "self-contained (re-export it with medcyclegan export)",
                    path,
                )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input's or output's dimensions: ints where fixed, names where symbolic."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim]


def check_graph(model: onnx.ModelProto, info: OnnxModelInfo, path: str | Path) -> None:
    """The graph's inputs and outputs must be those the metadata describes (see the module docstring).

    Raises:
        CheckpointError: other names, ranks, element types or channel counts.
    """
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    wanted_inputs = [INPUT_NAME] + ([STYLE_INPUT_NAME] if info.style_dim is not None else [])
    wanted_outputs = [OUTPUT_NAME] + ([ATTENTION_OUTPUT_NAME] if info.attention else [])
    if [i.name for i in inputs] != wanted_inputs:
        raise CheckpointError(
            f"graph inputs {[i.name for i in inputs]} do not match its metadata (expected {wanted_inputs})",
            path,
        )
    if [o.name for o in model.graph.output] != wanted_outputs:
        raise CheckpointError(
            f"graph outputs {[o.name for o in model.graph.output]} do not match its metadata "
            f"(expected {wanted_outputs})",
            path,
        )
    float_type = onnx.TensorProto.FLOAT
    for value in [*inputs, *model.graph.output]:
        if value.type.tensor_type.elem_type != float_type:
            raise CheckpointError(f"graph {value.name!r} is not a float32 tensor", path)
    slices = _dims(inputs[0])
    if len(slices) != 4 or slices[1] != info.in_channels:
        raise CheckpointError(
            f"graph input {INPUT_NAME!r} has shape {slices}; expected (N, {info.in_channels}, H, W) "
            f"for {info.context_slices} context slice(s)",
            path,
        )
    if info.style_dim is not None and _dims(inputs[1]) != [1, info.style_dim]:
        raise CheckpointError(
            f"graph input {STYLE_INPUT_NAME!r} has shape {_dims(inputs[1])}; expected [1, {info.style_dim}]",
            path,
        )


def onnxruntime() -> ModuleType:
    """The onnxruntime module.

    Raises:
        ConfigError: it is not installed (one line saying how to install it).
    """
    if _onnxruntime is None:
        raise ConfigError(
            f"--backend onnxruntime needs onnxruntime, which is not installed: {ONNXRUNTIME_INSTALL}"
        )
    return _onnxruntime


def onnxruntime_available() -> bool:
    """True when onnxruntime can be imported."""
    try:
        onnxruntime()
    except ConfigError:
        return False
    return True


def execution_providers(device: str) -> list[Any]:
    """onnxruntime execution providers for a ``--device`` choice.

    ``cpu``: the CPU. ``auto``: CUDA when onnxruntime has its CUDA provider (onnxruntime-gpu), else
    the CPU. ``cuda`` / ``cuda:N``: GPU N (``LOCAL_RANK`` under torchrun) through the CUDA provider.

    Raises:
        ConfigError: an unknown device name, or CUDA asked where onnxruntime has no CUDA provider.
    """
    check_device_name(device)
    ort = onnxruntime()
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cpu" or (device == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if not has_cuda:
        raise ConfigError(
            f"--device {device}: this onnxruntime has no CUDA execution provider (install "
            "onnxruntime-gpu), or use --device cpu"
        )
    index = int(device.split(":")[1]) if ":" in device else distributed.detect().local_rank
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxTranslator:
    """An onnxruntime session over a medcyclegan translator graph, callable as a translator.

    ``translator(x)`` maps a torch tensor (N, 2k+1, H, W) to the translation (a CPU torch tensor), as
    a torch generator does, for :func:`~medcyclegan.inference.translate_slices`. A model with styles
    has :attr:`style_dim` and :meth:`set_style` (the style input; zeros unless set), as MUNIT's
    :class:`~medcyclegan.nets.munit.StyleTranslator` does; an attention model has
    :meth:`forward_with_attention` (see :func:`onnx_translator`).

    Args:
        model_bytes: the checked model (:func:`read_onnx_model`, or an export in memory).
        info: its metadata.
        where: the model's name in messages.
        device: a ``--device`` choice (see :func:`execution_providers`).
        threads: intra-op threads (default: torch's, which ``--threads`` sets).

    Raises:
        ConfigError: onnxruntime missing, or the device unavailable.
        CheckpointError: onnxruntime cannot load the model, or CUDA was asked and not taken.
    """

    def __init__(
        self,
        model_bytes: bytes,
        info: OnnxModelInfo,
        where: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        ort = onnxruntime()
        providers = execution_providers(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: no library chatter on stderr
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime's own exception classes (Fail, InvalidGraph, ...)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"onnxruntime cannot load this model ({first})", where) from None
        if device not in ("cpu", "auto") and "CUDAExecutionProvider" not in self.session.get_providers():
            raise CheckpointError(
                f"onnxruntime could not run it on {device} (no usable CUDA provider)", where
            )
        self.info = info
        self.where = str(where)
        self.stride_multiple = info.stride_multiple
        self.min_input_size = info.min_input_size
        self.style_dim = info.style_dim
        self._style = None if info.style_dim is None else np.zeros((1, info.style_dim), dtype=np.float32)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses, best first."""
        return list(self.session.get_providers())

    def set_style(self, style: torch.Tensor | np.ndarray | None) -> None:
        """Translates with ``style`` (``style_dim`` values) from now on; ``None`` restores the zeros.

        Raises:
            ValueError: a model without styles, or a code of another length.
        """
        if self._style is None:
            raise ValueError(f"{self.where}: this model has no style input")
        if style is None:
            self._style[:] = 0.0
            return
        code = np.asarray(torch.as_tensor(style, dtype=torch.float32).reshape(-1))
        if code.size != self._style.size:
            raise ValueError(f"a style code has {self._style.size} values; got {code.size}")
        self._style[0] = code

    def _run(self, x: torch.Tensor) -> list[np.ndarray]:
        feeds = {INPUT_NAME: np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())}
        if self._style is not None:
            feeds[STYLE_INPUT_NAME] = self._style
        try:
            return self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own exception classes
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"onnxruntime failed on a batch of shape {tuple(x.shape)} ({first})", self.where
            ) from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The translation of ``x`` (N, 2k+1, H, W), as a float32 CPU tensor."""
        return torch.from_numpy(self._run(x)[0])


class OnnxAttentionTranslator(OnnxTranslator):
    """:class:`OnnxTranslator` of an attention generator: its graph also outputs the attention mask."""

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(translation (N, C, H, W), attention mask (N, 1, H, W)), as the torch generator gives them."""
        translation, attention = self._run(x)
        return torch.from_numpy(translation), torch.from_numpy(attention)


def onnx_translator(
    model_bytes: bytes,
    info: OnnxModelInfo,
    where: str | Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
) -> OnnxTranslator:
    """The session translator of a checked model: :class:`OnnxAttentionTranslator` when it has an
    attention output, else :class:`OnnxTranslator`."""
    cls = OnnxAttentionTranslator if info.attention else OnnxTranslator
    return cls(model_bytes, info, where, device=device, threads=threads)


def onnx_summary(path: str | Path) -> dict[str, Any]:
    """What ``medcyclegan info model.onnx`` shows: the checked model's metadata and graph interface.

    Raises:
        CheckpointError: as :func:`read_onnx_model`.
    """
    data, info = read_onnx_model(path)
    model = onnx.ModelProto()
    model.ParseFromString(data)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    interface = {
        value.name: _dims(value) for value in [*model.graph.input, *model.graph.output]
    }  # names -> dims, inputs first
    return {
        "model_file": str(path),
        "bytes": len(data),
        "model": info.cfg.model.kind,
        "generator": info.cfg.model.generator
        if info.cfg.model.kind not in ("unit", "munit")
        else info.cfg.model.kind,
        "direction": f"{info.source_modality} -> {info.target_modality}",
        "in_channels": info.in_channels,
        "stride_multiple": info.stride_multiple,
        "min_input_size": info.min_input_size,
        "style_dim": info.style_dim,
        "attention": info.attention,
        "spacing_mm": info.cfg.data.spacing,
        "normalisation": info.cfg.normalisation.to_dict() if info.cfg.normalisation else {},
        "opset": opsets.get("ai.onnx"),
        "interface": interface,
        "medcyclegan_version": info.version,
        "checkpoint": info.checkpoint,
        "checkpoint_sha256": info.checkpoint_sha256,
    }
