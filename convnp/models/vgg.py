"""VGG-11/13/16/19 (Simonyan & Zisserman 2014), with and without batch norm, in torchvision's layout.

``features`` is a flat Sequential of 3x3 convs (pad 1, so the size is kept), each followed
by (BN and) ReLU, with a 2x2/2 max pool after every stage; channel plans (configs A, B, D, E)::

    vgg11: 64 M 128 M 256 256 M 512 512 M 512 512 M
    vgg13: 64 64 M 128 128 M 256 256 M 512 512 M 512 512 M
    vgg16: 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M
    vgg19: 64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M

then ``avgpool`` (adaptive to 7x7: the identity at 224x224) and ``classifier``
(fc 25088->4096, relu, dropout, fc 4096->4096, relu, dropout, fc 4096->C at indices
0, 3, 6). Indices in ``features`` count every layer, as torchvision's do, so
``features.0.weight`` ... load one to one. The pools use ``rounding="floor"`` (PyTorch's
behaviour) so odd sizes work as in torchvision; at 224 (or any multiple of 32) every pool is exact.
"""

from __future__ import annotations

from ..layers.activation import ReLU
from .._util import make_rng
from ..layers.conv import Conv2d
from ..layers.dropout import Dropout
from ..layers.linear import Flatten, Linear
from ..layers.norm import BatchNorm2d
from ..layers.pool import MaxPool2d
from ..nets.sequential import Sequential
from ..layers.pool import AdaptiveAvgPool2d
from .common import check_int, check_prob
from .registry import register

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_vgg(plan: list, num_classes: int = 1000, batch_norm: bool = False, dropout: float = 0.5,
             in_channels: int = 3, rng=None, dtype="float32", name: str = "vgg") -> Sequential:
    """A VGG from a channel plan (ints are 3x3 conv widths, "M" a 2x2/2 max pool)."""
    num_classes = check_int(num_classes, "num_classes", name)
    in_channels = check_int(in_channels, "in_channels", name)
    dropout = check_prob(dropout, "dropout", name)
    gen = make_rng(rng)
    layers, c = [], in_channels
    for v in plan:
        if v == "M":
            layers.append(MaxPool2d(2, stride=2, rounding="floor"))
            continue
        layers.append(Conv2d(c, v, 3, padding=1, rng=gen, dtype=dtype))
        if batch_norm:
            layers.append(BatchNorm2d(v, dtype=dtype))
        layers.append(ReLU())
        c = v
    classifier = Sequential(
        Linear(c * 7 * 7, 4096, rng=gen, dtype=dtype), ReLU(), Dropout(dropout, rng=gen),
        Linear(4096, 4096, rng=gen, dtype=dtype), ReLU(), Dropout(dropout, rng=gen),
        Linear(4096, num_classes, rng=gen, dtype=dtype),
    )
    return Sequential([("features", Sequential(layers)), ("avgpool", AdaptiveAvgPool2d(7)),
                       ("flatten", Flatten()), ("classifier", classifier)],
                      input_shape=(in_channels, 224, 224))


def _variant(depth: int, batch_norm: bool):
    key = f"vgg{depth}"
    name = key + ("_bn" if batch_norm else "")
    convs = sum(1 for v in CONFIGS[key] if v != "M")

    def build(num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3, rng=None,
              dtype="float32") -> Sequential:
        return make_vgg(CONFIGS[key], num_classes, batch_norm, dropout, in_channels, rng, dtype, name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"VGG-{depth} (torchvision's layout{', batch norm after every conv' if batch_norm else ''}): "
                     f"{convs} 3x3 convs and 3 FC layers.")
    desc = f"VGG-{depth}{' with batch norm' if batch_norm else ''}, torchvision layout"
    return register(name, family="vgg", input_shape=(3, 224, 224), num_classes=1000, description=desc)(build)


vgg11 = _variant(11, False)
vgg13 = _variant(13, False)
vgg16 = _variant(16, False)
vgg19 = _variant(19, False)
vgg11_bn = _variant(11, True)
vgg13_bn = _variant(13, True)
vgg16_bn = _variant(16, True)
vgg19_bn = _variant(19, True)
