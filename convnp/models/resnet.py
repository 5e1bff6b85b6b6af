"""ResNets (He et al. 2015): torchvision's ImageNet nets and the paper's CIFAR-10 nets.

ImageNet (``resnet18/34/50/101/152``), torchvision's v1.5 layout and names::

    conv1 7x7/2 pad 3 (3->64) -> bn1 -> relu -> maxpool 3x3/2 pad 1
    -> layer1 .. layer4 (64, 128, 256, 512 planes; stride 2 at the start of layers 2-4)
    -> avgpool (global) -> flatten -> fc (512*expansion -> C)

Blocks are ``convnp.nets.BasicBlock`` / ``Bottleneck``, Graphs named like torchvision's
modules: a basic block is ``conv1 (3x3, stride) -> bn1 -> relu1 -> conv2 (3x3) -> bn2``, a bottleneck
``conv1 (1x1) -> bn1 -> relu1 -> conv2 (3x3, stride: v1.5) -> bn2 -> relu2 -> conv3 (1x1,
4x planes) -> bn3``; then ``add`` with the shortcut (the identity, or ``downsample`` = 1x1
conv with the stride + BN when the shape changes) and ``relu``. Convs have no bias. Blocks per
stage: 18: 2-2-2-2, 34: 3-4-6-3 (basic); 50: 3-4-6-3, 101: 3-4-23-3, 152: 3-8-36-3 (bottleneck).
A 3x3/2 conv with pad 1 on an even size gives (H-3+2)/2+1 = H/2 + 0.5, which PyTorch floors;
so every strided conv and pool here uses ``rounding="floor"`` (at 224: 112, 56, 28, 14, 7).

CIFAR-10 (``resnet20/32/44/56``: 6n+2 layers for n = 3, 5, 7, 9), section 4.2 of the paper:
conv 3x3 (3->16) -> bn -> relu -> three stages of n basic blocks with 16, 32, 64 filters
(stride 2 at the start of stages 2 and 3: 32x32 -> 16x16 -> 8x8) -> global average pool ->
fc 64->10. Shortcut option ``"A"`` (the paper's choice for CIFAR, the default): where the
shape changes, the identity is subsampled (every second pixel) and the new channels are zeros,
so the shortcuts have no parameters (resnet20: 269,722 parameters); those two blocks are
Graphs with a ``ZeroPadShortcut`` named ``downsample``, the others ``BasicBlock``s. Option
``"B"``: a 1x1 conv (stride 2) + BN projection there instead (resnet20: 272,474).
"""

from __future__ import annotations

from ..errors import ConfigError
from ..layers.activation import ReLU
from .._util import make_rng
from ..layers.conv import Conv2d
from ..layers.linear import Flatten, Linear
from ..layers.norm import BatchNorm2d
from ..layers.pool import GlobalAvgPool2d, MaxPool2d
from ..layers.shortcut import ZeroPadShortcut
from ..nets.blocks import BasicBlock, Bottleneck, residual_block
from ..nets.graph import Graph
from ..nets.sequential import Sequential
from .common import check_int
from .registry import register


def _conv(cin, cout, k, stride, padding, gen, dtype) -> Conv2d:
    return Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False, rounding="floor", rng=gen, dtype=dtype)


def _pad_block(inplanes: int, planes: int, stride: int, gen, dtype) -> Graph:
    """A basic block whose shortcut is the option-A ``ZeroPadShortcut`` (named ``downsample``, no
    parameters); the names are BasicBlock's: conv1, bn1, relu1, conv2, bn2, downsample, add, relu."""
    body = [("conv1", _conv(inplanes, planes, 3, stride, 1, gen, dtype)), ("bn1", BatchNorm2d(planes, dtype=dtype)),
            ("relu1", ReLU()),
            ("conv2", _conv(planes, planes, 3, 1, 1, gen, dtype)), ("bn2", BatchNorm2d(planes, dtype=dtype))]
    return residual_block(body, ("downsample", ZeroPadShortcut(inplanes, planes, stride)), ("relu", ReLU()))


_IMAGENET = {
    18: ("basic", [2, 2, 2, 2], 11_689_512),
    34: ("basic", [3, 4, 6, 3], 21_797_672),
    50: ("bottleneck", [3, 4, 6, 3], 25_557_032),
    101: ("bottleneck", [3, 4, 23, 3], 44_549_160),
    152: ("bottleneck", [3, 8, 36, 3], 60_192_808),
}


def make_resnet(kind: str, layers: list, num_classes: int = 1000, in_channels: int = 3, rng=None,
                dtype="float32", name: str = "resnet") -> Sequential:
    """torchvision's ResNet from a block kind ("basic" or "bottleneck") and blocks per stage."""
    num_classes = check_int(num_classes, "num_classes", name)
    in_channels = check_int(in_channels, "in_channels", name)
    gen = make_rng(rng)
    block = BasicBlock if kind == "basic" else Bottleneck
    net = [("conv1", _conv(in_channels, 64, 7, 2, 3, gen, dtype)), ("bn1", BatchNorm2d(64, dtype=dtype)),
           ("relu", ReLU()), ("maxpool", MaxPool2d(3, stride=2, padding=1, rounding="floor"))]
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        stride = 1 if i == 0 else 2
        stage = []
        for j in range(blocks):
            s = stride if j == 0 else 1  # the block adds the downsample projection where the shape changes
            stage.append(block(inplanes, planes, s, rng=gen, dtype=dtype))
            inplanes = planes * block.expansion
        net.append((f"layer{i + 1}", Sequential(stage)))
    net += [("avgpool", GlobalAvgPool2d()), ("flatten", Flatten()),
            ("fc", Linear(inplanes, num_classes, rng=gen, dtype=dtype))]
    return Sequential(net, input_shape=(in_channels, 224, 224))


def _imagenet_variant(depth: int):
    kind, layers, params = _IMAGENET[depth]
    name = f"resnet{depth}"

    def build(num_classes: int = 1000, in_channels: int = 3, rng=None, dtype="float32") -> Sequential:
        return make_resnet(kind, layers, num_classes, in_channels, rng, dtype, name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"ResNet-{depth} (torchvision v1.5 layout, {kind} blocks {'-'.join(map(str, layers))}); "
                     f"{params:,} parameters at 1000 classes.")
    desc = f"ResNet-{depth}, torchvision v1.5 ({kind} blocks {'-'.join(map(str, layers))})"
    return register(name, family="resnet", input_shape=(3, 224, 224), num_classes=1000, description=desc)(build)


resnet18 = _imagenet_variant(18)
resnet34 = _imagenet_variant(34)
resnet50 = _imagenet_variant(50)
resnet101 = _imagenet_variant(101)
resnet152 = _imagenet_variant(152)


# --- CIFAR-10 ResNets ------------------------------------------------------------------------------
def make_cifar_resnet(n: int, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3, rng=None,
                      dtype="float32", name: str = "cifar_resnet") -> Sequential:
    """The paper's 6n+2-layer CIFAR ResNet (16-32-64 filters, n basic blocks per stage)."""
    n = check_int(n, "n", name)
    num_classes = check_int(num_classes, "num_classes", name)
    in_channels = check_int(in_channels, "in_channels", name)
    if shortcut not in ("A", "B"):
        raise ConfigError(f"{name}: shortcut must be 'A' (zero-padding identity, the paper's) or 'B' "
                          f"(1x1 conv projection), got {shortcut!r}")
    gen = make_rng(rng)
    net = [("conv1", _conv(in_channels, 16, 3, 1, 1, gen, dtype)), ("bn1", BatchNorm2d(16, dtype=dtype)),
           ("relu", ReLU())]
    inplanes = 16
    for i, planes in enumerate((16, 32, 64)):
        stage = []
        for j in range(n):
            s = 2 if (i > 0 and j == 0) else 1
            if shortcut == "A" and (s != 1 or inplanes != planes):
                stage.append(_pad_block(inplanes, planes, s, gen, dtype))
            else:  # identity, or option B's 1x1 conv + BN projection where the shape changes
                stage.append(BasicBlock(inplanes, planes, s, rng=gen, dtype=dtype))
            inplanes = planes
        net.append((f"layer{i + 1}", Sequential(stage)))
    net += [("avgpool", GlobalAvgPool2d()), ("flatten", Flatten()),
            ("fc", Linear(64, num_classes, rng=gen, dtype=dtype))]
    return Sequential(net, input_shape=(in_channels, 32, 32))


def _cifar_variant(depth: int):
    n = (depth - 2) // 6
    name = f"resnet{depth}"

    def build(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3, rng=None,
              dtype="float32") -> Sequential:
        return make_cifar_resnet(n, num_classes, shortcut, in_channels, rng, dtype, name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"ResNet-{depth} for CIFAR-10 (He et al. 2015, 4.2): 3 stages of {n} basic blocks, "
                     "16-32-64 filters; shortcut 'A' (zero padding, default) or 'B' (projection).")
    desc = f"CIFAR-10 ResNet-{depth} (n={n}), 16-32-64 filters, option-A shortcuts by default"
    return register(name, family="resnet_cifar", input_shape=(3, 32, 32), num_classes=10, description=desc)(build)


resnet20 = _cifar_variant(20)
resnet32 = _cifar_variant(32)
resnet44 = _cifar_variant(44)
resnet56 = _cifar_variant(56)
