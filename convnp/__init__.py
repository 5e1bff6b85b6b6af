"""convnp: ConvNets in NumPy, following the CS231n ConvNet notes."""

from . import data, finetune, io, losses, models, optim
from .errors import ConfigError, ConvnpError, DataError, ShapeError, StateError
from .layers import *  # noqa: F403 - every layer class by name (cn.Conv2d, cn.GroupNorm, ...)
from .layers import Layer
from .io.model_file import load_model as load
from .losses import MulticlassSVM, SoftmaxCrossEntropy, probabilities
from .nets import (Add, BasicBlock, Bottleneck, Concat, Graph, Inception, Sequential, conv_bn_relu, inception_block,
                   residual_block)
from .notation.spec import SpecError, parse, to_spec
from .inspect import memory
from .inspect.summary import Summary, summary
from .notation import convert
from .threads import get_num_threads, num_threads, set_num_threads

__version__ = "0.1.0"
