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
``col2im``. The numbers behind these choices are in ``bench/conv_layer.py`` and the README.
"""

from __future__ import annotations

from ..errors import ShapeError
from .backend import array_module
from .im2col import col2im_nhwc, output_hw, padded_hw, pair, windows_nhwc

#: Target size in bytes of one chunk's im2col matrix. Measured on 2 EPYC cores (1 MiB L2 each,
#: 32 MiB L3): 1-4 MiB are equally fast, 16 MiB is 40% slower, the whole batch at once 1.8x slower.
CHUNK_BYTES = 4 << 20

DX_METHODS = ("auto", "flip", "col2im")


def _chunk_images(n: int, bytes_per_image: int) -> int:
    """Images per chunk so one chunk's im2col matrix is about ``CHUNK_BYTES``."""
    return max(1, min(n, CHUNK_BYTES // max(1, bytes_per_image)))


def chunk_images(n, c, k, in_hw, out_hw, kernel, itemsize, flip=False) -> int:
    """Images per chunk of forward (``flip=False``) or of a backward finding dx by "flip".

    Sized so the biggest im2col matrix of a chunk is about ``CHUNK_BYTES``: the windows of x,
    (OH*OW, KH*KW*C) per image, and for "flip" also those of the padded dout, (H*W, KH*KW*K).
    """
    per_image = out_hw[0] * out_hw[1] * kernel[0] * kernel[1] * c
    if flip:
        per_image = max(per_image, in_hw[0] * in_hw[1] * kernel[0] * kernel[1] * k)
    return _chunk_images(n, per_image * itemsize)


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
    xp = array_module(x)
    stride, padding, dilation, (oh, ow) = _geometry(x.shape, w.shape, stride, padding, dilation,
                                                    rounding, layer)
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    dtype = xp.result_type(x.dtype, w.dtype)
    xh = x.transpose(0, 2, 3, 1).astype(dtype, copy=False)          # NHWC view, no copy if x is
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, k).astype(dtype, copy=False)  # rows (u, v, c)
    hp, wp = padded_hw((h, wd), (oh, ow), (kh, kw), stride, padding, dilation)

    nb = chunk_images(n, c, k, (h, wd), (oh, ow), (kh, kw), dtype.itemsize)
    xbuf = None if (hp, wp) == (h, wd) else xp.zeros((nb, hp, wp, c), dtype)
    cbuf = xp.empty((nb, oh, ow, kh, kw, c), dtype)
    out = xp.empty((n, oh, ow, k), dtype)
    for n0 in range(0, n, nb):
        xc = _framed(xh[n0:n0 + nb], xbuf, padding[0], padding[1])
        cols = _im2col_matrix(windows_nhwc(xc, (kh, kw), stride, dilation, (oh, ow)), cbuf)
        oc = out[n0:n0 + nb].reshape(-1, k)
        xp.matmul(cols, wm, out=oc)
        if b is not None:
            oc += b.astype(dtype, copy=False)
    cache = (xh, x.dtype, w, b is not None, stride, padding, dilation, (oh, ow), (hp, wp))
    return out.transpose(0, 3, 1, 2), cache


def conv2d_backward(dout, cache, dx_method: str = "auto"):
    """Gradients of ``conv2d_forward``: dout (N, K, OH, OW) -> (dx, dw, db); db is None without bias.

    dw = im2col(x)^T @ dout and db = sum(dout) per channel. ``dx_method`` picks how dx is found:
    "flip" convolves the padded dout with the flipped filters (stride 1 only), "col2im" scatters
    dout @ W back onto the input; "auto" is "flip" for stride 1 and "col2im" otherwise.
    """
    xh, x_dtype, w, has_bias, stride, padding, dilation, (oh, ow), (hp, wp) = cache
    if dx_method not in DX_METHODS:
        raise ValueError(f"dx_method must be one of {DX_METHODS}, got {dx_method!r}")
    xp = array_module(dout)
    n, h, wd, c = xh.shape
    k, _, kh, kw = w.shape
    dtype = xh.dtype
    flip = dx_method == "flip" or (dx_method == "auto" and stride == (1, 1))
    if flip and stride != (1, 1):
        raise ValueError("dx_method='flip' needs stride 1")

    dh = dout.transpose(0, 2, 3, 1).astype(dtype, copy=False)       # (N, OH, OW, K)
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, k).astype(dtype, copy=False)
    dwm = xp.zeros((kh * kw * c, k), dtype)
    db = xp.zeros(k, dtype) if has_bias else None
    dx = xp.empty((n, h, wd, c), dtype)

    nb = chunk_images(n, c, k, (h, wd), (oh, ow), (kh, kw), dtype.itemsize, flip)
    xbuf = None if (hp, wp) == (h, wd) else xp.zeros((nb, hp, wp, c), dtype)
    cbuf = xp.empty((nb, oh, ow, kh, kw, c), dtype)
    if flip:
        # dx[i] = sum_u dpad[i + u*DH] * w[KH-1-u] with dpad = dout shifted down by span-1-PH.
        span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        shift = (span[0] - 1 - padding[0], span[1] - 1 - padding[1])
        dshape = (h + span[0] - 1, wd + span[1] - 1)
        dbuf = None if shift == (0, 0) and dshape == (oh, ow) else xp.zeros((nb, *dshape, k), dtype)
        dcbuf = xp.empty((nb, h, wd, kh, kw, k), dtype)
        wflip = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * k, c).astype(dtype)
    else:
        dxbuf = xp.empty((nb, hp, wp, c), dtype)

    for n0 in range(0, n, nb):
        dc = dh[n0:n0 + nb]
        m = dc.shape[0]
        dmat = xp.ascontiguousarray(dc).reshape(-1, k)
        if has_bias:
            db += dmat.sum(axis=0)
        xc = _framed(xh[n0:n0 + nb], xbuf, padding[0], padding[1])
        cols = _im2col_matrix(windows_nhwc(xc, (kh, kw), stride, dilation, (oh, ow)), cbuf)
        dwm += cols.T @ dmat
        if flip:
            dpad = _framed(dc, dbuf, shift[0], shift[1])
            dcols = _im2col_matrix(windows_nhwc(dpad, (kh, kw), (1, 1), dilation, (h, wd)), dcbuf)
            xp.matmul(dcols, wflip, out=dx[n0:n0 + m].reshape(-1, c))
        else:
            dcols = (dmat @ wm.T).reshape(m, oh, ow, kh, kw, c)
            dxp = dxbuf[:m]
            dxp[...] = 0
            col2im_nhwc(dcols, dxp, (kh, kw), stride, dilation)
            dx[n0:n0 + m] = dxp[:, padding[0]:padding[0] + h, padding[1]:padding[1] + wd, :]

    dw = xp.ascontiguousarray(dwm.reshape(kh, kw, c, k).transpose(3, 2, 0, 1)).astype(w.dtype, copy=False)
    if has_bias:
        db = db.astype(w.dtype, copy=False)
    return dx.transpose(0, 3, 1, 2).astype(x_dtype, copy=False), dw, db
