"""Layers: thin classes over ``convnp.ops``, one family per module.

Every layer class a family module defines is exported here (and from ``convnp``) by name, from
the layer registry: adding a layer to a family file needs no export list.
"""

from . import activation, conv, dropout, linear, locally_connected, norm, pool, shortcut  # noqa: F401
from .base import LAYER_TYPES, Layer, get_layer_class, layer_from_config, layer_to_config

_FAMILIES = tuple(f"{__name__}.{m}" for m in ("activation", "conv", "dropout", "linear", "locally_connected",
                                               "norm", "pool", "shortcut"))
globals().update({name: cls for name, cls in LAYER_TYPES.items() if cls.__module__ in _FAMILIES})
__all__ = sorted(name for name, cls in LAYER_TYPES.items() if cls.__module__ in _FAMILIES) + [
    "LAYER_TYPES", "Layer", "get_layer_class", "layer_from_config", "layer_to_config"]
