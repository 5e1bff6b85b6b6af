"""Layers: thin classes over ``convnp.ops``, one family per module."""

from .activation import ELU, LeakyReLU, ReLU, Sigmoid, Tanh
from .conv import Conv2d
from .base import LAYER_TYPES, Layer, get_layer_class, layer_from_config, layer_to_config
from .dropout import Dropout, Dropout2d
from .linear import Flatten, Linear
from .locally_connected import LocallyConnected2d
from .norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from .pool import AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, LPPool2d, MaxPool2d
from .shortcut import ZeroPadShortcut
