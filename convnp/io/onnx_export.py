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

Each layer emits its own nodes (its ``to_onnx`` fact, documented beside it in ``convnp/layers``;
opset 13 or later, 17 by default); ``register_onnx_converter`` maps a layer type defined outside
convnp (or overrides one). The net is walked with ``convnp.inspect.trace`` in evaluation mode.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .._util import convnp_version
from ..errors import ConfigError, ShapeError
from ..inspect.trace import trace
from ..nets.graph import Merge

DEFAULT_OPSET = 17
MIN_OPSET = 13

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

    @staticmethod
    def window_pads(layer, shape, kernel, stride, padding, dilation, path, op):
        """ONNX pads [top, left, bottom, right] that give the layer's output size and read the same windows.

        The end padding is what the last window needs: (O-1)*S + D*(K-1) + 1 - H - P (at least 0). That
        is P for exact sizes, less where floor rounding drops input rows or where ceil rounding would
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


def _converter(layer):
    """A registered converter for ``layer``'s type (or a base of it), else the layer's own ``to_onnx``."""
    for cls in type(layer).__mro__:
        if cls in _CONVERTERS:
            fn = _CONVERTERS[cls]
            return lambda b, x, shape, path: fn(b, layer, x, shape, path)
    return layer.to_onnx


def _emit(b: _Builder, net, x: str, input_shape: tuple):
    """Add every leaf's nodes, in execution order; (the output tensor, its shape)."""
    nodes, shapes = trace(net, input_shape, evaluation=True)
    names = {0: x}
    for node in nodes:
        if isinstance(node.layer, Merge):
            y, _ = _converter(node.layer)(b, [names[v] for v in node.inputs], list(node.in_shapes), node.path)
        else:
            y, _ = _converter(node.layer)(b, names[node.inputs[0]], node.in_shape, node.path)
        names[node.output] = y
    last = nodes[-1].output if nodes else 0
    return names[last], shapes[last]


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
    y, out_shape = _emit(b, net, input_name, input_shape)
    b.nodes.append(helper.make_node("Identity", [y], [output_name], name=b.fresh("output/Identity")))
    batch = "N" if batch_size is None else batch_size
    graph = helper.make_graph(
        b.nodes, type(net).__name__,
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, [batch, *out_shape])])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="convnp",
                              producer_version=convnp_version(), doc_string=f"convnp export of {type(net).__name__}")
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


__all__ = ["DEFAULT_OPSET", "export_onnx", "register_onnx_converter"]
