"""The zoo's registry: ``list_models()`` and ``get_model(name, num_classes=None, **options)``.

Each family module registers its builders with ``@register(...)``; importing
``convnp.models`` (which importing this module does first) imports every family, so the
registry is always complete. A builder takes ``num_classes``, ``rng`` (a numpy Generator or an int seed) and
``dtype`` plus its own options, and returns a Layer whose ``input_shape`` is its default
input (C, H, W).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model."""

    name: str
    builder: object
    family: str
    input_shape: tuple
    num_classes: int
    description: str

    @property
    def options(self) -> tuple:
        """The builder's keyword options (besides num_classes, rng, dtype)."""
        params = inspect.signature(self.builder).parameters
        return tuple(p for p in params if p not in ("num_classes", "rng", "dtype"))


_MODELS: dict[str, ModelInfo] = {}

#: list_models() order: small nets first, then roughly by year
FAMILIES = ("lenet", "small", "alexnet", "vgg", "googlenet", "resnet", "resnet_cifar")


def register(name: str, family: str, input_shape: tuple, num_classes: int, description: str):
    """Decorator adding a builder to the zoo under ``name``."""

    def wrap(fn):
        if family not in FAMILIES:
            raise ConfigError(f"model {name!r}: unknown family {family!r}; add it to FAMILIES")
        if name in _MODELS:
            raise ConfigError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, fn, family, tuple(input_shape), num_classes, description)
        return fn

    return wrap


def list_models(family: str | None = None) -> list:
    """Names of every model in the zoo, grouped by family (``FAMILIES`` order), small to large
    within a family; ``family`` (e.g. ``"resnet"``) keeps that family only."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"list_models: unknown family {family!r}; families: {', '.join(FAMILIES)}")
    names = sorted(_MODELS, key=lambda n: FAMILIES.index(_MODELS[n].family))  # stable: keeps registration order
    return [n for n in names if family is None or _MODELS[n].family == family]


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name`` (family, default input shape and classes, options)."""
    if not isinstance(name, str) or name not in _MODELS:
        close = difflib.get_close_matches(str(name).lower(), list(_MODELS), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} Known models: {', '.join(_MODELS)}")
    return _MODELS[name]


def get_model(name: str, num_classes: int | None = None, **options):
    """Build the zoo model ``name`` with fresh (He-initialised) weights.

    ``num_classes`` defaults to the model's own (1000 for the ImageNet nets, 10 for the
    MNIST/CIFAR ones). ``options``: ``rng`` (Generator or int seed), ``dtype`` and the
    model's own keywords (``model_info(name).options``); an unknown one is a ConfigError.
    """
    info = model_info(name)
    allowed = set(info.options) | {"rng", "dtype"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"get_model({name!r}): unknown option(s) {unknown}; "
                          f"{name} takes {', '.join(sorted(allowed))}")
    if num_classes is not None:
        options["num_classes"] = num_classes
    return info.builder(**options)
