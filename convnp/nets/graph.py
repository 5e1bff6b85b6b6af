"""Graph: a DAG of named layers with Concat/Add merge nodes, itself a Layer.

Every node is a layer plus the names of the nodes it reads; the special name ``"input"``
is the graph's input. A plain layer reads one node, a merge (Concat, Add) several.
The topological order is computed once, at construction. Forward runs the nodes in that
order; backward runs them in reverse and sums the gradients of a tensor that fans out
to several readers.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
import math

from ..layers.base import LAYER_TYPES, Layer, LayerMemory, layer_from_config, layer_to_config
from ..ops.backend import array_module
from .container import Container, relocate

INPUT = "input"


class Merge(Layer):
    """A layer with several inputs: ``forward(xs, train)`` takes a list of arrays,
    ``backward(dout)`` returns a list of gradients (one per input, same order),
    ``output_shape(shapes)`` takes a list of shapes. Only usable inside a Graph."""

    min_inputs = 2

    def _check_inputs(self, xs) -> list:
        if not isinstance(xs, (list, tuple)) or len(xs) < self.min_inputs:
            raise ShapeError(f"{self!r}: expected a list of at least {self.min_inputs} arrays, got "
                             f"{type(xs).__name__}{'' if not isinstance(xs, (list, tuple)) else f' of {len(xs)}'}")
        for i, x in enumerate(xs):
            if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
                raise ShapeError(f"{self!r}: input {i} must be a floating-point array, got "
                                 f"{getattr(x, 'dtype', type(x).__name__)}")
        return list(xs)

    # --- facts shared by the merges: a merge's ``to_onnx`` reads a list of tensors and shapes ------
    fc_conv_role = "spatial"
    absent_facts = frozenset({"spec", "torch_twin", "report_role", "shardable"})  # only inside a Graph

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        """Backward hands out views of dout (Concat) or dout itself (Add)."""
        return LayerMemory(out_bytes=math.prod(out_shape) * n * b, dx_new=False)


del LAYER_TYPES["Merge"]  # an abstract base, not a layer type of its own


class Concat(Merge):
    """Concatenate along ``dim`` (default 1, the channels): (N, C1, H, W), (N, C2, H, W) -> (N, C1+C2, H, W).

    Every other axis must match. Backward splits dout back into the inputs' slices.
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"Concat: dim must be an int >= 1 (axis 0 is the batch), got {dim!r}")
        self.dim = int(dim)

    def costs(self, in_shapes, out_shape):
        return 0, 0   # a copy

    def to_onnx(self, b, xs, in_shapes, path):
        return b.node("Concat", list(xs), path, axis=self.dim), tuple(self.output_shape(in_shapes))

    def output_shape(self, input_shape) -> tuple:
        """Shapes without the batch axis; sizes along dim add up, the rest must be equal."""
        shapes = [tuple(s) for s in input_shape]
        self._check_shapes(shapes, batch=False)
        axis = self.dim - 1
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def _check_shapes(self, shapes, batch: bool) -> None:
        axis = self.dim - (0 if batch else 1)
        what = "(N, C, ...)" if batch else "(C, ...)"
        if len(shapes) < self.min_inputs:
            raise ShapeError(f"{self!r}: needs at least {self.min_inputs} inputs, got {len(shapes)}")
        ndims = {len(s) for s in shapes}
        if len(ndims) != 1 or axis >= min(ndims):
            raise ShapeError(f"{self!r}: inputs must all have the same number of axes (more than {axis}, "
                             f"shapes {what}), got {', '.join(map(str, shapes))}")
        rest = {s[:axis] + s[axis + 1:] for s in shapes}
        if len(rest) != 1:
            raise ShapeError(f"{self!r}: inputs must match in every axis but {self.dim} "
                             f"(e.g. the spatial size), got shapes {', '.join(map(str, shapes))}")

    def forward(self, xs, train: bool = False):
        xs = self._check_inputs(xs)
        self._check_shapes([tuple(x.shape) for x in xs], batch=True)
        xp = array_module(xs[0])
        out = xp.concatenate(xs, axis=self.dim)
        self._cache = ([x.shape[self.dim] for x in xs], out.shape)
        return out

    def backward(self, dout):
        """A list of views of dout, one slice along dim per input."""
        sizes, out_shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, out_shape)
        xp = array_module(dout)
        return xp.split(dout, np.cumsum(sizes)[:-1].tolist(), axis=self.dim)

    def get_config(self) -> dict:
        return {"dim": self.dim}

    def extra_repr(self) -> str:
        return "" if self.dim == 1 else f"dim={self.dim}"


class Add(Merge):
    """Elementwise sum of inputs of one shape (no broadcasting): the residual connection.

    Backward hands the same dout to every input (readers must not modify it in place).
    """

    def costs(self, in_shapes, out_shape):
        """One add per output per extra input."""
        return 0, (len(in_shapes) - 1) * math.prod(out_shape)

    def memory(self, in_shapes, out_shape, n, b, in_nhwc=False):
        m = super().memory(in_shapes, out_shape, n, b, in_nhwc)
        m.dx_shared = True
        return m

    def to_onnx(self, b, xs, in_shapes, path):
        return b.node("Add" if len(xs) == 2 else "Sum", list(xs), path), tuple(self.output_shape(in_shapes))

    def output_shape(self, input_shape) -> tuple:
        shapes = [tuple(s) for s in input_shape]
        self._check_equal(shapes)
        return shapes[0]

    def _check_equal(self, shapes) -> None:
        if len(shapes) < self.min_inputs:
            raise ShapeError(f"{self!r}: needs at least {self.min_inputs} inputs, got {len(shapes)}")
        if len(set(shapes)) != 1:
            raise ShapeError(f"{self!r}: inputs must have equal shapes, got {', '.join(map(str, shapes))} "
                             "(a shortcut that changes the size needs a projection, e.g. a 1x1 conv)")

    def forward(self, xs, train: bool = False):
        xs = self._check_inputs(xs)
        self._check_equal([tuple(x.shape) for x in xs])
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        self._cache = (len(xs), out.shape)
        return out

    def backward(self, dout):
        n, out_shape = self._cache if self._cache is not None else (0, None)
        self._pop_cache(dout, out_shape)
        return [dout] * n


def _normalize_nodes(nodes) -> list:
    """[(name, layer, (inputs...)), ...] from a list of triples or a dict name -> (layer, inputs)."""
    if isinstance(nodes, dict):
        items = []
        for name, value in nodes.items():
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ConfigError(f"Graph: node {name!r} must map to (layer, inputs), got {value!r}")
            items.append((name, *value))
    elif isinstance(nodes, (list, tuple)):
        items = []
        for i, node in enumerate(nodes):
            if not (isinstance(node, (tuple, list)) and len(node) == 3):
                raise ConfigError(f"Graph: node {i} must be a (name, layer, inputs) triple, got {node!r}")
            items.append(tuple(node))
    else:
        raise ConfigError(f"Graph: nodes must be a list of (name, layer, inputs) or a dict, got {type(nodes).__name__}")
    out = []
    for name, layer, inputs in items:
        if isinstance(inputs, str):
            inputs = (inputs,)
        if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise ConfigError(f"Graph: node {name!r}: inputs must be a node name or a non-empty list of names, "
                              f"got {inputs!r}")
        out.append((name, layer, tuple(inputs)))
    return out


class Graph(Container):
    """A directed acyclic graph of named layers; the input is the node ``"input"``.

    ``Graph([(name, layer, inputs), ...], output=None)``: ``inputs`` is a node name or a
    list of names (a Concat/Add reads several); ``output`` defaults to the last node.
    Unknown inputs, cycles and nodes that do not feed the output are ConfigErrors.
    State names use node names as prefixes (``"branch2.0.conv.weight"``), in node order.
    """

    def __init__(self, nodes, output: str | None = None):
        nodes = _normalize_nodes(nodes)
        if not nodes:
            raise ConfigError("Graph: needs at least one node")
        for name, _, _ in nodes:
            if name == INPUT:
                raise ConfigError(f"Graph: {INPUT!r} is the graph's input and cannot name a node")
        self._set_children([(name, layer) for name, layer, _ in nodes])
        self._inputs = {name: inputs for name, _, inputs in nodes}
        for name, layer, inputs in nodes:
            for src in inputs:
                if src != INPUT and src not in self._inputs:
                    raise ConfigError(f"Graph: node {name!r} reads unknown node {src!r}; "
                                      f"known: {[INPUT, *self._inputs]}")
            if isinstance(layer, Merge):
                if len(inputs) < layer.min_inputs:
                    raise ConfigError(f"Graph: merge node {name!r} ({type(layer).__name__}) needs at least "
                                      f"{layer.min_inputs} inputs, got {list(inputs)}")
            elif len(inputs) != 1:
                raise ConfigError(f"Graph: node {name!r} ({type(layer).__name__}) takes one input, got "
                                  f"{list(inputs)}; merge several with a Concat or Add node")
        self.output_name = nodes[-1][0] if output is None else output
        if self.output_name not in self._inputs:
            raise ConfigError(f"Graph: output {self.output_name!r} is not a node; nodes: {list(self._inputs)}")
        self._order = self._toposort()
        self._check_all_feed_output()
        # after node i runs, these values have no reader left and can be dropped
        last_read = {}
        for i, name in enumerate(self._order):
            for src in self._inputs[name]:
                last_read[src] = i
        self._free_after = {name: [] for name in self._order}
        for src, i in last_read.items():
            if src != self.output_name:
                self._free_after[self._order[i]].append(src)

    def _toposort(self) -> tuple:
        """Kahn's algorithm, keeping the given order among ready nodes; ConfigError on a cycle."""
        pending = {name: {s for s in inputs if s != INPUT} for name, inputs in self._inputs.items()}
        order = []
        while pending:
            ready = [name for name, deps in pending.items() if not deps]
            if not ready:
                cycle = self._find_cycle(pending)
                raise ConfigError(f"Graph: the nodes form a cycle: {' -> '.join(cycle)}")
            for name in ready:
                order.append(name)
                del pending[name]
            for deps in pending.values():
                deps.difference_update(ready)
        return tuple(order)

    def _find_cycle(self, pending: dict) -> list:
        # follow unresolved inputs backwards until a node repeats
        path, name = [], next(iter(pending))
        while name not in path:
            path.append(name)
            name = next(iter(sorted(pending[name])))
        cycle = path[path.index(name):] + [name]
        return cycle[::-1]

    def _check_all_feed_output(self) -> None:
        needed, stack = set(), [self.output_name]
        while stack:
            name = stack.pop()
            if name in needed or name == INPUT:
                continue
            needed.add(name)
            stack.extend(self._inputs[name])
        unused = [n for n in self._inputs if n not in needed]
        if unused:
            raise ConfigError(f"Graph: node(s) {unused} do not feed the output {self.output_name!r}; "
                              "remove them or make one the output")

    # --- structure --------------------------------------------------------------------------------
    @property
    def nodes(self) -> list:
        """[(name, layer, inputs)] in the order given."""
        return [(name, layer, self._inputs[name]) for name, layer in self.named_children()]

    @property
    def order(self) -> tuple:
        """Node names in execution (topological) order."""
        return self._order

    def inputs_of(self, name: str) -> tuple:
        return self._inputs[name]

    def __getitem__(self, name: str) -> Layer:
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"{type(self).__name__} has no node {name!r}; nodes: {list(self._children)}") from None

    def __iter__(self):
        return iter(self.children())

    def _where(self, name: str) -> str:
        inputs = self._inputs[name]
        return f" (reading {', '.join(repr(i) for i in inputs)})" if len(inputs) > 1 else ""

    # --- forward / backward ---------------------------------------------------------------------
    def forward(self, x, train: bool = False):
        """Run every node in topological order; returns the output node's value."""
        values = {INPUT: x}
        for name in self._order:
            layer = self._children[name]
            ins = [values[src] for src in self._inputs[name]]
            try:
                values[name] = layer.forward(ins if isinstance(layer, Merge) else ins[0], train=train)
            except ShapeError as err:
                relocate(err, name, self._where(name))
            for src in self._free_after[name]:
                values.pop(src, None)
        return values[self.output_name]

    def backward(self, dout):
        """Reverse topological order; gradients of a value read by several nodes are summed."""
        grads = {self.output_name: dout}
        for name in reversed(self._order):
            layer = self._children[name]
            try:
                dxs = layer.backward(grads.pop(name))
            except ShapeError as err:
                relocate(err, name, self._where(name))
            if not isinstance(layer, Merge):
                dxs = [dxs]
            for src, dx in zip(self._inputs[name], dxs):
                # never in place: the same array may have been handed to several readers
                grads[src] = dx if src not in grads else grads[src] + dx
        return grads[INPUT]

    def output_shape(self, input_shape) -> tuple:
        """Shape inference through every node; errors name the node (and a merge's inputs)."""
        shapes = {INPUT: tuple(input_shape)}
        for name in self._order:
            layer = self._children[name]
            ins = [shapes[src] for src in self._inputs[name]]
            try:
                shapes[name] = tuple(layer.output_shape(ins if isinstance(layer, Merge) else ins[0]))
            except ShapeError as err:
                relocate(err, name, self._where(name))
        return shapes[self.output_name]

    # --- config / repr ----------------------------------------------------------------------------
    def get_config(self) -> dict:
        """{"nodes": [{"name", "type", "config", "inputs"}], "output": name}; JSON-able."""
        return {"nodes": [{"name": name, **layer_to_config(layer), "inputs": list(inputs)}
                          for name, layer, inputs in self.nodes],
                "output": self.output_name}

    @classmethod
    def from_config(cls, cfg: dict) -> "Graph":
        if not isinstance(cfg, dict) or not isinstance(cfg.get("nodes"), list):
            raise ConfigError(f"{cls.__name__}.from_config: expected a dict with a 'nodes' list, got {cfg!r}")
        nodes = []
        for i, entry in enumerate(cfg["nodes"]):
            if not isinstance(entry, dict) or "name" not in entry or "inputs" not in entry:
                raise ConfigError(f"Graph.from_config: node {i} needs 'name', 'type', 'config', 'inputs'")
            nodes.append((entry["name"], layer_from_config(entry, f"Graph node {entry['name']!r}"), entry["inputs"]))
        return Graph(nodes, output=cfg.get("output"))

    def _child_label(self, name: str) -> str:
        return f"{name} <- {', '.join(self._inputs[name])}"

    def _repr_lines(self) -> list:
        lines = super()._repr_lines()
        return lines + [f"output: {self.output_name}"] if lines else lines
