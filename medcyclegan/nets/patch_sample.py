"""CUT's projection head F (``PatchSampleF`` of Park et al. 2020, ``--netF mlp_sample``).

Per compared layer a 2-layer MLP (``Linear(C, nc)``, ReLU, ``Linear(nc, nc)``) maps the feature
vectors of sampled locations to ``nc`` features, then each vector is scaled to unit L2 norm
(``x / (|x| + 1e-7)``). The same locations are sampled in the source's and in the translation's
feature maps, so that a patch's positive is the patch at its own place.

Differences from the reference (taesungp/contrastive-unpaired-translation, models/networks.py):
the reference creates its MLPs on the first batch (their input channels are the feature maps');
here the channels are given when F is built, so that its weights exist from the start (checkpoints,
exact resume). The reference draws the locations from NumPy's global generator; here from a
``torch.Generator`` the caller owns (:func:`sample_patch_ids`), whose state a checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Added to the norm before dividing (the reference's Normalize).
L2_EPS = 1e-7


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by its L2 norm along the last dimension (plus :data:`L2_EPS`)."""
    return x / (x.pow(2).sum(-1, keepdim=True).sqrt() + L2_EPS)


def sample_patch_ids(
    features: Sequence[torch.Tensor], num_patches: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """For each feature map (N, C, H, W), ``min(num_patches, H * W)`` distinct flat locations.

    A random permutation of the H * W locations, cut to its first ``num_patches`` (the same for
    every image of the batch, as in the reference). Drawn on the CPU from ``generator``.
    """
    ids = []
    for feature in features:
        locations = feature.shape[2] * feature.shape[3]
        ids.append(torch.randperm(locations, generator=generator)[: min(num_patches, locations)])
    return ids


class PatchSampleF(nn.Module):
    """Samples feature vectors at given locations and projects them (the CUT projection head).

    Args:
        in_channels: channels of each compared feature map, in the order they are given.
        nc: features of each MLP (``--netF_nc``, 256 in the reference).

    The MLPs are ``mlp_0``, ``mlp_1``, ... as in the reference.
    """

    def __init__(self, in_channels: Sequence[int], nc: int = 256) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.nc = nc
        for index, channels in enumerate(self.in_channels):
            self.add_module(
                f"mlp_{index}", nn.Sequential(nn.Linear(channels, nc), nn.ReLU(), nn.Linear(nc, nc))
            )

    def forward(
        self, features: Sequence[torch.Tensor], patch_ids: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per feature map (N, C, H, W), the projected, normalised vectors (N, P, nc) at ``patch_ids``.

        Raises:
            ValueError: not one map and one id list per MLP, or a map of other channels.
        """
        if len(features) != len(self.in_channels) or len(patch_ids) != len(self.in_channels):
            raise ValueError(
                f"PatchSampleF has {len(self.in_channels)} MLPs; got {len(features)} feature maps "
                f"and {len(patch_ids)} id lists"
            )
        projected = []
        for index, (feature, ids) in enumerate(zip(features, patch_ids)):
            if feature.shape[1] != self.in_channels[index]:
                raise ValueError(
                    f"feature map {index} has {feature.shape[1]} channels; mlp_{index} takes "
                    f"{self.in_channels[index]}"
                )
            # (N, C, H, W) -> (N, H * W, C): the locations in row-major order, as the reference.
            flat = feature.permute(0, 2, 3, 1).flatten(1, 2)
            sampled = flat[:, ids.to(feature.device), :]
            projected.append(l2_normalise(getattr(self, f"mlp_{index}")(sampled)))
        return projected
