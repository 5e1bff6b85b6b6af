"""The one net walker: any net (Sequential, Graph, nested) as leaf layers in execution order.

``trace(net, input_shape)`` gives the leaves as ``Node``s with the shapes of every value they
read and write; the summary, the memory model and the ONNX export all walk a net through it.
Also here: the small helpers the inspectors share (input shapes, the notes' volume notation,
byte formatting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, ShapeError
from ..nets.container import Container, relocate
from ..nets.graph import INPUT, Graph, Merge
from ..nets.sequential import Sequential

__all__ = ["Node", "dtype_bytes_of", "format_bytes", "input_shape_of", "is_frozen", "parse_input_shape", "trace",
           "volume_str"]


@dataclass
class Node:
    """One leaf layer in execution order: reads values ``inputs`` (ids), writes value ``output``.

    Value 0 is the net's input; ``in_shapes``/``out_shape`` exclude the batch axis.
    """

    path: str
    layer: object
    inputs: tuple
    output: int
    in_shapes: tuple
    out_shape: tuple

    @property
    def in_shape(self) -> tuple:
        return self.in_shapes[0]


def trace(net, input_shape, evaluation: bool = False) -> tuple[list, dict]:
    """Flatten ``net`` into leaf ``Node``s in execution order, with every value's shape.

    Sequentials (nested or not) are chains; a Graph's nodes come in its topological order,
    a merge reading several values. Another container is one leaf, unless ``evaluation`` is
    set and it names the chain its evaluation forward runs (``eval_children()``, e.g. GoogLeNet's
    trunk without its training heads). Returns (nodes, {value id: shape}); ShapeErrors name the
    leaf's dotted path.
    """
    nodes: list = []
    shapes = {0: tuple(input_shape)}

    def join(prefix, name):
        return f"{prefix}.{name}" if prefix else str(name)

    def chain(children, path, ids, in_shapes):
        value = (ids, in_shapes)
        for name, child in children:
            out_id, out_shape = visit(child, join(path, name), *value)
            value = ((out_id,), (out_shape,))
        return value[0][0], value[1][0]

    def visit(layer, path, ids, in_shapes):
        if isinstance(layer, Sequential):
            return chain(layer.named_children(), path, ids, in_shapes)
        if isinstance(layer, Graph):
            values = {INPUT: (ids[0], in_shapes[0])}
            for name in layer.order:
                srcs = layer.inputs_of(name)
                values[name] = visit(layer[name], join(path, name), tuple(values[s][0] for s in srcs),
                                     tuple(values[s][1] for s in srcs))
            return values[layer.output_name]
        if evaluation and isinstance(layer, Container) and hasattr(layer, "eval_children"):
            return chain(layer.eval_children(), path, ids, in_shapes)
        arg = list(in_shapes) if isinstance(layer, Merge) else in_shapes[0]
        try:
            out_shape = tuple(int(s) for s in layer.output_shape(arg))
        except ShapeError as err:
            if path:
                relocate(err, path)
            raise
        out_id = len(shapes)
        shapes[out_id] = out_shape
        nodes.append(Node(path or type(layer).__name__, layer, tuple(ids), out_id, tuple(in_shapes), out_shape))
        return out_id, out_shape

    visit(net, "", (0,), (tuple(input_shape),))
    return nodes, shapes


# --- shared helpers ---------------------------------------------------------------------------------
def parse_input_shape(text) -> tuple:
    """``"3x224x224"`` (C x H x W, the CLI's ``--input``) or ``"784"`` -> a tuple of ints.

    A tuple or list of positive ints passes through. Commas work as separators too.
    """
    if isinstance(text, (tuple, list)):
        shape = tuple(text)
    elif isinstance(text, str):
        parts = [p for p in re.split(r"[x,X*\s]+", text.strip().strip("()[]")) if p]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"input shape {text!r} must look like 3x224x224 (C x H x W) or 784") from None
    else:
        raise ConfigError(f"input shape must be a string like '3x224x224' or a tuple, got {text!r}")
    if (not shape or len(shape) > 4 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                                and s >= 1 for s in shape)):
        raise ConfigError(f"input shape must be positive ints (C, H, W) or (D,), got {text!r}")
    return tuple(int(s) for s in shape)


def input_shape_of(net, input_shape=None, what: str = "") -> tuple:
    """``input_shape`` parsed, or the net's recorded one; ConfigError when neither is known."""
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ConfigError(f"{what + ': ' if what else ''}pass input_shape (C, H, W); this net has none recorded")
    return parse_input_shape(input_shape)


def dtype_bytes_of(net) -> int:
    """The itemsize of the net's parameters (4 when it has none)."""
    for v in (getattr(net, "params", {}) or {}).values():
        return int(np.asarray(v).dtype.itemsize)
    return 4


def is_frozen(name: str, frozen) -> bool:
    """True when parameter ``name`` is one of the ``frozen`` names or lies under one of those prefixes."""
    return any(name == p or name.startswith(p.rstrip(".") + ".") for p in frozen)


def volume_str(shape: tuple) -> str:
    """The notes' notation: (C, H, W) -> ``"HxWxC"``, a vector (D,) -> ``"1x1xD"``."""
    shape = tuple(shape)
    if len(shape) == 3:
        return f"{shape[1]}x{shape[2]}x{shape[0]}"
    if len(shape) == 1:
        return f"1x1x{shape[0]}"
    return "x".join(str(s) for s in shape)


def format_bytes(n: float) -> str:
    """Decimal units like the notes: 61,046,304 -> ``"61.0 MB"``."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
