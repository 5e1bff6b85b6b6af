"""Normalization layers: BatchNorm1d, BatchNorm2d, GroupNorm and LocalResponseNorm (PyTorch semantics).

Batch norm keeps PyTorch's state_dict names: params ``weight`` (ones) and ``bias``
(zeros), buffers ``running_mean`` (zeros), ``running_var`` (ones) and
``num_batches_tracked`` (an int64 0-d array, +1 per training forward).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops.norm import (batchnorm_backward, batchnorm_forward, batchnorm_running_update, groupnorm_backward,
                        groupnorm_forward, lrn_backward, lrn_forward)
from .._util import check_int as _count
from .._util import check_real as _real
from .._util import make_rng
from .base import LAYER_TYPES, Layer, LayerMemory, SpecToken, check_dtype, elementwise_costs


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

    # --- facts ----------------------------------------------------------------------------------
    costs = elementwise_costs(2)   # scale and shift at inference

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps the normalised input; two temporaries in forward, three in backward."""
        ob = math.prod(out_shape) * n * b
        return LayerMemory(out_bytes=ob, saved=ob, fwd_work=2 * ob, bwd_work=3 * ob,
                           grad_bytes=self._param_bytes(), out_nhwc=in_nhwc)

    def shardable(self, train):
        return not train   # training normalises with statistics over the whole batch

    report_role = "transparent"

    def to_onnx(self, b, x, shape, path):
        """BatchNormalization (inference), with ones/zeros for a missing scale/shift."""
        c = self.num_features
        inputs = [x, b.const(f"{path}.weight", self.params.get("weight", np.ones(c))),
                  b.const(f"{path}.bias", self.params.get("bias", np.zeros(c))),
                  b.const(f"{path}.running_mean", self.buffers["running_mean"]),
                  b.const(f"{path}.running_var", self.buffers["running_var"])]
        return b.node("BatchNormalization", inputs, path, epsilon=float(self.eps)), tuple(self.output_shape(shape))

    def to_spec(self, next_layer, shape):
        if (self.eps, self.momentum, self.affine, self.use_bias) != (1e-5, 0.1, True, True):
            raise self.no_spelling("BN stands for the default eps=1e-5, momentum=0.1, affine=True only")
        return "BN"

    def torch_module(self, nn):
        if self.affine and not self.use_bias:
            raise ConfigError(f"bench: {self!r}: PyTorch batch norm has no bias=False")
        return getattr(nn, type(self).__name__)(self.num_features, self.eps, self.momentum, affine=self.affine)

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


#: The spec item NORM: AlexNet's LRN constants.
LRN_ALEXNET = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

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
    fc_conv_role = "pointwise"

    def to_fully_convolutional(self, st, where):
        """After an FC it reads a vector: a BatchNorm2d with the same numbers reads the (K, 1, 1) map."""
        if len(st.orig) != 1:
            return super().to_fully_convolutional(st, where)
        bn = BatchNorm2d(self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine,
                         dtype=self.buffers["running_mean"].dtype, bias=self.use_bias)
        bn.load_state_dict({k: np.array(v, copy=True) for k, v in self.state_dict().items()})
        st.new = (st.orig[0], 1, 1)
        return bn


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
    fc_conv_role = "spatial"
    spec_tokens = (SpecToken("BN"),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``BN``: BatchNorm2d on a volume, BatchNorm1d on a vector."""
        return [(cls if len(shape) == 3 else BatchNorm1d)(shape[0], dtype=dtype)]


class GroupNorm(Layer):
    """Group normalization (Wu & He 2018), PyTorch's ``nn.GroupNorm``: (N, C, *) -> the same shape.

    The C channels of each example split into ``num_groups`` groups of C/G; each group is
    normalized over its C/G x H x W values, y = weight_c * (x - mean_g) / sqrt(var_g + eps) + bias_c
    (biased variance), the same in training and evaluation, and independent of the batch size.
    Params ``weight`` (C,) ones and ``bias`` (C,) zeros when ``affine``; no buffers.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 dtype="float32"):
        super().__init__()
        self.num_groups = _count(num_groups, "num_groups", "GroupNorm")
        self.num_channels = _count(num_channels, "num_channels", "GroupNorm")
        if self.num_channels % self.num_groups:
            raise ConfigError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups "
                              f"({num_groups})")
        self.eps = _real(eps, "eps", "GroupNorm", minimum=0.0, strict=True)
        if not isinstance(affine, (bool, np.bool_)):
            raise ConfigError(f"GroupNorm: affine must be True or False, got {affine!r}")
        self.affine = bool(affine)
        self.dtype = check_dtype(dtype)
        if self.affine:
            self.params["weight"] = np.ones(self.num_channels, dtype=self.dtype)
            self.params["bias"] = np.zeros(self.num_channels, dtype=self.dtype)
        self._out_shape = None

    def output_shape(self, input_shape: tuple) -> tuple:
        shape = tuple(input_shape)
        return self._check_shape(shape, max(len(shape), 1), self.num_channels, "(C, *)")

    def forward(self, x, train: bool = False):
        self._check_input(x, max(getattr(x, "ndim", 2), 2), self.num_channels, "(N, C, *)")
        out, cache = groupnorm_forward(x, self.params.get("weight"), self.params.get("bias"), self.num_groups,
                                       self.eps)
        self._cache, self._out_shape = cache, out.shape
        return out

    def backward(self, dout):
        """dx; fills grads["weight"] and grads["bias"] when affine."""
        cache = self._pop_cache(dout, self._out_shape)
        dx, dweight, dbias = groupnorm_backward(dout, cache)
        self.grads = {} if not self.affine else {"weight": dweight, "bias": dbias}
        return dx

    # --- facts ----------------------------------------------------------------------------------
    costs = elementwise_costs(7)   # the group sums (3), normalise (2), scale and shift (2)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps the normalised input in float64; float64 temporaries in forward and backward."""
        elems = math.prod(out_shape) * n
        return LayerMemory(out_bytes=elems * b, saved=8 * elems, fwd_work=16 * elems, bwd_work=24 * elems,
                           grad_bytes=self._param_bytes())

    def shardable(self, train):
        return True   # statistics per example: never across the batch

    fc_conv_role = "spatial"
    report_role = "transparent"

    def to_onnx(self, b, x, shape, path):
        """Reshape to (N, G, -1), InstanceNormalization (normalizes each (n, g) row), reshape back,
        then Mul/Add the per-channel weight and bias (works from opset 13)."""
        shape = tuple(self.output_shape(shape))
        g = self.num_groups
        rows = b.node("Reshape", [x, b.ints(f"{path}.groups_shape", [0, g, -1])], f"{path}.groups")
        normed = b.node("InstanceNormalization", [rows, b.const(f"{path}.ones", np.ones(g)),
                                                  b.const(f"{path}.zeros", np.zeros(g))],
                        f"{path}.normalize", epsilon=float(self.eps))
        y = b.node("Reshape", [normed, b.ints(f"{path}.shape", [0, *shape])], f"{path}.ungroup" if self.affine
                   else path)
        if self.affine:
            column = (self.num_channels,) + (1,) * (len(shape) - 1)
            y = b.node("Mul", [y, b.const(f"{path}.weight", self.params["weight"].reshape(column))], f"{path}.scale")
            y = b.node("Add", [y, b.const(f"{path}.bias", self.params["bias"].reshape(column))], path)
        return y, shape

    spec_tokens = (SpecToken("GN", "F", volume=True, arg_names=("the number of groups",)),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``GN<G>``: GroupNorm(G, C) over the current volume's C channels."""
        return [cls(args[0], shape[0], dtype=dtype)]

    def to_spec(self, next_layer, shape):
        if self.eps != 1e-5 or not self.affine:
            raise self.no_spelling("GN<G> stands for the default eps=1e-5, affine=True only")
        return f"GN{self.num_groups}"

    def torch_module(self, nn):
        return nn.GroupNorm(self.num_groups, self.num_channels, self.eps, affine=self.affine)

    def get_config(self) -> dict:
        return {"num_groups": self.num_groups, "num_channels": self.num_channels, "eps": self.eps,
                "affine": self.affine, "dtype": self.dtype.name}

    def extra_repr(self) -> str:
        text = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        return text + (f", dtype={self.dtype.name!r}" if self.dtype != np.float32 else "")


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

    # --- facts ----------------------------------------------------------------------------------
    def costs(self, in_shapes, out_shape):
        """2*size + 3 FLOPs per element (squares, the window sum, scale, power, divide)."""
        return 0, (2 * self.size + 3) * math.prod(out_shape)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Keeps its input, its output and the denominators."""
        ob = math.prod(out_shape) * n * b
        return LayerMemory(out_bytes=ob, keeps_input=True, keeps_output=True, saved=2 * ob, fwd_work=2 * ob,
                           bwd_work=3 * ob)

    def shardable(self, train):
        return True

    fc_conv_role = "spatial"
    absent_facts = frozenset({"report_role"})

    def to_onnx(self, b, x, shape, path):
        """LRN for odd sizes on 4-d inputs (ONNX divides alpha by size too, and its window is PyTorch's
        for odd sizes); even sizes and other ranks: Mul, AveragePool over the channels, Pow, Div."""
        shape = tuple(self.output_shape(shape))
        n = self.size
        if n % 2 == 1 and len(shape) == 3:
            return b.node("LRN", [x], path, size=n, alpha=float(self.alpha), beta=float(self.beta),
                          bias=float(self.k)), shape
        c = shape[0]  # PyTorch's window c - n//2 .. c + (n-1)//2: a zero-padded channel average
        sq = b.node("Mul", [x, x], f"{path}.square")
        flat = b.node("Reshape", [sq, b.ints(f"{path}.shape4", [0, 1, c, -1])], f"{path}.flat")
        mean = b.node("AveragePool", [flat], f"{path}.window", kernel_shape=[n, 1], strides=[1, 1],
                      pads=[n // 2, 0, (n - 1) // 2, 0], count_include_pad=1)
        mean = b.node("Reshape", [mean, b.ints(f"{path}.shape", [0, *shape])], f"{path}.unflat")
        scaled = b.node("Mul", [mean, b.const(f"{path}.alpha", self.alpha)], f"{path}.scaled")
        base = b.node("Add", [scaled, b.const(f"{path}.k", self.k)], f"{path}.base")
        denom = b.node("Pow", [base, b.const(f"{path}.beta", self.beta)], f"{path}.denom")
        return b.node("Div", [x, denom], path), shape

    spec_tokens = (SpecToken("NORM", volume=True),)

    @classmethod
    def from_spec(cls, token, args, opts, shape, rng, dtype):
        """``NORM``: AlexNet's constants, LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2)."""
        return [cls(**LRN_ALEXNET)]

    def to_spec(self, next_layer, shape):
        if {k: getattr(self, k) for k in LRN_ALEXNET} != LRN_ALEXNET:
            raise self.no_spelling(f"NORM stands for LocalResponseNorm{tuple(LRN_ALEXNET.values())} only")
        return "NORM"

    def torch_module(self, nn):
        return nn.LocalResponseNorm(self.size, self.alpha, self.beta, self.k)

    def get_config(self) -> dict:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
