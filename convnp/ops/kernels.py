"""Optional compiled kernels (numba) behind the NumPy ops, and the switch that picks them.

    pip install "convnp[fast]"        # numba
    CONVNP_KERNELS=numpy              # force the pure-NumPy code (default "auto": numba if installed)
    with convnp.ops.kernels.use("numpy"): ...

The kernels are plain loops over channels-last (NHWC) memory, compiled with ``nogil=True`` so
convnp's worker threads run them side by side, and never ``parallel=True`` (convnp does its own
threading; numba's OpenMP-style pools next to it collapse throughput). Every op that uses one
has a NumPy path computing the same numbers, and the tests run both. Compiled code is cached
on disk (``cache=True``), so only the first process pays the compile time (about a second).

What is here: bias + ReLU on a matrix-multiply output while it is still in cache, single-pass
max pooling with the argmax "switches" and its backward, and ReLU forward/backward in one pass;
``kernels_winograd`` holds the Winograd 3x3 convolution. (An im2col kernel was tried and dropped:
NumPy's strided copy into cache-sized chunks measured 1.5-3x faster than the numba loop.)
"""

from __future__ import annotations

import contextlib
import os
import tracemalloc

from ..errors import ConfigError

CHOICES = ("auto", "numba", "numpy")
ENV_VAR = "CONVNP_KERNELS"

try:  # numba is the optional "fast" extra
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None

_choice = {"value": None}


def _resolve(value: str) -> bool:
    if value not in CHOICES:
        raise ConfigError(f"kernels must be one of {CHOICES}, got {value!r}")
    if value == "numba" and _numba is None:
        raise ConfigError("kernels='numba' needs numba: pip install 'convnp[fast]'")
    return _numba is not None and value in ("auto", "numba")


def available() -> bool:
    """True when numba is installed."""
    return _numba is not None


def enabled() -> bool:
    """True when the compiled kernels are in use (numba installed and not switched off).

    While ``tracemalloc`` traces (``convnp.memory.measure_peak``) the NumPy code runs instead,
    unless ``warm()`` ran first: numba's first call in a process loads its compiler and the
    cached machine code, about 20 MB of Python objects that a memory measurement would count.
    """
    if _choice["value"] is None:
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        try:
            _choice["value"] = _resolve(env)
        except ConfigError as err:
            raise ConfigError(f"{ENV_VAR}={env!r}: {err}") from None
    return _choice["value"] and (_warm["done"] or not tracemalloc.is_tracing())


_warm = {"done": False}


def warm() -> None:
    """Compile (or load from numba's cache) every kernel for float32 and float64 now."""
    if not available():
        return
    import numpy as np  # noqa: PLC0415

    from . import activation, conv, norm, pool  # noqa: PLC0415

    with use("numba"):
        _warm["done"] = True
        for dt in (np.float32, np.float64):
            x = np.ones((2, 3, 4, 4), dt)
            for a in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
                for geometry in (((2, 2), (2, 2), (0, 0), (1, 1), (2, 2)), ((3, 3), (2, 2), (1, 1), (1, 1), (2, 2))):
                    out, cache = pool.maxpool2d_forward(a, *geometry)
                    pool.maxpool2d_backward(out, cache)
                out, mask = activation.relu_forward(a)
                activation.relu_backward(out, mask)
            for a in (np.ones((2, 4, 4, 3), dt).transpose(0, 3, 1, 2), np.ones((4, 3), dt)):
                for train in (True, False):  # batch norm's passes (channels-last and (N, C) memory)
                    out, cache = norm.batchnorm_forward(a, np.ones(3, dt), np.ones(3, dt), np.zeros(3, dt),
                                                        np.ones(3, dt), train=train)
                    norm.batchnorm_backward(out, cache)
            for c in (3, 16):  # the planes path (few channels) and Winograd
                w = np.ones((16, c, 3, 3), dt)
                out, cache, _ = conv.conv2d_relu_forward(np.ones((1, c, 4, 4), dt), w, np.ones(16, dt), 1, 1)
                conv.conv2d_backward(out, cache)


def set_kernels(value: str) -> None:
    """"auto" (numba when installed), "numba" (error without it) or "numpy"."""
    _choice["value"] = _resolve(value)


@contextlib.contextmanager
def use(value: str):
    """Context manager: ``set_kernels(value)`` inside the block."""
    before = enabled()
    set_kernels(value)
    try:
        yield
    finally:
        _choice["value"] = before


def name() -> str:
    return "numba" if enabled() else "numpy"


# --- the kernels ------------------------------------------------------------------------------------
if _numba is not None:
    import math as _math

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


# --- helpers for the ops ----------------------------------------------------------------------------
def flat_view(x):
    """A 1-d view of all of ``x`` in memory order when its memory is one contiguous block, else None."""
    if x.flags.c_contiguous:
        return x.reshape(-1)
    if x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous:  # NCHW view of NHWC memory
        return x.transpose(0, 2, 3, 1).reshape(-1)
    return None


def flat_pair(a, b):
    """1-d views of ``a`` and ``b`` in one common memory order (same shape and layout), else (None, None)."""
    if a.shape != b.shape:
        return None, None
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return a.reshape(-1), b.reshape(-1)
    if a.ndim == 4 and not a.flags.c_contiguous and not b.flags.c_contiguous:
        ta, tb = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
        if ta.flags.c_contiguous and tb.flags.c_contiguous:
            return ta.reshape(-1), tb.reshape(-1)
    return None, None


def compiled_dtype(*arrays) -> bool:
    """True when every array is float32 or float64 (the dtypes the kernels are compiled for)."""
    return all(a.dtype.kind == "f" and a.dtype.itemsize in (4, 8) for a in arrays)
