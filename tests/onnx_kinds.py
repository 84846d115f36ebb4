"""Tiny checkpoints of every translator kind, for the ONNX tests (``tests/test_onnx*.py``).

Each is made from the session's trained run (``trained_run`` in conftest.py): its config (so its
normalisation record) with the kind's overrides, and the freshly initialised networks of that model,
their convolution weights scaled up (:data:`WEIGHT_SCALE`) so that the translations vary across the
head by hundreds of HU: a parity test of near-constant outputs could not fail. Norm, linear and
attention weights keep their initial values (scaled too, the ViT's attention logits grow 256-fold and
its random network turns ill-conditioned: 1.3 HU between two correct float32 engines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from test_cut import TINY_CUT
from test_munit import TINY_MUNIT
from test_unit import TINY_UNIT
from test_vit_unet import TINY_VIT_UNET
from tiny import TrainedRun
from torch import nn

from medcyclegan.checkpoint import checkpoint_config, find_checkpoint, load_checkpoint, save_checkpoint
from medcyclegan.config import apply_overrides, config_to_yaml
from medcyclegan.models import model_class

# Every translator an export must handle: the generators of model.generator (CycleGAN), CUT's, and
# UNIT's and MUNIT's own translators. The ids name the test cases.
KINDS: dict[str, dict[str, Any]] = {
    "resnet": {},
    "resnet-attention": {"model.generator": "resnet-attention"},
    "unet": {"model.generator": "unet", "model.unet_downs": 5},
    "vit-unet": {
        **TINY_VIT_UNET,
        "vit_unet.unet_features": [4, 8, 8],  # 3 levels: 1/64 of the pixels are tokens
        "vit_unet.rezero": False,  # ReZero starts at 0: the transformer would be skipped
    },
    "cut": TINY_CUT,
    "unit": TINY_UNIT,
    "munit": TINY_MUNIT,
}
# Initial convolution weights are N(0, 0.02): outputs near 0 everywhere. Scaled, they vary.
WEIGHT_SCALE = 4.0


def kind_checkpoint(
    run: TrainedRun, kind: str, path: Path, *, seed: int = 0, extra: dict[str, Any] | None = None
) -> Path:
    """A checkpoint of model ``kind`` (:data:`KINDS`) with random weights and ``run``'s normalisation."""
    base_path = find_checkpoint(run.run)
    base = load_checkpoint(base_path)
    cfg = apply_overrides(checkpoint_config(base, base_path), {**KINDS[kind], **(extra or {})})
    torch.manual_seed(seed)
    model = model_class(cfg.model.kind)(cfg, torch.device("cpu"), lambda step: 1.0)
    with torch.no_grad():
        for network in model.networks().values():
            for module in network.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    module.weight.mul_(WEIGHT_SCALE)
    state = model.state_dict()
    save_checkpoint({"config_yaml": config_to_yaml(cfg), "step": 0, "epoch": 0, **state}, path)
    return path
