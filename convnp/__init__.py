"""convnp: ConvNets in NumPy, following the CS231n ConvNet notes."""

from . import data, finetune, io, losses, models, optim
from .errors import ConfigError, ConvnpError, DataError, ShapeError, StateError
from .layers import (ELU, Conv2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Dropout, Dropout2d, Flatten, GlobalAvgPool2d, Layer,
                     LeakyReLU, Linear, LocallyConnected2d, LocalResponseNorm, LPPool2d, MaxPool2d, ReLU, Sigmoid,
                     Tanh)
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
