"""AlexNet: torchvision's variant (``alexnet``) and the 2012 paper's (``alexnet_v1``).

``alexnet`` follows torchvision's layout exactly (the "one weird trick" variant:
64-192-384-256-256 filters, no LRN), so its state_dict names and shapes are torchvision's::

    features:   0 conv 11x11/4 pad 2 (3->64)   1 relu  2 maxpool 3/2
                3 conv 5x5 pad 2 (64->192)     4 relu  5 maxpool 3/2
                6 conv 3x3 pad 1 (192->384)    7 relu
                8 conv 3x3 pad 1 (384->256)    9 relu
               10 conv 3x3 pad 1 (256->256)   11 relu 12 maxpool 3/2
    avgpool:    adaptive average pool to 6x6 (the identity at 224x224)
    classifier: 0 dropout  1 fc 9216->4096  2 relu  3 dropout  4 fc 4096->4096  5 relu  6 fc 4096->C

At 224x224 conv1 gives (224-11+2*2)/4+1 = 55.25, which PyTorch floors to 55; every
layer therefore uses ``rounding="floor"`` so the net behaves as torchvision's at any size.
61,100,840 parameters at 1000 classes.

``alexnet_v1`` is the paper's single-tower net (Krizhevsky et al. 2012, the two GPU halves
merged): 227x227 input, CONV11-96/S4 -> RELU -> LRN -> POOL3/S2 -> CONV5-256 -> RELU -> LRN
-> POOL3/S2 -> CONV3-384 -> RELU -> CONV3-384 -> RELU -> CONV3-256 -> RELU -> POOL3/S2 ->
FC-4096 -> RELU -> DROPOUT -> FC-4096 -> RELU -> DROPOUT -> FC-1000. Volumes
55x55x96 -> 27x27x96 -> 27x27x256 -> 13x13x256 -> 13x13x384 ... -> 6x6x256, all exact.
The LRN is the paper's (n=5, k=2, alpha=1e-4, beta=0.75 in its formula); PyTorch and convnp
divide alpha by n, so the layer gets alpha = 5e-4.
"""

from __future__ import annotations

from ..layers.activation import ReLU
from .._util import make_rng
from ..layers.conv import Conv2d
from ..layers.dropout import Dropout
from ..layers.linear import Flatten, Linear
from ..layers.norm import LocalResponseNorm
from ..layers.pool import MaxPool2d
from ..nets.sequential import Sequential
from ..layers.pool import AdaptiveAvgPool2d
from .common import check_int, check_prob
from .registry import register

#: the paper's LRN: k=2, n=5, alpha=1e-4 (not divided by n), beta=0.75, in PyTorch's convention
PAPER_LRN = {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0}


def fc_head(in_features: int, num_classes: int, dropout: float, gen, dtype, hidden: int = 4096) -> Sequential:
    """AlexNet's classifier: dropout, fc, relu, dropout, fc, relu, fc (torchvision's order)."""
    return Sequential(
        Dropout(dropout, rng=gen), Linear(in_features, hidden, rng=gen, dtype=dtype), ReLU(),
        Dropout(dropout, rng=gen), Linear(hidden, hidden, rng=gen, dtype=dtype), ReLU(),
        Linear(hidden, num_classes, rng=gen, dtype=dtype),
    )


@register("alexnet", family="alexnet", input_shape=(3, 224, 224), num_classes=1000,
          description="torchvision's AlexNet (64-192-384-256-256, adaptive 6x6 pool), weights map one to one")
def alexnet(num_classes: int = 1000, dropout: float = 0.5, rng=None, dtype="float32") -> Sequential:
    """torchvision's AlexNet: ``features``, ``avgpool``, ``flatten``, ``classifier``."""
    num_classes = check_int(num_classes, "num_classes", "alexnet")
    dropout = check_prob(dropout, "dropout", "alexnet")
    gen = make_rng(rng)

    def conv(cin, cout, k, s=1, p=0):
        return Conv2d(cin, cout, k, stride=s, padding=p, rounding="floor", rng=gen, dtype=dtype)

    def pool():
        return MaxPool2d(3, stride=2, rounding="floor")

    features = Sequential(
        conv(3, 64, 11, 4, 2), ReLU(), pool(),
        conv(64, 192, 5, p=2), ReLU(), pool(),
        conv(192, 384, 3, p=1), ReLU(),
        conv(384, 256, 3, p=1), ReLU(),
        conv(256, 256, 3, p=1), ReLU(), pool(),
    )
    return Sequential([("features", features), ("avgpool", AdaptiveAvgPool2d(6)), ("flatten", Flatten()),
                       ("classifier", fc_head(256 * 6 * 6, num_classes, dropout, gen, dtype))],
                      input_shape=(3, 224, 224))


@register("alexnet_v1", family="alexnet", input_shape=(3, 227, 227), num_classes=1000,
          description="the 2012 paper's AlexNet, single tower: 96-256-384-384-256, LRN, overlapping pools")
def alexnet_v1(num_classes: int = 1000, dropout: float = 0.5, rng=None, dtype="float32") -> Sequential:
    """The paper's AlexNet on 227x227 inputs (every size exact): ``features`` (conv, relu,
    lrn, pool x2, then three convs and a pool), ``flatten``, ``classifier`` as ``alexnet``'s."""
    num_classes = check_int(num_classes, "num_classes", "alexnet_v1")
    dropout = check_prob(dropout, "dropout", "alexnet_v1")
    gen = make_rng(rng)

    def conv(cin, cout, k, s=1, p=0):
        return Conv2d(cin, cout, k, stride=s, padding=p, rng=gen, dtype=dtype)

    features = Sequential(
        conv(3, 96, 11, 4), ReLU(), LocalResponseNorm(**PAPER_LRN), MaxPool2d(3, stride=2),      # 55 -> 27
        conv(96, 256, 5, p=2), ReLU(), LocalResponseNorm(**PAPER_LRN), MaxPool2d(3, stride=2),   # 27 -> 13
        conv(256, 384, 3, p=1), ReLU(),
        conv(384, 384, 3, p=1), ReLU(),
        conv(384, 256, 3, p=1), ReLU(), MaxPool2d(3, stride=2),                                 # 13 -> 6
    )
    return Sequential([("features", features), ("flatten", Flatten()),
                       ("classifier", fc_head(256 * 6 * 6, num_classes, dropout, gen, dtype))],
                      input_shape=(3, 227, 227))
