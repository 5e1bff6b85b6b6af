"""Convolutional layers."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..ops.conv import conv2d_backward, conv2d_forward, conv2d_relu_forward, conv2d_workspace
from ..ops.im2col import ROUNDING_MODES, output_hw, pair
from .base import Layer, LayerMemory, SpecToken, check_dtype, he_normal, square
from .._util import make_rng


class Conv2d(Layer):
    """2-D convolution (cross-correlation, like PyTorch's ``nn.Conv2d``) over NCHW input.

    Input (N, C, H, W) -> output (N, K, OH, OW) with K = ``out_channels`` and

        OH = (H - dilation*(KH-1) - 1 + 2*padding) / stride + 1      (likewise OW)

    which must be an integer unless ``rounding`` is "floor" (PyTorch's behaviour: the last
    partial window is dropped) or "ceil". Params: "weight" (K, C, KH, KW), He-normal with
    fan_in = C*KH*KW, and "bias" (K,), zeros. ``kernel_size``, ``stride``, ``padding`` and
    ``dilation`` take an int or an (h, w) pair.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, rounding="exact", rng=None, dtype="float32"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Conv2d: {name} must be a positive int, got {value!r}")
        if not isinstance(bias, bool):
            raise ConfigError(f"Conv2d: bias must be True or False, got {bias!r}")
        if rounding not in ROUNDING_MODES:
            raise ConfigError(f"Conv2d: rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size")
        self.stride = pair(stride, "Conv2d: stride")
        self.padding = pair(padding, "Conv2d: padding", minimum=0)
        self.dilation = pair(dilation, "Conv2d: dilation")
        self.rounding = rounding
        self.dtype = check_dtype(dtype)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.params["weight"] = he_normal(make_rng(rng), (self.out_channels, self.in_channels, kh, kw),
                                          fan_in, self.dtype)
        if bias:
            self.params["bias"] = np.zeros(self.out_channels, self.dtype)
        self._out_shape = None

    # --- the contract -------------------------------------------------------------------------
    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (K, OH, OW); ShapeError if the channels or the geometry do not fit."""
        _, h, w = self._check_shape(input_shape, 3, self.in_channels)
        oh, ow = output_hw((h, w), self.kernel_size, self.stride, self.padding, self.dilation,
                           self.rounding, layer=repr(self))
        return self.out_channels, oh, ow

    def forward(self, x, train: bool = False):
        """(N, C, H, W) -> (N, K, OH, OW), im2col + one matrix multiply per chunk of images."""
        self._check_input(x, 4, self.in_channels)
        out, cache = conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride,
                                    self.padding, self.dilation, self.rounding, layer=repr(self))
        self._cache, self._out_shape = cache, out.shape
        return out

    def forward_relu(self, x, train: bool = False):
        """This layer followed by a ReLU, fused (``convnp.engine.forward_chain`` calls it for
        Conv2d -> ReLU in a Sequential): returns (out, mask); the ReLU layer keeps the mask."""
        self._check_input(x, 4, self.in_channels)
        out, cache, mask = conv2d_relu_forward(x, self.params["weight"], self.params.get("bias"), self.stride,
                                               self.padding, self.dilation, self.rounding, layer=repr(self))
        self._cache, self._out_shape = cache, out.shape
        return out, mask

    #: ``backward(dout, input_grad=False)`` fills the grads and skips dx (returns None)
    accepts_input_grad = True

    def backward(self, dout, input_grad: bool = True):
        """dout (N, K, OH, OW) -> dx (N, C, H, W), or None with ``input_grad=False``; fills grads."""
        cache = self._pop_cache(dout, self._out_shape)
        dx, dw, db = conv2d_backward(dout, cache, input_grad=input_grad)
        self.grads = {"weight": dw}
        if db is not None:
            self.grads["bias"] = db
        return dx

    def get_config(self) -> dict:
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": _plain(self.kernel_size, list), "stride": _plain(self.stride, list),
            "padding": _plain(self.padding, list), "dilation": _plain(self.dilation, list),
            "bias": "bias" in self.params, "rounding": self.rounding, "dtype": self.dtype.name,
        }

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        """K*C*KH*KW MACs per output position; 2 FLOPs per MAC plus one per bias add."""
        macs = int(self.params["weight"].size) * math.prod(out_shape[1:])
        return macs, 2 * macs + (math.prod(out_shape) if "bias" in self.params else 0)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps its input; the scratch buffers are the op's own estimate; the output is channels-last."""
        fwd, bwd = conv2d_workspace(in_shapes[0], out_shape, self.params["weight"].shape, self.stride,
                                    self.padding, self.dilation, n, b)
        return LayerMemory(out_bytes=math.prod(out_shape) * n * b, keeps_input=True, out_nhwc=True,
                           fwd_work=fwd, bwd_work=bwd, grad_bytes=self._param_bytes())

    def shardable(self, train):
        return True

    fc_conv_role = "spatial"
    report_role = "filters"

    def stride_hw(self):
        return self.stride

    def to_onnx(self, b, x, shape, path):
        """Conv; PyTorch's floor rounding is ONNX's, ceil rounding becomes extra end padding."""
        pads, out = b.window_pads(self, shape, self.kernel_size, self.stride, self.padding, self.dilation,
                                  path, "Conv")
        inputs = [x, b.const(f"{path}.weight", self.params["weight"])]
        if "bias" in self.params:
            inputs.append(b.const(f"{path}.bias", self.params["bias"]))
        y = b.node("Conv", inputs, path, kernel_shape=list(self.kernel_size), strides=list(self.stride),
                   pads=pads, dilations=list(self.dilation), group=1)
        return y, out

    spec_tokens = (SpecToken("CONV", "F-K", ("S", "P", "NB"), volume=True,
                             arg_names=("the filter size F", "the number of filters")),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``CONV<F>-<K>``: K filters of F x F; /S stride, /P padding (default (F-1)/2), /NB no bias."""
        f, k = args
        if "P" in opts:
            pad = opts["P"]
        elif f % 2 == 1:
            pad = (f - 1) // 2
        else:
            raise ConfigError(f"an even filter size has no padding (F-1)/2 that keeps the size; give it "
                              f"explicitly, e.g. CONV{f}-{k}/P0")
        return [cls(shape[0], k, f, stride=opts.get("S", 1), padding=pad, bias=not opts.get("NB", False),
                    rng=rng, dtype=dtype)]

    def to_spec(self, next_layer, shape):
        if self.dilation != (1, 1):
            raise self.no_spelling("dilation and groups must be 1")
        if self.rounding != "exact":
            raise self.no_spelling("only rounding='exact' has a spelling")
        f, s, p = (square(v, name, self) for v, name in ((self.kernel_size, "kernel_size"),
                                                         (self.stride, "stride"), (self.padding, "padding")))
        text = f"CONV{f}-{self.out_channels}" + (f"/S{s}" if s != 1 else "")
        if f % 2 == 0 or p != (f - 1) // 2:
            text += f"/P{p}"
        return text + ("" if "bias" in self.params else "/NB")

    def torch_module(self, nn):
        if self.rounding == "ceil":
            raise ConfigError(f"bench: {self!r}: PyTorch convolutions have no ceil rounding")
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias="bias" in self.params)

    def extra_repr(self) -> str:
        """Like PyTorch: ``3, 96, kernel_size=11, stride=4``; defaults are left out."""
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={_plain(self.kernel_size)}"]
        for name, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
            value = getattr(self, name)
            if value != default:
                parts.append(f"{name}={_plain(value)}")
        if "bias" not in self.params:
            parts.append("bias=False")
        if self.rounding != "exact":
            parts.append(f"rounding={self.rounding!r}")
        return ", ".join(parts)


def _plain(p, kind=tuple):
    """An (h, w) pair as one int when both are equal, else as ``kind`` (list for JSON, tuple for repr)."""
    return p[0] if p[0] == p[1] else kind(p)
