"""LocallyConnected2d: the notes' CONV layer without parameter sharing."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops.im2col import output_hw, pair
from ..ops.locally_connected import locally_connected2d_backward, locally_connected2d_forward
from .base import Layer, LayerMemory, check_dtype, he_normal
from .._util import check_int, make_rng


def _positive_int(value, name: str) -> int:
    return check_int(value, name, "LocallyConnected2d")


def _compact(value: tuple[int, int]):
    return value[0] if value[0] == value[1] else value


class LocallyConnected2d(Layer):
    """A convolution with one filter bank per output position (no parameter sharing).

    (N, C, H, W) -> (N, K, OH, OW) with OH = (H - KH + 2P)/S + 1, which must be an integer,
    for the one input size (H, W) = ``input_size`` the layer is built for.

    Parameters (the layout is output position first, then a Conv2d-style filter bank):
      ``weight`` (OH, OW, K, C, KH, KW): ``weight[i, j]`` is the (K, C, KH, KW) filter bank
      applied to the window of output position (i, j);
      ``bias`` (K, OH, OW): one bias per output unit.
    The weight is He-initialised, N(0, 2 / (C*KH*KW)); the bias starts at zero.
    """

    def __init__(self, in_channels, out_channels, input_size, kernel_size, stride=1, padding=0,
                 bias: bool = True, rng=None, dtype="float32"):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.input_size = pair(input_size, "LocallyConnected2d input_size")
        self.kernel_size = pair(kernel_size, "LocallyConnected2d kernel_size")
        self.stride = pair(stride, "LocallyConnected2d stride")
        self.padding = pair(padding, "LocallyConnected2d padding", minimum=0)
        if not isinstance(bias, bool):
            raise ConfigError(f"LocallyConnected2d: bias must be True or False, got {bias!r}")
        self.bias = bias
        self.dtype = check_dtype(dtype)
        try:
            self.out_hw = output_hw(self.input_size, self.kernel_size, self.stride, self.padding,
                                    (1, 1), "exact", layer=repr(self))
        except ShapeError as e:  # the geometry is a constructor argument here
            raise ConfigError(str(e)) from None
        oh, ow = self.out_hw
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        shape = (oh, ow, self.out_channels, self.in_channels, kh, kw)
        self.params["weight"] = he_normal(make_rng(rng), shape, fan_in, self.dtype)
        if bias:
            self.params["bias"] = np.zeros((self.out_channels, oh, ow), dtype=self.dtype)

    def _check_size(self, h: int, w: int):
        if (h, w) != self.input_size:
            raise ShapeError(f"{self!r}: built for {self.input_size[0]}x{self.input_size[1]} inputs "
                             f"(one filter per output position), got {h}x{w}")

    def forward(self, x, train: bool = False):
        self._check_input(x, 4, channels=self.in_channels)
        self._check_size(*x.shape[2:])
        out, cache = locally_connected2d_forward(x, self.params["weight"], self.params.get("bias"),
                                                 self.stride, self.padding)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        out_shape = self._cache[1] if self._cache is not None else None
        cache, _ = self._pop_cache(dout, out_shape)
        dx, dw, db = locally_connected2d_backward(dout, cache)
        self.grads = {"weight": dw}
        if db is not None:
            self.grads["bias"] = db
        return dx

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (K, OH, OW); (H, W) must equal ``input_size``."""
        _, h, w = self._check_shape(input_shape, 3, channels=self.in_channels)
        self._check_size(h, w)
        return (self.out_channels, *self.out_hw)

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        """One MAC per weight; 2 FLOPs per MAC plus one per bias."""
        macs = int(self.params["weight"].size)
        return macs, 2 * macs + (int(self.params["bias"].size) if self.bias else 0)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps its patches; a padded copy; a padded dx."""
        oh, ow, k, c, kh, kw = self.params["weight"].shape
        _, h, w = in_shapes[0]
        ph, pw = self.padding
        patches = n * oh * ow * c * kh * kw * b
        padded = n * c * (h + 2 * ph) * (w + 2 * pw) * b
        ob = math.prod(out_shape) * n * b
        return LayerMemory(out_bytes=ob, saved=patches, fwd_work=(padded if (in_nhwc or (ph, pw) != (0, 0)) else 0)
                           + ob, bwd_work=ob + patches, grad_bytes=self._param_bytes(), dx_bytes=padded)

    def shardable(self, train):
        return True

    absent_facts = frozenset({"spec", "report_role"})

    def stride_hw(self):
        return self.stride

    def to_fully_convolutional(self, st, where):
        raise ConfigError(f"to_fully_convolutional: {where} has one filter per output position, so it "
                          "cannot slide over a larger input")

    def to_onnx(self, b, x, shape, path):
        """A grouped Conv with one-hot kernels extracts the patches (N, C*KH*KW, OH, OW); a batched
        MatMul applies each position's own filter bank; then Add bias."""
        out = tuple(self.output_shape(shape))
        k, oh, ow = out
        c = self.in_channels
        kh, kw = self.kernel_size
        q = c * kh * kw
        # patch channel c*KH*KW + a*KW + b of the one-hot conv holds x[c, i*S + a - P, j*S + b - P]
        onehot = np.zeros((q, 1, kh, kw), dtype=np.float32)
        onehot[np.arange(q), 0, np.tile(np.repeat(np.arange(kh), kw), c), np.tile(np.arange(kw), c * kh)] = 1.0
        ph, pw = self.padding
        patches = b.node("Conv", [x, b.const(f"{path}.patch_kernel", onehot)], f"{path}.patches",
                         kernel_shape=[kh, kw], strides=list(self.stride), pads=[ph, pw, ph, pw], group=c)
        # (N, Q, OH, OW) -> (L, N, Q) @ (L, Q, K) -> (L, N, K) -> (N, K, OH, OW), L = OH*OW
        cols = b.node("Reshape", [patches, b.ints(f"{path}.cols_shape", [0, q, oh * ow])], f"{path}.cols")
        cols = b.node("Transpose", [cols], f"{path}.cols_t", perm=[2, 0, 1])
        w = self.params["weight"].reshape(oh * ow, k, q).transpose(0, 2, 1)
        y = b.node("MatMul", [cols, b.const(f"{path}.weight", w)], f"{path}.matmul")
        y = b.node("Transpose", [y], f"{path}.out_t", perm=[1, 2, 0])
        y = b.node("Reshape", [y, b.ints(f"{path}.out_shape", [0, k, oh, ow])], f"{path}.out" if self.bias else path)
        if self.bias:
            y = b.node("Add", [y, b.const(f"{path}.bias", self.params["bias"])], path)
        return y, out

    def torch_module(self, nn):
        raise ConfigError("bench: PyTorch has no locally connected layer")

    def get_config(self) -> dict:
        def js(v):
            return v[0] if v[0] == v[1] else list(v)

        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "input_size": js(self.input_size), "kernel_size": js(self.kernel_size),
                "stride": js(self.stride), "padding": js(self.padding), "bias": self.bias,
                "dtype": str(self.dtype)}

    def extra_repr(self) -> str:
        parts = [str(self.in_channels), str(self.out_channels), f"input_size={_compact(self.input_size)}",
                 f"kernel_size={_compact(self.kernel_size)}", f"stride={_compact(self.stride)}"]
        if self.padding != (0, 0):
            parts.append(f"padding={_compact(self.padding)}")
        if not self.bias:
            parts.append("bias=False")
        return ", ".join(parts)
