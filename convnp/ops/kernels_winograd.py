"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3), forward and backward (numba).

Lavin & Gray (2015): each 2x2 output tile of a 3x3 convolution is A^T [(G g G^T) * (B^T d B)] A,
where d is the 4x4 input tile, g the 3x3 filter and * the elementwise product over the 16
transformed positions. Summed over the input channels, the product becomes 16 matrix multiplies

    M[xi] = V[xi] @ U[xi]      V[xi]: (tiles, C) transformed input, U[xi]: (C, K) transformed filters

with 16*C*K multiplies per 4 outputs instead of 36*C*K: 2.25x fewer than im2col's. Backward stays
in the transformed domain: with dM = A dY A^T (the adjoint of the output transform),

    dU[xi] = V[xi]^T @ dM[xi]   -> dW = G^T dU G
    dV[xi] = dM[xi] @ U[xi]^T   -> dX = B dV B^T, added over the overlapping input tiles.

Tiles are processed in chunks of a few hundred, so V, M and dM of a chunk stay in cache. The
transforms are numba loops along the channels (channels-last memory); padding is read as zeros
by bounds checks, never copied. Rounding differs from im2col's by a few float32 ulps (the
transforms add and subtract inputs before multiplying).

B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
"""

from __future__ import annotations

import numpy as np

try:  # this module is imported only once the compiled kernels are in use (see ops.conv)
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None
from .reduce import sum_rows

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

#: Tiles per chunk: V, M (and dM) of a chunk are 16 x TILES x channels numbers each.
TILES = 256


def filter_transform(w, dtype):
    """U (16, C, K) from w (K, C, 3, 3): U[(a, b), c, k] = (G w[k, c] G^T)[a, b]."""
    k, c = w.shape[:2]
    u = planes(c, k, dtype)
    _filter_transform(np.ascontiguousarray(w, dtype=dtype), u)
    return u


def filter_transform_adjoint(du):
    """dW (K, C, 3, 3) from dU (16, C, K): the adjoint of ``filter_transform``."""
    c, k = du.shape[1:]
    dw = np.empty((k, c, 3, 3), du.dtype)
    _filter_transform_adjoint(du, dw)
    return dw


def planes(tiles: int, channels: int, dtype):
    """An empty (16, tiles, channels) array whose 16 planes are NOT a multiple of 4 KiB apart.

    The transforms read or write all 16 planes at once; planes a power-of-two apart in memory
    fall into the same L1-cache set and evict each other (measured: the transforms ran 5-8x
    slower), so each plane is followed by 32 numbers of padding.
    """
    step = tiles * channels + 32
    buf = np.empty(16 * step, dtype)
    item = buf.itemsize
    return np.lib.stride_tricks.as_strided(buf, (16, tiles, channels), (step * item, channels * item, item))


def tiles_per_chunk(tiles_per_image: int) -> int:
    """Images per chunk so a chunk holds about ``TILES`` tiles."""
    return max(1, TILES // max(1, tiles_per_image))


if _numba is not None:
    _jit = _numba.njit(nogil=True, cache=True)
    _inline = _numba.njit(nogil=True, cache=True, inline="always")

    @_inline
    def _ld(x, n, r, q, k, h, w):
        if 0 <= r < h and 0 <= q < w:
            return x[n, r, q, k]
        return x.dtype.type(0)

    @_inline
    def _bt(d0, d1, d2, d3):
        """B^T applied to a column (d0..d3)."""
        return d0 - d2, d1 + d2, d2 - d1, d1 - d3

    @_jit
    def input_transform(x, v, n0, n1, ph, pw, th, tw):
        """v[xi, p, c] = (B^T d B)[xi] for the 4x4 tiles d of images n0..n1-1 of NHWC x (zeros outside)."""
        h, w, cc = x.shape[1], x.shape[2], x.shape[3]
        p = 0
        for n in range(n0, n1):
            for ti in range(th):
                r = 2 * ti - ph
                for tj in range(tw):
                    q = 2 * tj - pw
                    inside = r >= 0 and q >= 0 and r + 4 <= h and q + 4 <= w
                    for k in range(cc):
                        if inside:
                            d00, d01, d02, d03 = x[n, r, q, k], x[n, r, q + 1, k], x[n, r, q + 2, k], x[n, r, q + 3, k]
                            d10, d11, d12, d13 = (x[n, r + 1, q, k], x[n, r + 1, q + 1, k], x[n, r + 1, q + 2, k],
                                                  x[n, r + 1, q + 3, k])
                            d20, d21, d22, d23 = (x[n, r + 2, q, k], x[n, r + 2, q + 1, k], x[n, r + 2, q + 2, k],
                                                  x[n, r + 2, q + 3, k])
                            d30, d31, d32, d33 = (x[n, r + 3, q, k], x[n, r + 3, q + 1, k], x[n, r + 3, q + 2, k],
                                                  x[n, r + 3, q + 3, k])
                        else:
                            d00, d01, d02, d03 = (_ld(x, n, r, q, k, h, w), _ld(x, n, r, q + 1, k, h, w),
                                                  _ld(x, n, r, q + 2, k, h, w), _ld(x, n, r, q + 3, k, h, w))
                            d10, d11, d12, d13 = (_ld(x, n, r + 1, q, k, h, w), _ld(x, n, r + 1, q + 1, k, h, w),
                                                  _ld(x, n, r + 1, q + 2, k, h, w), _ld(x, n, r + 1, q + 3, k, h, w))
                            d20, d21, d22, d23 = (_ld(x, n, r + 2, q, k, h, w), _ld(x, n, r + 2, q + 1, k, h, w),
                                                  _ld(x, n, r + 2, q + 2, k, h, w), _ld(x, n, r + 2, q + 3, k, h, w))
                            d30, d31, d32, d33 = (_ld(x, n, r + 3, q, k, h, w), _ld(x, n, r + 3, q + 1, k, h, w),
                                                  _ld(x, n, r + 3, q + 2, k, h, w), _ld(x, n, r + 3, q + 3, k, h, w))
                        # rows: B^T d (column by column)
                        a00, a10, a20, a30 = _bt(d00, d10, d20, d30)
                        a01, a11, a21, a31 = _bt(d01, d11, d21, d31)
                        a02, a12, a22, a32 = _bt(d02, d12, d22, d32)
                        a03, a13, a23, a33 = _bt(d03, d13, d23, d33)
                        # columns: (B^T d) B, row by row
                        v[0, p, k], v[1, p, k], v[2, p, k], v[3, p, k] = _bt(a00, a01, a02, a03)
                        v[4, p, k], v[5, p, k], v[6, p, k], v[7, p, k] = _bt(a10, a11, a12, a13)
                        v[8, p, k], v[9, p, k], v[10, p, k], v[11, p, k] = _bt(a20, a21, a22, a23)
                        v[12, p, k], v[13, p, k], v[14, p, k], v[15, p, k] = _bt(a30, a31, a32, a33)
                    p += 1

    @_inline
    def _b(e0, e1, e2, e3):
        """B applied to a column (the adjoint of ``_bt``)."""
        return e0, e1 - e2 + e3, -e0 + e1 + e2, -e3

    @_jit
    def input_transform_adjoint(dv, dx, n0, n1, ph, pw, th, tw):
        """dx[n, tile rows/cols, c] += (B dv[:, p, c] B^T) for images n0..n1-1 (dx NHWC, zeroed there)."""
        h, w, cc = dx.shape[1], dx.shape[2], dx.shape[3]
        p = 0
        for n in range(n0, n1):
            for ti in range(th):
                r = 2 * ti - ph
                for tj in range(tw):
                    q = 2 * tj - pw
                    inside = r >= 0 and q >= 0 and r + 4 <= h and q + 4 <= w
                    for k in range(cc):
                        # rows: B dv, column by column of the 4x4 dv
                        b00, b10, b20, b30 = _b(dv[0, p, k], dv[4, p, k], dv[8, p, k], dv[12, p, k])
                        b01, b11, b21, b31 = _b(dv[1, p, k], dv[5, p, k], dv[9, p, k], dv[13, p, k])
                        b02, b12, b22, b32 = _b(dv[2, p, k], dv[6, p, k], dv[10, p, k], dv[14, p, k])
                        b03, b13, b23, b33 = _b(dv[3, p, k], dv[7, p, k], dv[11, p, k], dv[15, p, k])
                        # columns: (B dv) B^T, row by row
                        e00, e01, e02, e03 = _b(b00, b01, b02, b03)
                        e10, e11, e12, e13 = _b(b10, b11, b12, b13)
                        e20, e21, e22, e23 = _b(b20, b21, b22, b23)
                        e30, e31, e32, e33 = _b(b30, b31, b32, b33)
                        if inside:
                            dx[n, r, q, k] += e00
                            dx[n, r, q + 1, k] += e01
                            dx[n, r, q + 2, k] += e02
                            dx[n, r, q + 3, k] += e03
                            dx[n, r + 1, q, k] += e10
                            dx[n, r + 1, q + 1, k] += e11
                            dx[n, r + 1, q + 2, k] += e12
                            dx[n, r + 1, q + 3, k] += e13
                            dx[n, r + 2, q, k] += e20
                            dx[n, r + 2, q + 1, k] += e21
                            dx[n, r + 2, q + 2, k] += e22
                            dx[n, r + 2, q + 3, k] += e23
                            dx[n, r + 3, q, k] += e30
                            dx[n, r + 3, q + 1, k] += e31
                            dx[n, r + 3, q + 2, k] += e32
                            dx[n, r + 3, q + 3, k] += e33
                        else:
                            e = ((e00, e01, e02, e03), (e10, e11, e12, e13), (e20, e21, e22, e23),
                                 (e30, e31, e32, e33))
                            for a in range(4):
                                ra = r + a
                                if 0 <= ra < h:
                                    row = e[a]
                                    for b in range(4):
                                        qb = q + b
                                        if 0 <= qb < w:
                                            dx[n, ra, qb, k] += row[b]
                    p += 1

    @_inline
    def _at(m0, m1, m2, m3):
        """A^T applied to a column."""
        return m0 + m1 + m2, m1 - m2 - m3

    @_jit
    def output_transform(m, out, n0, n1, th, tw, bias, use_bias, relu, mask):
        """out[n, 2x2 tile, k] = A^T m[:, p, k] A (+ bias, then ReLU with its mask) for images n0..n1-1."""
        oh, ow, kk = out.shape[1], out.shape[2], out.shape[3]
        zero = out.dtype.type(0)
        p = 0
        for n in range(n0, n1):
            for ti in range(th):
                r = 2 * ti
                for tj in range(tw):
                    q = 2 * tj
                    full = r + 2 <= oh and q + 2 <= ow
                    for k in range(kk):
                        z00, z10 = _at(m[0, p, k], m[4, p, k], m[8, p, k], m[12, p, k])
                        z01, z11 = _at(m[1, p, k], m[5, p, k], m[9, p, k], m[13, p, k])
                        z02, z12 = _at(m[2, p, k], m[6, p, k], m[10, p, k], m[14, p, k])
                        z03, z13 = _at(m[3, p, k], m[7, p, k], m[11, p, k], m[15, p, k])
                        y00, y01 = _at(z00, z01, z02, z03)
                        y10, y11 = _at(z10, z11, z12, z13)
                        if use_bias:
                            bk = bias[k]
                            y00 += bk
                            y01 += bk
                            y10 += bk
                            y11 += bk
                        if relu:
                            k00, k01, k10, k11 = not (y00 <= 0), not (y01 <= 0), not (y10 <= 0), not (y11 <= 0)
                            y00 = y00 if k00 else zero
                            y01 = y01 if k01 else zero
                            y10 = y10 if k10 else zero
                            y11 = y11 if k11 else zero
                        if full:
                            out[n, r, q, k] = y00
                            out[n, r, q + 1, k] = y01
                            out[n, r + 1, q, k] = y10
                            out[n, r + 1, q + 1, k] = y11
                            if relu:
                                mask[n, r, q, k] = k00
                                mask[n, r, q + 1, k] = k01
                                mask[n, r + 1, q, k] = k10
                                mask[n, r + 1, q + 1, k] = k11
                        else:
                            out[n, r, q, k] = y00
                            if relu:
                                mask[n, r, q, k] = k00
                            if q + 1 < ow:
                                out[n, r, q + 1, k] = y01
                                if relu:
                                    mask[n, r, q + 1, k] = k01
                            if r + 1 < oh:
                                out[n, r + 1, q, k] = y10
                                if relu:
                                    mask[n, r + 1, q, k] = k10
                                if q + 1 < ow:
                                    out[n, r + 1, q + 1, k] = y11
                                    if relu:
                                        mask[n, r + 1, q + 1, k] = k11
                    p += 1

    @_jit
    def output_transform_adjoint(dy, dm, n0, n1, th, tw):
        """dm[:, p, k] = A dy_tile A^T for the 2x2 tiles of NHWC dy (zeros past its edge)."""
        oh, ow, kk = dy.shape[1], dy.shape[2], dy.shape[3]
        zero = dy.dtype.type(0)
        p = 0
        for n in range(n0, n1):
            for ti in range(th):
                r = 2 * ti
                for tj in range(tw):
                    q = 2 * tj
                    full = r + 2 <= oh and q + 2 <= ow
                    for k in range(kk):
                        if full:
                            g00, g01, g10, g11 = dy[n, r, q, k], dy[n, r, q + 1, k], dy[n, r + 1, q, k], dy[n, r + 1, q + 1, k]
                        else:
                            g00 = dy[n, r, q, k]
                            g01 = dy[n, r, q + 1, k] if q + 1 < ow else zero
                            g10 = dy[n, r + 1, q, k] if r + 1 < oh else zero
                            g11 = dy[n, r + 1, q + 1, k] if (r + 1 < oh and q + 1 < ow) else zero
                        # rows: A g -> (g0, g0 + g1, g0 - g1, -g1) for each column
                        s00, s01 = g00, g01
                        s10, s11 = g00 + g10, g01 + g11
                        s20, s21 = g00 - g10, g01 - g11
                        s30, s31 = -g10, -g11
                        # columns: (A g) A^T
                        dm[0, p, k], dm[1, p, k], dm[2, p, k], dm[3, p, k] = s00, s00 + s01, s00 - s01, -s01
                        dm[4, p, k], dm[5, p, k], dm[6, p, k], dm[7, p, k] = s10, s10 + s11, s10 - s11, -s11
                        dm[8, p, k], dm[9, p, k], dm[10, p, k], dm[11, p, k] = s20, s20 + s21, s20 - s21, -s21
                        dm[12, p, k], dm[13, p, k], dm[14, p, k], dm[15, p, k] = s30, s30 + s31, s30 - s31, -s31
                    p += 1


if _numba is not None:
    @_inline
    def _g(w0, w1, w2, half):
        """G applied to a 3-vector."""
        return w0, (w0 + w1 + w2) * half, (w0 - w1 + w2) * half, w2

    @_inline
    def _gt(t0, t1, t2, t3, half):
        """G^T applied to a 4-vector."""
        return t0 + (t1 + t2) * half, (t1 - t2) * half, (t1 + t2) * half + t3

    @_jit
    def _filter_transform(w, u):
        """u[(a, b), c, k] = (G w[k, c] G^T)[a, b], G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]]."""
        kk, cc = w.shape[0], w.shape[1]
        half = w.dtype.type(0.5)
        for c in range(cc):
            for k in range(kk):
                t00, t10, t20, t30 = _g(w[k, c, 0, 0], w[k, c, 1, 0], w[k, c, 2, 0], half)  # G w, column 0
                t01, t11, t21, t31 = _g(w[k, c, 0, 1], w[k, c, 1, 1], w[k, c, 2, 1], half)
                t02, t12, t22, t32 = _g(w[k, c, 0, 2], w[k, c, 1, 2], w[k, c, 2, 2], half)
                u[0, c, k], u[1, c, k], u[2, c, k], u[3, c, k] = _g(t00, t01, t02, half)      # (G w) G^T
                u[4, c, k], u[5, c, k], u[6, c, k], u[7, c, k] = _g(t10, t11, t12, half)
                u[8, c, k], u[9, c, k], u[10, c, k], u[11, c, k] = _g(t20, t21, t22, half)
                u[12, c, k], u[13, c, k], u[14, c, k], u[15, c, k] = _g(t30, t31, t32, half)

    @_jit
    def _filter_transform_adjoint(du, dw):
        """dw[k, c] = G^T du[:, c, k] G."""
        cc, kk = du.shape[1], du.shape[2]
        half = du.dtype.type(0.5)
        for c in range(cc):
            for k in range(kk):
                t00, t01, t02 = _gt(du[0, c, k], du[1, c, k], du[2, c, k], du[3, c, k], half)    # du G, row 0
                t10, t11, t12 = _gt(du[4, c, k], du[5, c, k], du[6, c, k], du[7, c, k], half)
                t20, t21, t22 = _gt(du[8, c, k], du[9, c, k], du[10, c, k], du[11, c, k], half)
                t30, t31, t32 = _gt(du[12, c, k], du[13, c, k], du[14, c, k], du[15, c, k], half)
                dw[k, c, 0, 0], dw[k, c, 1, 0], dw[k, c, 2, 0] = _gt(t00, t10, t20, t30, half)  # G^T (du G)
                dw[k, c, 0, 1], dw[k, c, 1, 1], dw[k, c, 2, 1] = _gt(t01, t11, t21, t31, half)
                dw[k, c, 0, 2], dw[k, c, 1, 2], dw[k, c, 2, 2] = _gt(t02, t12, t22, t32, half)


def applies(x_shape, w_shape, stride, dilation, dtype) -> bool:
    """Winograd is used for 3x3 filters at stride 1 and dilation 1 with enough channels to pay off."""
    _, c, h, wd = x_shape
    k, _, kh, kw = w_shape
    return (_numba is not None and (kh, kw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and c >= MIN_CHANNELS and k >= MIN_CHANNELS and np.dtype(dtype) in (np.float32, np.float64))


#: Below this many input (and output) channels the transforms cost more than the multiplies save.
MIN_CHANNELS = 16


def _ranges(n: int, per_image_work: int) -> list:
    """Contiguous image ranges, one per worker thread (one range inside a parallel region)."""
    from ..threads import get_num_threads, in_parallel_region  # noqa: PLC0415

    workers = 1 if in_parallel_region() else min(n, get_num_threads(), max(1, n * per_image_work // MIN_SPLIT_WORK))
    bounds = [n * i // workers for i in range(workers + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


#: A layer call is split over the worker threads only with at least this many (tile x channel)
#: transform elements in the batch (a 32x32, 32->32 layer has 16,384 per image).
MIN_SPLIT_WORK = 1 << 16


def _run(fn, ranges):
    from ..threads import parallel_map  # noqa: PLC0415

    return parallel_map(lambda i, worker: fn(*ranges[i]), len(ranges))


def conv3x3_forward(xh, w, b, padding, out_hw, relu=False):
    """out (N, OH, OW, K) NHWC (and the ReLU mask, or None) of NHWC ``xh`` (contiguous).

    Outside convnp's parallel regions the batch is split over the worker threads.
    """
    n = xh.shape[0]
    k, c = w.shape[:2]
    oh, ow = out_hw
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    dtype = xh.dtype
    u = filter_transform(w, dtype)
    out = np.empty((n, oh, ow, k), dtype)
    mask = np.empty((n, oh, ow, k), bool) if relu else np.empty((1, 1, 1, 1), bool)
    bias = b.astype(dtype, copy=False) if b is not None else np.zeros(1, dtype)

    def run(start, stop):
        nb = tiles_per_chunk(th * tw)
        pc = min(nb, stop - start) * th * tw
        v, m = planes(pc, c, dtype), planes(pc, k, dtype)
        for n0 in range(start, stop, nb):
            n1 = min(stop, n0 + nb)
            p = (n1 - n0) * th * tw
            input_transform(xh, v, n0, n1, padding[0], padding[1], th, tw)
            np.matmul(v[:, :p], u, out=m[:, :p])
            output_transform(m, out, n0, n1, th, tw, bias, b is not None, relu, mask)

    _run(run, _ranges(n, th * tw * (c + k)))
    return out, (mask if relu else None)


def conv3x3_backward(dh, xh, w, padding, out_hw, has_bias, input_grad=True):
    """(dx NHWC or None, dw (K, C, 3, 3), db or None) from NHWC ``dh`` and ``xh`` (both contiguous).

    Outside convnp's parallel regions the batch is split over the worker threads; the ranges'
    filter gradients are added in range order (the same result on every run).
    """
    n, h, wd, c = xh.shape
    k = w.shape[0]
    oh, ow = out_hw
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    dtype = xh.dtype
    if input_grad:
        ut = np.ascontiguousarray(filter_transform(w, dtype).transpose(0, 2, 1))
        dx = np.empty((n, h, wd, c), dtype)

    def run(start, stop):
        nb = tiles_per_chunk(th * tw)
        pc = min(nb, stop - start) * th * tw
        v, dm = planes(pc, c, dtype), planes(pc, k, dtype)
        du = np.zeros((16, c, k), dtype)
        tmp = np.empty((16, c, k), dtype)
        if input_grad:
            dv = planes(pc, c, dtype)
            dx[start:stop] = 0
        for n0 in range(start, stop, nb):
            n1 = min(stop, n0 + nb)
            p = (n1 - n0) * th * tw
            input_transform(xh, v, n0, n1, padding[0], padding[1], th, tw)
            output_transform_adjoint(dh, dm, n0, n1, th, tw)
            np.matmul(v[:, :p].transpose(0, 2, 1), dm[:, :p], out=tmp)
            du += tmp
            if input_grad:
                np.matmul(dm[:, :p], ut, out=dv[:, :p])
                input_transform_adjoint(dv, dx, n0, n1, padding[0], padding[1], th, tw)
        return du

    parts = _run(run, _ranges(n, th * tw * (c + k)))
    du = parts[0]
    for part in parts[1:]:
        du += part
    dw = filter_transform_adjoint(du).astype(w.dtype, copy=False)
    db = sum_rows(dh.reshape(-1, k)).astype(w.dtype, copy=False) if has_bias else None
    return (dx if input_grad else None), dw, db


# --- the op-level entry points (NCHW views in and out, like convnp.ops.conv) ---------------------------
class Cache:
    """What ``forward`` keeps for ``backward``: the NHWC input (a view when x was channels-last)."""

    __slots__ = ("xh", "x_dtype", "w", "has_bias", "padding", "out_hw")

    def __init__(self, xh, x_dtype, w, has_bias, padding, out_hw):
        self.xh, self.x_dtype, self.w, self.has_bias = xh, x_dtype, w, has_bias
        self.padding, self.out_hw = padding, out_hw


def _nhwc(a, dtype):
    h = a.transpose(0, 2, 3, 1)
    return h if h.flags.c_contiguous and h.dtype == dtype else np.ascontiguousarray(h, dtype=dtype)


def forward(x, w, b, padding, out_hw, relu=False):
    """(out (N, K, OH, OW) as a view of NHWC memory, Cache, ReLU mask like out or None)."""
    dtype = np.result_type(x.dtype, w.dtype)
    xh = _nhwc(x, dtype)
    out, mask = conv3x3_forward(xh, w, b, padding, out_hw, relu)
    cache = Cache(xh, x.dtype, w, b is not None, tuple(padding), tuple(out_hw))
    return out.transpose(0, 3, 1, 2), cache, (None if mask is None else mask.transpose(0, 3, 1, 2))


def backward(dout, cache: Cache, input_grad: bool = True):
    """(dx (N, C, H, W) or None, dw, db or None) for a ``forward`` cache."""
    dh = _nhwc(dout, cache.xh.dtype)
    dx, dw, db = conv3x3_backward(dh, cache.xh, cache.w, cache.padding, cache.out_hw, cache.has_bias, input_grad)
    if dx is not None:
        dx = dx.transpose(0, 3, 1, 2).astype(cache.x_dtype, copy=False)
    return dx, dw, db
