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

from . import kernels
from .backend import array_module
from .im2col import _extra_padding, col2im, im2col


def _index_dtype(taps: int):
    return np.uint8 if taps <= 256 else np.int32


# --- max pooling ----------------------------------------------------------------------------------
def channels_last(x) -> bool:
    """True when NCHW ``x`` is a view of NHWC memory (what convnp's Conv2d returns)."""
    return (x.ndim == 4 and not x.flags.c_contiguous and x.shape[1] > 1
            and x.transpose(0, 2, 3, 1).flags.c_contiguous)


def _work(x, last: bool):
    """``x`` as the array the kernels loop over: NHWC (spatial axes 1, 2) or NCHW (axes 2, 3)."""
    return x.transpose(0, 2, 3, 1) if last else x


def _from_work(a, last: bool):
    return a.transpose(0, 3, 1, 2) if last else a


def _padded_work(a, last, padding, extra, value):
    """The working array with ``padding`` (+ ``extra`` at the end) of ``value`` around its spatial axes."""
    (ph, pw), (eh, ew) = padding, extra
    if ph == pw == eh == ew == 0:
        return a
    xp = array_module(a)
    if last:
        n, h, w, c = a.shape
        out = xp.full((n, h + 2 * ph + eh, w + 2 * pw + ew, c), value, dtype=a.dtype)
        out[:, ph:ph + h, pw:pw + w, :] = a
    else:
        n, c, h, w = a.shape
        out = xp.full((n, c, h + 2 * ph + eh, w + 2 * pw + ew), value, dtype=a.dtype)
        out[:, :, ph:ph + h, pw:pw + w] = a
    return out


def _tap(a, last, i, j, stride, dilation, out_hw):
    """The (N, OH, OW, C) / (N, C, OH, OW) view of tap (i, j) of every window of the padded ``a``."""
    r0, c0 = i * dilation[0], j * dilation[1]
    rows = slice(r0, r0 + stride[0] * (out_hw[0] - 1) + 1, stride[0])
    cols = slice(c0, c0 + stride[1] * (out_hw[1] - 1) + 1, stride[1])
    return a[:, rows, cols, :] if last else a[:, :, rows, cols]


def _geometry_extra(x_shape, kernel_size, stride, padding, dilation, out_hw):
    return tuple(_extra_padding(size, o, k, s, p, d) for size, o, k, s, p, d in
                 zip(x_shape[2:], out_hw, kernel_size, stride, padding, dilation))


def maxpool2d_forward(x, kernel_size, stride, padding, dilation, out_hw):
    """Max over each window; x (N, C, H, W) -> (N, C, OH, OW). Padding is -inf.

    The cache keeps the "switches": the flat tap index (row-major over KH x KW) of the
    maximum of each window. Ties go to the first maximum in that order, like PyTorch.
    A NaN in a window makes its output NaN and takes the switch (the first NaN).
    An input that is channels-last in memory gives a channels-last output (no transposes).
    """
    xp = array_module(x)
    kh, kw = kernel_size
    last = channels_last(x)
    extra = _geometry_extra(x.shape, kernel_size, stride, padding, dilation, out_hw)
    if xp is np and kernels.enabled() and kernels.compiled_dtype(x) and (last or x.flags.c_contiguous):
        return _maxpool_compiled(x, kernel_size, stride, padding, dilation, out_hw, last, extra)
    a = _padded_work(_work(x, last), last, padding, extra, -np.inf)
    taps = [_tap(a, last, i, j, stride, dilation, out_hw) for i in range(kh) for j in range(kw)]
    itype = np.dtype(_index_dtype(kh * kw)).type
    out = xp.empty(taps[0].shape, dtype=x.dtype)
    out[...] = taps[0]
    switches = xp.zeros(out.shape, dtype=itype)
    better = xp.empty(out.shape, dtype=bool)
    step = xp.empty(out.shape, dtype=itype)
    for t, tap in enumerate(taps[1:], 1):
        xp.greater(tap, out, out=better)  # strictly: ties keep the earlier tap
        xp.maximum(out, tap, out=out)     # propagates NaN
        # switches = t where this tap is better: t exceeds every earlier index, so a max does it
        xp.multiply(better, itype(t), out=step)
        xp.maximum(switches, step, out=switches)
    if bool(xp.isnan(out).any()):  # rare: the first NaN of a window must take its switch
        switches = _nan_switches(taps, out, itype)
    cache = (switches, x.shape, kernel_size, stride, padding, dilation, last, extra)
    return _from_work(out, last), cache


def _as_nhwc(x, last: bool):
    """An NHWC array over x's memory: x itself channels-last, or (N*C, H, W, 1) for NCHW (per channel)."""
    if last:
        return x.transpose(0, 2, 3, 1)
    n, c, h, w = x.shape
    return x.reshape(n * c, h, w, 1)


def _tiles(in_hw, out_hw, kernel_size, stride, padding, dilation) -> bool:
    """True when the windows cover the input exactly once (stride = kernel, no padding or dilation)."""
    return (tuple(stride) == tuple(kernel_size) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)
            and tuple(in_hw) == (out_hw[0] * stride[0], out_hw[1] * stride[1]))


def _maxpool_compiled(x, kernel_size, stride, padding, dilation, out_hw, last, extra):
    """One pass per output with the numba kernel (same results as the NumPy path below it)."""
    kh, kw = kernel_size
    n, c = x.shape[:2]
    a = _as_nhwc(x, last)
    itype = _index_dtype(kh * kw)
    out = np.empty((a.shape[0], *out_hw, a.shape[3]), dtype=x.dtype)
    switches = np.empty(out.shape, dtype=itype)
    if _tiles(x.shape[2:], out_hw, kernel_size, stride, padding, dilation):
        kernels.maxpool_nhwc_forward_tiled(a, out, switches, kh, kw)
    else:
        kernels.maxpool_nhwc_forward(a, out, switches, kh, kw, stride[0], stride[1], padding[0], padding[1],
                                     dilation[0], dilation[1])
    cache = (switches, x.shape, kernel_size, stride, padding, dilation, last, "compiled")
    out = out.transpose(0, 3, 1, 2) if last else out.reshape(n, c, *out_hw)
    return out, cache


def _maxpool_compiled_backward(dout, cache):
    switches, x_shape, kernel_size, stride, padding, dilation, last, _ = cache
    n, c, h, w = x_shape
    d = _as_nhwc(dout, last) if (last and channels_last(dout)) or (not last and dout.flags.c_contiguous) else None
    if d is None:  # dout in another layout than the forward's output: make it match
        d = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)) if last else \
            np.ascontiguousarray(dout).reshape(n * c, *dout.shape[2:], 1)
    shape = (n, h, w, c) if last else (n * c, h, w, 1)
    oh, ow = switches.shape[1:3]
    if _tiles((h, w), (oh, ow), kernel_size, stride, padding, dilation):
        dx = np.empty(shape, dtype=dout.dtype)
        kernels.maxpool_nhwc_backward_tiled(d, switches, dx, kernel_size[0], kernel_size[1])
    else:
        dx = np.zeros(shape, dtype=dout.dtype)
        kernels.maxpool_nhwc_backward(d, switches, dx, kernel_size[0], kernel_size[1], stride[0], stride[1],
                                      padding[0], padding[1], dilation[0], dilation[1])
    return dx.transpose(0, 3, 1, 2) if last else dx.reshape(n, c, h, w)


def _nan_switches(taps, out, itype):
    """Switches by the first tap equal to the max, a NaN max matching the first NaN tap."""
    xp = array_module(out)
    switches = xp.zeros(out.shape, dtype=itype)
    pending = xp.ones(out.shape, dtype=bool)
    hit = xp.empty(out.shape, dtype=bool)
    out_nan = xp.isnan(out)
    for t, tap in enumerate(taps):
        xp.equal(tap, out, out=hit)
        hit |= out_nan & xp.isnan(tap)
        hit &= pending
        if t:
            switches += hit * itype(t)
        pending ^= hit
    return switches


def maxpool2d_backward(dout, cache):
    """Route each output gradient to the input position its switch recorded; returns dx."""
    if cache[-1] == "compiled":
        return _maxpool_compiled_backward(dout, cache)
    switches, x_shape, kernel_size, stride, padding, dilation, last, extra = cache
    xp = array_module(dout)
    kh, kw = kernel_size
    d = _work(dout, last)
    n, c, h, w = x_shape
    hp, wp = h + 2 * padding[0] + extra[0], w + 2 * padding[1] + extra[1]
    shape = (n, hp, wp, c) if last else (n, c, hp, wp)
    # Windows that do not overlap write each input position at most once: assign, don't add;
    # when they also tile the (padded) input, every position is written and nothing needs zeroing.
    disjoint = all(s >= dil * (k - 1) + 1 for s, k, dil in zip(stride, kernel_size, dilation))
    out_hw = switches.shape[1:3] if last else switches.shape[2:4]
    tiled = disjoint and dilation == (1, 1) and tuple(stride) == tuple(kernel_size) and \
        (hp, wp) == (out_hw[0] * stride[0], out_hw[1] * stride[1])
    dx = (xp.empty if tiled else xp.zeros)(shape, dtype=dout.dtype)
    hit = xp.empty(switches.shape, dtype=bool)
    for t in range(kh * kw):
        target = _tap(dx, last, t // kw, t % kw, stride, dilation, out_hw)
        xp.equal(switches, t, out=hit)
        if disjoint:
            xp.multiply(d, hit, out=target)
        else:
            target += d * hit
    if (hp, wp) != (h, w):
        dx = dx[:, padding[0]:padding[0] + h, padding[1]:padding[1] + w, :] if last else \
            dx[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]
        dx = xp.ascontiguousarray(dx)
    return _from_work(dx, last)


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
