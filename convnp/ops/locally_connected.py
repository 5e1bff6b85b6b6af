"""Locally-connected kernels: a convolution without parameter sharing.

Every output position (i, j) has its own filter bank, so the weight has the layout
(OH, OW, K, C, KH, KW) and the bias (K, OH, OW):

    out[n, k, i, j] = sum_{c, a, b} w[i, j, k, c, a, b] * xpad[n, c, i*S + a, j*S + b] + b[k, i, j]

with OH = (H - KH + 2P)/S + 1. The patches come from ``im2col``; the sum over
(c, a, b) is one batched matmul over the OH*OW positions.
"""

from __future__ import annotations

from ..errors import ShapeError
from .backend import array_module
from .im2col import col2im, im2col, output_hw

_NO_DILATION = (1, 1)


def locally_connected2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (OH, OW, K, C, KH, KW), b (K, OH, OW) or None -> (N, K, OH, OW)."""
    xp = array_module(x)
    oh, ow, k, c, kh, kw = w.shape
    n = x.shape[0]
    if x.shape[1] != c:
        raise ShapeError(f"locally_connected2d: weight expects {c} input channels, input has {x.shape[1]}")
    got = output_hw(x.shape[2:], (kh, kw), stride, padding, _NO_DILATION, "exact",
                    layer="locally_connected2d")
    if got != (oh, ow):
        raise ShapeError(f"locally_connected2d: input {x.shape[2]}x{x.shape[3]} gives {got[0]}x{got[1]} "
                         f"positions but the weight has {oh}x{ow}")
    positions, depth = oh * ow, c * kh * kw
    cols = im2col(x, (kh, kw), stride, padding, _NO_DILATION, (oh, ow))
    # (N, C, OH, OW, KH, KW) -> (OH*OW, N, C*KH*KW): one row of patches per position.
    cols_p = xp.ascontiguousarray(cols.transpose(2, 3, 0, 1, 4, 5)).reshape(positions, n, depth)
    w_p = w.reshape(positions, k, depth)
    out_p = xp.matmul(cols_p, w_p.transpose(0, 2, 1))  # (P, N, K)
    out = xp.ascontiguousarray(out_p.reshape(oh, ow, n, k).transpose(2, 3, 0, 1))
    if b is not None:
        out += b
    return out, (cols_p, w, b is not None, x.shape, x.dtype, stride, padding)


def locally_connected2d_backward(dout, cache):
    """dout (N, K, OH, OW) -> (dx, dw, db); db is None when the layer has no bias."""
    xp = array_module(dout)
    cols_p, w, has_bias, x_shape, x_dtype, stride, padding = cache
    oh, ow, k, c, kh, kw = w.shape
    n = x_shape[0]
    positions, depth = oh * ow, c * kh * kw
    dout_p = xp.ascontiguousarray(dout.transpose(2, 3, 0, 1)).reshape(positions, n, k)
    dw = xp.matmul(dout_p.transpose(0, 2, 1), cols_p).reshape(w.shape)  # (P, K, D)
    db = dout.sum(axis=0) if has_bias else None
    dcols_p = xp.matmul(dout_p, w.reshape(positions, k, depth))  # (P, N, D)
    dcols = dcols_p.reshape(oh, ow, n, c, kh, kw).transpose(2, 3, 0, 1, 4, 5)
    dx = col2im(dcols, x_shape, (kh, kw), stride, padding, _NO_DILATION)
    return dx.astype(x_dtype, copy=False), dw.astype(w.dtype, copy=False), (
        None if db is None else db.astype(w.dtype, copy=False))
