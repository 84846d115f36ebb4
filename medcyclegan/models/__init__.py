"""Translation models, one module each, chosen by name (``model.kind``).

    >>> from medcyclegan.models import model_class
    >>> model_class("cyclegan").network_names
    ('G_AB', 'G_BA', 'D_A', 'D_B')

See :mod:`medcyclegan.models.base` for what a model provides and how to add one.
"""

from __future__ import annotations

from medcyclegan.models import cyclegan  # noqa: F401  (registers "cyclegan")
from medcyclegan.models.base import Batch, Direction, TranslationModel
from medcyclegan.models.cyclegan import CycleGAN
from medcyclegan.models.registry import model_class, register_model, registered_models

__all__ = [
    "Batch",
    "CycleGAN",
    "Direction",
    "TranslationModel",
    "model_class",
    "register_model",
    "registered_models",
]
