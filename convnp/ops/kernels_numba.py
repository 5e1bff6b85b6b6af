"""The compiled kernels behind ``convnp.ops.kernels`` (numba, imported only when a kernel is first used).

Plain loops over channels-last (NHWC) memory, compiled with ``nogil=True`` so convnp's worker
threads run them side by side, never ``parallel=True``; cached on disk (``cache=True``).
"""

import math as _math

import numba as _numba
import numpy as np

_np_inf = _math.inf
_jit = _numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)

@_jit
def bias_relu(out, bias, mask, use_bias, relu):
    """In place on a (M, K) matrix-multiply output: + bias, then max(0, .) with the mask out > 0.

    A NaN stays NaN and its mask entry is True (PyTorch's threshold passes NaN gradients).
    """
    m, k = out.shape
    for i in range(m):
        for j in range(k):
            v = out[i, j]
            if use_bias:
                v += bias[j]
            if relu:
                keep = not (v <= 0)
                mask[i, j] = keep
                if not keep:
                    v = 0
            out[i, j] = v

@_jit
def col2im_cnhw(dcols, dx, n0, kh, kw, sh, sw, ph, pw, dh, dw):
    """dx[c, n0 + n, r, q] = sum of the window gradients dcols (KH, KW, C, m, OH, OW) that read
    input position (r, q) (dx (C, N, H, W), unpadded; its rows n0..n0+m-1 are overwritten)."""
    cc, m, oh, ow = dcols.shape[2], dcols.shape[3], dcols.shape[4], dcols.shape[5]
    h, w = dx.shape[2], dx.shape[3]
    zero = dx.dtype.type(0)
    for c in range(cc):
        for n in range(m):
            for r in range(h):
                for q in range(w):
                    dx[c, n0 + n, r, q] = zero
    for i in range(kh):
        for j in range(kw):
            # output columns b whose tap j lands inside: 0 <= b*sw + j*dw - pw < w
            lo = max(0, -((j * dw - pw) // sw))
            hi = min(ow, (w - 1 + pw - j * dw) // sw + 1)
            for c in range(cc):
                for n in range(m):
                    for a in range(oh):
                        r = a * sh + i * dh - ph
                        if r < 0 or r >= h:
                            continue
                        for b in range(lo, hi):
                            dx[c, n0 + n, r, b * sw + j * dw - pw] += dcols[i, j, c, n, a, b]

@_jit
def relu_forward_flat(x, out, mask):
    for i in range(x.shape[0]):
        v = x[i]
        keep = not (v <= 0)
        mask[i] = keep
        out[i] = v if keep else 0

@_jit
def relu_backward_flat(dout, mask, dx):
    for i in range(dout.shape[0]):
        dx[i] = dout[i] if mask[i] else 0

@_jit
def maxpool_nhwc_forward(x, out, switches, kh, kw, sh, sw, ph, pw, dh, dw):
    """Max over windows of NHWC ``x`` (padding never wins); switches = flat tap of the first
    max, or of the first NaN when the window holds one. Loops run along the channels; the
    comparisons compile to selects (a branch on random data is mispredicted half the time:
    2x slower forward, 3x backward, at LeNet's 6 channels)."""
    n_, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for n in range(n_):
        for i in range(oh):
            for j in range(ow):
                first = True
                t = 0
                for u in range(kh):
                    r = i * sh - ph + u * dh
                    for v in range(kw):
                        q = j * sw - pw + v * dw
                        if 0 <= r < h and 0 <= q < w:
                            if first:
                                for k in range(c):
                                    out[n, i, j, k] = x[n, r, q, k]
                                    switches[n, i, j, k] = t
                                first = False
                            else:
                                for k in range(c):
                                    val = x[n, r, q, k]
                                    b = out[n, i, j, k]
                                    better = (val > b) | ((val != val) & (b == b))
                                    out[n, i, j, k] = val if better else b
                                    switches[n, i, j, k] = t if better else switches[n, i, j, k]
                        t += 1
                if first:  # a window of padding only: -inf, like the -inf padding of the NumPy path
                    for k in range(c):
                        out[n, i, j, k] = -_np_inf
                        switches[n, i, j, k] = 0

@_jit
def maxpool_nhwc_forward_tiled(x, out, switches, kh, kw):
    """``maxpool_nhwc_forward`` for windows that tile the input exactly, reading it row by row."""
    n_, oh, ow, c = out.shape
    for n in range(n_):
        for i in range(oh):
            for u in range(kh):
                r = i * kh + u
                for j in range(ow):
                    for v in range(kw):
                        t = u * kw + v
                        q = j * kw + v
                        if t == 0:
                            for k in range(c):
                                out[n, i, j, k] = x[n, r, q, k]
                                switches[n, i, j, k] = 0
                        else:  # selects, not branches: random data mispredicts every other one
                            for k in range(c):
                                val = x[n, r, q, k]
                                b = out[n, i, j, k]
                                better = (val > b) | ((val != val) & (b == b))
                                out[n, i, j, k] = val if better else b
                                switches[n, i, j, k] = t if better else switches[n, i, j, k]

@_jit
def maxpool_nhwc_backward_tiled(dout, switches, dx, kh, kw):
    """Backward of windows that tile the input exactly (stride = kernel, no padding/dilation):
    every dx position is written once, so no zeroing and no adding."""
    c = dx.shape[3]
    n_, oh, ow = dout.shape[0], dout.shape[1], dout.shape[2]
    zero = dx.dtype.type(0)
    for n in range(n_):
        for i in range(oh):
            for u in range(kh):
                r = i * kh + u
                for j in range(ow):
                    for v in range(kw):
                        t = u * kw + v
                        q = j * kw + v
                        for k in range(c):
                            g = dout[n, i, j, k]  # loaded first, so the choice compiles to a select
                            dx[n, r, q, k] = g if switches[n, i, j, k] == t else zero

@_jit
def maxpool_nhwc_backward(dout, switches, dx, kh, kw, sh, sw, ph, pw, dh, dw):
    """dx (zeroed, NHWC, unpadded) += dout at each window's switch; loops along the channels."""
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    n_, oh, ow = dout.shape[0], dout.shape[1], dout.shape[2]
    zero = dx.dtype.type(0)
    for n in range(n_):
        for i in range(oh):
            for j in range(ow):
                t = 0
                for u in range(kh):
                    r = i * sh - ph + u * dh
                    for v in range(kw):
                        q = j * sw - pw + v * dw
                        if 0 <= r < h and 0 <= q < w:
                            for k in range(c):
                                g = dout[n, i, j, k] if switches[n, i, j, k] == t else zero
                                dx[n, r, q, k] += g
                        t += 1


@_jit
def bn_centered_squares(x, mean, lo, hi, out):
    """out[k] = sum over rows lo:hi of (x[i, k] - mean[k])^2, accumulated in float64; x (M, C)."""
    c = x.shape[1]
    for k in range(c):
        out[k] = 0.0
    for i in range(lo, hi):
        for k in range(c):
            d = np.float64(x[i, k]) - mean[k]
            out[k] += d * d

@_jit
def bn_apply(x, mean, inv_std, scale, shift, lo, hi, xhat, out):
    """Rows lo:hi: xhat = (x - mean) * inv_std and out = xhat * scale + shift, per channel."""
    c = x.shape[1]
    for i in range(lo, hi):
        for k in range(c):
            h = (x[i, k] - mean[k]) * inv_std[k]
            xhat[i, k] = h
            out[i, k] = h * scale[k] + shift[k]

@_jit
def bn_grad_sums(dout, xhat, lo, hi, dsum, dxsum):
    """Rows lo:hi: dsum[k] = sum of dout, dxsum[k] = sum of dout * xhat (float64 accumulators)."""
    c = dout.shape[1]
    for k in range(c):
        dsum[k] = 0.0
        dxsum[k] = 0.0
    for i in range(lo, hi):
        for k in range(c):
            g = np.float64(dout[i, k])
            dsum[k] += g
            dxsum[k] += g * xhat[i, k]

@_jit
def bn_input_grad(dout, xhat, coef, m, dsum, dxsum, lo, hi, dx):
    """Rows lo:hi: dx = coef * (m * dout - dsum - xhat * dxsum), per channel (training: m values per
    channel; evaluation: m = 1 and zero sums, so dx = coef * dout)."""
    c = dout.shape[1]
    for i in range(lo, hi):
        for k in range(c):
            dx[i, k] = coef[k] * (m * dout[i, k] - dsum[k] - xhat[i, k] * dxsum[k])
