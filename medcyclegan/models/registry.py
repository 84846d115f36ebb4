"""Translation models by name (``model.kind`` in a config, ``--model`` of ``train``).

The model ``kind`` lives in the module ``medcyclegan.models.<kind>`` (``-`` read as ``_``), imported
the first time the kind is asked for: adding a model is that module and its config section.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from medcyclegan.config import MODEL_KINDS
from medcyclegan.errors import ConfigError

if TYPE_CHECKING:
    from medcyclegan.models.base import TranslationModel

ModelClass = TypeVar("ModelClass", bound="type[TranslationModel]")

_MODELS: dict[str, type[TranslationModel]] = {}


def register_model(kind: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: makes the model available as ``model.kind: <kind>``.

    Raises:
        ValueError: ``kind`` is not in :data:`medcyclegan.config.MODEL_KINDS` (the config checks
            names against that list before any model module is imported) or is taken.
    """

    def register(cls: ModelClass) -> ModelClass:
        if kind not in MODEL_KINDS:
            raise ValueError(f"model kind {kind!r} is not in medcyclegan.config.MODEL_KINDS")
        if kind in _MODELS and _MODELS[kind] is not cls:
            raise ValueError(f"model kind {kind!r} is registered twice")
        cls.kind = kind
        _MODELS[kind] = cls
        return cls

    return register


def model_class(kind: str) -> type[TranslationModel]:
    """The class registered as ``kind``.

    Raises:
        ConfigError: an unknown kind (one line listing the known ones).
    """
    if kind not in _MODELS and kind in MODEL_KINDS:
        importlib.import_module(f"medcyclegan.models.{kind.replace('-', '_')}")
    try:
        return _MODELS[kind]
    except KeyError:
        raise ConfigError(f"model.kind must be one of {', '.join(MODEL_KINDS)}; got {kind!r}") from None


def registered_models() -> tuple[str, ...]:
    """The names of every model of :data:`~medcyclegan.config.MODEL_KINDS` (imported) and any other
    registered one, sorted."""
    for kind in MODEL_KINDS:
        model_class(kind)
    return tuple(sorted(_MODELS))
