"""Elementwise activation layers: any input shape (N, *) -> the same shape.

Thin classes over ``convnp.ops.activation``; backward reuses what forward cached
(the mask for ReLU/LeakyReLU, the output for Tanh/Sigmoid/ELU).
"""

from __future__ import annotations

import math

from .._util import check_real
from ..ops import activation as ops
from .base import Layer, LayerMemory, SpecToken, elementwise_costs


class _Elementwise:
    """Mixin with the shared plumbing: check the input, call the op, keep its cache for backward,
    and the facts every elementwise layer shares. Not a Layer subclass itself, so it stays out of
    the layer registry. Each layer names its ONNX operator (``_onnx_op``, attributes from
    ``_onnx_attrs``), its spec keyword and its ``torch.nn`` class name.
    """

    _onnx_op = ""
    _onnx_attrs: dict = {}   # ONNX attribute -> this layer's attribute
    _keyword = ""            # the spec item; a number after it sets ``_spec_arg``
    _spec_arg = ""

    # --- facts ------------------------------------------------------------------------------------
    costs = elementwise_costs(1)          # transcendentals counted as one FLOP
    fc_conv_role = "pointwise"
    report_role = "activation"

    def in_place(self, in_shapes, out_shape):
        return True

    def shardable(self, train):
        return True

    def _memory(self, m: LayerMemory, out: int, ob: int) -> None:
        """Fill in what this activation keeps and its scratch (``out`` numbers, ``ob`` bytes)."""
        raise NotImplementedError

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        out = math.prod(out_shape) * n
        m = LayerMemory(out_bytes=out * b, out_nhwc=in_nhwc)
        self._memory(m, out, out * b)
        return m

    def to_onnx(self, b, x, shape, path):
        attrs = {k: float(getattr(self, a)) for k, a in self._onnx_attrs.items()}
        return b.node(self._onnx_op, [x], path, **attrs), tuple(shape)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        return [cls(*args)]

    def to_spec(self, next_layer, shape):
        if not self._spec_arg:
            return self._keyword
        value = getattr(self, self._spec_arg)
        default = type(self)().__dict__[self._spec_arg]
        return self._keyword if value == default else f"{self._keyword}{float(value)!r}"

    def torch_module(self, nn):
        return getattr(nn, type(self).__name__)(*(getattr(self, a) for a in self._onnx_attrs.values()))

    def _forward_op(self, x):
        raise NotImplementedError

    def _backward_op(self, dout, cache):
        raise NotImplementedError

    def forward(self, x, train: bool = False):
        self._check_input(x, getattr(x, "ndim", 0), what="(N, *)")
        out, cache = self._forward_op(x)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache, shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, shape)
        return self._backward_op(dout, cache)


class ReLU(_Elementwise, Layer):
    """max(0, x) elementwise; the gradient at exactly 0 is 0, as in PyTorch. Shape (N, *) -> (N, *).

    Inside a Sequential a layer with ``forward_relu`` (Conv2d) may apply this ReLU to its output
    itself (while it is in cache); this layer then only keeps the mask for its backward.
    """

    _onnx_op, _keyword = "Relu", "RELU"
    spec_tokens = (SpecToken("RELU"),)

    def _memory(self, m, out, ob):
        m.saved, m.fwd_work = out, out   # a 1-byte mask

    def take_mask(self, mask, shape) -> None:
        """Take the mask of a ReLU that the layer before applied (``convnp.engine.forward_chain``)."""
        self._cache = (mask, tuple(shape))

    def _forward_op(self, x):
        return ops.relu_forward(x)

    def _backward_op(self, dout, cache):
        return ops.relu_backward(dout, cache)


class LeakyReLU(_Elementwise, Layer):
    """x if x > 0 else negative_slope * x. Shape (N, *) -> (N, *)."""

    _onnx_op, _onnx_attrs, _keyword, _spec_arg = "LeakyRelu", {"alpha": "negative_slope"}, "LRELU", "negative_slope"
    spec_tokens = (SpecToken("LRELU", "X?"),)

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = check_real(negative_slope, "negative_slope", "LeakyReLU")

    def _memory(self, m, out, ob):
        m.saved, m.fwd_work, m.bwd_work = out, ob, ob

    def _forward_op(self, x):
        return ops.leaky_relu_forward(x, self.negative_slope)

    def _backward_op(self, dout, cache):
        return ops.leaky_relu_backward(dout, cache)

    def get_config(self) -> dict:
        return {"negative_slope": self.negative_slope}


class ELU(_Elementwise, Layer):
    """x if x > 0 else alpha * (exp(x) - 1). Shape (N, *) -> (N, *)."""

    _onnx_op, _onnx_attrs, _keyword, _spec_arg = "Elu", {"alpha": "alpha"}, "ELU", "alpha"
    spec_tokens = (SpecToken("ELU", "X?"),)

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = check_real(alpha, "alpha", "ELU")

    def _memory(self, m, out, ob):
        m.saved, m.fwd_work, m.bwd_work = out + ob, 2 * ob, 2 * ob

    def _forward_op(self, x):
        return ops.elu_forward(x, self.alpha)

    def _backward_op(self, dout, cache):
        return ops.elu_backward(dout, cache)

    def get_config(self) -> dict:
        return {"alpha": self.alpha}


class Tanh(_Elementwise, Layer):
    """tanh(x) elementwise. Shape (N, *) -> (N, *)."""

    _onnx_op, _keyword = "Tanh", "TANH"
    spec_tokens = (SpecToken("TANH"),)

    def _memory(self, m, out, ob):
        m.keeps_output, m.bwd_work = True, 2 * ob

    def _forward_op(self, x):
        return ops.tanh_forward(x)

    def _backward_op(self, dout, cache):
        return ops.tanh_backward(dout, cache)


class Sigmoid(_Elementwise, Layer):
    """1 / (1 + exp(-x)) elementwise, stable for large |x|. Shape (N, *) -> (N, *)."""

    _onnx_op, _keyword = "Sigmoid", "SIGMOID"
    spec_tokens = (SpecToken("SIGMOID"),)

    def _memory(self, m, out, ob):
        m.keeps_output, m.fwd_work, m.bwd_work = True, 4 * ob + out, 2 * ob

    def _forward_op(self, x):
        return ops.sigmoid_forward(x)

    def _backward_op(self, dout, cache):
        return ops.sigmoid_backward(dout, cache)
