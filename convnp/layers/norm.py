"""Normalization layers: BatchNorm1d, BatchNorm2d and LocalResponseNorm (PyTorch semantics).

Batch norm keeps PyTorch's state_dict names: params ``weight`` (ones) and ``bias``
(zeros), buffers ``running_mean`` (zeros), ``running_var`` (ones) and
``num_batches_tracked`` (an int64 0-d array, +1 per training forward).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops.norm import batchnorm_backward, batchnorm_forward, batchnorm_running_update, lrn_backward, lrn_forward
from .base import LAYER_TYPES, Layer, check_dtype, make_rng


def _real(value, name: str, layer: str, minimum: float | None = None, strict: bool = False,
          maximum: float | None = None) -> float:
    """``value`` as a finite float within bounds, else a ConfigError naming the layer."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ConfigError(f"{layer}: {name} must be a finite real number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"{layer}: {name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{layer}: {name} must be <= {maximum}, got {value!r}")
    return value


def _count(value, name: str, layer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{layer}: {name} must be a positive int, got {value!r}")
    return int(value)


class _BatchNorm(Layer):
    """Shared batch norm: per-channel statistics over every axis but axis 1 (see BatchNorm2d)."""

    _layouts: dict = {}  # accepted input ndim (without the batch axis) -> layout, e.g. {3: "(C, H, W)"}

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 rng=None, dtype="float32", *, bias: bool = True):
        super().__init__()
        name = type(self).__name__
        self.num_features = _count(num_features, "num_features", name)
        self.eps = _real(eps, "eps", name, minimum=0.0, strict=True)
        self.momentum = None if momentum is None else _real(momentum, "momentum", name, 0.0, maximum=1.0)
        if not isinstance(affine, (bool, np.bool_)) or not isinstance(bias, (bool, np.bool_)):
            raise ConfigError(f"{name}: affine and bias must be bools, got {affine!r}, {bias!r}")
        self.affine, self.use_bias = bool(affine), bool(bias)
        make_rng(rng)  # validated only: the init is deterministic (ones and zeros), as in PyTorch
        dt = check_dtype(dtype)
        c = self.num_features
        if self.affine:
            self.params["weight"] = np.ones(c, dtype=dt)
            if self.use_bias:
                self.params["bias"] = np.zeros(c, dtype=dt)
        self.buffers["running_mean"] = np.zeros(c, dtype=dt)
        self.buffers["running_var"] = np.ones(c, dtype=dt)
        self.buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)
        self._out_shape = None

    def _check(self, x):
        ndim = getattr(x, "ndim", 0) - 1
        what = " or ".join("(N, " + v[1:].rstrip(",)") + ")" for v in self._layouts.values())
        self._check_input(x, ndim + 1 if ndim in self._layouts else min(self._layouts) + 1, self.num_features, what)

    def output_shape(self, input_shape: tuple) -> tuple:
        ndim = len(tuple(input_shape))
        return self._check_shape(input_shape, ndim if ndim in self._layouts else min(self._layouts),
                                 self.num_features, " or ".join(self._layouts.values()))

    def forward(self, x, train: bool = False):
        """Training: normalize with the batch statistics, update the running ones. Else use the running ones."""
        self._check(x)
        count = x.size // x.shape[1]
        if train and count == 1:
            raise ShapeError(f"{self!r}: expected more than 1 value per channel when training, "
                             f"got input shape {tuple(x.shape)}")
        b = self.buffers
        out, cache = batchnorm_forward(x, self.params.get("weight"), self.params.get("bias"),
                                       b["running_mean"], b["running_var"], self.eps, train)
        if train:
            b["num_batches_tracked"] = np.array(int(b["num_batches_tracked"]) + 1, dtype=np.int64)
            if count:  # PyTorch leaves the statistics alone for an empty batch
                factor = self.momentum if self.momentum is not None else 1.0 / int(b["num_batches_tracked"])
                b["running_mean"], b["running_var"] = batchnorm_running_update(
                    b["running_mean"], b["running_var"], cache["mean"], cache["var"], count, factor)
        self._cache, self._out_shape = cache, out.shape
        return out

    def backward(self, dout):
        """dx; fills grads["weight"], grads["bias"] (when present)."""
        cache = self._pop_cache(dout, self._out_shape)
        dx, dweight, dbias = batchnorm_backward(dout, cache)
        self.store_grads(dweight, dbias)
        return dx

    def store_grads(self, dweight, dbias) -> None:
        """Overwrite ``grads`` with the parameter gradients (None for an absent parameter), in the params' dtype."""
        self.grads = {}
        if dweight is not None:
            self.grads["weight"] = dweight.astype(self.params["weight"].dtype, copy=False)
        if dbias is not None:
            self.grads["bias"] = dbias.astype(self.params["bias"].dtype, copy=False)

    def get_config(self) -> dict:
        cfg = {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
               "affine": self.affine, "dtype": str(self.buffers["running_mean"].dtype)}
        if not self.use_bias:
            cfg["bias"] = False
        return cfg

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        if not self.use_bias:
            s += ", bias=False"
        dt = str(self.buffers["running_mean"].dtype)
        return s + (f", dtype={dt!r}" if dt != "float32" else "")


LAYER_TYPES.pop("_BatchNorm", None)  # a shared base, not a layer type of its own


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L): statistics per channel over N (and L).

    y = weight * (x - mean) / sqrt(var + eps) + bias, output shape = input shape.
    Training (``train=True``) uses the batch mean and biased variance and updates
    running = (1 - momentum) * running + momentum * batch (unbiased variance;
    ``momentum=None`` takes the cumulative average, 1/num_batches_tracked);
    evaluation uses the running statistics. ``rng`` is accepted for the common layer
    signature and only validated: the init is weight=1, bias=0.
    """

    _layouts = {1: "(C,)", 2: "(C, L)"}


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W): statistics per channel over N, H and W.

    y = weight * (x - mean) / sqrt(var + eps) + bias, output shape = input shape.
    Training (``train=True``) uses the batch mean and biased variance and updates
    running = (1 - momentum) * running + momentum * batch (unbiased variance;
    ``momentum=None`` takes the cumulative average, 1/num_batches_tracked);
    evaluation uses the running statistics. ``rng`` is accepted for the common layer
    signature and only validated: the init is weight=1, bias=0.
    """

    _layouts = {3: "(C, H, W)"}


class LocalResponseNorm(Layer):
    """Local response normalization across channels, PyTorch's formula; (N, C, *) -> same shape.

        b_c = a_c / (k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} a_{c'}^2) ** beta

    with zeros beyond the first and last channel. PyTorch (and this layer) divides
    ``alpha`` by ``size``, as cuda-convnet's cross-map ``cmrnorm`` layer documents its
    ``scale``; the AlexNet paper's formula (Krizhevsky et al. 2012, section 3.3) does
    not: b = a / (k + alpha_paper * sum a^2)^beta. So alpha_paper = alpha / size here:
    the paper's n=5, k=2, alpha=1e-4, beta=0.75 taken literally is
    ``LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``, while
    ``LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)`` (torchvision-style ports)
    means alpha_paper = 2e-5.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size = _count(size, "size", "LocalResponseNorm")
        self.alpha = _real(alpha, "alpha", "LocalResponseNorm", minimum=0.0)
        self.beta = _real(beta, "beta", "LocalResponseNorm")
        self.k = _real(k, "k", "LocalResponseNorm", minimum=0.0)
        self._out_shape = None

    def output_shape(self, input_shape: tuple) -> tuple:
        shape = tuple(input_shape)
        return self._check_shape(shape, max(len(shape), 2), what="(C, ...) with at least one axis after C")

    def forward(self, x, train: bool = False):
        ndim = getattr(x, "ndim", 3)
        self._check_input(x, max(ndim, 3), what="(N, C, ...), at least 3-d")
        out, cache = lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        self._cache, self._out_shape = cache, out.shape
        return out

    def backward(self, dout):
        cache = self._pop_cache(dout, self._out_shape)
        self.grads = {}
        return lrn_backward(dout, cache)

    def get_config(self) -> dict:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
