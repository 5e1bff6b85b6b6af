"""LeNet-5 (LeCun et al. 1998), in the modern form the notes describe: ReLU and max pooling.

    INPUT[28x28x1] -> CONV5-6 (pad 2) -> RELU -> POOL2 -> CONV5-16 (pad 0) -> RELU -> POOL2
                   -> FC-120 -> RELU -> FC-84 -> RELU -> FC-10

The 1998 net took 32x32 inputs with no padding; MNIST digits are 28x28, so by default
conv1 pads by 2, which gives the same 28x28x6 -> 14x14x6 -> 10x10x16 -> 5x5x16 volumes.
``input_size=32`` drops the padding (the original layout). 61,706 parameters at 10 classes.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..layers.activation import ReLU
from .._util import make_rng
from ..layers.conv import Conv2d
from ..layers.linear import Flatten, Linear
from ..layers.pool import MaxPool2d
from ..nets.sequential import Sequential
from .common import check_int
from .registry import register


@register("lenet5", family="lenet", input_shape=(1, 28, 28), num_classes=10,
          description="LeNet-5 with ReLU and max pooling, for 28x28 MNIST (conv1 padded by 2)")
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, rng=None, dtype="float32") -> Sequential:
    """LeNet-5 as ``features`` (conv/relu/pool, indices 0-5), ``flatten``, ``classifier``
    (fc 400->120, relu, fc 120->84, relu, fc 84->num_classes at indices 0, 2, 4).

    ``input_size``: 28 (conv1 padding 2, MNIST) or 32 (no padding, the 1998 layout).
    """
    num_classes = check_int(num_classes, "num_classes", "lenet5")
    in_channels = check_int(in_channels, "in_channels", "lenet5")
    if input_size not in (28, 32) or isinstance(input_size, bool):
        raise ConfigError(f"lenet5: input_size must be 28 (padded conv1) or 32 (the original), got {input_size!r}")
    pad = (32 - input_size) // 2
    gen = make_rng(rng)
    features = Sequential(
        Conv2d(in_channels, 6, 5, padding=pad, rng=gen, dtype=dtype), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5, rng=gen, dtype=dtype), ReLU(), MaxPool2d(2),
    )
    classifier = Sequential(
        Linear(16 * 5 * 5, 120, rng=gen, dtype=dtype), ReLU(),
        Linear(120, 84, rng=gen, dtype=dtype), ReLU(),
        Linear(84, num_classes, rng=gen, dtype=dtype),
    )
    return Sequential([("features", features), ("flatten", Flatten()), ("classifier", classifier)],
                      input_shape=(in_channels, input_size, input_size))
