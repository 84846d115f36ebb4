"""Run a 2D image-to-image network over every axial slice of a volume.

Used by validation and by ``convert``, so that what validation measures is exactly what conversion
produces. Whole slices go through the fully convolutional generator: each batch of slices is padded
to the network's stride multiple and cropped back afterwards - never cropped to the training patch
size, never resized.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


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
    generator: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output and attention mask of an attention generator; ``(output, None)`` for a plain one."""
    forward = getattr(generator, "forward_with_attention", None)
    if forward is not None:
        return forward(x)
    return generator(x), None


def autocast_context(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere (CPU runs in fp32)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def translate_array(
    generator: torch.nn.Module,
    volume: np.ndarray,
    *,
    context_slices: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = False,
    pad_value: float = -1.0,
    stride_multiple: int = 4,
    return_attention: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Translates a normalised volume slice by slice.

    Args:
        generator: network mapping (N, 2k+1, H, W) to (N, 2k+1, H, W) in [-1, 1].
        volume: normalised array (X, Y, Z), RAS voxel order.
        context_slices: k neighbouring slices each side fed as channels (2.5D); the centre output
            channel is kept.
        batch_size: slices per forward pass.
        device: where the generator runs.
        amp: bf16 autocast on CUDA.
        pad_value: value used to pad slices to the stride multiple (-1 is air after normalisation).
        stride_multiple: H and W are padded up to a multiple of this (4 for two stride-2 layers).
        return_attention: also return the attention mask of an attention generator (zeros otherwise).

    Returns:
        The translated volume (X, Y, Z) as float32, and the attention volume when asked.
    """
    device = torch.device(device)
    nx, ny, nz = volume.shape
    pad_x = (-nx) % stride_multiple
    pad_y = (-ny) % stride_multiple
    out = np.empty((nx, ny, nz), dtype=np.float32)
    attention = np.zeros((nx, ny, nz), dtype=np.float32) if return_attention else None
    centre = context_slices
    was_training = generator.training
    generator.eval()
    try:
        for start in range(0, nz, batch_size):
            z = np.arange(start, min(start + batch_size, nz))
            batch = torch.from_numpy(context_stack(volume, z, context_slices)).to(device, non_blocking=True)
            batch = F.pad(batch.float(), (0, pad_y, 0, pad_x), mode="constant", value=pad_value)
            with autocast_context(device, amp):
                result, mask = forward_with_attention(generator, batch)
            result = result[:, centre, :nx, :ny].float().cpu().numpy()
            out[:, :, z] = np.moveaxis(result, 0, -1)
            if attention is not None and mask is not None:
                attention[:, :, z] = np.moveaxis(mask[:, 0, :nx, :ny].float().cpu().numpy(), 0, -1)
    finally:
        generator.train(was_training)
    if return_attention:
        return out, attention  # type: ignore[return-value]
    return out
