"""2-D convolution (cross-correlation, as in PyTorch) as im2col + one matrix multiply.

    x (N, C, H, W), w (K, C, KH, KW), b (K,) or None  ->  out (N, K, OH, OW)
    OH = (H - DH*(KH-1) - 1 + 2*PH) / SH + 1, likewise OW   (``output_hw`` checks and rounds)

The public layout is NCHW; inside, the kernels work channels-last (NHWC), where every window
row is a run of KW*C contiguous numbers and the output of the matrix multiply (N*OH*OW, K) is
already NHWC. ``out`` is returned as an NCHW-shaped *view* of that NHWC memory, so the next
layer's ``transpose(0, 2, 3, 1)`` is free (elementwise NumPy ops keep the layout), and only an
input that really is NCHW in memory pays for one transpose.

The batch is processed in chunks of a few images, so the im2col matrix of a chunk (about
``CHUNK_BYTES``) stays in cache between the copy that builds it and the multiply that reads it.
Backward recomputes those chunks instead of storing the whole im2col matrix. For stride 1 the
input gradient is the convolution of the (padded) ``dout`` with the flipped filters, again one
im2col + matrix multiply per chunk; for larger strides it is ``dout @ W`` scattered back with
``col2im``, and for very few input channels (a network's RGB input) that scatter is done in
(C, N, H, W) planes. With NumPy arrays a big batch is split over ``convnp.threads``' workers,
each multiplying with single-threaded BLAS, so the im2col copies run in parallel too.

With the compiled kernels (numba, ``convnp.ops.kernels``) a 3x3 stride-1 convolution with at
least 16 input and output channels runs as Winograd F(2x2, 3x3) instead
(``convnp.ops.kernels_winograd``): 2.25x fewer multiplies, forward and backward.
``conv2d_relu_forward`` applies a following ReLU to each chunk of output while it is in cache.
The numbers behind these choices are in ``bench/conv_layer.py`` and the README.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import ShapeError
from ..threads import get_num_threads, in_parallel_region, parallel_map
from . import kernels
from .backend import array_module
from .im2col import col2im_cnhw, col2im_nhwc, im2col_cnhw, output_hw, padded_hw, pair, windows_nhwc
from .reduce import sum_rows

#: Target size in bytes of the im2col matrices being worked on at once (all threads together).
#: Measured on 2 EPYC cores (1 MiB L2 each, 32 MiB L3): 1-4 MiB are equally fast, 16 MiB is
#: 40% slower, the whole batch at once 1.8x slower.
CHUNK_BYTES = 4 << 20

#: Below this many bytes of im2col matrix for the whole batch, the batch is not split over threads.
MIN_PARALLEL_BYTES = 8 << 20

DX_METHODS = ("auto", "flip", "col2im", "col2im_cnhw")

#: "auto" finds dx with "col2im_cnhw" below this many input channels. Measured backward at batch
#: 128, 32x32, K=32: C=3 24 ms vs 30 ms by "flip"; C=8 equal; C=16 62 ms vs 47 ms.
#: Below it, forward and dw also build the im2col matrix from (C, N, H, W) planes, transposed
#: (``im2col_cnhw``): measured forward, batch 128, one thread: C=3 3x3 at 32x32 11.6 -> 7.5 ms,
#: C=3 7x7 29 -> 24 ms, LeNet's C=1 5x5 4.2 -> 3.0 ms and C=6 5x5 4.1 -> 2.3 ms.
SMALL_CHANNELS = 8

#: Bytes of one chunk's transposed im2col matrix on the planes path. Measured: LeNet's first layer
#: (C=1, 5x5, 25 numbers per output position) 2.9 ms with 64k-position chunks vs 4.2 ms with 1k;
#: tiny chunks also mean many small NumPy calls, which hold the GIL and serialise worker threads.
PLANE_BYTES = 2 << 20


def _winograd():
    """The Winograd module (numba kernels), imported once the compiled path is taken."""
    from . import kernels_winograd  # noqa: PLC0415 - imports numba

    return kernels_winograd


def _workers(xp, n: int, total_bytes: int) -> int:
    """Threads to split a batch of ``n`` images over (``convnp.threads``); 1 = the calling thread."""
    if xp is not np or n < 2 or total_bytes < MIN_PARALLEL_BYTES or in_parallel_region():
        return 1
    return max(1, min(get_num_threads(), n))


def _share(workers: int) -> int:
    """Threads whose chunks are in memory at once: this call's workers, or, inside a parallel region
    (``convnp.engine``'s shards), every worker thread, each running its own shard."""
    return get_num_threads() if in_parallel_region() else workers


def _split(fn, n: int, workers: int) -> list:
    """[fn(n0, n1) for ``workers`` contiguous batch ranges], run side by side, BLAS single-threaded."""
    if workers == 1:
        return [fn(0, n)]
    ranges = list(itertools.pairwise([n * i // workers for i in range(workers + 1)]))
    return parallel_map(lambda i, _worker: fn(*ranges[i]), workers)


def chunk_images(n, c, k, in_hw, out_hw, kernel, itemsize, flip=False, workers=1) -> int:
    """Images per chunk, for one of ``workers`` threads that handles ``n`` images.

    Sized so the biggest im2col matrices of all workers' chunks together are about
    ``CHUNK_BYTES``: the windows of x, (OH*OW, KH*KW*C) per image, and when backward finds dx
    by "flip" also those of the padded dout, (H*W, KH*KW*K).
    """
    per_image = out_hw[0] * out_hw[1] * kernel[0] * kernel[1] * c
    if flip:
        per_image = max(per_image, in_hw[0] * in_hw[1] * kernel[0] * kernel[1] * k)
    return max(1, min(n, CHUNK_BYTES // (per_image * itemsize * workers)))


def _place(dst, src, top: int, left: int):
    """Copy NHWC ``src`` into the zero-bordered ``dst`` at (top, left), cropping what falls outside.

    The same region is written on every call, so a reused ``dst`` keeps its zero border.
    """
    _, hd, wd, _ = dst.shape
    _, hs, ws, _ = src.shape
    r0, r1 = max(0, -top), min(hs, hd - top)
    c0, c1 = max(0, -left), min(ws, wd - left)
    if r1 > r0 and c1 > c0:
        dst[:, r0 + top:r1 + top, c0 + left:c1 + left, :] = src[:, r0:r1, c0:c1, :]
    return dst


def _framed(src, buf, top: int, left: int):
    """``src`` placed in the zero frame ``buf`` (first len(src) images), or ``src`` itself if no frame."""
    if buf is None:
        return src
    return _place(buf[:src.shape[0]], src, top, left)


def _im2col_matrix(windows, buf):
    """The (M, KH*KW*C) matrix of a windows view; copied into ``buf`` unless it already is one."""
    xp = array_module(windows)
    rows = windows.shape[0] * windows.shape[1] * windows.shape[2]
    if windows.flags.c_contiguous:  # 1x1 kernel, stride 1: the input already is the matrix
        return windows.reshape(rows, -1)
    out = buf[:windows.shape[0]]
    xp.copyto(out, windows)
    return out.reshape(rows, -1)


def _plane_buffers(xp, n: int, c: int, kernel, padded, out_hw, dtype):
    """(images per chunk, zero frame (C, nb, HP, WP), flat buffer) for ``_plane_matrix``."""
    per_image = out_hw[0] * out_hw[1]
    nb = max(1, min(n, PLANE_BYTES // (per_image * kernel[0] * kernel[1] * c * np.dtype(dtype).itemsize)))
    frame = xp.zeros((c, nb, *padded), dtype)
    return nb, frame, xp.empty(kernel[0] * kernel[1] * c * nb * per_image, dtype)


def _plane_matrix(x, n0, n1, frame, buf, kernel, stride, dilation, padding, out_hw):
    """The transposed im2col matrix (KH*KW*C, m*OH*OW) of images n0:n1 of NCHW ``x``, from planes."""
    m = n1 - n0
    c, _, hp, wp = frame.shape
    h, wd = x.shape[2:]
    f = frame[:, :m]
    f[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd] = x[n0:n1].transpose(1, 0, 2, 3)
    cols = buf[:kernel[0] * kernel[1] * c * m * out_hw[0] * out_hw[1]].reshape(*kernel, c, m, *out_hw)
    im2col_cnhw(f, cols, kernel, stride, dilation)
    return cols.reshape(kernel[0] * kernel[1] * c, -1)


def _geometry(x_shape, w_shape, stride, padding, dilation, rounding, layer):
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding = pair(padding, "padding", minimum=0)
    _, c, h, wd = x_shape
    _, cw, kh, kw = w_shape
    if c != cw:
        raise ShapeError(f"{layer}: input has {c} channels but the weight {tuple(w_shape)} expects {cw}")
    oh, ow = output_hw((h, wd), (kh, kw), stride, padding, dilation, rounding, layer=layer)
    return stride, padding, dilation, (oh, ow)


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, rounding="exact", *, layer="conv2d"):
    """out[n, k, i, j] = b[k] + sum_{c,u,v} w[k, c, u, v] * xpad[n, c, i*SH + u*DH, j*SW + v*DW].

    x (N, C, H, W), w (K, C, KH, KW), b (K,) or None -> (out (N, K, OH, OW), cache).
    The cache holds views of ``x`` and ``w``, not copies: change neither before the backward.
    """
    out, cache, _ = _forward(x, w, b, stride, padding, dilation, rounding, layer, relu=False)
    return out, cache


def conv2d_relu_forward(x, w, b=None, stride=1, padding=0, dilation=1, rounding="exact", *, layer="conv2d"):
    """``conv2d_forward`` followed by max(0, .), applied to each chunk of output while it is in cache.

    Returns (out, cache, mask): ``mask`` is ``~(out <= 0)`` (a NaN passes, like PyTorch's
    threshold_backward), the cache of a ReLU that ran on its own; ``cache`` is for
    ``conv2d_backward``, which then takes the gradient after the ReLU's backward.
    """
    return _forward(x, w, b, stride, padding, dilation, rounding, layer, relu=True)


def _forward(x, w, b, stride, padding, dilation, rounding, layer, relu):
    xp = array_module(x)
    stride, padding, dilation, (oh, ow) = _geometry(x.shape, w.shape, stride, padding, dilation,
                                                    rounding, layer)
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    dtype = xp.result_type(x.dtype, w.dtype)
    hp, wp = padded_hw((h, wd), (oh, ow), (kh, kw), stride, padding, dilation)
    if xp is np and kernels.enabled() and _winograd().applies(x.shape, w.shape, stride, dilation, dtype):
        out, wcache, mask = _winograd().forward(x, w, b, padding, (oh, ow), relu)
        cache = (wcache.xh, x.dtype, w, b is not None, stride, padding, dilation, (oh, ow), (hp, wp), wcache)
        return out, cache, mask
    xh = x.transpose(0, 2, 3, 1).astype(dtype, copy=False)          # NHWC view, no copy if x is
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, k).astype(dtype, copy=False)  # rows (u, v, c)

    bias = None if b is None else b.astype(dtype, copy=False)
    out = xp.empty((n, oh, ow, k), dtype)
    mask = xp.empty((n, oh, ow, k), bool) if relu else None
    compiled = relu and xp is np and kernels.enabled() and kernels.compiled_dtype(out)
    workers = _workers(xp, n, n * oh * ow * kh * kw * c * dtype.itemsize)

    planes = c < SMALL_CHANNELS

    def run(start, stop):  # images start:stop, chunk by chunk, with this thread's own buffers
        if planes:
            nb, frame, pbuf = _plane_buffers(xp, stop - start, c, (kh, kw), (hp, wp), (oh, ow), dtype)
        else:
            nb = chunk_images(stop - start, c, k, (h, wd), (oh, ow), (kh, kw), dtype.itemsize, False,
                              _share(workers))
            xbuf = None if (hp, wp) == (h, wd) else xp.zeros((nb, hp, wp, c), dtype)
            cbuf = xp.empty((nb, oh, ow, kh, kw, c), dtype)
        for n0 in range(start, stop, nb):
            n1 = min(n0 + nb, stop)
            oc = out[n0:n1].reshape(-1, k)
            if planes:
                cols_t = _plane_matrix(x, n0, n1, frame, pbuf, (kh, kw), stride, dilation, padding, (oh, ow))
                xp.matmul(cols_t.T, wm, out=oc)
            else:
                xc = _framed(xh[n0:n1], xbuf, padding[0], padding[1])
                cols = _im2col_matrix(windows_nhwc(xc, (kh, kw), stride, dilation, (oh, ow)), cbuf)
                xp.matmul(cols, wm, out=oc)
            if compiled:  # bias and ReLU in one pass over the chunk
                kernels.bias_relu(oc, bias if bias is not None else oc[0], mask[n0:n1].reshape(-1, k),
                                  bias is not None, True)
                continue
            if bias is not None:
                oc += bias
            if relu:
                mc = mask[n0:n1].reshape(-1, k)
                xp.less_equal(oc, 0, out=mc)
                xp.logical_not(mc, out=mc)
                xp.maximum(oc, 0, out=oc)  # keeps NaN

    _split(run, n, workers)
    cache = (xh, x.dtype, w, b is not None, stride, padding, dilation, (oh, ow), (hp, wp), None)
    return out.transpose(0, 3, 1, 2), cache, (mask.transpose(0, 3, 1, 2) if relu else None)


def conv2d_backward(dout, cache, dx_method: str = "auto", input_grad: bool = True):
    """Gradients of ``conv2d_forward``: dout (N, K, OH, OW) -> (dx, dw, db); db is None without bias.

    ``input_grad=False`` skips dx (returned as None): a network's first layer needs none.

    dw = im2col(x)^T @ dout and db = sum(dout) per channel. ``dx_method`` picks how dx is found:
    "flip" convolves the padded dout with the flipped filters (stride 1 only); "col2im" scatters
    dout @ W back onto the input, channels-last; "col2im_cnhw" does it in (C, N, H, W) planes.
    "auto": "col2im_cnhw" below ``SMALL_CHANNELS`` input channels, else "flip" for stride 1 and
    "col2im" otherwise. A forward that ran as Winograd (see the module docstring) is
    differentiated in the Winograd domain too, unless another ``dx_method`` is asked for.
    """
    xh, x_dtype, w, has_bias, stride, padding, dilation, (oh, ow), (hp, wp), wcache = cache
    if dx_method not in DX_METHODS:
        raise ValueError(f"dx_method must be one of {DX_METHODS}, got {dx_method!r}")
    if wcache is not None and dx_method == "auto":
        return _winograd().backward(dout, wcache, input_grad)
    xp = array_module(dout)
    n, h, wd, c = xh.shape
    k, _, kh, kw = w.shape
    dtype = xh.dtype
    if dx_method == "auto":
        dx_method = ("col2im_cnhw" if c < SMALL_CHANNELS else "flip" if stride == (1, 1) else "col2im")
    if dx_method == "flip" and stride != (1, 1):
        raise ValueError("dx_method='flip' needs stride 1")
    flip = input_grad and dx_method == "flip"
    planes = input_grad and dx_method == "col2im_cnhw"

    dh = dout.transpose(0, 2, 3, 1).astype(dtype, copy=False)       # (N, OH, OW, K)
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, k).astype(dtype, copy=False)
    dx = xp.empty((c, n, h, wd) if planes else (n, h, wd, c), dtype) if input_grad else None
    if flip:
        # dx[i] = sum_u dpad[i + u*DH] * w[KH-1-u] with dpad = dout shifted down by span-1-PH.
        span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        shift = (span[0] - 1 - padding[0], span[1] - 1 - padding[1])
        dshape = (h + span[0] - 1, wd + span[1] - 1)
        wflip = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * k, c).astype(dtype)

    per_image = max(oh * ow * kh * kw * c, h * wd * kh * kw * k if flip else 0) * dtype.itemsize
    workers = _workers(xp, n, n * per_image)

    small = c < SMALL_CHANNELS
    x_nchw = xh.transpose(0, 3, 1, 2)
    compiled = planes and xp is np and kernels.enabled() and kernels.compiled_dtype(dx)

    def run(start, stop):  # images start:stop -> this range's share of dw and db; fills dx
        nb = chunk_images(stop - start, c, k, (h, wd), (oh, ow), (kh, kw), dtype.itemsize, flip,
                          _share(workers))
        if small:  # dw from the transposed im2col matrix built from planes, like forward
            nb, frame, pbuf = _plane_buffers(xp, stop - start, c, (kh, kw), (hp, wp), (oh, ow), dtype)
        else:
            xbuf = None if (hp, wp) == (h, wd) else xp.zeros((nb, hp, wp, c), dtype)
            cbuf = xp.empty((nb, oh, ow, kh, kw, c), dtype)
        if flip:
            dbuf = None if shift == (0, 0) and dshape == (oh, ow) else xp.zeros((nb, *dshape, k), dtype)
            dcbuf = xp.empty((nb, h, wd, kh, kw, k), dtype)
        elif input_grad:
            dxbuf = xp.empty((c, nb, hp, wp) if planes else (nb, hp, wp, c), dtype)
        dwm = xp.zeros((kh * kw * c, k), dtype)
        db = xp.zeros(k, dtype) if has_bias else None
        for n0 in range(start, stop, nb):
            n1 = min(n0 + nb, stop)
            dc = dh[n0:n1]
            dmat = xp.ascontiguousarray(dc).reshape(-1, k)
            if has_bias:
                db += sum_rows(dmat)
            if small:
                dwm += _plane_matrix(x_nchw, n0, n1, frame, pbuf, (kh, kw), stride, dilation, padding,
                                     (oh, ow)) @ dmat
            else:
                xc = _framed(xh[n0:n1], xbuf, padding[0], padding[1])
                cols = _im2col_matrix(windows_nhwc(xc, (kh, kw), stride, dilation, (oh, ow)), cbuf)
                dwm += cols.T @ dmat
            if not input_grad:
                continue
            if flip:
                dpad = _framed(dc, dbuf, shift[0], shift[1])
                dcols = _im2col_matrix(windows_nhwc(dpad, (kh, kw), (1, 1), dilation, (h, wd)), dcbuf)
                xp.matmul(dcols, wflip, out=dx[n0:n1].reshape(-1, c))
            elif planes:
                dcols = (wm @ dmat.T).reshape(kh, kw, c, n1 - n0, oh, ow)
                if compiled:  # one nogil pass, cropping the padding as it goes
                    kernels.col2im_cnhw(dcols, dx, n0, kh, kw, stride[0], stride[1], padding[0], padding[1],
                                        dilation[0], dilation[1])
                    continue
                dxp = dxbuf[:, :n1 - n0]
                dxp[...] = 0
                col2im_cnhw(dcols, dxp, (kh, kw), stride, dilation)
                dx[:, n0:n1] = dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd]
            else:
                dcols = (dmat @ wm.T).reshape(n1 - n0, oh, ow, kh, kw, c)
                dxp = dxbuf[:n1 - n0]
                dxp[...] = 0
                col2im_nhwc(dcols, dxp, (kh, kw), stride, dilation)
                dx[n0:n1] = dxp[:, padding[0]:padding[0] + h, padding[1]:padding[1] + wd, :]
        return dwm, db

    parts = _split(run, n, workers)
    dwm, db = parts[0]
    for part_dwm, part_db in parts[1:]:
        dwm += part_dwm
        if has_bias:
            db += part_db

    dw = xp.ascontiguousarray(dwm.reshape(kh, kw, c, k).transpose(3, 2, 0, 1)).astype(w.dtype, copy=False)
    if has_bias:
        db = db.astype(w.dtype, copy=False)
    if input_grad:
        dx = (dx.transpose(1, 0, 2, 3) if planes else dx.transpose(0, 3, 1, 2)).astype(x_dtype, copy=False)
    return dx, dw, db


def conv2d_workspace(in_shape, out_shape, weight_shape, stride, padding, dilation, n: int, b: int) -> tuple[int, int]:
    """(forward, backward) scratch bytes of ``conv2d_forward``/``conv2d_backward`` on a batch of ``n``
    (shapes without the batch axis, ``b`` bytes per number): the weight copies, the im2col chunk
    buffers (about ``CHUNK_BYTES`` of images at a time), padded input copies and, in backward, the
    flipped-filter buffers (stride 1) or the col2im scatter buffers. The memory model reads it."""
    k, c, kh, kw = weight_shape
    _, h, w = in_shape
    _, oh, ow = out_shape
    hp = max(h + 2 * padding[0], (oh - 1) * stride[0] + dilation[0] * (kh - 1) + 1)
    wp = max(w + 2 * padding[1], (ow - 1) * stride[1] + dilation[1] * (kw - 1) + 1)
    padded = (hp, wp) != (h, w)
    weight = k * c * kh * kw * b
    cols = oh * ow * kh * kw * c * b                       # one image's im2col matrix
    nb = max(1, min(n, CHUNK_BYTES // max(1, cols)))
    fwd = weight + nb * cols + (nb * hp * wp * c * b if padded else 0)
    nb2 = max(1, min(n, CHUNK_BYTES // max(1, max(oh * ow, h * w) * kh * kw * max(c, k) * b)))
    bwd = 3 * weight + nb2 * cols + (nb2 * hp * wp * c * b if padded else 0) + 2 * nb2 * oh * ow * k * b
    if tuple(stride) == (1, 1):
        span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        dshape = (h + span[0] - 1, w + span[1] - 1)
        shift = (span[0] - 1 - padding[0], span[1] - 1 - padding[1])
        dbuf = 0 if (shift == (0, 0) and dshape == (oh, ow)) else nb2 * dshape[0] * dshape[1] * k * b
        bwd += dbuf + nb2 * h * w * kh * kw * k * b + 2 * weight
    else:
        bwd += nb2 * hp * wp * c * b + 2 * nb2 * cols
    return fwd, bwd
