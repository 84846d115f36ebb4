"""Sample grids: what the networks make of a fixed slice, as a PNG a person can read.

Rows: ``A, G_AB(A), G_BA(G_AB(A))`` and ``B, G_BA(B), G_AB(G_BA(B))``. CT tiles are shown in a
soft-tissue window (level 40 HU, width 400 HU); MR tiles over their normalised range; attention
masks over [0, 1]. Slices are
displayed the radiological way: anterior up, the patient's right on the left of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medcyclegan.config import DomainNormalisation
from medcyclegan.data.normalise import denormalise, output_params
from medcyclegan.figures import SOFT_TISSUE_WINDOW_HU, display_slice, window
from medcyclegan.io.atomic import atomic_path


def to_uint8(tile: np.ndarray, modality: str, record: DomainNormalisation | None) -> np.ndarray:
    """Maps a normalised tile to 8-bit grey for display (CT via HU in a soft-tissue window).

    ``record`` is the normalisation of the tile's domain; without one a CT tile is shown over its
    normalised range, as an MR tile is.
    """
    if modality == "attention":
        return window(tile, 0.0, 1.0)
    if modality == "ct" and record is not None:
        return window(denormalise(tile.astype(np.float32), output_params(record)), *SOFT_TISSUE_WINDOW_HU)
    return window(tile, -1.0, 1.0)


def render_grid(
    rows: Sequence[tuple[Sequence[np.ndarray], Sequence[str]]],
    records: dict[str, DomainNormalisation],
    path: str | Path,
    gap: int = 2,
) -> np.ndarray:
    """Renders rows of (tiles, modalities) into one grey image and writes it as PNG atomically.

    Args:
        rows: each row is (list of normalised RAS slices, list of their modalities).
        records: normalisation record per modality (``Config.normalisation`` records).
        path: PNG path.
        gap: white pixels between tiles.

    Returns:
        The grid as a uint8 array (H, W).
    """
    tiles = [
        [to_uint8(display_slice(t), m, records.get(m)) for t, m in zip(images, mods)] for images, mods in rows
    ]
    height = max(t.shape[0] for row in tiles for t in row)
    width = max(t.shape[1] for row in tiles for t in row)
    n_rows, n_cols = len(tiles), max(len(row) for row in tiles)
    grid = np.full((n_rows * (height + gap) - gap, n_cols * (width + gap) - gap), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return grid
