"""Sequential: layers applied one after the other, itself a Layer."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .engine import backward_steps, forward_chain, forward_steps, plan, shardable, worth_sharding
from ..errors import ConfigError, ShapeError
from ..layers.base import Layer
from ..layers.base import layer_from_config, layer_to_config
from .container import Container, relocate

LOSSES = ("softmax", "svm")


def _check_input_shape(shape, owner: str):
    if shape is None:
        return None
    if (not isinstance(shape, (tuple, list)) or not shape
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise ConfigError(f"{owner}: input_shape must be a tuple of positive ints like (C, H, W), got {shape!r}")
    return tuple(int(s) for s in shape)


class Sequential(Container):
    """Layers run in order: ``forward`` goes first to last, ``backward`` last to first.

    Build it from layers (``Sequential(a, b)`` or ``Sequential([a, b])``), whose names are
    then ``"0"``, ``"1"``, ..., or from (name, layer) pairs / an OrderedDict. State names
    are PyTorch's: ``"0.weight"``, and ``"features.0.weight"`` for nested containers.

    ``forward(x, train)`` picks training or evaluation behaviour per call (Dropout,
    BatchNorm); ``backward(dout)`` returns dx and overwrites every layer's grads, so there
    is no zero_grad. ``params``/``grads``/``buffers`` are flat dicts with dotted names.

    Optional metadata: ``input_shape`` (C, H, W) lets ``output_shape()`` and ``spec()`` work
    without an argument; ``loss`` ("softmax" or "svm") records the loss the net's raw scores
    are meant for (``SOFTMAX``/``SVM`` in a spec). Neither changes what forward computes.
    """

    def __init__(self, *layers, input_shape=None, loss=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple, dict)):
            layers = layers[0]
        if isinstance(layers, dict):
            named = list(layers.items())
        else:
            layers = list(layers)
            pairs = [isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in layers]
            if layers and all(pairs):
                named = [tuple(item) for item in layers]
            elif any(pairs):
                raise ConfigError("Sequential: give either layers or (name, layer) pairs, not a mix")
            else:
                named = [(str(i), layer) for i, layer in enumerate(layers)]
        self._set_children(named)
        self.input_shape = _check_input_shape(input_shape, "Sequential")
        if loss is not None and loss not in LOSSES:
            raise ConfigError(f"Sequential: loss must be None or one of {LOSSES}, got {loss!r}")
        self.loss = loss

    # --- forward / backward -----------------------------------------------------------------------
    def forward(self, x, train: bool = False):
        """Apply each layer in order; ``train`` is passed to every layer.

        With several threads (``convnp.set_num_threads``) runs of layers that treat examples
        independently go through ``convnp.engine`` on shards of the batch; same results.
        """
        self._cache = None
        if worth_sharding(x):
            steps = plan(self.named_children(), train)
            if steps is not None:
                x, self._cache = forward_steps(steps, x, train)
                return x
        return forward_chain(self.named_children(), x, train)

    #: ``backward(dout, input_grad=False)`` skips the gradient of the input (see below)
    accepts_input_grad = True

    def backward(self, dout, input_grad: bool = True):
        """Backpropagate through the layers in reverse; returns dx and fills every layer's grads.

        ``input_grad=False`` (a training step, whose input needs no gradient, like a PyTorch
        input without ``requires_grad``): layers before the first one with parameters are
        skipped, that one computes only its parameter gradients, and None is returned.
        """
        record, self._cache = self._cache, None
        if record is None:
            if input_grad:
                for name, layer in reversed(self.named_children()):
                    try:
                        dout = layer.backward(dout)
                    except ShapeError as err:
                        relocate(err, name)
                return dout
            record = [("serial", self.named_children())]
        return backward_steps(record, dout, input_grad)

    def output_shape(self, input_shape=None) -> tuple:
        """Chain each layer's output_shape; a ShapeError names the failing layer's path."""
        shape = self._resolve_input_shape(input_shape)
        for name, layer in self.named_children():
            try:
                shape = tuple(layer.output_shape(shape))
            except ShapeError as err:
                relocate(err, name)
        return shape

    def shapes(self, input_shape=None) -> list:
        """[(name, layer, output shape)] for each direct child, in order."""
        shape = self._resolve_input_shape(input_shape)
        out = []
        for name, layer in self.named_children():
            try:
                shape = tuple(layer.output_shape(shape))
            except ShapeError as err:
                relocate(err, name)
            out.append((name, layer, shape))
        return out

    def _resolve_input_shape(self, input_shape):
        if input_shape is None:
            if self.input_shape is None:
                raise ConfigError("Sequential: pass input_shape (C, H, W); this net has none recorded")
            return self.input_shape
        return tuple(input_shape)

    # --- list-like access -------------------------------------------------------------------------
    def __getitem__(self, index):
        """An int gives a layer, a name gives that child, a slice a new Sequential (same layer
        objects, original names kept as PyTorch does)."""
        items = self.named_children()
        if isinstance(index, slice):
            start, _, step = index.indices(len(items))
            keep_shape = self.input_shape if (start == 0 and step == 1) else None
            return Sequential(OrderedDict(items[index]), input_shape=keep_shape)
        if isinstance(index, str):
            try:
                return self._children[index]
            except KeyError:
                raise KeyError(f"Sequential has no child {index!r}; children: {list(self._children)}") from None
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -len(items) <= index < len(items):
                raise IndexError(f"Sequential index {index} out of range for {len(items)} layers")
            return items[index][1]
        raise TypeError(f"Sequential indices must be ints, names or slices, not {type(index).__name__}")

    def __iter__(self):
        return iter(self.children())

    def append(self, layer: Layer, name: str | None = None) -> "Sequential":
        """Add ``layer`` at the end, named ``name`` or the next free integer; returns self."""
        if name is None:
            n = len(self)
            while str(n) in self._children:
                n += 1
            name = str(n)
        self._set_children(self.named_children() + [(name, layer)])
        return self

    # --- config -----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """{"layers": [{"name", "type", "config"}, ...]} plus input_shape/loss when set; JSON-able."""
        cfg = {"layers": [{"name": name, **layer_to_config(layer)} for name, layer in self.named_children()]}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        if self.loss is not None:
            cfg["loss"] = self.loss
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> "Sequential":
        if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
            raise ConfigError(f"{cls.__name__}.from_config: expected a dict with a 'layers' list, got {cfg!r}")
        unknown = set(cfg) - {"layers", "input_shape", "loss"}
        if unknown:
            raise ConfigError(f"{cls.__name__}.from_config: unknown keys {sorted(unknown)}")
        named = []
        for i, entry in enumerate(cfg["layers"]):
            name = entry.get("name", str(i)) if isinstance(entry, dict) else str(i)
            named.append((name, layer_from_config(entry, f"{cls.__name__} layer {i} ({name})")))
        shape = cfg.get("input_shape")
        return cls(named, input_shape=tuple(shape) if shape is not None else None, loss=cfg.get("loss"))

    def shardable(self, train: bool) -> bool:
        """A chain of layers that each may be split over the batch may be split as a whole."""
        return all(shardable(child, train) for child in self.children())
