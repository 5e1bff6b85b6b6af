"""Layers: thin classes over ``convnp.ops``, one family per module."""

from .base import LAYER_TYPES, Layer, get_layer_class
