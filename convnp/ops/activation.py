"""Elementwise activations: out has the shape of x, dx the shape of dout.

Each ``<name>_forward(x, ...)`` returns ``(out, cache)`` and its backward, right
below it, takes ``(dout, cache)`` and returns ``dx``. Gradients at the kinks
follow PyTorch: ReLU passes no gradient at exactly 0, LeakyReLU passes
``negative_slope`` there and ELU passes ``alpha``. NaN in x gives NaN in out.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .backend import array_module


def relu_forward(x):
    """max(0, x); the cache is the mask of positive outputs."""
    xp = array_module(x)
    if xp is np and kernels.enabled() and kernels.compiled_dtype(x):
        flat = kernels.flat_view(x)
        if flat is not None:  # one pass: output and mask together, same memory layout as x
            out, mask = np.empty_like(x), np.empty_like(x, dtype=bool)
            kernels.relu_forward_flat(flat, kernels.flat_view(out), kernels.flat_view(mask))
            return out, mask
    out = xp.maximum(x, 0).astype(x.dtype, copy=False)
    # ~(out <= 0) rather than out > 0: like PyTorch's threshold_backward, a NaN output lets dout through.
    return out, ~(out <= 0)


def relu_backward(dout, cache):
    if kernels.enabled() and array_module(dout) is np and kernels.compiled_dtype(dout):
        d, m = kernels.flat_pair(dout, cache)
        if d is not None:
            dx = np.empty_like(dout)
            kernels.relu_backward_flat(d, m, kernels.flat_view(dx))
            return dx
    return dout * cache


def leaky_relu_forward(x, negative_slope=0.01):
    """x for x > 0, negative_slope * x otherwise."""
    xp = array_module(x)
    positive = x > 0
    out = xp.where(positive, x, x * x.dtype.type(negative_slope))
    return out, (positive, negative_slope)


def leaky_relu_backward(dout, cache):
    xp = array_module(dout)
    positive, negative_slope = cache
    return xp.where(positive, dout, dout * dout.dtype.type(negative_slope))


def elu_forward(x, alpha=1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (expm1 of min(x, 0), so no overflow)."""
    xp = array_module(x)
    positive = x > 0
    negative_part = x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0))
    out = xp.where(positive, x, negative_part)
    return out, (positive, negative_part, alpha)


def elu_backward(dout, cache):
    # d/dx alpha*(exp(x)-1) = alpha*exp(x) = out + alpha on the non-positive side.
    xp = array_module(dout)
    positive, negative_part, alpha = cache
    return xp.where(positive, dout, dout * (negative_part + negative_part.dtype.type(alpha)))


def tanh_forward(x):
    """tanh(x); the cache is the output, since d tanh = 1 - tanh^2."""
    xp = array_module(x)
    out = xp.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    return dout * (1 - cache * cache)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), evaluated through exp(-|x|) <= 1 so no |x| overflows."""
    xp = array_module(x)
    z = xp.exp(-xp.abs(x))
    out = xp.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)
    return out, out


def sigmoid_backward(dout, cache):
    return dout * cache * (1 - cache)
