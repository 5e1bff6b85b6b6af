"""Output sizes and patches: the ONE place convnp derives sliding-window geometry.

For an input of width W, a window of F taps with dilation D (span D*(F-1)+1),
stride S and zero padding P, the notes' formula gives

    out = (W - D*(F-1) - 1 + 2P) / S + 1

which must be an integer (``rounding="exact"``, the default: anything else is a
``ShapeError``). ``rounding="floor"`` drops the windows that do not fit, as
PyTorch does; ``rounding="ceil"`` adds a last partial window, as PyTorch's
``ceil_mode=True`` pooling does (never one that starts inside the right padding).

``im2col`` returns the windows as a strided view of shape (N, C, OH, OW, KH, KW);
``col2im`` scatters gradients of that view back onto the input.
"""

from __future__ import annotations


from .._util import pair  # noqa: F401 - re-exported: the ops and layers take (h, w) pairs from here
from ..errors import ConfigError, ShapeError
from .backend import array_module

ROUNDING_MODES = ("exact", "floor", "ceil")


def _formula(size: int, kernel: int, stride: int, padding: int, dilation: int) -> str:
    if dilation == 1:
        return f"({size}-{kernel}+2*{padding})/{stride}+1"
    return f"({size}-{dilation}*({kernel}-1)-1+2*{padding})/{stride}+1"


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                rounding: str = "exact", *, layer: str = "layer", input_desc: str | None = None,
                axis: str = "width") -> int:
    """Number of window positions along one axis (the notes' (W-F+2P)/S+1)."""
    if rounding not in ROUNDING_MODES:
        raise ConfigError(f"{layer}: rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    span = dilation * (kernel - 1) + 1
    padded = size + 2 * padding
    desc = input_desc or str(size)
    if size < 1:
        raise ShapeError(f"{layer}: input {desc} has a non-positive {axis}")
    if span > padded:
        raise ShapeError(
            f"{layer}: input {desc} is too small: the window spans {span} along the {axis} "
            f"but the padded input is only {size}+2*{padding} = {padded}"
        )
    numer = padded - span
    if rounding == "exact" and numer % stride:
        value = numer / stride + 1
        raise ShapeError(
            f"{layer}: input {desc} gives {_formula(size, kernel, stride, padding, dilation)} "
            f"= {value:g} along the {axis}, not an integer; change the padding or stride, "
            f"or pass rounding='floor' to drop the last partial window"
        )
    if rounding == "ceil":
        out = -(-numer // stride) + 1
        if (out - 1) * stride >= size + padding:  # last window would start in the padding
            out -= 1
        return out
    return numer // stride + 1


def output_hw(in_hw, kernel, stride, padding, dilation=(1, 1), rounding="exact", *,
              layer="layer") -> tuple[int, int]:
    """(OH, OW) for an (H, W) input; all geometry arguments are (h, w) pairs."""
    h, w = in_hw
    desc = f"{h}x{w}"
    oh = output_size(h, kernel[0], stride[0], padding[0], dilation[0], rounding,
                     layer=layer, input_desc=desc, axis="height")
    ow = output_size(w, kernel[1], stride[1], padding[1], dilation[1], rounding,
                     layer=layer, input_desc=desc, axis="width")
    return oh, ow


def _extra_padding(size, out, kernel, stride, padding, dilation) -> int:
    """Right/bottom padding beyond ``padding`` that ceil-mode windows reach into."""
    need = (out - 1) * stride + dilation * (kernel - 1) + 1
    return max(0, need - (size + 2 * padding))


def pad2d(x, padding, extra=(0, 0), value=0.0):
    """Pad the last two axes of NCHW ``x``: ``padding`` on every side plus ``extra`` at the end."""
    (ph, pw), (eh, ew) = padding, extra
    if ph == pw == eh == ew == 0:
        return x
    xp = array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph + eh, w + 2 * pw + ew), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def im2col(x, kernel, stride, padding, dilation, out_hw, pad_value=0.0):
    """Windows of NCHW ``x`` as a read-only view of shape (N, C, OH, OW, KH, KW).

    ``out_hw`` comes from ``output_hw``; ``pad_value`` fills the padding (-inf for max pooling).
    """
    xp = array_module(x)
    n, c, h, w = x.shape
    oh, ow = out_hw
    extra = (_extra_padding(h, oh, kernel[0], stride[0], padding[0], dilation[0]),
             _extra_padding(w, ow, kernel[1], stride[1], padding[1], dilation[1]))
    xpad = xp.ascontiguousarray(pad2d(x, padding, extra, pad_value))
    sn, sc, sh, sw = xpad.strides
    shape = (n, c, oh, ow, kernel[0], kernel[1])
    strides = (sn, sc, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1])
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides, writeable=False)


def col2im(dcols, x_shape, kernel, stride, padding, dilation):
    """Scatter-add window gradients (N, C, OH, OW, KH, KW) back to an NCHW gradient of ``x_shape``.

    The adjoint of ``im2col``: one strided slice-add per kernel tap (KH*KW of them).
    """
    xp = array_module(dcols)
    n, c, h, w = x_shape
    oh, ow = dcols.shape[2:4]
    extra = (_extra_padding(h, oh, kernel[0], stride[0], padding[0], dilation[0]),
             _extra_padding(w, ow, kernel[1], stride[1], padding[1], dilation[1]))
    hp, wp = h + 2 * padding[0] + extra[0], w + 2 * padding[1] + extra[1]
    dxp = xp.zeros((n, c, hp, wp), dtype=dcols.dtype)
    sh, sw = stride
    for i in range(kernel[0]):
        r0 = i * dilation[0]
        for j in range(kernel[1]):
            c0 = j * dilation[1]
            dxp[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw] += dcols[:, :, :, :, i, j]
    return dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


# --- channels-last (NHWC) helpers: the layout the conv kernels use internally -----------------------

def padded_hw(in_hw, out_hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """(HP, WP) of the padded input that ``out_hw`` windows read: H+2P plus any ceil-mode overhang."""
    return tuple(
        size + 2 * pad + _extra_padding(size, out, k, s, pad, d)
        for size, out, k, s, pad, d in zip(in_hw, out_hw, kernel, stride, padding, dilation)
    )


def windows_nhwc(xpad, kernel, stride, dilation, out_hw):
    """Windows of an already padded NHWC array as a read-only view of shape (N, OH, OW, KH, KW, C).

    Copying the view into a C-contiguous (N, OH, OW, KH, KW, C) buffer gives the im2col matrix
    (N*OH*OW, KH*KW*C) whose rows are ordered like ``w.transpose(2, 3, 1, 0)``.
    """
    xp = array_module(xpad)
    n, _, _, c = xpad.shape
    sn, sh, sw, sc = xpad.strides
    shape = (n, out_hw[0], out_hw[1], kernel[0], kernel[1], c)
    strides = (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides, writeable=False)


def col2im_nhwc(dcols, dxpad, kernel, stride, dilation):
    """Scatter-add window gradients (N, OH, OW, KH, KW, C) into the padded NHWC ``dxpad`` in place.

    The adjoint of ``windows_nhwc``: one strided slice-add per kernel tap.
    """
    oh, ow = dcols.shape[1:3]
    sh, sw = stride
    for i in range(kernel[0]):
        r0 = i * dilation[0]
        for j in range(kernel[1]):
            c0 = j * dilation[1]
            dxpad[:, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw, :] += dcols[:, :, :, i, j, :]
    return dxpad


def im2col_cnhw(xpad, cols, kernel, stride, dilation):
    """Windows of the padded (C, N, HP, WP) ``xpad`` copied into ``cols`` (KH, KW, C, N, OH, OW).

    ``cols.reshape(KH*KW*C, N*OH*OW)`` is the transposed im2col matrix, rows ordered like
    ``w.transpose(2, 3, 1, 0)``; one strided copy per kernel tap, each along image rows: the fast
    layout when C is small (a network's input), where channels-last rows are only C numbers.
    """
    oh, ow = cols.shape[-2:]
    sh, sw = stride
    for i in range(kernel[0]):
        r0 = i * dilation[0]
        for j in range(kernel[1]):
            c0 = j * dilation[1]
            cols[i, j] = xpad[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw]
    return cols


def col2im_cnhw(dcols, dxpad, kernel, stride, dilation):
    """Scatter-add window gradients (KH, KW, C, N, OH, OW) into the padded (C, N, HP, WP) ``dxpad``.

    The same adjoint as ``col2im_nhwc`` with every tap's gradient stored as C*N whole planes, so
    each slice-add runs along image rows: the fast layout when C is small (a network's input).
    """
    oh, ow = dcols.shape[-2:]
    sh, sw = stride
    for i in range(kernel[0]):
        r0 = i * dilation[0]
        for j in range(kernel[1]):
            c0 = j * dilation[1]
            dxpad[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw] += dcols[i, j]
    return dxpad
