"""Fully-connected layer and Flatten: thin classes over ``convnp.ops.linear``."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops import linear as ops
from .base import Layer, LayerMemory, SpecToken, check_dtype, he_normal
from .._util import make_rng


def _int_arg(value, name: str, owner: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{owner}: {name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


class Linear(Layer):
    """Fully-connected layer: out = x @ weight.T + bias, (N, in_features) -> (N, out_features).

    ``weight`` is (out_features, in_features) and ``bias`` (out_features,), as in PyTorch.
    The weight starts He-normal, N(0, 2 / in_features); the bias starts at zero.
    A conv feature map (N, C, H, W) needs a ``Flatten()`` first (in_features = C*H*W).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None,
                 dtype="float32"):
        super().__init__()
        self.in_features = _int_arg(in_features, "in_features", "Linear", 1)
        self.out_features = _int_arg(out_features, "out_features", "Linear", 1)
        if not isinstance(bias, (bool, np.bool_)):
            raise ConfigError(f"Linear: bias must be True or False, got {bias!r}")
        dt = check_dtype(dtype)
        gen = make_rng(rng)
        self.params["weight"] = he_normal(gen, (self.out_features, self.in_features), self.in_features, dt)
        if bias:
            self.params["bias"] = np.zeros(self.out_features, dtype=dt)

    @property
    def has_bias(self) -> bool:
        return "bias" in self.params

    def _flatten_hint(self, trailing: tuple) -> str:
        features = math.prod(trailing)
        hint = f"; put a Flatten() before it ({'*'.join(map(str, trailing))} = {features} features"
        if features != self.in_features:
            hint += f", but this layer takes in_features={self.in_features}"
        return hint + ")"

    def forward(self, x, train: bool = False):
        """(N, in_features) -> (N, out_features)."""
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) > 2:
            raise ShapeError(f"{self!r}: expected a 2-d input (N, in_features), got shape {shape}"
                             + self._flatten_hint(shape[1:]))
        self._check_input(x, 2, what="(N, in_features)")
        if shape[1] != self.in_features:
            raise ShapeError(f"{self!r}: expected {self.in_features} input features, got {shape[1]} "
                             f"(input shape {shape})")
        out, cache = ops.linear_forward(x, self.params["weight"], self.params.get("bias"))
        self._cache = (cache, out.shape)
        return out

    accepts_input_grad = True  # backward(dout, input_grad=False): parameter gradients only, returns None

    def backward(self, dout, input_grad: bool = True):
        cache, shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, shape)
        dx, dweight, dbias = ops.linear_backward(dout, cache, input_grad)
        self.grads = {"weight": dweight.astype(self.params["weight"].dtype, copy=False)}
        if dbias is not None:
            self.grads["bias"] = dbias.astype(self.params["bias"].dtype, copy=False)
        return dx

    def output_shape(self, input_shape: tuple) -> tuple:
        """(in_features,) -> (out_features,)."""
        shape = tuple(input_shape)
        if len(shape) > 1:
            raise ShapeError(f"{self!r}: expected an input shape (in_features,), got {shape}"
                             + self._flatten_hint(shape))
        self._check_shape(shape, 1, what="(in_features,)")
        if shape[0] != self.in_features:
            raise ShapeError(f"{self!r}: expected {self.in_features} input features, got {shape[0]}")
        return (self.out_features,)

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        """in*out MACs; 2 FLOPs per MAC plus one per bias."""
        macs = int(self.params["weight"].size)
        return macs, 2 * macs + (self.out_features if self.has_bias else 0)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps its input for the weight gradient."""
        return LayerMemory(out_bytes=math.prod(out_shape) * n * b, keeps_input=True, grad_bytes=self._param_bytes())

    def shardable(self, train):
        return True

    absent_facts = frozenset({"report_role"})

    def to_fully_convolutional(self, st, where):
        """A Conv2d with F = the input volume's H x W and the weight reshaped to (out, C, H, W)
        (Flatten is C order over (C, H, W), like ``torch.flatten``)."""
        from .conv import Conv2d  # noqa: PLC0415 - only the conversion needs the conv layer

        st.orig = tuple(self.output_shape(st.orig))
        c, h, w = st.new if len(st.new) == 3 else (st.new[0], 1, 1)
        if c * h * w != self.in_features:
            raise ShapeError(f"to_fully_convolutional: {where} takes {self.in_features} features but its "
                             f"input volume is {h}x{w}x{c} = {c * h * w}")
        weight = self.params["weight"]
        conv = Conv2d(c, self.out_features, (h, w), bias=self.has_bias, dtype=weight.dtype)
        conv.params["weight"] = np.ascontiguousarray(weight.reshape(self.out_features, c, h, w)).copy()
        if self.has_bias:
            conv.params["bias"] = self.params["bias"].copy()
        st.new = (self.out_features, 1, 1)
        return conv

    def to_onnx(self, b, x, shape, path):
        inputs = [x, b.const(f"{path}.weight", self.params["weight"])]
        if self.has_bias:
            inputs.append(b.const(f"{path}.bias", self.params["bias"]))
        return b.node("Gemm", inputs, path, transB=1), tuple(self.output_shape(shape))

    spec_tokens = (SpecToken("FC", "-N", ("NB",), arg_names=("the number of outputs",)),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``FC-<n>``: Linear to n outputs (/NB: no bias), after a Flatten when the input is a volume."""
        pre = [Flatten()] if len(shape) > 1 else []
        return pre + [cls(math.prod(shape), args[0], bias=not opts.get("NB", False), rng=rng, dtype=dtype)]

    def to_spec(self, next_layer, shape):
        return f"FC-{self.out_features}" + ("" if self.has_bias else "/NB")

    def torch_module(self, nn):
        return nn.Linear(self.in_features, self.out_features, bias=self.has_bias)

    def get_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.has_bias, "dtype": str(self.params["weight"].dtype)}

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"
        dtype = self.params["weight"].dtype
        return text if dtype == np.float32 else f"{text}, dtype='{dtype}'"


class Flatten(Layer):
    """Merge axes start_dim..end_dim into one, in C order, like ``torch.flatten(x, 1)``.

    With the defaults (N, C, H, W) -> (N, C*H*W). The batch axis is never merged
    (start_dim >= 1); negative end_dim counts from the end.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = _int_arg(start_dim, "start_dim", "Flatten", 1)
        self.end_dim = _int_arg(end_dim, "end_dim", "Flatten")
        if self.end_dim == 0:
            raise ConfigError("Flatten: end_dim=0 would merge into the batch axis; use end_dim >= 1 or < 0")
        if self.end_dim > 0 and self.end_dim < self.start_dim:
            raise ConfigError(f"Flatten: start_dim={self.start_dim} comes after end_dim={self.end_dim}")

    def _axes(self, ndim: int, full_shape: tuple) -> tuple[int, int]:
        """start, end as non-negative axes of a ``ndim``-d batch; ShapeError if they do not fit."""
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not (1 <= self.start_dim <= end < ndim):
            raise ShapeError(f"{self!r}: cannot merge axes {self.start_dim}..{self.end_dim} of an input "
                             f"of shape {full_shape} ({ndim}-d, batch axis 0 included)")
        return self.start_dim, end

    def forward(self, x, train: bool = False):
        self._check_input(x, getattr(x, "ndim", 0), what="(N, *)")
        self._axes(x.ndim, tuple(x.shape))
        out, cache = ops.flatten_forward(x, self.start_dim, self.end_dim)
        self._cache = (cache, out.shape)
        return out

    def backward(self, dout):
        cache, shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, shape)
        return ops.flatten_backward(dout, cache)

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (C*H*W,) with the defaults."""
        shape = tuple(input_shape)
        start, end = self._axes(len(shape) + 1, ("N",) + shape)
        start, end = start - 1, end - 1  # no batch axis here
        return shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        return 0, 0   # a view

    def in_place(self, in_shapes, out_shape):
        return True

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """A view, except that reshaping a channels-last view copies it; dx is a view of dout."""
        return LayerMemory(out_new=in_nhwc, out_bytes=math.prod(out_shape) * n * b, dx_new=False)

    def shardable(self, train):
        return True

    absent_facts = frozenset({"report_role"})

    def to_fully_convolutional(self, st, where):
        """Goes: the volume stays a volume."""
        out = tuple(self.output_shape(st.orig))
        if len(st.new) == 3 and (self.start_dim, self.end_dim) not in ((1, -1), (1, 3)):
            raise ConfigError(f"to_fully_convolutional: {where} flattens only part of the volume")
        st.orig = out
        return None

    def to_onnx(self, b, x, shape, path):
        out = tuple(self.output_shape(shape))
        if self.start_dim == 1 and self.end_dim in (-1, len(shape)):
            return b.node("Flatten", [x], path, axis=1), out
        return b.node("Reshape", [x, b.ints(f"{path}.shape", [0, *out])], path), out

    spec_tokens = (SpecToken("FLATTEN"),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        return [cls()]

    def to_spec(self, next_layer, shape):
        """FLATTEN, or nothing before an FC that reads a volume (FC-n implies it)."""
        if (self.start_dim, self.end_dim) != (1, -1):
            raise self.no_spelling("only Flatten(1, -1) has a spelling")
        implied = isinstance(next_layer, Linear) and (shape is None or len(shape) > 1)
        return None if implied else "FLATTEN"

    def torch_module(self, nn):
        return nn.Flatten(self.start_dim, self.end_dim)

    def get_config(self) -> dict:
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}
