"""GoogLeNet / Inception v1 (Szegedy et al. 2014) in torchvision's layout and names.

Every conv is torchvision's BasicConv2d: conv (no bias) -> BatchNorm (eps 0.001) -> ReLU,
named ``conv``/``bn``. The max pools use ``rounding="ceil"`` (PyTorch's ceil_mode=True)::

    conv1 7x7/2 pad 3 (3->64)  112  ->  maxpool1 3/2 ceil  56
    conv2 1x1 (64->64) -> conv3 3x3 pad 1 (64->192)  ->  maxpool2 3/2 ceil  28
    inception3a (256) -> inception3b (480)  ->  maxpool3 3/2 ceil  14
    inception4a (512) -> 4b (512) -> 4c (512) -> 4d (528) -> 4e (832)  ->  maxpool4 2/2 ceil  7
    inception5a (832) -> inception5b (1024) -> avgpool (global) -> dropout 0.2 -> fc 1024->C

conv1 at 224 gives (224-7+6)/2+1 = 112.5, floored as PyTorch does. Each inception module
concatenates branch1 (1x1), branch2 (1x1 -> 3x3), branch3 (1x1 -> 3x3: torchvision's
known deviation from the paper's 5x5, kept so its weights load) and branch4 (3x3/1 max pool
-> 1x1). 6,624,904 parameters at 1000 classes.

``aux_logits=True`` adds the two auxiliary classifiers (``aux1`` on inception4a's output,
``aux2`` on inception4d's): adaptive avg pool to 4x4 -> BasicConv2d 1x1 (128) -> fc 2048->1024
-> relu -> dropout 0.7 -> fc 1024->C; 13,004,888 parameters. Then the net is an
``AuxSequential``: ``forward(x, train=True)`` returns (logits, aux1, aux2) (torchvision
returns them as (logits, aux2, aux1)), and ``backward`` takes (dlogits, daux1, daux2), any
of the aux ones None for zero; with ``train=False`` it returns only the logits, as torchvision does.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from ..layers.activation import ReLU
from .._util import make_rng
from ..layers.dropout import Dropout
from ..layers.linear import Flatten, Linear
from ..layers.pool import GlobalAvgPool2d, MaxPool2d
from ..nets.blocks import Inception
from ..layers.base import layer_from_config, layer_to_config
from ..nets.container import Container, relocate
from ..nets.sequential import Sequential
from ..ops.backend import array_module
from ..layers.pool import AdaptiveAvgPool2d
from .common import basic_conv, check_bool, check_int, check_prob
from .registry import register

BN_EPS = 1e-3

#: (name, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj), torchvision's table
INCEPTIONS = [
    ("inception3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
]


class AuxSequential(Container):
    """A chain of named layers (the trunk) plus auxiliary heads that read trunk outputs.

    ``AuxSequential(layers, heads, input_shape=None)``: ``layers`` are (name, layer) pairs run
    in order; ``heads`` are (name, after, head) triples: ``head`` reads the output of trunk
    layer ``after``. State names are the children's (trunk layers then heads, in order).

    ``forward(x, train=True)`` returns (trunk output, head outputs in order);
    ``forward(x, train=False)`` returns the trunk output only (heads are training aids).
    ``backward`` takes what forward returned the gradient of: a tuple (d_out, d_head...) where
    a head's entry may be None (zero), or a single array after an eval forward, in which case
    the heads' gradients are set to zero. ``output_shape`` is the trunk's.
    """

    _reserved = Container._reserved | {"heads"}

    def __init__(self, layers, heads=(), input_shape=None):
        layers = [tuple(item) for item in layers]
        heads = [tuple(h) for h in heads]
        trunk_names = [name for name, _ in layers]
        for h in heads:
            if len(h) != 3 or h[1] not in trunk_names:
                raise ConfigError(f"AuxSequential: a head must be (name, after, layer) with 'after' a trunk "
                                  f"layer name ({', '.join(trunk_names)}), got {h!r}")
        self._set_children(layers + [(name, head) for name, _, head in heads])
        self._trunk = trunk_names
        self._taps = {name: after for name, after, _ in heads}
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self._head_outputs = None

    @property
    def heads(self) -> list:
        """[(name, after, head)] in order."""
        return [(name, after, self._children[name]) for name, after in self._taps.items()]

    def eval_children(self) -> list:
        """The (name, layer) chain the evaluation forward runs: the trunk, without the heads."""
        return [(name, self._children[name]) for name in self._trunk]

    def forward(self, x, train: bool = False):
        run_heads = bool(train and self._taps)
        aux = {}
        for name in self._trunk:
            try:
                x = self._children[name].forward(x, train=train)
            except ShapeError as err:
                relocate(err, name)
            if not run_heads:
                continue
            for head, after in self._taps.items():
                if after == name:
                    try:
                        aux[head] = self._children[head].forward(x, train=train)
                    except ShapeError as err:
                        relocate(err, head)
        self._head_outputs = {k: (v.shape, v.dtype) for k, v in aux.items()} if run_heads else None
        if not run_heads:
            return x
        return (x, *(aux[name] for name in self._taps))

    def backward(self, dout):
        """dx; ``dout`` is (d_trunk_out, d_head, ...) after a training forward with heads."""
        ran_heads = self.__dict__.get("_head_outputs") is not None
        if ran_heads:
            if not isinstance(dout, (tuple, list)) or len(dout) != 1 + len(self._taps):
                raise ShapeError(f"AuxSequential.backward: the last forward returned {1 + len(self._taps)} "
                                 f"outputs (trunk, {', '.join(self._taps)}); pass a tuple of their gradients "
                                 "(None for a head without a loss)")
            dout, *dheads = dout
        elif isinstance(dout, (tuple, list)):
            raise ShapeError("AuxSequential.backward: the last forward (train=False) returned the trunk "
                             "output only; pass its gradient as one array")
        injected = {}  # trunk layer name -> gradient flowing back into its output from heads
        for i, (name, after) in enumerate(self._taps.items()):
            head = self._children[name]
            if not ran_heads:  # heads did not run: their parameters get zero gradients
                for _, leaf in _leaves(head):
                    leaf.grads = {k: np.zeros_like(v) for k, v in leaf.params.items()}
                continue
            d = dheads[i]
            if d is None:
                shape, dtype = self._head_outputs[name]
                d = array_module(dout).zeros(shape, dtype=dtype)
            try:
                dx = head.backward(d)
            except ShapeError as err:
                relocate(err, name)
            injected[after] = dx if after not in injected else injected[after] + dx
        self._head_outputs = None
        for name in reversed(self._trunk):
            if name in injected:
                dout = dout + injected.pop(name)
            try:
                dout = self._children[name].backward(dout)
            except ShapeError as err:
                relocate(err, name)
        return dout

    def output_shape(self, input_shape=None) -> tuple:
        """The trunk's output shape (C, ...) for an input (C, H, W); heads are checked too."""
        if input_shape is None:
            if self.input_shape is None:
                raise ConfigError("AuxSequential: pass input_shape (C, H, W); this net has none recorded")
            input_shape = self.input_shape
        shape = tuple(input_shape)
        for name in self._trunk:
            try:
                shape = tuple(self._children[name].output_shape(shape))
            except ShapeError as err:
                relocate(err, name)
            for head, after in self._taps.items():
                if after == name:
                    try:
                        self._children[head].output_shape(shape)
                    except ShapeError as err:
                        relocate(err, head)
        return shape

    def get_config(self) -> dict:
        cfg = {"layers": [{"name": name, **layer_to_config(self._children[name])} for name in self._trunk],
               "heads": [{"name": name, "after": after, **layer_to_config(self._children[name])}
                         for name, after in self._taps.items()]}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> AuxSequential:
        if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
            raise ConfigError(f"AuxSequential.from_config: expected a dict with a 'layers' list, got {cfg!r}")
        layers = [(e["name"], layer_from_config(e, f"AuxSequential layer {e.get('name')!r}")) for e in cfg["layers"]]
        heads = [(e["name"], e["after"], layer_from_config(e, f"AuxSequential head {e.get('name')!r}"))
                 for e in cfg.get("heads", [])]
        shape = cfg.get("input_shape")
        return cls(layers, heads, input_shape=None if shape is None else tuple(shape))

    def _child_label(self, name: str) -> str:
        return f"{name} <- {self._taps[name]}" if name in self._taps else name


def _leaves(layer):
    """(path, layer) of every non-container layer inside ``layer`` (itself if it is one)."""
    if isinstance(layer, Container):
        return [(p, m) for p, m in layer.named_modules() if not isinstance(m, Container)]
    return [("", layer)]


def inception_aux(in_channels: int, num_classes: int, dropout: float, gen, dtype) -> Sequential:
    """torchvision's InceptionAux: avgpool 4x4 -> conv (BasicConv2d 1x1, 128) -> flatten -> fc1 2048->1024
    -> relu -> dropout -> fc2 1024->C (state names ``conv.conv.weight``, ``fc1.weight`` ...)."""
    return Sequential([
        ("avgpool", AdaptiveAvgPool2d(4)),
        ("conv", basic_conv(in_channels, 128, 1, bn_eps=BN_EPS, rng=gen, dtype=dtype)),
        ("flatten", Flatten()),
        ("fc1", Linear(128 * 4 * 4, 1024, rng=gen, dtype=dtype)), ("relu", ReLU()),
        ("dropout", Dropout(dropout, rng=gen)),
        ("fc2", Linear(1024, num_classes, rng=gen, dtype=dtype)),
    ])


@register("googlenet", family="googlenet", input_shape=(3, 224, 224), num_classes=1000,
          description="GoogLeNet / Inception v1, torchvision layout (BN, 3x3 'branch3'), optional aux heads")
def googlenet(num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2, dropout_aux: float = 0.7,
              in_channels: int = 3, rng=None, dtype="float32"):
    """torchvision's GoogLeNet: a Sequential; with ``aux_logits=True`` an ``AuxSequential``
    whose heads ``aux1``/``aux2`` read inception4a/inception4d (see the module docstring)."""
    num_classes = check_int(num_classes, "num_classes", "googlenet")
    in_channels = check_int(in_channels, "in_channels", "googlenet")
    aux_logits = check_bool(aux_logits, "aux_logits", "googlenet")
    dropout = check_prob(dropout, "dropout", "googlenet")
    dropout_aux = check_prob(dropout_aux, "dropout_aux", "googlenet")
    gen = make_rng(rng)

    def conv(cin, cout, k, s=1, p=0):
        return basic_conv(cin, cout, k, stride=s, padding=p, bn_eps=BN_EPS, rounding="floor", rng=gen, dtype=dtype)

    def pool(k):
        return MaxPool2d(k, stride=2, rounding="ceil")

    def inception(args):
        return Inception(*args, batch_norm=True, branch3_kernel_size=3, bn_eps=BN_EPS, rng=gen, dtype=dtype)

    incs = {row[0]: inception(row[1:]) for row in INCEPTIONS}
    layers = [("conv1", conv(in_channels, 64, 7, 2, 3)), ("maxpool1", pool(3)),
              ("conv2", conv(64, 64, 1)), ("conv3", conv(64, 192, 3, p=1)), ("maxpool2", pool(3)),
              ("inception3a", incs["inception3a"]), ("inception3b", incs["inception3b"]), ("maxpool3", pool(3)),
              *[(n, incs[n]) for n in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e")],
              ("maxpool4", pool(2)),
              ("inception5a", incs["inception5a"]), ("inception5b", incs["inception5b"]),
              ("avgpool", GlobalAvgPool2d()), ("flatten", Flatten()), ("dropout", Dropout(dropout, rng=gen)),
              ("fc", Linear(1024, num_classes, rng=gen, dtype=dtype))]
    shape = (in_channels, 224, 224)
    if not aux_logits:
        return Sequential(layers, input_shape=shape)
    heads = [("aux1", "inception4a", inception_aux(512, num_classes, dropout_aux, gen, dtype)),
             ("aux2", "inception4d", inception_aux(528, num_classes, dropout_aux, gen, dtype))]
    return AuxSequential(layers, heads, input_shape=shape)
