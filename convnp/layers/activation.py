"""Elementwise activation layers: any input shape (N, *) -> the same shape.

Thin classes over ``convnp.ops.activation``; backward reuses what forward cached
(the mask for ReLU/LeakyReLU, the output for Tanh/Sigmoid/ELU).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..ops import activation as ops
from .base import Layer


def _finite_real(value, name: str, owner: str) -> float:
    """``value`` as a float; ConfigError unless it is a finite real number (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{owner}: {name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be finite, got {value!r}")
    return float(value)


class _Elementwise:
    """Mixin with the shared plumbing: check the input, call the op, keep its cache for backward.

    Not a Layer subclass itself, so it stays out of the layer registry.
    """

    def _forward_op(self, x):
        raise NotImplementedError

    def _backward_op(self, dout, cache):
        raise NotImplementedError

    def forward(self, x, train: bool = False):
        self._check_input(x, getattr(x, "ndim", 0), what="(N, *)")
        out, cache = self._forward_op(x)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache, shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, shape)
        return self._backward_op(dout, cache)


class ReLU(_Elementwise, Layer):
    """max(0, x) elementwise; the gradient at exactly 0 is 0, as in PyTorch. Shape (N, *) -> (N, *).

    Inside a Sequential a layer with ``forward_relu`` (Conv2d) may apply this ReLU to its output
    itself (while it is in cache); this layer then only keeps the mask for its backward.
    """

    def take_mask(self, mask, shape) -> None:
        """Take the mask of a ReLU that the layer before applied (``convnp.engine.forward_chain``)."""
        self._cache = (mask, tuple(shape))

    def _forward_op(self, x):
        return ops.relu_forward(x)

    def _backward_op(self, dout, cache):
        return ops.relu_backward(dout, cache)


class LeakyReLU(_Elementwise, Layer):
    """x if x > 0 else negative_slope * x. Shape (N, *) -> (N, *)."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _finite_real(negative_slope, "negative_slope", "LeakyReLU")

    def _forward_op(self, x):
        return ops.leaky_relu_forward(x, self.negative_slope)

    def _backward_op(self, dout, cache):
        return ops.leaky_relu_backward(dout, cache)

    def get_config(self) -> dict:
        return {"negative_slope": self.negative_slope}


class ELU(_Elementwise, Layer):
    """x if x > 0 else alpha * (exp(x) - 1). Shape (N, *) -> (N, *)."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = _finite_real(alpha, "alpha", "ELU")

    def _forward_op(self, x):
        return ops.elu_forward(x, self.alpha)

    def _backward_op(self, dout, cache):
        return ops.elu_backward(dout, cache)

    def get_config(self) -> dict:
        return {"alpha": self.alpha}


class Tanh(_Elementwise, Layer):
    """tanh(x) elementwise. Shape (N, *) -> (N, *)."""

    def _forward_op(self, x):
        return ops.tanh_forward(x)

    def _backward_op(self, dout, cache):
        return ops.tanh_backward(dout, cache)


class Sigmoid(_Elementwise, Layer):
    """1 / (1 + exp(-x)) elementwise, stable for large |x|. Shape (N, *) -> (N, *)."""

    def _forward_op(self, x):
        return ops.sigmoid_forward(x)

    def _backward_op(self, dout, cache):
        return ops.sigmoid_backward(dout, cache)
