"""ONNX export: any convnp net (Sequential, Graph, the zoo) as an ONNX model for inference.

    from convnp.io.onnx_export import export_onnx
    export_onnx(net, "resnet18.onnx", input_shape=(3, 224, 224))     # input "input" (N, 3, 224, 224)

    import onnxruntime as ort
    scores = ort.InferenceSession("resnet18.onnx").run(None, {"input": x})[0]

The graph is built with the ``onnx`` package's helper API (pip install onnx; the ``onnx``
extra) and checked with ``onnx.checker.check_model``. It computes the net's evaluation
forward (``forward(x, train=False)``): dropout is the identity, batch norm uses the running
statistics, GoogLeNet's auxiliary heads are left out. Weights are stored as float32 initializers
named by their state_dict names (``features.0.weight``); the batch axis is symbolic ("N") unless
``batch_size`` is given. Shapes are inferred with the layers' own ``output_shape``, so every
size in the graph is the one convnp computes.

How each layer maps (opset 13 or later; 17 by default):

* Conv2d -> Conv; PyTorch's floor rounding is ONNX's; ``rounding="ceil"`` becomes extra
  bottom/right padding (the overhang convnp pads with zeros).
* MaxPool2d -> MaxPool, with the ceil-mode overhang as extra end padding (never the max); where a
  pad would reach the kernel size (dilated windows), a Pad node with -inf comes first.
* AvgPool2d -> AveragePool with ``count_include_pad=1``. With a ceil-mode overhang the padding
  is made explicit (Pad) and the pool counts only what lies inside the padded input
  (``count_include_pad=0`` on the overhang), PyTorch's divisor.
* LPPool2d -> LpPool for an even integer p without overhang (x^p = |x|^p there); otherwise
  Pow -> AveragePool -> Mul(KH*KW) -> Pow(1/p), PyTorch's formula (x^p, not |x|^p); inf -> Abs + MaxPool.
* GlobalAvgPool2d -> GlobalAveragePool; AdaptiveAvgPool2d -> Identity, GlobalAveragePool,
  AveragePool (sizes divide) or two MatMuls with the averaging matrices (the general bins).
* ReLU, LeakyReLU, ELU, Tanh, Sigmoid -> Relu, LeakyRelu, Elu, Tanh, Sigmoid.
* Linear -> Gemm(transB=1); Flatten -> Flatten (or Reshape for other start/end dims);
  Dropout, Dropout2d -> Identity.
* BatchNorm1d/2d -> BatchNormalization (inference), with ones/zeros for a missing scale/shift.
* LocalResponseNorm -> LRN for odd sizes on 4-d inputs. ONNX's LRN divides alpha by size as
  PyTorch and convnp do, and for odd sizes its window (c - (size-1)/2 .. c + (size-1)/2) is
  PyTorch's; for even sizes the windows differ (ONNX: c-(size/2-1)..c+size/2, PyTorch:
  c-size/2..c+size/2-1), so even sizes and other ranks are composed from Mul, AveragePool
  over the channel axis, Pow and Div.
* LocallyConnected2d -> a grouped Conv with one-hot kernels extracts the patches
  (N, C*KH*KW, OH, OW); a batched MatMul applies each position's own filter bank; then Add bias.
* Concat -> Concat; Add -> Add (Sum for more than two inputs).
* ZeroPadShortcut (CIFAR ResNets' option A) -> Slice with steps + Pad of the channels.

Other layer types raise a ConfigError; ``register_onnx_converter`` adds one.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from ..errors import ConfigError, ShapeError

DEFAULT_OPSET = 17
MIN_OPSET = 13
_INT64_MAX = np.iinfo(np.int64).max

_CONVERTERS: dict = {}


def register_onnx_converter(layer_class):
    """Decorator: ``fn(builder, layer, x, shape, path) -> (output name, output shape)`` exports
    ``layer_class``. ``shape`` is the input shape without the batch axis; ``builder.node`` and
    ``builder.const`` add nodes and initializers (see the built-in converters)."""

    def wrap(fn):
        _CONVERTERS[layer_class] = fn
        return fn

    return wrap


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install onnx (or convnp[onnx])") from None
    return onnx, helper, numpy_helper


class _Builder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self.used: set = set()
        self.nbytes = 0

    def fresh(self, hint: str) -> str:
        hint = hint or "t"
        name, i = hint, 1
        while name in self.used:
            i += 1
            name = f"{hint}_{i}"
        self.used.add(name)
        return name

    def const(self, name: str, array, dtype=np.float32) -> str:
        arr = np.require(np.asarray(array, dtype=dtype), requirements="C")  # 0-d stays 0-d
        name = self.fresh(name)
        self.initializers.append((name, arr))
        self.nbytes += arr.nbytes
        return name

    def write_initializers(self, graph, tensor_proto) -> None:
        """Add the arrays straight into the graph (one copy each, no intermediate TensorProto)."""
        types = {np.dtype(np.float32): tensor_proto.FLOAT, np.dtype(np.int64): tensor_proto.INT64}
        for name, arr in self.initializers:
            t = graph.initializer.add()
            t.name, t.data_type = name, types[arr.dtype]
            t.dims.extend(arr.shape)
            t.raw_data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64), dtype=np.int64)

    def node(self, op: str, inputs: list, name: str, **attrs) -> str:
        out = self.fresh(name)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.fresh(f"{name}/{op}"), **attrs))
        return out


def _converter(layer):
    for cls in type(layer).__mro__:
        if cls in _CONVERTERS:
            return _CONVERTERS[cls]
    return None


def _emit(b: _Builder, layer, x, shape: tuple, path: str):
    """Add ``layer``'s nodes reading tensor ``x`` of per-example ``shape``; (output, its shape)."""
    from ..nets.container import Container
    from ..nets.graph import Graph

    fn = _converter(layer)
    if fn is not None:
        return fn(b, layer, x, tuple(shape), path)
    if isinstance(layer, Graph):
        return _emit_graph(b, layer, x, shape, path)
    if isinstance(layer, Container):  # Sequential, AuxSequential (its trunk: the eval forward)
        aux = {name for name, _, _ in layer.heads} if isinstance(getattr(type(layer), "heads", None), property) \
            else set()
        for name, child in layer.named_children():
            if name in aux:
                continue
            x, shape = _emit(b, child, x, shape, f"{path}.{name}" if path else name)
        return x, shape
    known = sorted({c.__name__ for c in _CONVERTERS} | {"Sequential", "Graph"})
    raise ConfigError(f"export_onnx: no ONNX mapping for layer {path or '<net>'!r} ({type(layer).__name__}); "
                      f"supported: {', '.join(known)}; add one with register_onnx_converter")


def _emit_graph(b: _Builder, graph, x, shape, path):
    from ..nets.graph import INPUT, Merge

    values = {INPUT: (x, tuple(shape))}
    for name in graph.order:
        layer = graph[name]
        ins = [values[src] for src in graph.inputs_of(name)]
        where = f"{path}.{name}" if path else name
        if isinstance(layer, Merge):
            out_shape = tuple(layer.output_shape([s for _, s in ins]))
            fn = _converter(layer)
            if fn is None:
                raise ConfigError(f"export_onnx: no ONNX mapping for merge node {where!r} ({type(layer).__name__})")
            values[name] = (fn(b, layer, [t for t, _ in ins], out_shape, where), out_shape)
        else:
            values[name] = _emit(b, layer, ins[0][0], ins[0][1], where)
    return values[graph.output_name]


# --- geometry --------------------------------------------------------------------------------------
def _window_pads(layer, shape, kernel, stride, padding, dilation, path, op):
    """ONNX pads [top, left, bottom, right] that give convnp's output size and read the same windows.

    The end padding is what the last window needs: (O-1)*S + D*(K-1) + 1 - H - P (at least 0). That is
    P for exact sizes, less where floor rounding drops input rows or where ceil rounding would
    otherwise add a window starting in the padding, and more for a ceil-mode overhang.
    """
    _, h, w = shape
    out = tuple(layer.output_shape(shape))
    oh, ow = out[-2:]
    ends = []
    for size, k, s, p, d, o in ((h, kernel[0], stride[0], padding[0], dilation[0], oh),
                                (w, kernel[1], stride[1], padding[1], dilation[1], ow)):
        span = d * (k - 1) + 1
        end = max(0, (o - 1) * s + span - size - p)
        if (size + p + end - span) // s + 1 != o:
            raise ShapeError(f"export_onnx: {path!r} ({layer!r}) on {h}x{w}: ONNX {op} cannot reproduce the "
                             f"output size {oh}x{ow} with padding alone")
        ends.append(end)
    return [padding[0], padding[1], ends[0], ends[1]], out


# --- layers ----------------------------------------------------------------------------------------
def _register_builtin() -> None:
    from ..layers.activation import ELU, LeakyReLU, ReLU, Sigmoid, Tanh
    from ..layers.conv import Conv2d
    from ..layers.dropout import Dropout
    from ..layers.linear import Flatten, Linear
    from ..layers.locally_connected import LocallyConnected2d
    from ..layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
    from ..layers.pool import AvgPool2d, GlobalAvgPool2d, LPPool2d, MaxPool2d
    from ..nets.graph import Add, Concat

    @register_onnx_converter(Conv2d)
    def conv(b, layer, x, shape, path):
        pads, out = _window_pads(layer, shape, layer.kernel_size, layer.stride, layer.padding,
                                 layer.dilation, path, "Conv")
        inputs = [x, b.const(f"{path}.weight", layer.params["weight"])]
        if "bias" in layer.params:
            inputs.append(b.const(f"{path}.bias", layer.params["bias"]))
        y = b.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=pads, dilations=list(layer.dilation), group=1)
        return y, out

    @register_onnx_converter(MaxPool2d)
    def maxpool(b, layer, x, shape, path):
        pads, out = _window_pads(layer, shape, layer.kernel_size, layer.stride, layer.padding,
                                 layer.dilation, path, "MaxPool")
        attrs = {"dilations": list(layer.dilation)} if layer.dilation != (1, 1) else {}
        kh, kw = layer.kernel_size
        if max(pads[0], pads[2]) >= kh or max(pads[1], pads[3]) >= kw:
            # onnxruntime wants pads < kernel; a dilated ceil-mode overhang can be more: pad with -inf first
            x = b.node("Pad", [x, b.ints(f"{path}.pads", [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]),
                               b.const(f"{path}.fill", -np.inf)], f"{path}.pad")
            pads = [0, 0, 0, 0]
        y = b.node("MaxPool", [x], path, kernel_shape=[kh, kw], strides=list(layer.stride), pads=pads, **attrs)
        return y, out

    @register_onnx_converter(AvgPool2d)
    def avgpool(b, layer, x, shape, path):
        pads, out = _window_pads(layer, shape, layer.kernel_size, layer.stride, layer.padding, (1, 1),
                                 path, "AveragePool")
        ph, pw = layer.padding
        eh, ew = max(0, pads[2] - ph), max(0, pads[3] - pw)  # ceil-mode overhang past the padded input
        geometry = {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride)}
        if eh == 0 and ew == 0:
            return b.node("AveragePool", [x], path, pads=pads, count_include_pad=1, **geometry), out
        # the symmetric zero padding counts in the divisor, the overhang does not (PyTorch's divisor)
        if ph or pw:  # at the end only as far as the windows read (less where ceil drops a window)
            x = b.node("Pad", [x, b.ints(f"{path}.pads", [0, 0, ph, pw, 0, 0, min(ph, pads[2]), min(pw, pads[3])])],
                       f"{path}.pad")
        return b.node("AveragePool", [x], path, pads=[0, 0, eh, ew], count_include_pad=0, **geometry), out

    @register_onnx_converter(LPPool2d)
    def lppool(b, layer, x, shape, path):
        pads, out = _window_pads(layer, shape, layer.kernel_size, layer.stride, (0, 0), (1, 1), path, "LpPool")
        geometry = {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride)}
        p = float(layer.norm_type)
        if math.isinf(p):
            a = b.node("Abs", [x], f"{path}.abs")
            return b.node("MaxPool", [a], path, pads=pads, **geometry), out
        if p.is_integer() and int(p) % 2 == 0 and not any(pads):
            return b.node("LpPool", [x], path, p=int(p), pads=pads, **geometry), out
        # PyTorch: (avg_pool(x^p) * KH*KW)^(1/p), the average over the taps inside the input
        xp = b.node("Pow", [x, b.const(f"{path}.p", p)], f"{path}.pow")
        mean = b.node("AveragePool", [xp], f"{path}.avg", pads=pads, count_include_pad=0, **geometry)
        total = b.node("Mul", [mean, b.const(f"{path}.taps", float(np.prod(layer.kernel_size)))], f"{path}.sum")
        return b.node("Pow", [total, b.const(f"{path}.inv_p", 1.0 / p)], path), out

    @register_onnx_converter(GlobalAvgPool2d)
    def global_avgpool(b, layer, x, shape, path):
        return b.node("GlobalAveragePool", [x], path), tuple(layer.output_shape(shape))

    def simple(op, **attr_of):
        def convert(b, layer, x, shape, path):
            attrs = {k: float(getattr(layer, a)) for k, a in attr_of.items()}
            return b.node(op, [x], path, **attrs), tuple(shape)
        return convert

    register_onnx_converter(ReLU)(simple("Relu"))
    register_onnx_converter(LeakyReLU)(simple("LeakyRelu", alpha="negative_slope"))
    register_onnx_converter(ELU)(simple("Elu", alpha="alpha"))
    register_onnx_converter(Tanh)(simple("Tanh"))
    register_onnx_converter(Sigmoid)(simple("Sigmoid"))

    @register_onnx_converter(Dropout)  # Dropout2d is a subclass: both are the identity in evaluation
    def dropout(b, layer, x, shape, path):
        return b.node("Identity", [x], path), tuple(shape)

    @register_onnx_converter(Linear)
    def linear(b, layer, x, shape, path):
        out = tuple(layer.output_shape(shape))
        inputs = [x, b.const(f"{path}.weight", layer.params["weight"])]
        if "bias" in layer.params:
            inputs.append(b.const(f"{path}.bias", layer.params["bias"]))
        return b.node("Gemm", inputs, path, transB=1), out

    @register_onnx_converter(Flatten)
    def flatten(b, layer, x, shape, path):
        out = tuple(layer.output_shape(shape))
        if layer.start_dim == 1 and layer.end_dim in (-1, len(shape)):
            return b.node("Flatten", [x], path, axis=1), out
        return b.node("Reshape", [x, b.ints(f"{path}.shape", [0, *out])], path), out

    def batchnorm(b, layer, x, shape, path):
        c = layer.num_features
        scale = layer.params.get("weight", np.ones(c))
        shift = layer.params.get("bias", np.zeros(c))
        inputs = [x, b.const(f"{path}.weight", scale), b.const(f"{path}.bias", shift),
                  b.const(f"{path}.running_mean", layer.buffers["running_mean"]),
                  b.const(f"{path}.running_var", layer.buffers["running_var"])]
        return b.node("BatchNormalization", inputs, path, epsilon=float(layer.eps)), tuple(layer.output_shape(shape))

    register_onnx_converter(BatchNorm1d)(batchnorm)
    register_onnx_converter(BatchNorm2d)(batchnorm)

    @register_onnx_converter(LocalResponseNorm)
    def lrn(b, layer, x, shape, path):
        shape = tuple(layer.output_shape(shape))
        n = layer.size
        if n % 2 == 1 and len(shape) == 3:
            return b.node("LRN", [x], path, size=n, alpha=float(layer.alpha), beta=float(layer.beta),
                          bias=float(layer.k)), shape
        # PyTorch's window c - n//2 .. c + (n-1)//2: a zero-padded average over the channel axis
        c = shape[0]
        sq = b.node("Mul", [x, x], f"{path}.square")
        flat = b.node("Reshape", [sq, b.ints(f"{path}.shape4", [0, 1, c, -1])], f"{path}.flat")
        mean = b.node("AveragePool", [flat], f"{path}.window", kernel_shape=[n, 1], strides=[1, 1],
                      pads=[n // 2, 0, (n - 1) // 2, 0], count_include_pad=1)
        mean = b.node("Reshape", [mean, b.ints(f"{path}.shape", [0, *shape])], f"{path}.unflat")
        scaled = b.node("Mul", [mean, b.const(f"{path}.alpha", layer.alpha)], f"{path}.scaled")
        base = b.node("Add", [scaled, b.const(f"{path}.k", layer.k)], f"{path}.base")
        denom = b.node("Pow", [base, b.const(f"{path}.beta", layer.beta)], f"{path}.denom")
        return b.node("Div", [x, denom], path), shape

    @register_onnx_converter(LocallyConnected2d)
    def locally_connected(b, layer, x, shape, path):
        out = tuple(layer.output_shape(shape))
        k, oh, ow = out
        c = layer.in_channels
        kh, kw = layer.kernel_size
        q = c * kh * kw
        # patches: channel c*KH*KW + a*KW + b of a grouped one-hot conv holds x[c, i*S + a - P, j*S + b - P]
        onehot = np.zeros((q, 1, kh, kw), dtype=np.float32)
        for ci in range(c):
            for a in range(kh):
                for bb in range(kw):
                    onehot[ci * kh * kw + a * kw + bb, 0, a, bb] = 1.0
        ph, pw = layer.padding
        patches = b.node("Conv", [x, b.const(f"{path}.patch_kernel", onehot)], f"{path}.patches",
                         kernel_shape=[kh, kw], strides=list(layer.stride), pads=[ph, pw, ph, pw], group=c)
        # (N, Q, OH, OW) -> (L, N, Q) @ (L, Q, K) -> (L, N, K) -> (N, K, OH, OW), L = OH*OW
        cols = b.node("Reshape", [patches, b.ints(f"{path}.cols_shape", [0, q, oh * ow])], f"{path}.cols")
        cols = b.node("Transpose", [cols], f"{path}.cols_t", perm=[2, 0, 1])
        w = layer.params["weight"].reshape(oh * ow, k, q).transpose(0, 2, 1)
        y = b.node("MatMul", [cols, b.const(f"{path}.weight", w)], f"{path}.matmul")
        y = b.node("Transpose", [y], f"{path}.out_t", perm=[1, 2, 0])
        y = b.node("Reshape", [y, b.ints(f"{path}.out_shape", [0, k, oh, ow])],
                   f"{path}.out" if "bias" in layer.params else path)
        if "bias" in layer.params:
            y = b.node("Add", [y, b.const(f"{path}.bias", layer.params["bias"])], path)
        return y, out

    @register_onnx_converter(Concat)
    def concat(b, layer, xs, out_shape, path):
        return b.node("Concat", list(xs), path, axis=layer.dim)

    @register_onnx_converter(Add)
    def add(b, layer, xs, out_shape, path):
        return b.node("Add" if len(xs) == 2 else "Sum", list(xs), path)

    try:  # the zoo's own layers
        from ..models.common import AdaptiveAvgPool2d
        from ..models.resnet import ZeroPadShortcut
    except ImportError:  # pragma: no cover - the zoo is part of convnp
        return

    @register_onnx_converter(AdaptiveAvgPool2d)
    def adaptive_avgpool(b, layer, x, shape, path):
        out = tuple(layer.output_shape(shape))
        (h, w), (oh, ow) = shape[1:], out[1:]
        if (h, w) == (oh, ow):
            return b.node("Identity", [x], path), out
        if (oh, ow) == (1, 1):
            return b.node("GlobalAveragePool", [x], path), out
        if h % oh == 0 and w % ow == 0:  # equal, non-overlapping bins
            kernel = [h // oh, w // ow]
            return b.node("AveragePool", [x], path, kernel_shape=kernel, strides=kernel), out
        rows = b.node("MatMul", [b.const(f"{path}.rows", _adaptive_bins(h, oh)), x], f"{path}.rows")
        return b.node("MatMul", [rows, b.const(f"{path}.cols", _adaptive_bins(w, ow).T)], path), out

    @register_onnx_converter(ZeroPadShortcut)
    def zero_pad_shortcut(b, layer, x, shape, path):
        out = tuple(layer.output_shape(shape))
        s = layer.stride
        if s != 1:
            x = b.node("Slice", [x, b.ints(f"{path}.starts", [0, 0]), b.ints(f"{path}.ends", [_INT64_MAX] * 2),
                                 b.ints(f"{path}.axes", [2, 3]), b.ints(f"{path}.steps", [s, s])], f"{path}.subsample")
        before = (layer.out_channels - layer.in_channels) // 2
        after = layer.out_channels - layer.in_channels - before
        return b.node("Pad", [x, b.ints(f"{path}.pads", [0, before, 0, 0, 0, after, 0, 0])], path), out


def _adaptive_bins(size: int, out: int) -> np.ndarray:
    """(out, size) matrix averaging PyTorch's adaptive bins floor(i*size/out) .. ceil((i+1)*size/out)-1."""
    m = np.zeros((out, size))
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


_BUILTINS_READY = False


def _ensure_builtins() -> None:
    global _BUILTINS_READY
    if not _BUILTINS_READY:
        _register_builtin()
        _BUILTINS_READY = True


# --- the entry point ---------------------------------------------------------------------------------
def export_onnx(net, path, input_shape=None, opset: int = DEFAULT_OPSET, batch_size: int | None = None,
                input_name: str = "input", output_name: str = "output", check: bool = True,
                metadata: dict | None = None):
    """Write ``net``'s evaluation forward as an ONNX model to ``path``; returns the ``onnx.ModelProto``.

    ``input_shape``: (C, H, W) without the batch axis (default: ``net.input_shape``).
    ``opset``: ONNX opset version (13 .. the installed onnx's newest; default 17).
    ``batch_size``: None for a symbolic batch axis "N", or a fixed int.
    ``check``: run ``onnx.checker.check_model`` (with full shape inference) on the result.
    ``metadata``: JSON-able values stored as the model's metadata_props (JSON strings), e.g. the
    class names and the input normalisation (``mean``/``std``) the net expects.
    ``path`` None returns the model without writing it. Models over 2 GB are written with
    their weights in ``path + ".data"`` (ONNX external data).
    """
    onnx, helper, numpy_helper = _onnx()
    _ensure_builtins()
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"export_onnx: opset must be an int from {MIN_OPSET} to {newest} "
                          f"(the installed onnx {onnx.__version__}'s newest), got {opset!r}")
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ConfigError("export_onnx: pass input_shape=(C, H, W); the net has none recorded")
    if (not isinstance(input_shape, (tuple, list)) or not input_shape
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                       for s in input_shape)):
        raise ConfigError(f"export_onnx: input_shape must be positive ints like (3, 224, 224), got {input_shape!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ConfigError(f"export_onnx: batch_size must be None (symbolic) or a positive int, got {batch_size!r}")
    input_shape = tuple(int(s) for s in input_shape)
    net.output_shape(input_shape)  # a ShapeError naming the failing layer, before any ONNX work

    b = _Builder(helper, numpy_helper)
    b.used.add(input_name)
    y, out_shape = _emit(b, net, input_name, input_shape, "")
    b.nodes.append(helper.make_node("Identity", [y], [output_name], name=b.fresh("output/Identity")))
    batch = "N" if batch_size is None else batch_size
    graph = helper.make_graph(
        b.nodes, type(net).__name__,
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, [batch, *out_shape])])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="convnp",
                              producer_version=_convnp_version(), doc_string=f"convnp export of {type(net).__name__}")
    b.write_initializers(model.graph, onnx.TensorProto)  # after make_model, which copies the graph
    model.ir_version = helper.find_min_ir_version_for(opsets)
    if metadata:
        if not isinstance(metadata, dict):
            raise ConfigError(f"export_onnx: metadata must be a dict, got {type(metadata).__name__}")
        try:
            helper.set_model_props(model, {str(k): json.dumps(v) for k, v in metadata.items()})
        except TypeError as err:
            raise ConfigError(f"export_onnx: metadata values must be JSON-able: {err}") from None
    if b.nbytes > 1_900_000_000:  # protobuf's 2 GB limit: the weights go to a side file
        if path is None:
            raise ConfigError(f"export_onnx: the weights take {b.nbytes / 1e9:.1f} GB, over protobuf's 2 GB "
                              "limit; pass a path so they can be written as external data")
        path = os.fspath(path)
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
        if check:
            onnx.checker.check_model(path, full_check=True)
        return model
    data = model.SerializeToString()  # serialised once, for the file and the checker
    if path is not None:
        with open(os.fspath(path), "wb") as f:
            f.write(data)
    if check:
        onnx.checker.check_model(data, full_check=True)
    return model


def export_model(model, out, input_shape=None, opset: int = DEFAULT_OPSET, num_classes: int | None = None,
                 weights=None, batch_size: int | None = None, format: str = "onnx"):
    """What ``convnp export MODEL --format onnx --out PATH --input 3x224x224`` runs; returns (net, input_shape).

    ``model``: a saved model file (``convnp train``'s ``model.safetensors``: its recorded input
    shape, classes and mean/std go into the ONNX metadata), a zoo name with optional
    ``:key=value`` options (``resnet20:shortcut='B'``) or a spec string (``INPUT[28x28x1] -> ...``).
    ``input_shape``: (C, H, W) or ``"3x224x224"``; default the model's own. ``weights``: for a zoo
    name or spec, a state_dict file loaded into it (``load_backbone``: a head of another class
    count stays fresh); a zoo name without weights exports its random initialisation.
    ``num_classes`` applies to zoo names. The exported graph takes what ``net.forward`` takes:
    for a saved model, inputs normalised with the recorded mean/std.
    """
    from ..summary import parse_input_shape

    if format != "onnx":
        raise ConfigError(f"export: format must be 'onnx' (the only export format), got {format!r}")
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError(f"export: --out {out} is a folder; give a file name, e.g. {os.path.join(out, 'model.onnx')}")
    if not os.path.isdir(folder):
        raise ConfigError(f"export: --out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"export: --out {out}: cannot write into {folder} (read-only or no permission)")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    meta = {}
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        from .model_file import load_model

        if weights is not None or num_classes is not None:
            raise ConfigError("export: weights/num_classes apply to zoo names and specs, not to a saved model file")
        net, extra = load_model(model, with_meta=True)
        meta = {k: extra[k] for k in ("classes", "mean", "std", "input_shape", "dataset") if k in extra}
        if shape is None:
            recorded = extra.get("input_shape") or getattr(net, "input_shape", None)
            shape = tuple(recorded) if recorded is not None else None
    else:
        from ..models import build_model

        net, shape = build_model(os.fspath(model), input_shape=shape, num_classes=num_classes, rng=0)
        if weights is not None:
            from .torch_weights import load_backbone

            load_backbone(net, weights)
    if shape is None:
        raise ConfigError(f"export: {model!r} records no input shape; pass one, e.g. --input 3x32x32")
    export_onnx(net, out, shape, opset=opset, batch_size=batch_size, metadata=meta or None)
    return net, tuple(shape)


def _convnp_version() -> str:
    try:
        from importlib.metadata import version

        return version("convnp")
    except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. run from a checkout)
        return "unknown"


__all__ = ["DEFAULT_OPSET", "export_model", "export_onnx", "register_onnx_converter"]
