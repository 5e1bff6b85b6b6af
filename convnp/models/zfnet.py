"""ZF Net (Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks", Fig. 3).

AlexNet with a smaller, denser first layer: conv1 is 7x7 stride 2 (not 11x11 stride 4) and
conv2 5x5 stride 2; filters 96-256-384-384-256; FC-4096, FC-4096, FC-C::

    224x224x3 -> conv1 7x7/2, pad 1 -> 110x110x96 -> relu -> pool 3/2 -> 55x55x96 -> LRN
              -> conv2 5x5/2, pad 0 -> 26x26x256  -> relu -> pool 3/2 -> 13x13x256 -> LRN
              -> conv3 3x3 pad 1 -> 13x13x384 -> conv4 -> 13x13x384 -> conv5 -> 13x13x256
              -> pool 3/2 -> 6x6x256 -> fc 9216->4096 -> fc 4096->4096 -> fc 4096->C

The paper's sizes are not all integers by the notes' formula; they come from Caffe's
conventions (floor for convolutions, ceil for pools), which we reproduce explicitly:

* conv1: (224-7+2P)/2+1 is never an integer at 224 (224-7 is odd, so no symmetric
  padding works). With P=1: (224-7+2)/2+1 = 110.5, floored to the paper's 110
  (``rounding="floor"``: the last row and column of the padded input go unused).
* pool1: (110-3)/2+1 = 54.5, the paper's 55 by ceiling (``rounding="ceil"``, PyTorch's
  ceil_mode: the last window hangs one pixel over the edge).
* conv2: (55-5+0)/2+1 = 26, exact.  pool2: (26-3)/2+1 = 12.5 -> 13 by ceiling.
* conv3-5 keep 13x13 (3x3, pad 1); pool5: (13-3)/2+1 = 6, exact.

The contrast normalisation after pool1/pool2 is AlexNet's LRN (see ``alexnet_v1``).
62,357,608 parameters at 1000 classes.
"""

from __future__ import annotations

from ..layers.activation import ReLU
from .._util import make_rng
from ..layers.conv import Conv2d
from ..layers.linear import Flatten
from ..layers.norm import LocalResponseNorm
from ..layers.pool import MaxPool2d
from ..nets.sequential import Sequential
from .alexnet import PAPER_LRN, fc_head
from .common import check_int, check_prob
from .registry import register


@register("zfnet", family="alexnet", input_shape=(3, 224, 224), num_classes=1000,
          description="ZF Net 2013: conv1 7x7/2 (96), conv2 5x5/2 (256), 384-384-256, paper's 110/55/26/13/6 sizes")
def zfnet(num_classes: int = 1000, dropout: float = 0.5, rng=None, dtype="float32") -> Sequential:
    """ZF Net as ``features``, ``flatten``, ``classifier`` (AlexNet's head)."""
    num_classes = check_int(num_classes, "num_classes", "zfnet")
    dropout = check_prob(dropout, "dropout", "zfnet")
    gen = make_rng(rng)

    def conv(cin, cout, k, s=1, p=0, rounding="exact"):
        return Conv2d(cin, cout, k, stride=s, padding=p, rounding=rounding, rng=gen, dtype=dtype)

    features = Sequential(
        conv(3, 96, 7, 2, 1, rounding="floor"), ReLU(),                                  # 224 -> 110
        MaxPool2d(3, stride=2, rounding="ceil"), LocalResponseNorm(**PAPER_LRN),         # 110 -> 55
        conv(96, 256, 5, 2), ReLU(),                                                     # 55 -> 26
        MaxPool2d(3, stride=2, rounding="ceil"), LocalResponseNorm(**PAPER_LRN),         # 26 -> 13
        conv(256, 384, 3, p=1), ReLU(),
        conv(384, 384, 3, p=1), ReLU(),
        conv(384, 256, 3, p=1), ReLU(), MaxPool2d(3, stride=2),                          # 13 -> 6
    )
    return Sequential([("features", features), ("flatten", Flatten()),
                       ("classifier", fc_head(256 * 6 * 6, num_classes, dropout, gen, dtype))],
                      input_shape=(3, 224, 224))
