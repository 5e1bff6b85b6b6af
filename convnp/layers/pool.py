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

from ..errors import ConfigError, ShapeError
from ..ops import pool as ops
from ..ops.im2col import ROUNDING_MODES, output_hw, pair
from .base import Layer


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

    def extra_repr(self) -> str:
        return ""
