"""Training of the CycleGAN: the trainer, checkpoints, the image pool and sample grids."""

from __future__ import annotations
