"""convnp: ConvNets in NumPy, following the CS231n ConvNet notes."""

from .errors import ConfigError, ConvnpError, DataError, ShapeError, StateError
from .layers import Layer

__version__ = "0.1.0"
