"""Normalization kernels: batch normalization and local response normalization.

Inputs are channels-first, ``(N, C, *)``: axis 1 holds the channels and every
other axis (the batch and any spatial axes) is one of the "values per channel".

Batch normalization (Ioffe & Szegedy 2015), per channel c over its m values:

    xhat = (x - mean) / sqrt(var + eps),   y = weight * xhat + bias

with the batch mean and the *biased* batch variance in training and the running
statistics in evaluation. Local response normalization, PyTorch's formula:

    b_c = a_c / (k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} a_{c'}^2) ** beta

with zeros outside the channel range.
"""

from __future__ import annotations

from .backend import array_module
from .reduce import channel_sums


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
