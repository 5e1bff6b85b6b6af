"""Building blocks for residual and inception nets, with torchvision's child names.

Generic builders take the layers: ``residual_block(body, shortcut, post)`` and
``inception_block(branches)`` return a Graph. The classes build the standard blocks
from channel counts, named so that torchvision state_dicts load one to one:

* ``BasicBlock`` / ``Bottleneck`` (ResNet): ``conv1.weight``, ``bn1.running_mean``,
  ``downsample.0.weight``, ``downsample.1.weight`` ...
* ``Inception`` (GoogLeNet): ``branch1.conv.weight``, ``branch2.0.conv.weight``,
  ``branch2.1.bn.running_var``, ``branch4.1.conv.weight`` ...
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..layers.base import LAYER_TYPES, Layer, check_dtype
from .._util import make_rng
from .graph import INPUT, Add, Concat, Graph
from .sequential import Sequential


def _layers():
    """The layer classes the blocks use (imported late: they live in sibling modules)."""
    from ..layers.activation import ReLU  # noqa: PLC0415
    from ..layers.conv import Conv2d  # noqa: PLC0415
    from ..layers.norm import BatchNorm2d  # noqa: PLC0415
    from ..layers.pool import MaxPool2d  # noqa: PLC0415

    return Conv2d, BatchNorm2d, ReLU, MaxPool2d


def _count(value, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _named(item, default: str):
    """(name, layer) from a Layer or a (name, layer) pair."""
    if isinstance(item, Layer):
        return default, item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item
    raise ConfigError(f"expected a Layer or a (name, layer) pair, got {item!r}")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 batch_norm: bool = True, bn_eps: float = 1e-5, rng=None, dtype="float32") -> Sequential:
    """Conv -> BatchNorm -> ReLU as a Sequential named ``conv``, ``bn``, ``relu``
    (torchvision's BasicConv2d). With BatchNorm the conv has no bias (the BN shift
    replaces it); with ``batch_norm=False`` it is Conv (with bias) -> ReLU."""
    Conv2d, BatchNorm2d, ReLU, _ = _layers()
    rng = make_rng(rng)
    conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                  bias=not batch_norm, rng=rng, dtype=dtype)
    if batch_norm:
        return Sequential([("conv", conv), ("bn", BatchNorm2d(out_channels, eps=bn_eps, dtype=dtype)),
                           ("relu", ReLU())])
    return Sequential([("conv", conv), ("relu", ReLU())])


def _residual_nodes(body, shortcut=None, post=None) -> list:
    body = body.named_children() if isinstance(body, Sequential) else [
        _named(item, str(i)) for i, item in enumerate(body)]
    if not body:
        raise ConfigError("residual_block: the body needs at least one layer")
    nodes, prev = [], INPUT
    for name, layer in body:
        nodes.append((name, layer, prev))
        prev = name
    skip = INPUT
    if shortcut is not None:
        skip, layer = _named(shortcut, "shortcut")
        nodes.append((skip, layer, INPUT))
    nodes.append(("add", Add(), [prev, skip]))
    if post is not None:
        name, layer = _named(post, "post")
        nodes.append((name, layer, "add"))
    return nodes


def residual_block(body, shortcut=None, post=None) -> Graph:
    """out = post(body(x) + shortcut(x)) as a Graph.

    ``body``: a Sequential or a list of layers / (name, layer) pairs, chained; each becomes
    a node of that name. ``shortcut``: None for the identity, else a layer or (name, layer)
    (default name ``shortcut``), e.g. a 1x1 conv + BN projection. ``post``: None or a layer /
    (name, layer) applied after the sum (default name ``post``), e.g. ReLU.
    """
    return Graph(_residual_nodes(body, shortcut, post))


def inception_block(branches) -> Graph:
    """Run each branch on the input and concatenate the results along the channels.

    ``branches``: a dict or list of (name, layer) pairs (or layers, named ``branch1`` ...).
    The Concat node is named ``concat``.
    """
    items = list(branches.items()) if isinstance(branches, dict) else [
        _named(b, f"branch{i + 1}") for i, b in enumerate(branches)]
    if len(items) < 2:
        raise ConfigError("inception_block: needs at least two branches")
    nodes = [(name, layer, INPUT) for name, layer in items]
    nodes.append(("concat", Concat(), [name for name, _ in items]))
    return Graph(nodes)


class _Block(Graph):
    """A Graph built from constructor arguments; its config is those arguments (plus dtype)."""

    def get_config(self) -> dict:
        return {**self._block_args, "dtype": self._child_dtype()}

    @classmethod
    def from_config(cls, cfg: dict):
        return cls(**cfg)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._block_args.items())


def _rounding(stride: int) -> dict:
    """A strided conv in a ResNet rounds its output size down, as PyTorch does (56 -> 28)."""
    return {"rounding": "floor"} if stride != 1 else {}


def _downsample(inplanes, outplanes, stride, rng, dtype) -> Sequential:
    Conv2d, BatchNorm2d, _, _ = _layers()
    return Sequential(Conv2d(inplanes, outplanes, 1, stride=stride, bias=False, rng=rng, dtype=dtype,
                             **_rounding(stride)),
                      BatchNorm2d(outplanes, dtype=dtype))


class _ResidualBlock(_Block):
    """Shared argument handling of BasicBlock and Bottleneck."""

    expansion = 1

    def _init_block(self, inplanes, planes, stride, downsample, extra: dict, rng, dtype) -> None:
        owner = type(self).__name__
        args = {"inplanes": _count(inplanes, "inplanes", owner), "planes": _count(planes, "planes", owner),
                "stride": _count(stride, "stride", owner)}
        check_dtype(dtype)
        if downsample is None:  # torchvision's rule in ResNet._make_layer
            downsample = stride != 1 or inplanes != planes * self.expansion
        if not isinstance(downsample, (bool, np.bool_)):
            raise ConfigError(f"{owner}: downsample must be None, True or False, got {downsample!r}")
        self._block_args = {**args, "downsample": bool(downsample), **extra}
        super().__init__(self._build(make_rng(rng), dtype, **self._block_args))


class BasicBlock(_ResidualBlock):
    """ResNet's basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    conv1 is 3x3 with ``stride``, conv2 3x3; both without bias. The shortcut is the
    identity, or ``downsample`` = 1x1 conv (stride) + BN when ``downsample`` is True;
    None (default) picks it as torchvision's ResNet does: when stride != 1 or
    inplanes != planes. (C=inplanes, H, W) -> (planes, (H-1)//stride+1, (W-1)//stride+1).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool | None = None,
                 rng=None, dtype="float32"):
        self._init_block(inplanes, planes, stride, downsample, {}, rng, dtype)

    @staticmethod
    def _build(rng, dtype, inplanes, planes, stride, downsample) -> list:
        Conv2d, BatchNorm2d, ReLU, _ = _layers()
        body = [("conv1", Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype,
                                 **_rounding(stride))),
                ("bn1", BatchNorm2d(planes, dtype=dtype)), ("relu1", ReLU()),
                ("conv2", Conv2d(planes, planes, 3, padding=1, bias=False, rng=rng, dtype=dtype)),
                ("bn2", BatchNorm2d(planes, dtype=dtype))]
        short = ("downsample", _downsample(inplanes, planes, stride, rng, dtype)) if downsample else None
        return _residual_nodes(body, short, ("relu", ReLU()))


class Bottleneck(_ResidualBlock):
    """ResNet's bottleneck (torchvision's v1.5: the stride sits on the 3x3 conv):
    1x1 conv to width -> 3x3 conv (stride) -> 1x1 conv to planes*4, BN after each,
    ReLU after the first two and after the sum with the shortcut.

    width = planes * base_width // 64 (wide ResNets use base_width=128). ``downsample``
    as in BasicBlock (auto when stride != 1 or inplanes != planes*4).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool | None = None,
                 base_width: int = 64, rng=None, dtype="float32"):
        base_width = _count(base_width, "base_width", type(self).__name__)
        self._init_block(inplanes, planes, stride, downsample, {"base_width": base_width}, rng, dtype)

    @staticmethod
    def _build(rng, dtype, inplanes, planes, stride, downsample, base_width) -> list:
        Conv2d, BatchNorm2d, ReLU, _ = _layers()
        width = planes * base_width // 64
        out = planes * Bottleneck.expansion
        if width < 1:
            raise ConfigError(f"Bottleneck: planes*base_width//64 = {width}; it must be >= 1")
        body = [("conv1", Conv2d(inplanes, width, 1, bias=False, rng=rng, dtype=dtype)),
                ("bn1", BatchNorm2d(width, dtype=dtype)), ("relu1", ReLU()),
                ("conv2", Conv2d(width, width, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype,
                                 **_rounding(stride))),
                ("bn2", BatchNorm2d(width, dtype=dtype)), ("relu2", ReLU()),
                ("conv3", Conv2d(width, out, 1, bias=False, rng=rng, dtype=dtype)),
                ("bn3", BatchNorm2d(out, dtype=dtype))]
        short = ("downsample", _downsample(inplanes, out, stride, rng, dtype)) if downsample else None
        return _residual_nodes(body, short, ("relu", ReLU()))


class Inception(_Block):
    """GoogLeNet's inception module: four branches concatenated along the channels.

    branch1: 1x1 conv (ch1x1); branch2: 1x1 (ch3x3red) -> 3x3 (ch3x3);
    branch3: 1x1 (ch5x5red) -> KxK (ch5x5) with K = ``branch3_kernel_size`` (5 in the paper;
    torchvision's GoogLeNet uses 3, pass 3 to load its weights); branch4: 3x3 max pool
    (stride 1, pad 1) -> 1x1 (pool_proj). Every conv is a ``conv_bn_relu`` (BN eps
    ``bn_eps``, 1e-3 as torchvision), or conv+ReLU with ``batch_norm=False`` (the paper).
    (in_channels, H, W) -> (ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W).
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, batch_norm: bool = True, branch3_kernel_size: int = 5, bn_eps: float = 1e-3,
                 rng=None, dtype="float32"):
        owner = type(self).__name__
        counts = {"in_channels": in_channels, "ch1x1": ch1x1, "ch3x3red": ch3x3red, "ch3x3": ch3x3,
                  "ch5x5red": ch5x5red, "ch5x5": ch5x5, "pool_proj": pool_proj}
        args = {k: _count(v, k, owner) for k, v in counts.items()}
        if not isinstance(batch_norm, (bool, np.bool_)):
            raise ConfigError(f"{owner}: batch_norm must be True or False, got {batch_norm!r}")
        k3 = _count(branch3_kernel_size, "branch3_kernel_size", owner)
        if k3 % 2 == 0:
            raise ConfigError(f"{owner}: branch3_kernel_size must be odd (padding (K-1)/2 keeps the size), got {k3}")
        if isinstance(bn_eps, bool) or not isinstance(bn_eps, (int, float)) or not bn_eps > 0:
            raise ConfigError(f"{owner}: bn_eps must be a positive number, got {bn_eps!r}")
        check_dtype(dtype)
        self._block_args = {**args, "batch_norm": bool(batch_norm), "branch3_kernel_size": k3,
                            "bn_eps": float(bn_eps)}
        rng = make_rng(rng)
        _, _, _, MaxPool2d = _layers()

        def cbr(cin, cout, k):
            return conv_bn_relu(cin, cout, k, padding=(k - 1) // 2, batch_norm=bool(batch_norm),
                                bn_eps=float(bn_eps), rng=rng, dtype=dtype)

        c = args["in_channels"]
        branches = [
            ("branch1", cbr(c, args["ch1x1"], 1)),
            ("branch2", Sequential(cbr(c, args["ch3x3red"], 1), cbr(args["ch3x3red"], args["ch3x3"], 3))),
            ("branch3", Sequential(cbr(c, args["ch5x5red"], 1), cbr(args["ch5x5red"], args["ch5x5"], k3))),
            ("branch4", Sequential(MaxPool2d(3, stride=1, padding=1), cbr(c, args["pool_proj"], 1))),
        ]
        nodes = [(name, layer, INPUT) for name, layer in branches]
        nodes.append(("concat", Concat(), [name for name, _ in branches]))
        super().__init__(nodes)


for _abstract in ("_Block", "_ResidualBlock"):
    LAYER_TYPES.pop(_abstract, None)  # shared bases, not layer types of their own
