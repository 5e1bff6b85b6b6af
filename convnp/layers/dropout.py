"""Dropout layers (inverted dropout, PyTorch's p = probability of zeroing)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..ops import dropout as ops
from .base import Layer, LayerMemory, SpecToken
from .._util import make_rng


class Dropout(Layer):
    """Zero each unit with probability p in training and scale the rest by 1/(1-p).

    ``forward(x, train=False)`` is the identity. Shape (N, *) -> (N, *). The mask
    comes from the layer's own numpy Generator, built from ``rng`` (a Generator,
    used as given, or an int seed); backward multiplies by the same mask.
    p=1 zeroes everything, as in PyTorch.
    """

    _channelwise = False

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        name = type(self).__name__
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{name}: p must be a probability in [0, 1], got {p!r}")
        if not (0.0 <= p <= 1.0) or math.isnan(p):
            raise ConfigError(f"{name}: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = make_rng(rng)

    def _check(self, x):
        self._check_input(x, getattr(x, "ndim", 0), what="(N, *)")

    def forward(self, x, train: bool = False):
        self._check(x)
        out, mask = ops.dropout_forward(x, self.p, self.rng, train=train, channelwise=self._channelwise)
        self._cache = (mask, out.shape)
        return out

    def backward(self, dout):
        mask, shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, shape)
        return ops.dropout_backward(dout, mask)

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        return 0, 0   # the identity at inference

    def in_place(self, in_shapes, out_shape):
        return True

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps its mask (one number per unit, per channel for Dropout2d); p=0 is a pass-through."""
        out = math.prod(out_shape) * n
        if self.p == 0.0:
            return LayerMemory(out_new=False, out_bytes=out * b, dx_new=False)
        mask = out // math.prod(out_shape[1:]) if self._channelwise and len(out_shape) == 3 else out
        return LayerMemory(out_bytes=out * b, saved=mask * b, fwd_work=mask * 9)

    def shardable(self, train):
        return not train or self.p == 0   # random masks in training come from one generator

    fc_conv_role = "pointwise"
    report_role = "transparent"

    def to_onnx(self, b, x, shape, path):
        return b.node("Identity", [x], path), tuple(shape)   # evaluation forward

    spec_tokens = (SpecToken("DROPOUT", "X?"),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``DROPOUT<p>``: Dropout(p) (plain DROPOUT is p=0.5)."""
        return [cls(*args, rng=rng)]

    def to_spec(self, next_layer, shape):
        return f"DROPOUT{self.p!r}"

    def torch_module(self, nn):
        return getattr(nn, type(self).__name__)(self.p)

    def get_config(self) -> dict:
        return {"p": self.p}


class Dropout2d(Dropout):
    """Zero whole channels: one draw per (sample, channel), shared over H and W.

    Input (N, C, H, W) -> (N, C, H, W); otherwise like ``Dropout``.
    """

    _channelwise = True

    def _check(self, x):
        self._check_input(x, 4)

    def output_shape(self, input_shape: tuple) -> tuple:
        return self._check_shape(input_shape, 3)

    fc_conv_role = "spatial"

    def to_spec(self, next_layer, shape):
        raise self.no_spelling("no spec item drops whole channels")
