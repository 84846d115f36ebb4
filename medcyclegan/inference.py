"""The one slice-wise inference path: a 2D translator over the axial slices of a normalised volume.

Used by conversion (:mod:`medcyclegan.convert`, slab by slab through :func:`translate_slices`),
by validation and sample grids (whole volumes through :func:`translate_array`), and later by
exported (ONNX) models: what validation measures is exactly what conversion produces.

Whole slices go through the fully convolutional translator: each batch of slices (with ``k``
neighbours each side as channels, the 2.5D context of :func:`context_stack`) is padded at the high
end of X and Y to the translator's stride multiple with air (``AIR_NORMALISED``), translated, and
cropped back; the centre channel is kept. Slices are never cropped to the training patch size, never
resized. A slice smaller than ``canvas`` (the training's ``data.image_size``) along X or Y is first
centred on air of that size, as training pads it (:func:`~medcyclegan.data.slices.pad_or_crop`): a
model trained on canvases with air around the body is not run on a slice whose body touches its
edge (it fills that border with tissue, issue 14's phantom at 96 px crops: 393 HU).

Test-time averaging, off by default: ``flip_average`` also translates every slice mirrored along X
(R-L, the flip training augments with) and averages the mirrored-back result with the plain one;
:func:`translate_planes` runs the same 2D translator along the coronal and sagittal slices too (of the
volume resampled along Z to isotropic voxels) and averages the planes. Both average in the
network's normalised output space, before denormalisation.

The translator is any callable ``(N, C, H, W) tensor -> tensor`` or ``-> (tensor, attention)``; a
torch generator with ``forward_with_attention`` (the attention generator) gives its mask through
it. Its ``stride_multiple`` attribute says what H and W must be multiples of (a wrapper, e.g. around
an ONNX session, sets one too, or the caller passes ``stride_multiple``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from medcyclegan.config import check_planes
from medcyclegan.data.normalise import AIR_NORMALISED
from medcyclegan.data.prepare import isotropic_depth, resample_depth
from medcyclegan.runtime.precision import autocast_context

# What a translator returns: the translation, or the translation and an attention mask (N, 1, H, W).
TranslatorOutput: TypeAlias = "torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]"
# Any callable from a batch (N, C, H, W) to a TranslatorOutput: a torch generator, an ONNX session wrapper.
Translator: TypeAlias = Callable[[torch.Tensor], TranslatorOutput]


def context_stack(volume: np.ndarray, z_indices: np.ndarray, context_slices: int) -> np.ndarray:
    """Slices ``z`` with ``k`` neighbours each side as channels, edges replicated.

    Args:
        volume: array (X, Y, Z).
        z_indices: axial indices to take.
        context_slices: k; channel order is z-k, ..., z, ..., z+k (inferior to superior).

    Returns:
        Array (N, 2k+1, X, Y).
    """
    offsets = np.arange(-context_slices, context_slices + 1)
    idx = np.clip(z_indices[:, None] + offsets[None, :], 0, volume.shape[2] - 1)
    return np.ascontiguousarray(np.moveaxis(volume[:, :, idx], (2, 3), (0, 1)))


def forward_with_attention(
    translator: Translator, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output and attention mask of ``translator`` on ``x``; ``(output, None)`` without a mask.

    A module with ``forward_with_attention`` (the attention generator) is called through it; any other
    callable is called directly and may return the output alone or ``(output, attention)``.
    """
    forward = getattr(translator, "forward_with_attention", None)
    result = forward(x) if forward is not None else translator(x)
    if isinstance(result, tuple):
        output, attention = result
        return output, attention
    return result, None


def stride_multiple_of(translator: Translator) -> int:
    """The ``stride_multiple`` of a translator: its input's H and W must be multiples of it.

    Raises:
        TypeError: the translator has none (pass ``stride_multiple`` to the translate functions).
    """
    multiple = getattr(translator, "stride_multiple", None)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise TypeError(
            f"{type(translator).__name__} has no stride_multiple (a positive int); pass stride_multiple"
        )
    return multiple


@torch.no_grad()
def translate_slices(
    translator: Translator,
    volume: np.ndarray,
    z_indices: np.ndarray,
    *,
    context_slices: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    pad_value: float = AIR_NORMALISED,
    stride_multiple: int | None = None,
    flip_average: bool = False,
    canvas: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The translator over slices ``z_indices`` of ``volume``, in one forward pass (two with ``flip_average``).

    Args:
        translator: a generator (put in eval mode for the call) or any callable, see the module
            docstring; maps (N, 2k+1, H, W) to (N, 2k+1, H, W) in [-1, 1].
        volume: normalised array (X, Y, Z): a whole volume, or a slab holding every context slice
            the slices need (clipping at a slab's ends is then clipping at the volume's ends).
        z_indices: axial indices (into ``volume``) to translate, one batch.
        context_slices: k neighbouring slices each side fed as channels (2.5D); the centre output
            channel is kept.
        device: where the translator runs.
        amp: bf16 autocast on CUDA (see :func:`~medcyclegan.runtime.precision.use_bf16`).
        pad_value: value X and Y are padded with up to the stride multiple (default: air).
        stride_multiple: default: the translator's own (:func:`stride_multiple_of`).
        flip_average: test-time flip averaging: also translate the slices mirrored along X (axis 0,
            R-L: the flip training augments with; every context channel is mirrored alike), mirror
            that translation back and return the mean of the two, in the network's normalised output
            space (see :func:`flip_averaged`). Costs a second forward pass of the same batch size.
        canvas: X or Y smaller than this is centred on air of this size before the stride padding
            (the training's ``data.image_size``; 0: only the stride padding).

    Returns:
        (translated centre slices (n, X, Y) float32, attention masks (n, X, Y) float32 or None for a
        translator without one; with ``flip_average`` both are the means of the two passes).
    """
    device = torch.device(device)
    multiple = stride_multiple_of(translator) if stride_multiple is None else stride_multiple
    stack = context_stack(volume, z_indices, context_slices)
    was_training = translator.training if isinstance(translator, torch.nn.Module) else None
    if was_training:
        translator.eval()  # type: ignore[union-attr]
    options = {"device": device, "amp": amp, "pad_value": pad_value, "canvas": canvas}
    try:
        translated, attention = _translate_stack(translator, stack, context_slices, multiple, **options)
        if flip_average:
            # Mirrored before padding, so that it is padded as any slice is.
            mirrored, mirrored_attention = _translate_stack(
                translator, np.ascontiguousarray(stack[:, :, ::-1]), context_slices, multiple, **options
            )
            translated = flip_averaged(translated, mirrored)
            if attention is not None and mirrored_attention is not None:
                attention = flip_averaged(attention, mirrored_attention)
    finally:
        if was_training:
            translator.train()  # type: ignore[union-attr]
    return translated, attention


def flip_averaged(translated: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The mean of slices ``translated`` (n, X, Y) and of ``mirrored``, the translation of the X-mirrored
    slices, mirrored back.

    Averaged in the network's normalised output space: denormalisation and the resampling back onto
    the input grid are affine (the generator's tanh keeps values inside the clip range), so this is
    the mean in HU too, taken once before rounding to the output dtype rather than after.
    """
    return np.ascontiguousarray((translated + mirrored[:, ::-1]) * np.float32(0.5))


def _translate_stack(
    translator: Translator,
    stack: np.ndarray,
    context_slices: int,
    multiple: int,
    *,
    device: torch.device,
    amp: bool,
    pad_value: float,
    canvas: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward pass over a context stack (N, C, X, Y): padded (:func:`canvas_padding`), translated, cropped."""
    nx, ny = stack.shape[2], stack.shape[3]
    (x0, x1), (y0, y1) = canvas_padding(nx, canvas, multiple), canvas_padding(ny, canvas, multiple)
    batch = torch.from_numpy(stack).to(device, non_blocking=True)
    batch = F.pad(batch.float(), (y0, y1, x0, x1), mode="constant", value=pad_value)
    with autocast_context(device, amp):
        result, attention = forward_with_attention(translator, batch)
    translated = np.ascontiguousarray(
        result[:, context_slices, x0 : x0 + nx, y0 : y0 + ny].float().cpu().numpy()
    )
    if attention is not None:
        attention = np.ascontiguousarray(attention[:, 0, x0 : x0 + nx, y0 : y0 + ny].float().cpu().numpy())
    return translated, attention


def canvas_padding(size: int, canvas: int, multiple: int) -> tuple[int, int]:
    """Air before and after an axis of ``size`` voxels: centred on ``canvas`` when smaller (the split
    of :class:`monai.transforms.SpatialPad`'s ``symmetric`` method, as training pads), then at the
    high end up to a multiple of ``multiple``.

    Example:
        >>> canvas_padding(64, 96, 4), canvas_padding(97, 96, 4), canvas_padding(61, 0, 4)
        ((16, 16), (0, 3), (0, 3))
    """
    before = max(canvas - size, 0) // 2
    padded = max(size, canvas)
    return before, padded - size - before + (-padded) % multiple


def translate_array(
    translator: Translator,
    volume: np.ndarray,
    *,
    context_slices: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = False,
    pad_value: float = AIR_NORMALISED,
    stride_multiple: int | None = None,
    return_attention: bool = False,
    flip_average: bool = False,
    canvas: int = 0,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Translates a whole normalised volume, ``batch_size`` slices at a time (:func:`translate_slices`).

    Args:
        translator: see :func:`translate_slices`.
        volume: normalised array (X, Y, Z), RAS voxel order.
        context_slices: k neighbouring slices each side fed as channels (2.5D).
        batch_size: slices per forward pass.
        device: where the translator runs.
        amp: bf16 autocast on CUDA.
        pad_value: value X and Y are padded with up to the stride multiple (default: air).
        stride_multiple: default: the translator's own.
        return_attention: also return the attention mask of an attention generator (zeros otherwise).
        flip_average: average each slice's translation with the mirrored translation of its
            mirror image (:func:`translate_slices`).
        canvas: the training's ``data.image_size`` (:func:`translate_slices`).

    Returns:
        The translated volume (X, Y, Z) as float32, and the attention volume when asked.
    """
    nx, ny, nz = volume.shape
    out = np.empty((nx, ny, nz), dtype=np.float32)
    attention = np.zeros((nx, ny, nz), dtype=np.float32) if return_attention else None
    for start in range(0, nz, batch_size):
        z = np.arange(start, min(start + batch_size, nz))
        result, mask = translate_slices(
            translator,
            volume,
            z,
            context_slices=context_slices,
            device=device,
            amp=amp,
            pad_value=pad_value,
            stride_multiple=stride_multiple,
            flip_average=flip_average,
            canvas=canvas,
        )
        out[:, :, z] = np.moveaxis(result, 0, -1)
        if attention is not None and mask is not None:
            attention[:, :, z] = np.moveaxis(mask, 0, -1)
    if return_attention:
        return out, attention  # type: ignore[return-value]
    return out


def translate_planes(
    translator: Translator,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    planes: Sequence[str] = ("axial",),
    *,
    context_slices: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = False,
    pad_value: float = AIR_NORMALISED,
    stride_multiple: int | None = None,
    flip_average: bool = False,
    return_attention: bool = False,
    canvas: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A 2D (axial) translator run along each of ``planes`` of a volume, the translations averaged.

    Axial slices are translated on the volume's own grid (exactly :func:`translate_array`). For
    coronal (X, Z) and sagittal (Y, Z) slices the volume is first resampled along Z to its in-plane
    spacing (:func:`~medcyclegan.data.prepare.isotropic_depth`; a coarse Z would give those slices the wrong pixel aspect), the
    slices are translated (2.5D context then runs along Y, resp. X) and the result is resampled back
    along Z. The mean of the planes is taken in the normalised output space.

    With ``flip_average`` every plane is averaged with its R-L mirror (see :func:`translate_slices`):
    for axial and coronal slices X is their first axis; for sagittal slices the R-L axis is the one
    the slices are stacked along, so mirroring it only reverses the context channels (without context
    a 2D translator gives exactly the mirrored result and the second pass is skipped).

    Args:
        translator: see :func:`translate_slices`.
        volume: normalised array (X, Y, Z), RAS voxel order.
        spacing: voxel size (mm) of ``volume`` along X, Y, Z.
        planes: a non-empty subset of :data:`~medcyclegan.config.PLANES` (checked by
            :func:`~medcyclegan.config.check_planes`).
        context_slices, batch_size, device, amp, pad_value, stride_multiple, return_attention, canvas:
            see :func:`translate_array`.
        flip_average: see above.

    Returns:
        (translated volume (X, Y, Z) float32, attention volume (mean over the planes) or None).
    """
    chosen = check_planes(planes)
    options = {
        "context_slices": context_slices,
        "batch_size": batch_size,
        "device": device,
        "amp": amp,
        "pad_value": pad_value,
        "stride_multiple": stride_multiple,
        "canvas": canvas,
    }
    nz = volume.shape[2]
    isotropic: np.ndarray | None = None
    total = np.zeros(volume.shape, dtype=np.float32)
    attention_total = np.zeros(volume.shape, dtype=np.float32) if return_attention else None
    for plane in chosen:
        if plane == "axial":
            out, attention = _translate_both(translator, volume, flip_average, return_attention, options)
        else:
            if isotropic is None:
                isotropic = resample_depth(volume, isotropic_depth(volume.shape, spacing))
            out, attention = _translate_across(
                translator, isotropic, plane, flip_average, return_attention, options
            )
            out = resample_depth(out, nz)
            attention = None if attention is None else resample_depth(attention, nz)
        total += out
        if attention_total is not None and attention is not None:
            attention_total += attention
    scale = np.float32(1.0 / len(chosen))
    total *= scale
    if attention_total is not None:
        attention_total *= scale
    return total, attention_total


def _translate_both(
    translator: Translator, volume: np.ndarray, flip_average: bool, return_attention: bool, options: dict
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`translate_array` as ``(translation, attention or None)`` whether or not attention is asked."""
    if return_attention:
        return translate_array(
            translator, volume, flip_average=flip_average, return_attention=True, **options
        )  # type: ignore[return-value]
    return translate_array(translator, volume, flip_average=flip_average, **options), None  # type: ignore[return-value]


def _translate_across(
    translator: Translator,
    volume: np.ndarray,
    plane: str,
    flip_average: bool,
    return_attention: bool,
    options: dict,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The coronal or sagittal slices of an (X, Y, Z) volume translated, back in (X, Y, Z) order."""
    # Axis order that makes the plane's slices the (first, second) axes and its normal the third.
    order = (0, 2, 1) if plane == "coronal" else (1, 2, 0)
    back = tuple(int(i) for i in np.argsort(order))
    stack = volume.transpose(order)
    # Coronal slices have X (R-L) first: translate_slices mirrors it. Sagittal slices are stacked along X.
    out, attention = _translate_both(
        translator, stack, flip_average and plane == "coronal", return_attention, options
    )
    if flip_average and plane == "sagittal" and options["context_slices"]:
        mirrored, mirrored_attention = _translate_both(
            translator, stack[:, :, ::-1], False, return_attention, options
        )
        out = (out + mirrored[:, :, ::-1]) * np.float32(0.5)
        if attention is not None and mirrored_attention is not None:
            attention = (attention + mirrored_attention[:, :, ::-1]) * np.float32(0.5)
    out = np.ascontiguousarray(out.transpose(back))
    return out, None if attention is None else np.ascontiguousarray(attention.transpose(back))
