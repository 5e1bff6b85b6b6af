"""Normalization kernels: batch, group and local response normalization.

Inputs are channels-first, ``(N, C, *)``: axis 1 holds the channels and every
other axis (the batch and any spatial axes) is one of the "values per channel".

Batch normalization (Ioffe & Szegedy 2015), per channel c over its m values:

    xhat = (x - mean) / sqrt(var + eps),   y = weight * xhat + bias

with the batch mean and the *biased* batch variance in training and the running
statistics in evaluation. Local response normalization, PyTorch's formula:

    b_c = a_c / (k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} a_{c'}^2) ** beta

with zeros outside the channel range. Group normalization (Wu & He 2018) splits the C channels
of each example into G groups of C/G and normalizes each group over its C/G x H x W values (biased
variance), then scales and shifts per channel; it never looks across the batch.
"""

from __future__ import annotations

import numpy as np

from ..threads import get_num_threads, in_parallel_region, parallel_map
from . import kernels
from .backend import array_module
from .reduce import channel_matrix as _rows
from .reduce import channel_sums, sum_rows

#: Batch norm's compiled path splits its rows over the worker threads above this many numbers.
PARALLEL_BN_SIZE = 1 << 16


def _per_channel(v, x):
    """A (C,) vector shaped (1, C, 1, ...) to broadcast against ``x``, in ``x``'s dtype."""
    xp = array_module(x)
    return xp.asarray(v, dtype=x.dtype).reshape((1, -1) + (1,) * (x.ndim - 2))


# --- batch normalization --------------------------------------------------------------------------

def batchnorm_forward(x, weight, bias, running_mean, running_var, eps: float = 1e-5, train: bool = False):
    """y = weight * (x - mean) / sqrt(var + eps) + bias per channel; x (N, C, *) -> y, same shape.

    ``weight``/``bias`` are (C,) or None (no scale / no shift). With ``train`` the
    statistics are the batch mean and biased variance over the m = N*prod(*) values
    of each channel; otherwise ``running_mean``/``running_var`` (C,). The cache holds
    ``mean``, ``var`` (the statistics used) and ``count`` (m) for the running update.
    """
    xp = array_module(x)
    count = x.size // x.shape[1]
    rows = _rows(x) if count and _compiled(x) else None
    if rows is not None:
        return _batchnorm_forward_compiled(x, rows, weight, bias, running_mean, running_var, eps, train, count)
    if train and count:
        mean = channel_sums(x) / x.dtype.type(count)
        xc = x - _per_channel(mean, x)
        var = channel_sums(xc * xc) / x.dtype.type(count)
    else:
        if train:  # an empty batch: nothing to normalize, no statistics
            mean, var = xp.zeros(x.shape[1], dtype=x.dtype), xp.ones(x.shape[1], dtype=x.dtype)
        else:
            mean, var = xp.asarray(running_mean, dtype=x.dtype), xp.asarray(running_var, dtype=x.dtype)
        xc = x - _per_channel(mean, x)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = xc * _per_channel(inv_std, x)
    out = xhat
    if weight is not None:
        out = out * _per_channel(weight, x)
    if bias is not None:
        out = out + _per_channel(bias, x)
    cache = {"xhat": xhat, "inv_std": inv_std, "weight": weight, "has_bias": bias is not None,
             "train": bool(train), "mean": mean, "var": var, "count": count}
    return out, cache


def batchnorm_backward(dout, cache):
    """Gradients (dx, dweight, dbias); dweight/dbias are None where forward had no weight/bias.

    Evaluation mode is a fixed affine map: dx = dout * weight * inv_std. In training
    the statistics depend on x too; with g = dout * weight, sums over a channel's m
    values, chaining through mean and var collapses to

        dx = inv_std / m * (m * g - sum(g) - xhat * sum(g * xhat))
    """
    xhat, inv_std, weight = cache["xhat"], cache["inv_std"], cache["weight"]
    if cache["count"] and _compiled(dout, xhat):
        rows_d, rows_h = _rows(dout), _rows(xhat)
        if rows_d is not None and rows_h is not None:
            return _batchnorm_backward_compiled(dout, rows_d, rows_h, cache)
    dbias = channel_sums(dout) if cache["has_bias"] else None
    dweight = channel_sums(dout * xhat) if weight is not None else None
    g = dout * _per_channel(weight, dout) if weight is not None else dout
    if not cache["train"]:
        dx = g * _per_channel(inv_std, dout)
    elif cache["count"] == 0:
        dx = array_module(g).zeros_like(g)
    else:
        m = cache["count"]
        dx = _per_channel(inv_std / m, dout) * (
            m * g - channel_sums(g, keepdims=True) - xhat * channel_sums(g * xhat, keepdims=True))
    return dx, dweight, dbias


def _compiled(*arrays) -> bool:
    return (kernels.enabled() and all(array_module(a) is np for a in arrays) and kernels.compiled_dtype(*arrays)
            and len({a.dtype for a in arrays}) == 1)


def _over_rows(fn, m: int, c: int) -> list:
    """[fn(lo, hi)] over contiguous row ranges of an (m, c) matrix, split over the worker threads."""
    parts = get_num_threads() if m * c >= PARALLEL_BN_SIZE and not in_parallel_region() else 1
    parts = max(1, min(parts, m))
    bounds = [m * i // parts for i in range(parts + 1)]
    return parallel_map(lambda i, _worker: fn(bounds[i], bounds[i + 1]), parts)


def _batchnorm_forward_compiled(x, rows, weight, bias, running_mean, running_var, eps, train, count):
    """``batchnorm_forward`` with the numba kernels on the (M, C) matrix: one pass for the centered
    squares, one for xhat and the output, both split over the threads; same cache."""
    m, c = rows.shape
    dt = x.dtype
    if train:
        mean = sum_rows(rows) / dt.type(count)
        mean64 = mean.astype(np.float64)
        parts = _over_rows(lambda lo, hi: _squares(rows, mean64, lo, hi), m, c)
        var = (np.sum(parts, axis=0) / count).astype(dt)
    else:
        mean, var = np.asarray(running_mean, dtype=dt), np.asarray(running_var, dtype=dt)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(dt)
    scale = np.ones(c, dt) if weight is None else np.asarray(weight, dtype=dt)
    shift = np.zeros(c, dt) if bias is None else np.asarray(bias, dtype=dt)
    xhat, out = np.empty_like(x), np.empty_like(x)     # the same memory layout as x
    hrows, orows = _rows(xhat), _rows(out)
    _over_rows(lambda lo, hi: kernels.bn_apply(rows, mean, inv_std, scale, shift, lo, hi, hrows, orows), m, c)
    cache = {"xhat": xhat, "inv_std": inv_std, "weight": weight, "has_bias": bias is not None,
             "train": bool(train), "mean": mean, "var": var, "count": count}
    return out, cache


def _squares(rows, mean64, lo, hi):
    out = np.empty(rows.shape[1], np.float64)
    kernels.bn_centered_squares(rows, mean64, lo, hi, out)
    return out


def _grad_sums(d, h, lo, hi):
    dsum, dxsum = np.empty(d.shape[1], np.float64), np.empty(d.shape[1], np.float64)
    kernels.bn_grad_sums(d, h, lo, hi, dsum, dxsum)
    return dsum, dxsum


def _batchnorm_backward_compiled(dout, d, h, cache):
    """``batchnorm_backward`` with the numba kernels: one pass for sum(dout) and sum(dout * xhat),
    one for dx = weight * inv_std / m * (m * dout - sum(dout) - xhat * sum(dout * xhat))."""
    m, c = d.shape
    dt = dout.dtype
    weight, inv_std = cache["weight"], cache["inv_std"]
    parts = _over_rows(lambda lo, hi: _grad_sums(d, h, lo, hi), m, c)
    dsum64 = np.sum([p[0] for p in parts], axis=0)
    dxsum64 = np.sum([p[1] for p in parts], axis=0)
    w = np.ones(c, np.float64) if weight is None else np.asarray(weight, np.float64)
    if cache["train"]:
        count = cache["count"]
        coef = (w * inv_std / count).astype(dt)
        scale, dsum, dxsum = float(count), dsum64.astype(dt), dxsum64.astype(dt)
    else:
        coef = (w * inv_std).astype(dt)
        scale, dsum, dxsum = 1.0, np.zeros(c, dt), np.zeros(c, dt)
    dx = np.empty_like(dout)       # dout's (M, C) layout, so dx has one too
    drows = _rows(dx)
    _over_rows(lambda lo, hi: kernels.bn_input_grad(d, h, coef, dt.type(scale), dsum, dxsum, lo, hi, drows), m, c)
    dweight = dxsum64.astype(dt) if weight is not None else None
    dbias = dsum64.astype(dt) if cache["has_bias"] else None
    return dx, dweight, dbias


def batchnorm_running_update(running_mean, running_var, mean, var, count: int, momentum: float):
    """New running statistics, PyTorch's convention: running = (1 - momentum) * running + momentum * batch.

    ``var`` is the biased batch variance of ``count`` (> 1) values per channel; the
    running variance takes the unbiased estimate var * count / (count - 1).
    Returns (new_mean, new_var) in the running statistics' dtype.
    """
    unbiased = var * (count / (count - 1))
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


# --- local response normalization -----------------------------------------------------------------

def _channel_window_sum(a, before: int, after: int):
    """s[:, c] = sum of a[:, c'] for c' in [c - before, c + after], zeros outside the channels."""
    xp = array_module(a)
    s = xp.zeros_like(a)
    channels = a.shape[1]
    for d in range(-before, after + 1):
        lo, hi = max(0, -d), min(channels, channels - d)
        if lo < hi:
            s[:, lo:hi] += a[:, lo + d:hi + d]
    return s


def lrn_forward(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
    """b_c = a_c / (k + alpha/size * sum_{window} a_{c'}^2) ** beta; x (N, C, *) -> same shape.

    The window spans channels c - size//2 .. c + (size-1)//2 (PyTorch's padding, so
    an even ``size`` reaches one channel further back than forward).
    """
    scale = k + (alpha / size) * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    denom = scale ** beta
    out = x / denom
    return out, (x, scale, denom, out, size, alpha, beta)


def lrn_backward(dout, cache):
    """dx for ``lrn_forward``. With s_c the scale, b_c = a_c s_c^-beta and a_j inside s_c for c
    in [j - (size-1)//2, j + size//2] (the window reversed):

        dx_j = dout_j s_j^-beta - (2 alpha beta / size) a_j sum_{c} dout_c b_c / s_c
    """
    x, scale, denom, out, size, alpha, beta = cache
    back = _channel_window_sum(dout * out / scale, (size - 1) // 2, size // 2)
    return dout / denom - (2.0 * alpha * beta / size) * x * back


# --- group normalization ----------------------------------------------------------------------------
def groupnorm_forward(x, weight, bias, num_groups: int, eps: float = 1e-5):
    """x (N, C, *) -> out of the same shape, with (N, G) group statistics; weight, bias (C,) or None.

    Statistics accumulate in float64 and the output keeps x's dtype.
    """
    xp = array_module(x)
    n, c = x.shape[:2]
    groups = xp.asarray(x, dtype=np.float64).reshape(n, num_groups, -1)
    mean = groups.mean(axis=2, keepdims=True)
    centered = groups - mean
    inv_std = 1.0 / xp.sqrt((centered * centered).mean(axis=2, keepdims=True) + eps)
    xhat = (centered * inv_std).reshape(x.shape)
    out = xhat if weight is None else xhat * _per_channel(weight, x)
    if bias is not None:
        out = out + _per_channel(bias, x)
    cache = {"xhat": xhat, "inv_std": inv_std, "weight": weight, "has_bias": bias is not None,
             "groups": num_groups, "dtype": x.dtype}
    return out.astype(x.dtype, copy=False), cache


def groupnorm_backward(dout, cache):
    """(dx, dweight, dbias): dx per group = inv_std/M * (M*g - sum g - xhat * sum g*xhat), g = dout*weight."""
    xhat, inv_std, weight = cache["xhat"], cache["inv_std"], cache["weight"]
    d = dout.astype(np.float64, copy=False)
    n, c = d.shape[:2]
    axes = (0,) + tuple(range(2, d.ndim))
    dweight = None if weight is None else (d * xhat).sum(axis=axes).astype(weight.dtype, copy=False)
    dbias = d.sum(axis=axes).astype(cache["dtype"], copy=False) if cache["has_bias"] else None
    g = d if weight is None else d * _per_channel(weight, d)
    gg, hg = g.reshape(n, cache["groups"], -1), xhat.reshape(n, cache["groups"], -1)
    m = gg.shape[2]
    dx = inv_std / m * (m * gg - gg.sum(axis=2, keepdims=True) - hg * (gg * hg).sum(axis=2, keepdims=True))
    return dx.reshape(dout.shape).astype(cache["dtype"], copy=False), dweight, dbias
