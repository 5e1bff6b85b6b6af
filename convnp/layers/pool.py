"""POOL layers: max, average, power-average (L2) and global average pooling.

A pool slides a KH x KW window with stride S over each channel separately, so the
output has the input's channels and spatial size (the notes' formula)

    OH = (H - D*(KH-1) - 1 + 2P) / S + 1        (D = dilation, 1 for all but max pooling)

``rounding="exact"`` (the default) requires that to be an integer and raises a
ShapeError otherwise; ``"floor"`` is PyTorch's default, ``"ceil"`` is PyTorch's
``ceil_mode=True`` (GoogLeNet needs it). The notes' POOL F=2, S=2 maps 224x224 to
112x112; the overlapping F=3, S=2 maps 55x55 to 27x27. Pools have no parameters.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops import pool as ops
from ..ops.backend import array_module
from ..ops.im2col import ROUNDING_MODES, output_hw, pair
from .base import Layer, LayerMemory, SpecToken, square


def _config_pair(value: tuple[int, int]):
    """An (h, w) pair as JSON-friendly config: an int when square, else a list."""
    return value[0] if value[0] == value[1] else list(value)


def _repr_pair(value: tuple[int, int]):
    return value[0] if value[0] == value[1] else value


def _pop(layer: Layer, dout):
    """The op cache forward saved, checking dout against the output shape stored beside it."""
    out_shape = layer._cache[1] if layer._cache is not None else None
    return layer._pop_cache(dout, out_shape)[0]


class _WindowPool:
    """Shared geometry of the sliding-window pools (a mixin, so it is not a registered layer)."""

    _has_padding = True
    _has_dilation = False

    def _init_geometry(self, kernel_size, stride, padding, dilation, rounding):
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride")
        self.padding = pair(padding, f"{name} padding", minimum=0)
        self.dilation = pair(dilation, f"{name} dilation")
        if rounding not in ROUNDING_MODES:
            raise ConfigError(f"{name}: rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
        self.rounding = rounding
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ConfigError(f"{name}: padding {padding!r} must be at most half of kernel_size "
                              f"{kernel_size!r} (PyTorch's limit)")

    def _out_hw(self, in_hw) -> tuple[int, int]:
        return output_hw(tuple(in_hw), self.kernel_size, self.stride, self.padding, self.dilation,
                         self.rounding, layer=repr(self))

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (C, OH, OW); ShapeError when the geometry does not fit."""
        c, h, w = self._check_shape(input_shape, 3)
        return (c, *self._out_hw((h, w)))

    def _geometry_config(self) -> dict:
        cfg = {"kernel_size": _config_pair(self.kernel_size), "stride": _config_pair(self.stride)}
        if self._has_padding:
            cfg["padding"] = _config_pair(self.padding)
        if self._has_dilation:
            cfg["dilation"] = _config_pair(self.dilation)
        cfg["rounding"] = self.rounding
        return cfg

    # --- facts shared by the window pools ---------------------------------------------------------
    def shardable(self, train):
        return True

    fc_conv_role = "spatial"
    absent_facts = frozenset({"report_role"})  # the report's search stops at a pool

    def stride_hw(self):
        return self.stride

    def _padded_hw(self, in_shape, out_shape) -> tuple[int, int]:
        """The padded input the windows read (with any ceil-mode overhang)."""
        (_, h, w), (_, oh, ow) = in_shape, out_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return max(h + 2 * ph, (oh - 1) * sh + dh * (kh - 1) + 1), max(w + 2 * pw, (ow - 1) * sw + dw * (kw - 1) + 1)

    def _pool_spec(self, prefix: str) -> str:
        if self.rounding != "exact":
            raise self.no_spelling("only rounding='exact' has a spelling")
        if self.dilation != (1, 1):
            raise self.no_spelling("dilation must be 1")
        f, s, p = (square(v, name, self) for v, name in ((self.kernel_size, "kernel_size"),
                                                         (self.stride, "stride"), (self.padding, "padding")))
        return f"{prefix}{f}" + (f"/S{s}" if s != f else "") + (f"/P{p}" if p else "")

    def _geometry_repr(self) -> str:
        parts = [f"kernel_size={_repr_pair(self.kernel_size)}", f"stride={_repr_pair(self.stride)}"]
        if self.padding != (0, 0):
            parts.append(f"padding={_repr_pair(self.padding)}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={_repr_pair(self.dilation)}")
        if self.rounding != "exact":
            parts.append(f"rounding={self.rounding!r}")
        return ", ".join(parts)


class MaxPool2d(_WindowPool, Layer):
    """Max pooling: (N, C, H, W) -> (N, C, OH, OW), OH = (H - D*(KH-1) - 1 + 2P)/S + 1.

    ``stride`` defaults to ``kernel_size``; padding is -inf (never the max); ``padding``
    may be at most ``kernel_size // 2`` like PyTorch. Backward routes each gradient to its
    window's argmax (the notes' "switches", kept from forward); ties go to the first max.
    """

    _has_dilation = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, rounding: str = "exact"):
        super().__init__()
        self._init_geometry(kernel_size, stride, padding, dilation, rounding)

    def forward(self, x, train: bool = False):
        self._check_input(x, 4)
        out_hw = self._out_hw(x.shape[2:])
        out, cache = ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                           self.dilation, out_hw)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache = _pop(self, dout)
        return ops.maxpool2d_backward(dout, cache)

    def costs(self, in_shapes, out_shape):
        """KH*KW - 1 comparisons per output."""
        return 0, (math.prod(self.kernel_size) - 1) * math.prod(out_shape)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps 1-byte switches (4 for windows over 256 taps); a padded copy; per-tap gradients in backward."""
        out = math.prod(out_shape) * n
        hp, wp = self._padded_hw(in_shapes[0], out_shape)
        padded = n * in_shapes[0][0] * hp * wp * b
        copy_bytes = padded if (in_nhwc or (hp, wp) != tuple(in_shapes[0][1:])) else 0
        idx = 1 if math.prod(self.kernel_size) <= 256 else 4
        return LayerMemory(out_bytes=out * b, saved=out * idx, fwd_work=copy_bytes + 3 * out + out * idx,
                           bwd_work=math.prod(self.kernel_size) * out * b + out, dx_bytes=padded)

    def to_onnx(self, b, x, shape, path):
        """MaxPool, the ceil-mode overhang as extra end padding; a -inf Pad first where a pad would
        reach the kernel size (onnxruntime refuses pads >= kernel)."""
        pads, out = b.window_pads(self, shape, self.kernel_size, self.stride, self.padding, self.dilation,
                                  path, "MaxPool")
        attrs = {"dilations": list(self.dilation)} if self.dilation != (1, 1) else {}
        kh, kw = self.kernel_size
        if max(pads[0], pads[2]) >= kh or max(pads[1], pads[3]) >= kw:
            x = b.node("Pad", [x, b.ints(f"{path}.pads", [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]),
                               b.const(f"{path}.fill", -np.inf)], f"{path}.pad")
            pads = [0, 0, 0, 0]
        y = b.node("MaxPool", [x], path, kernel_shape=[kh, kw], strides=list(self.stride), pads=pads, **attrs)
        return y, out

    spec_tokens = (SpecToken("POOL", "F", ("S", "P"), volume=True, arg_names=("the window size",)),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``POOL<F>``: F x F max pooling, stride F unless /S, /P padding."""
        return [cls(args[0], stride=opts.get("S", args[0]), padding=opts.get("P", 0))]

    def to_spec(self, next_layer, shape):
        return self._pool_spec("POOL")

    def torch_module(self, nn):
        return nn.MaxPool2d(self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.rounding == "ceil")

    def get_config(self) -> dict:
        return self._geometry_config()

    def extra_repr(self) -> str:
        return self._geometry_repr()


class AvgPool2d(_WindowPool, Layer):
    """Average pooling: (N, C, H, W) -> (N, C, OH, OW), OH = (H - KH + 2P)/S + 1.

    Zero padding is counted in the mean (PyTorch's ``count_include_pad=True``). With
    ``rounding="ceil"`` a last window hanging past the padded input divides by the number
    of its taps inside the padded input, exactly as PyTorch's ``ceil_mode=True``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, rounding: str = "exact"):
        super().__init__()
        self._init_geometry(kernel_size, stride, padding, 1, rounding)

    def forward(self, x, train: bool = False):
        self._check_input(x, 4)
        out_hw = self._out_hw(x.shape[2:])
        out, cache = ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding, out_hw)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache = _pop(self, dout)
        return ops.avgpool2d_backward(dout, cache)

    def costs(self, in_shapes, out_shape):
        """KH*KW adds per output."""
        return 0, math.prod(self.kernel_size) * math.prod(out_shape)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps nothing but its geometry; a padded copy in forward, a padded dx in backward."""
        hp, wp = self._padded_hw(in_shapes[0], out_shape)
        padded = n * in_shapes[0][0] * hp * wp * b
        copy_bytes = padded if (in_nhwc or (hp, wp) != tuple(in_shapes[0][1:])) else 0
        ob = math.prod(out_shape) * n * b
        return LayerMemory(out_bytes=ob, fwd_work=copy_bytes, bwd_work=ob, dx_bytes=padded)

    def to_onnx(self, b, x, shape, path):
        """AveragePool with count_include_pad=1; a ceil-mode overhang is made explicit (Pad) and the
        pool counts only what lies inside the padded input there, PyTorch's divisor."""
        pads, out = b.window_pads(self, shape, self.kernel_size, self.stride, self.padding, (1, 1),
                                  path, "AveragePool")
        ph, pw = self.padding
        eh, ew = max(0, pads[2] - ph), max(0, pads[3] - pw)  # ceil-mode overhang past the padded input
        geometry = {"kernel_shape": list(self.kernel_size), "strides": list(self.stride)}
        if eh == 0 and ew == 0:
            return b.node("AveragePool", [x], path, pads=pads, count_include_pad=1, **geometry), out
        if ph or pw:  # at the end only as far as the windows read (less where ceil drops a window)
            x = b.node("Pad", [x, b.ints(f"{path}.pads", [0, 0, ph, pw, 0, 0, min(ph, pads[2]), min(pw, pads[3])])],
                       f"{path}.pad")
        return b.node("AveragePool", [x], path, pads=[0, 0, eh, ew], count_include_pad=0, **geometry), out

    spec_tokens = (SpecToken("AVGPOOL", "F", ("S", "P"), volume=True, arg_names=("the window size",)),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``AVGPOOL<F>``: F x F average pooling, stride F unless /S, /P padding."""
        return [cls(args[0], stride=opts.get("S", args[0]), padding=opts.get("P", 0))]

    def to_spec(self, next_layer, shape):
        return self._pool_spec("AVGPOOL")

    def torch_module(self, nn):
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, ceil_mode=self.rounding == "ceil")

    def get_config(self) -> dict:
        return self._geometry_config()

    def extra_repr(self) -> str:
        return self._geometry_repr()


class LPPool2d(_WindowPool, Layer):
    """Power-average pooling, the notes' L2 pooling for ``norm_type=2``: (N, C, H, W) -> (N, C, OH, OW).

    out = (sum over the window of x^p)^(1/p), OH = (H - KH)/S + 1, no padding (PyTorch
    semantics: x^p, not |x|^p; ``norm_type=inf`` gives max |x|). The gradient is 0 where
    the window's sum is 0. With ``rounding="ceil"`` a window hanging past the input has its
    sum scaled by KH*KW / (taps inside), as PyTorch's ``lp_pool2d`` does.
    """

    _has_padding = False

    def __init__(self, norm_type, kernel_size, stride=None, rounding: str = "exact"):
        super().__init__()
        if (isinstance(norm_type, bool) or not isinstance(norm_type, (int, float))
                or not norm_type > 0):
            raise ConfigError(f"LPPool2d: norm_type must be a positive number (or inf), got {norm_type!r}")
        self.norm_type = norm_type
        self._init_geometry(kernel_size, stride, 0, 1, rounding)

    def forward(self, x, train: bool = False):
        self._check_input(x, 4)
        out_hw = self._out_hw(x.shape[2:])
        out, cache = ops.lppool2d_forward(x, self.norm_type, self.kernel_size, self.stride, out_hw)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache = _pop(self, dout)
        return ops.lppool2d_backward(dout, cache)

    def costs(self, in_shapes, out_shape):
        """A power and an add per tap."""
        return 0, 2 * math.prod(self.kernel_size) * math.prod(out_shape)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps its input, its output and the window sums."""
        ib, ob = math.prod(in_shapes[0]) * n * b, math.prod(out_shape) * n * b
        return LayerMemory(out_bytes=ob, keeps_input=True, keeps_output=True, saved=ob, fwd_work=ib + ob,
                           bwd_work=3 * ob + 2 * ib)

    def to_onnx(self, b, x, shape, path):
        """LpPool for an even integer p without overhang (x^p = |x|^p there); otherwise Pow ->
        AveragePool -> Mul(KH*KW) -> Pow(1/p), PyTorch's formula; p = inf: Abs + MaxPool."""
        pads, out = b.window_pads(self, shape, self.kernel_size, self.stride, (0, 0), (1, 1), path, "LpPool")
        geometry = {"kernel_shape": list(self.kernel_size), "strides": list(self.stride)}
        p = float(self.norm_type)
        if math.isinf(p):
            a = b.node("Abs", [x], f"{path}.abs")
            return b.node("MaxPool", [a], path, pads=pads, **geometry), out
        if p.is_integer() and int(p) % 2 == 0 and not any(pads):
            return b.node("LpPool", [x], path, p=int(p), pads=pads, **geometry), out
        xp = b.node("Pow", [x, b.const(f"{path}.p", p)], f"{path}.pow")
        mean = b.node("AveragePool", [xp], f"{path}.avg", pads=pads, count_include_pad=0, **geometry)
        total = b.node("Mul", [mean, b.const(f"{path}.taps", float(math.prod(self.kernel_size)))], f"{path}.sum")
        return b.node("Pow", [total, b.const(f"{path}.inv_p", 1.0 / p)], path), out

    spec_tokens = (SpecToken("L2POOL", "F", ("S",), volume=True, arg_names=("the window size",)),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``L2POOL<F>``: the notes' L2 pooling, LPPool2d(2, F), stride F unless /S."""
        return [cls(2, args[0], stride=opts.get("S", args[0]))]

    def to_spec(self, next_layer, shape):
        if float(self.norm_type) != 2.0:
            raise self.no_spelling("only norm_type=2 (L2POOL) has a spelling")
        return self._pool_spec("L2POOL")

    def torch_module(self, nn):
        return nn.LPPool2d(self.norm_type, self.kernel_size, self.stride, ceil_mode=self.rounding == "ceil")

    def get_config(self) -> dict:
        return {"norm_type": self.norm_type, **self._geometry_config()}

    def extra_repr(self) -> str:
        return f"norm_type={self.norm_type!r}, {self._geometry_repr()}"


class GlobalAvgPool2d(Layer):
    """Mean over the whole feature map: (N, C, H, W) -> (N, C, 1, 1), like ``nn.AdaptiveAvgPool2d(1)``."""

    def forward(self, x, train: bool = False):
        self._check_input(x, 4)
        out, cache = ops.global_avgpool2d_forward(x)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache = _pop(self, dout)
        return ops.global_avgpool2d_backward(dout, cache)

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (C, 1, 1)."""
        c, h, w = self._check_shape(input_shape, 3)
        if h < 1 or w < 1:
            raise ShapeError(f"{self!r}: input {h}x{w} has no positions to average")
        return (c, 1, 1)

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        """One add per input number (none when the map is already 1x1)."""
        return 0, 0 if tuple(in_shapes[0]) == tuple(out_shape) else math.prod(in_shapes[0])

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        return LayerMemory(out_bytes=math.prod(out_shape) * n * b)

    def shardable(self, train):
        return True

    absent_facts = frozenset({"report_role"})

    def to_fully_convolutional(self, st, where):
        """The identity at the training size (dropped); on a larger map an H x W average pool, stride 1."""
        return _pool_to_conv(self, (1, 1), st, where)

    def to_onnx(self, b, x, shape, path):
        return b.node("GlobalAveragePool", [x], path), tuple(self.output_shape(shape))

    spec_tokens = (SpecToken("GPOOL", volume=True),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``GPOOL``: global average pooling, (C, H, W) -> (C, 1, 1)."""
        return [cls()]

    def to_spec(self, next_layer, shape):
        return "GPOOL"

    def torch_module(self, nn):
        return nn.AdaptiveAvgPool2d(1)

    def extra_repr(self) -> str:
        return ""


def _pool_to_conv(layer, out_hw, st, where):
    """FC->CONV for a pool to a fixed size: gone where it is the identity, else a sliding average pool."""
    c, h, w = st.new
    oh, ow = out_hw
    st.orig = tuple(layer.output_shape(st.orig))
    if (h, w) == (oh, ow):
        return None
    if h % oh or w % ow:
        raise ConfigError(f"to_fully_convolutional: {where} pools {h}x{w} to {oh}x{ow} with uneven bins; "
                          "only an even split becomes a sliding average pool")
    kh, kw = h // oh, w // ow
    st.new = (c, oh, ow)
    return AvgPool2d((kh, kw), stride=(kh, kw) if (oh, ow) != (1, 1) else 1)


def adaptive_bins(size: int, out: int, dtype=np.float64, xp=np):
    """(out, size) averaging matrix: row i holds 1/len on PyTorch's adaptive bin
    floor(i*size/out) .. ceil((i+1)*size/out) - 1."""
    m = np.zeros((out, size), dtype=np.float64)
    for i in range(out):
        start = (i * size) // out
        stop = -(-((i + 1) * size) // out)  # ceil
        m[i, start:stop] = 1.0 / (stop - start)
    return xp.asarray(m, dtype=dtype)


class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size: (N, C, H, W) -> (N, C, OH, OW), PyTorch's
    ``nn.AdaptiveAvgPool2d``.

    Output (i, j) is the mean of rows floor(i*H/OH) .. ceil((i+1)*H/OH)-1 and the matching
    columns, so bins may overlap by one row and every row is used. The pooling is separable:
    forward is ``Ph @ x @ Pw.T`` with averaging matrices Ph (OH, H), Pw (OW, W) and backward
    ``Ph.T @ dout @ Pw``. When (H, W) == (OH, OW) it is the identity. torchvision's VGG (7x7),
    AlexNet (6x6) and GoogLeNet's auxiliary heads (4x4) use it to accept other input sizes.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = pair(output_size, "AdaptiveAvgPool2d output_size")

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (C, OH, OW)."""
        c, h, w = self._check_shape(input_shape, 3)
        if h < 1 or w < 1:
            raise ShapeError(f"{self!r}: input {h}x{w} has no positions to average")
        return (c, *self.output_size)

    def forward(self, x, train: bool = False):
        self._check_input(x, 4)
        h, w = x.shape[2:]
        oh, ow = self.output_size
        if h < 1 or w < 1:
            raise ShapeError(f"{self!r}: input {h}x{w} has no positions to average")
        if (h, w) == (oh, ow):
            self._cache = (None, x.shape)
            return x.copy()
        xp = array_module(x)
        ph, pw = adaptive_bins(h, oh, x.dtype, xp), adaptive_bins(w, ow, x.dtype, xp)
        out = ph @ x @ pw.T
        self._cache = ((ph, pw), out.shape)
        return out

    def backward(self, dout):
        """dx = Ph.T @ dout @ Pw: each output's gradient spread evenly over its bin."""
        mats, out_shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, out_shape)
        if mats is None:
            return dout.copy()
        ph, pw = mats
        return ph.T @ dout @ pw

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        return 0, 0 if tuple(in_shapes[0]) == tuple(out_shape) else math.prod(in_shapes[0])

    def in_place(self, in_shapes, out_shape):
        return tuple(in_shapes[0]) == tuple(out_shape)  # the identity at its own output size

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """The two separable products' intermediates."""
        m = LayerMemory(out_bytes=math.prod(out_shape) * n * b)
        if tuple(in_shapes[0]) != tuple(out_shape):
            c, h, w = in_shapes[0]
            m.fwd_work = n * c * out_shape[1] * w * b
            m.bwd_work = n * c * h * out_shape[2] * b
        return m

    def shardable(self, train):
        return True

    absent_facts = frozenset({"spec", "report_role"})

    def to_fully_convolutional(self, st, where):
        return _pool_to_conv(self, self.output_size, st, where)

    def to_onnx(self, b, x, shape, path):
        """Identity, GlobalAveragePool, AveragePool (the sizes divide) or two MatMuls with the
        averaging matrices (the general bins)."""
        out = tuple(self.output_shape(shape))
        (h, w), (oh, ow) = shape[1:], out[1:]
        if (h, w) == (oh, ow):
            return b.node("Identity", [x], path), out
        if (oh, ow) == (1, 1):
            return b.node("GlobalAveragePool", [x], path), out
        if h % oh == 0 and w % ow == 0:  # equal, non-overlapping bins
            kernel = [h // oh, w // ow]
            return b.node("AveragePool", [x], path, kernel_shape=kernel, strides=kernel), out
        rows = b.node("MatMul", [b.const(f"{path}.rows", adaptive_bins(h, oh)), x], f"{path}.rows")
        return b.node("MatMul", [rows, b.const(f"{path}.cols", adaptive_bins(w, ow).T)], path), out

    def torch_module(self, nn):
        return nn.AdaptiveAvgPool2d(self.output_size)

    def get_config(self) -> dict:
        return {"output_size": _config_pair(self.output_size)}

    def extra_repr(self) -> str:
        return f"output_size={_repr_pair(self.output_size)}"
