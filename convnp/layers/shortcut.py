"""The CIFAR ResNets' option-A shortcut (He et al. 2016, section 4.2): a parameter-free identity
that subsamples and pads the new channels with zeros."""

from __future__ import annotations

import math

import numpy as np

from .._util import check_int as _check_int
from ..errors import ConfigError, ShapeError
from ..ops.backend import array_module
from .base import Layer, LayerMemory

_INT64_MAX = np.iinfo(np.int64).max


class ZeroPadShortcut(Layer):
    """The paper's option-A shortcut: subsample by ``stride`` and pad the new channels with zeros.

    (N, in_channels, H, W) -> (N, out_channels, (H-1)//stride+1, (W-1)//stride+1): output
    channels [pad, pad + in_channels) hold x[:, :, ::stride, ::stride], with
    pad = (out_channels - in_channels) // 2 (the zeros split before and after, as the common
    CIFAR implementations do); the rest are zero. No parameters. Backward picks the
    identity channels and scatters them back to the sampled pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels", "ZeroPadShortcut")
        self.out_channels = _check_int(out_channels, "out_channels", "ZeroPadShortcut")
        self.stride = _check_int(stride, "stride", "ZeroPadShortcut")
        if self.out_channels < self.in_channels:
            raise ConfigError(f"ZeroPadShortcut: out_channels ({out_channels}) must be >= in_channels "
                              f"({in_channels}); it only adds zero channels")

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C_in, H, W) -> (C_out, (H-1)//S+1, (W-1)//S+1)."""
        _, h, w = self._check_shape(input_shape, 3, self.in_channels)
        s = self.stride
        return (self.out_channels, (h - 1) // s + 1, (w - 1) // s + 1)

    def forward(self, x, train: bool = False):
        self._check_input(x, 4, self.in_channels)
        n, c, h, w = x.shape
        if h < 1 or w < 1:
            raise ShapeError(f"{self!r}: input {h}x{w} is empty")
        s, pad = self.stride, (self.out_channels - self.in_channels) // 2
        sub = x[:, :, ::s, ::s]
        xp = array_module(x)
        out = xp.zeros((n, self.out_channels, *sub.shape[2:]), dtype=x.dtype)
        out[:, pad:pad + c] = sub
        self._cache = (x.shape, out.shape)
        return out

    def backward(self, dout):
        x_shape, out_shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, out_shape)
        s, pad = self.stride, (self.out_channels - self.in_channels) // 2
        xp = array_module(dout)
        dx = xp.zeros(x_shape, dtype=dout.dtype)
        dx[:, :, ::s, ::s] = dout[:, pad:pad + self.in_channels]
        return dx

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        return 0, 0   # a strided copy

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        return LayerMemory(out_bytes=math.prod(out_shape) * n * b)

    def shardable(self, train):
        return True

    fc_conv_role = "spatial"
    absent_facts = frozenset({"spec", "report_role"})

    def stride_hw(self):
        return self.stride, self.stride

    def to_onnx(self, b, x, shape, path):
        """Slice with steps, then Pad of the channels."""
        out = tuple(self.output_shape(shape))
        s = self.stride
        if s != 1:
            x = b.node("Slice", [x, b.ints(f"{path}.starts", [0, 0]), b.ints(f"{path}.ends", [_INT64_MAX] * 2),
                                 b.ints(f"{path}.axes", [2, 3]), b.ints(f"{path}.steps", [s, s])], f"{path}.subsample")
        before = (self.out_channels - self.in_channels) // 2
        after = self.out_channels - self.in_channels - before
        return b.node("Pad", [x, b.ints(f"{path}.pads", [0, before, 0, 0, 0, after, 0, 0])], path), out

    def torch_module(self, nn):
        raise ConfigError("bench: ZeroPadShortcut has no torch.nn module (it lives inside a residual Graph)")

    def get_config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "stride": self.stride}

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"
