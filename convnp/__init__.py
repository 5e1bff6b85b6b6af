"""convnp: ConvNets in NumPy, following the CS231n ConvNet notes."""

from . import losses
from .errors import ConfigError, ConvnpError, DataError, ShapeError, StateError
from .layers import (ELU, BatchNorm1d, BatchNorm2d, Dropout, Dropout2d, Flatten, Layer, LeakyReLU, Linear,
                     LocalResponseNorm, ReLU, Sigmoid, Tanh)
from .losses import MulticlassSVM, SoftmaxCrossEntropy, probabilities

__version__ = "0.1.0"
