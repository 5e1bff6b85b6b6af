"""Pooling kernels: max, average, power-average (L2) and global average pooling.

Every kernel works on NCHW arrays and takes its geometry as (h, w) pairs plus the
output size ``out_hw`` that ``convnp.ops.im2col.output_hw`` computed, so the
windows here are exactly the ones the geometry rules describe. For an input
H x W the output is OH x OW with OH = (H - D*(KH-1) - 1 + 2P)/S + 1 (rounded as
the caller chose). The loops below run over the KH*KW kernel taps only; each tap
is one vectorised operation over the whole batch.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import array_module
from .im2col import col2im, im2col


def _index_dtype(taps: int):
    return np.uint8 if taps <= 256 else np.int32


# --- max pooling ----------------------------------------------------------------------------------
def maxpool2d_forward(x, kernel_size, stride, padding, dilation, out_hw):
    """Max over each window; x (N, C, H, W) -> (N, C, OH, OW). Padding is -inf.

    The cache keeps the "switches": the flat tap index (row-major over KH x KW) of the
    maximum of each window. Ties go to the first maximum in that order, like PyTorch.
    A NaN in a window makes its output NaN and takes the switch (the first NaN).
    """
    xp = array_module(x)
    kh, kw = kernel_size
    cols = im2col(x, kernel_size, stride, padding, dilation, out_hw, pad_value=-np.inf)
    taps = [cols[..., i, j] for i in range(kh) for j in range(kw)]
    out = taps[0].copy()
    for tap in taps[1:]:
        xp.maximum(out, tap, out=out)  # propagates NaN
    # Switches: the first tap equal to the max (an elementwise pass per tap, no fancy indexing).
    itype = np.dtype(_index_dtype(kh * kw)).type
    switches = xp.zeros(out.shape, dtype=itype)
    pending = xp.ones(out.shape, dtype=bool)
    hit = xp.empty(out.shape, dtype=bool)
    out_nan = xp.isnan(out) if bool(xp.isnan(out).any()) else None
    for t, tap in enumerate(taps):
        xp.equal(tap, out, out=hit)
        if out_nan is not None:
            hit |= out_nan & xp.isnan(tap)
        hit &= pending
        if t:
            switches += hit * itype(t)
        pending ^= hit
    return out, (switches, x.shape, kernel_size, stride, padding, dilation)


def maxpool2d_backward(dout, cache):
    """Route each output gradient to the input position its switch recorded; returns dx."""
    switches, x_shape, kernel_size, stride, padding, dilation = cache
    xp = array_module(dout)
    kh, kw = kernel_size
    # Taps first, so every tap's gradient is one contiguous block; col2im takes the view.
    dcols = xp.empty((kh, kw) + dout.shape, dtype=dout.dtype)
    for t in range(kh * kw):
        xp.multiply(dout, switches == t, out=dcols[t // kw, t % kw])
    return col2im(dcols.transpose(2, 3, 4, 5, 0, 1), x_shape, kernel_size, stride, padding, dilation)


# --- average pooling ------------------------------------------------------------------------------
def _window_sum(cols):
    """Sum of (N, C, OH, OW, KH, KW) windows over the taps, one tap at a time."""
    kh, kw = cols.shape[4:]
    out = cols[..., 0, 0].copy()
    for t in range(1, kh * kw):
        out += cols[..., t // kw, t % kw]
    return out


def avgpool_divisor(in_hw, kernel_size, stride, padding, out_hw, dtype=np.float64):
    """Divisor of each output position (OH, OW), counting the padding like PyTorch.

    KH*KW everywhere except ceil-mode windows that hang past the padded input: those
    divide by the part of the window inside the padded input (PyTorch's ``ceil_mode=True``).
    """
    sizes = []
    for size, k, s, p, o in zip(in_hw, kernel_size, stride, padding, out_hw):
        start = np.arange(o) * s - p
        sizes.append(np.minimum(start + k, size + p) - start)
    return (sizes[0][:, None] * sizes[1][None, :]).astype(dtype)


def avgpool2d_forward(x, kernel_size, stride, padding, out_hw):
    """Mean over each window; x (N, C, H, W) -> (N, C, OH, OW), zero padding counted."""
    xp = array_module(x)
    cols = im2col(x, kernel_size, stride, padding, (1, 1), out_hw)
    divisor = xp.asarray(avgpool_divisor(x.shape[2:], kernel_size, stride, padding, out_hw, x.dtype))
    out = _window_sum(cols)
    out /= divisor
    return out, (divisor, x.shape, kernel_size, stride, padding)


def avgpool2d_backward(dout, cache):
    """Spread dout / divisor evenly over each window; returns dx."""
    xp = array_module(dout)
    divisor, x_shape, kernel_size, stride, padding = cache
    share = (dout / divisor)[..., None, None]
    dcols = xp.broadcast_to(share, dout.shape + tuple(kernel_size))
    return col2im(dcols, x_shape, kernel_size, stride, padding, (1, 1))


# --- power-average (Lp, the notes' L2) pooling ----------------------------------------------------
def lppool2d_forward(x, norm_type, kernel_size, stride, out_hw):
    """(sum over the window of x^p)^(1/p); x (N, C, H, W) -> (N, C, OH, OW), no padding.

    PyTorch semantics: x^p is not |x|^p (odd p and negative sums give NaN, as in PyTorch);
    a ceil-mode window that hangs past the input has its sum scaled by KH*KW / (taps inside),
    because PyTorch computes it as avg_pool2d(x^p) * KH*KW. ``norm_type=inf`` is max of |x|.
    """
    xp = array_module(x)
    if math.isinf(norm_type):
        out, mcache = maxpool2d_forward(xp.abs(x), kernel_size, stride, (0, 0), (1, 1), out_hw)
        return out, ("inf", x, mcache)
    p = float(norm_type)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        xpow = x * x if p == 2.0 else x if p == 1.0 else x ** x.dtype.type(p)
        cols = im2col(xpow, kernel_size, stride, (0, 0), (1, 1), out_hw)
        divisor = avgpool_divisor(x.shape[2:], kernel_size, stride, (0, 0), out_hw, x.dtype)
        scale = xp.asarray(kernel_size[0] * kernel_size[1] / divisor)
        total = _window_sum(cols) * scale
        out = xp.sqrt(total) if p == 2.0 else total if p == 1.0 else total ** x.dtype.type(1.0 / p)
    return out, ("p", x, p, total, out, scale, kernel_size, stride)


def lppool2d_backward(dout, cache):
    """dx = p*x^(p-1) * sum over windows of dout * out / (p * total); zero where total == 0."""
    xp = array_module(dout)
    if cache[0] == "inf":
        _, x, mcache = cache
        return maxpool2d_backward(dout, mcache) * xp.sign(x)
    _, x, p, total, out, scale, kernel_size, stride = cache
    zero = total == 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # d out / d total = out / (p * total); like PyTorch the gradient is 0 where total == 0.
        weight = xp.where(zero, 0, dout * out / (p * xp.where(zero, 1, total))) * scale
        dcols = xp.broadcast_to(weight[..., None, None], dout.shape + tuple(kernel_size))
        spread = col2im(dcols, x.shape, kernel_size, stride, (0, 0), (1, 1))
        dpow = 2 * x if p == 2.0 else 1 if p == 1.0 else p * x ** x.dtype.type(p - 1)
        dx = spread * dpow
    return dx.astype(x.dtype, copy=False)


# --- global average pooling -----------------------------------------------------------------------
def global_avgpool2d_forward(x):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1)."""
    return x.mean(axis=(2, 3), keepdims=True), x.shape


def global_avgpool2d_backward(dout, cache):
    """Each input position gets dout / (H*W) of its channel."""
    xp = array_module(dout)
    x_shape = cache
    dx = xp.empty(x_shape, dtype=dout.dtype)
    dx[...] = dout / (x_shape[2] * x_shape[3])
    return dx
