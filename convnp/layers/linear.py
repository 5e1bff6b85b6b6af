"""Fully-connected layer and Flatten: thin classes over ``convnp.ops.linear``."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops import linear as ops
from .base import Layer, check_dtype, he_normal, make_rng


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

    def get_config(self) -> dict:
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}
