"""Fully-connected (affine) layer and flatten, as pure kernels.

linear: x (N, in_features), weight (out_features, in_features), bias (out_features,)
-> out = x @ weight.T + bias, shape (N, out_features) (PyTorch's layout).
flatten: (N, d1, ..., dk) -> (N, d1*...*dk) for the axes start_dim..end_dim, C order.
"""

from __future__ import annotations

import math

from .reduce import sum_rows


def linear_forward(x, weight, bias=None):
    """out = x @ weight.T + bias; (N, in) -> (N, out). The cache keeps x and weight."""
    out = x @ weight.T
    if bias is not None:
        out += bias
    return out, (x, weight, bias is not None)


def linear_backward(dout, cache, input_grad: bool = True):
    """Returns (dx, dweight, dbias); dbias is None when forward had no bias, dx None without input_grad."""
    x, weight, has_bias = cache
    dx = dout @ weight if input_grad else None
    dweight = dout.T @ x
    dbias = sum_rows(dout) if has_bias else None
    return dx, dweight, dbias


def flatten_forward(x, start_dim=1, end_dim=-1):
    """Merge axes start_dim..end_dim (inclusive, negative counts from the end) in C order."""
    start, end = start_dim % x.ndim, end_dim % x.ndim
    shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
    return x.reshape(shape), x.shape


def flatten_backward(dout, cache):
    return dout.reshape(cache)
