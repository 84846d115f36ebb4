"""Data pipeline: volumes -> body mask and normalisation -> prepared volumes -> axial training slices.

Modules:
    normalise: exact, invertible modality normalisation (CT HU window, MR percentiles) and checks.
    mask: automatic body masks.
    prepare: ``prepare_volume`` (mask, normalise, in-plane resampling) and ``restore_inplane``.
    slices: slice selection, 2.5D context, pad/crop, the ``SliceDataset`` and, for registered pairs,
        the ``PairedSliceDataset``.
    cache: ``load_prepared``: read and prepare once, in memory or a memory-mapped disk cache.

Names are imported lazily so that ``import medcyclegan.data`` does not load torch or MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "NormParams": "normalise",
    "fit_normalisation": "normalise",
    "normalise": "normalise",
    "denormalise": "normalise",
    "check_modality": "normalise",
    "domain_record": "normalise",
    "output_params": "normalise",
    "body_mask": "mask",
    "PreparedVolume": "prepare",
    "prepare_volume": "prepare",
    "restore_inplane": "prepare",
    "select_slices": "slices",
    "slice_with_context": "slices",
    "pad_or_crop": "slices",
    "SliceDataset": "slices",
    "PairedSliceDataset": "slices",
    "load_prepared": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medcyclegan.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medcyclegan.data.{module}"), name)
