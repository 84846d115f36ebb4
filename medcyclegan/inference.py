"""The one slice-wise inference path: a 2D translator over the axial slices of a normalised volume.

Used by conversion (:mod:`medcyclegan.convert`, slab by slab through :func:`translate_slices`),
by validation and sample grids (whole volumes through :func:`translate_array`), and later by
exported (ONNX) models: what validation measures is exactly what conversion produces.

Whole slices go through the fully convolutional translator: each batch of slices (with ``k``
neighbours each side as channels, the 2.5D context of :func:`context_stack`) is padded at the high
end of X and Y to the translator's stride multiple with air (``AIR_NORMALISED``), translated, and
cropped back; the centre channel is kept. Slices are never cropped to the training patch size, never
resized.

The translator is any callable ``(N, C, H, W) tensor -> tensor`` or ``-> (tensor, attention)``; a
torch generator with ``forward_with_attention`` (the attention generator) gives its mask through
it. Its ``stride_multiple`` attribute says what H and W must be multiples of (a wrapper, e.g. around
an ONNX session, sets one too, or the caller passes ``stride_multiple``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from medcyclegan.data.normalise import AIR_NORMALISED
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
) -> tuple[np.ndarray, np.ndarray | None]:
    """The translator over slices ``z_indices`` of ``volume``, in one forward pass.

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

    Returns:
        (translated centre slices (n, X, Y) float32, attention masks (n, X, Y) float32 or None for a
        translator without one).
    """
    device = torch.device(device)
    multiple = stride_multiple_of(translator) if stride_multiple is None else stride_multiple
    nx, ny = volume.shape[0], volume.shape[1]
    pad_x, pad_y = (-nx) % multiple, (-ny) % multiple
    batch = torch.from_numpy(context_stack(volume, z_indices, context_slices)).to(device, non_blocking=True)
    batch = F.pad(batch.float(), (0, pad_y, 0, pad_x), mode="constant", value=pad_value)
    was_training = translator.training if isinstance(translator, torch.nn.Module) else None
    if was_training:
        translator.eval()  # type: ignore[union-attr]
    try:
        with autocast_context(device, amp):
            result, attention = forward_with_attention(translator, batch)
    finally:
        if was_training:
            translator.train()  # type: ignore[union-attr]
    translated = np.ascontiguousarray(result[:, context_slices, :nx, :ny].float().cpu().numpy())
    if attention is not None:
        attention = np.ascontiguousarray(attention[:, 0, :nx, :ny].float().cpu().numpy())
    return translated, attention


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
        )
        out[:, :, z] = np.moveaxis(result, 0, -1)
        if attention is not None and mask is not None:
            attention[:, :, z] = np.moveaxis(mask, 0, -1)
    if return_attention:
        return out, attention  # type: ignore[return-value]
    return out
