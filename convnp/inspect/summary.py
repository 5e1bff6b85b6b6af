"""What a net costs: output shapes, parameters, multiply-adds, FLOPs and memory, layer by layer.

``summary(net, input_shape)`` walks any net (Sequential, Graph, nested) leaf by leaf, in
execution (topological) order, and returns a ``Summary``: ``print()`` it for a table like
the notes' VGGNet breakdown or Keras' ``model.summary()``, or read its ``rows`` and totals.

Counting conventions (per image unless the name says otherwise):

* activations: the number of numbers a layer outputs, counted the notes' way: the INPUT
  row counts (224x224x3 = 150K), every CONV, POOL, FC, normalization or merge output
  counts, while elementwise activations (ReLU, Tanh, ...), Dropout and Flatten count 0,
  as if done in place (the notes fold each ReLU into its CONV row).
* weights: parameters other than biases (the notes' "weights" column); params: all of
  them (torchvision's count, biases included). BatchNorm's gamma counts as a weight.
* MACs (multiply-accumulates): CONV K*(C/groups)*KH*KW*OH*OW, FC in*out, locally
  connected one per weight. Nothing else has MACs.
* FLOPs: 2 per MAC, plus one per bias add, one per comparison (max pooling does KH*KW-1
  per output), per add (average pooling KH*KW per output, global pooling one per input,
  a residual Add one per output per extra input), 1 per element for activations
  (transcendentals counted as one), 2 per element for BatchNorm (scale and shift at
  inference), 2*size+3 per element for LRN; Dropout, Flatten and Concat cost nothing.

Memory (bytes, for ``batch_size`` images of ``dtype_bytes`` each) is the notes' sum and,
separately, convnp's own peak (see ``Summary``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from ..optim.optimizers import optimizer_slots
from .memory import estimate_peak_from_nodes
from .trace import dtype_bytes_of, format_bytes, input_shape_of, is_frozen, parse_input_shape, trace, volume_str

__all__ = ["Row", "Summary", "fit_batch_size", "format_bytes", "parse_bytes", "parse_input_shape", "summary",
           "summary_text", "volume_str"]


def _si(n: float) -> str:
    """15,470,264,320 -> '15.47 G' (for MACs and FLOPs)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} "


def _count(n: float) -> str:
    """1,234,567 -> '1.2M' (the notes' style) for the table's narrow columns."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _weights_and_biases(layer) -> tuple[int, int]:
    params = getattr(layer, "params", {}) or {}
    biases = sum(int(np.size(v)) for k, v in params.items() if k == "bias")
    total = sum(int(np.size(v)) for v in params.values())
    return total - biases, biases


# --- the summary ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table. ``activations`` follows the notes (0 for in-place layers);
    ``output_elements`` is always the size of the output; counts are per image."""

    name: str
    type: str
    shape: tuple
    activations: int
    output_elements: int
    weights: int
    params: int
    macs: int
    flops: int
    in_place: bool = False
    layer: object = field(default=None, repr=False, compare=False)

    @property
    def volume(self) -> str:
        """The output shape in the notes' notation, e.g. ``"224x224x64"`` (a vector D is ``"1x1xD"``)."""
        return volume_str(self.shape)

    @property
    def biases(self) -> int:
        return self.params - self.weights

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("layer")
        d["shape"] = list(self.shape)
        d["volume"] = self.volume
        return d


class Summary:
    """Shapes, parameters, compute and memory of a net (``print`` it for the table).

    Per-image totals: ``activations`` (sum of the rows' activations, INPUT included),
    ``total_params`` (= ``total_weights`` + ``total_biases``, PyTorch's count),
    ``trainable_params`` (those not ``frozen``), ``buffer_count`` (BatchNorm running statistics,
    not parameters), ``macs_per_image``, ``flops_per_image``. For the whole batch: ``macs``, ``flops``.

    Memory in bytes, the notes' bookkeeping (``dtype_bytes`` per number):

    * ``activation_bytes`` = activations x batch: the forward pass's outputs;
    * ``gradient_bytes`` = the same again: one gradient per activation (the notes' "~x2 for
      bwd"). This is an upper bound: convnp frees each gradient once the layer below used it;
    * ``param_bytes`` (parameters and buffers), ``param_grad_bytes`` (one gradient per
      trainable parameter) and ``optimizer_bytes`` (``convnp.optim.optimizer_slots`` arrays per trainable
      parameter: 0 for SGD, 1 for momentum/Nesterov/Adagrad/RMSProp, 2 for Adam), so the
      parameters cost 3x their size with momentum and 4x with Adam, as the notes say;
    * ``total_bytes``: the sum of those five.

    ``peak_bytes`` is a different, honest number: the most memory one convnp training step
    (forward, loss, backward, update) holds at once, from a liveness simulation of what each
    layer keeps for backward (its input, masks, pooling switches), the gradients alive at each
    step of backward and each layer's scratch buffers (im2col chunks, padded copies);
    ``peak`` holds its breakdown. ``convnp.memory.measure_peak`` checks it against reality.

    On VGG-16 at 224x224x3 the rows reproduce the notes' table, but their totals do not:
    the notes say "TOTAL memory: 24M * 4 bytes ~= 93MB / image" while the rows sum to
    15,237,608 activations = 61.0 MB (float32); "TOTAL params: 138M" matches the rows'
    138,344,128 weights (138,357,544 with the 13,416 biases, torchvision's number).
    ``NOTES_VGG16`` records the notes' claims next to these sums.
    """

    def __init__(self, rows, nodes, value_shapes, input_shape, output_shape, batch_size, optimizer,
                 dtype_bytes, frozen=()):
        self.rows = rows
        self.nodes = nodes
        self.value_shapes = value_shapes
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.batch_size = int(batch_size)
        self.optimizer = str(optimizer).lower()
        self.optimizer_slots = optimizer_slots(self.optimizer)
        self.dtype_bytes = int(dtype_bytes)
        self.frozen = tuple(frozen)

        layer_rows = rows[1:]
        self.total_weights = sum(r.weights for r in layer_rows)
        self.total_biases = sum(r.biases for r in layer_rows)
        self.total_params = self.total_weights + self.total_biases
        self.trainable_params = sum(int(np.size(v)) for r in layer_rows
                                    for k, v in (getattr(r.layer, "params", {}) or {}).items()
                                    if not is_frozen(f"{r.name}.{k}", self.frozen))
        self.buffer_count = sum(int(np.size(v)) for r in layer_rows
                                for v in (getattr(r.layer, "buffers", {}) or {}).values()
                                if np.asarray(v).dtype.kind == "f")
        self.activations = sum(r.activations for r in rows)
        self.macs_per_image = sum(r.macs for r in layer_rows)
        self.flops_per_image = sum(r.flops for r in layer_rows)
        self.macs = self.macs_per_image * self.batch_size
        self.flops = self.flops_per_image * self.batch_size

        b, n = self.dtype_bytes, self.batch_size
        self.activation_bytes = self.activations * n * b
        self.gradient_bytes = self.activation_bytes
        self.param_bytes = (self.total_params + self.buffer_count) * b
        self.param_grad_bytes = self.trainable_params * b
        self.optimizer_bytes = self.optimizer_slots * self.trainable_params * b
        self.total_bytes = (self.activation_bytes + self.gradient_bytes + self.param_bytes
                            + self.param_grad_bytes + self.optimizer_bytes)
        self._peak = None

    # --- convnp's own peak ------------------------------------------------------------------------
    @property
    def peak(self):
        """Breakdown of ``peak_bytes`` (a ``convnp.memory.PeakEstimate``)."""
        if self._peak is None:
            self._peak = estimate_peak_from_nodes(self.nodes, self.value_shapes, self.batch_size,
                                                  self.optimizer, self.dtype_bytes, self.frozen)
        return self._peak

    @property
    def peak_bytes(self) -> int:
        """Estimated peak memory of one convnp training step (see the class docstring)."""
        return self.peak.total

    # --- output -----------------------------------------------------------------------------------
    def as_dict(self) -> dict:
        """Everything as JSON-friendly values (rows without the layer objects)."""
        keys = ("input_shape", "output_shape", "batch_size", "optimizer", "optimizer_slots", "dtype_bytes",
                "total_params", "total_weights", "total_biases", "trainable_params", "buffer_count",
                "activations", "macs_per_image", "flops_per_image", "macs", "flops", "activation_bytes",
                "gradient_bytes", "param_bytes", "param_grad_bytes", "optimizer_bytes", "total_bytes",
                "peak_bytes")
        out = {k: getattr(self, k) for k in keys}
        out["input_shape"], out["output_shape"] = list(self.input_shape), list(self.output_shape)
        out["rows"] = [r.as_dict() for r in self.rows]
        return out

    def table(self, max_name: int = 28) -> str:
        """The per-layer table (no totals)."""
        head = ("Layer (type)", "Output", "Activations", "Weights", "Params", "MACs", "FLOPs", "Memory")
        lines = []
        for r in self.rows:
            name = f"{r.name} ({r.type})" if r.type != "Input" else "INPUT"
            if len(name) > max_name:
                name = name[:max_name - 3] + "..."
            act = "(in place)" if r.in_place else f"{r.activations:,}"
            mem = "-" if r.in_place else format_bytes(r.activations * self.batch_size * self.dtype_bytes)
            lines.append((name, r.volume, act, f"{r.weights:,}", f"{r.params:,}", _count(r.macs),
                          _count(r.flops), mem))
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        return "\n".join([fmt.format(*head), rule] + [fmt.format(*line) for line in lines] + [rule])

    def totals_text(self) -> str:
        b, n = self.dtype_bytes, self.batch_size
        slots = self.optimizer_slots
        frozen = self.total_params - self.trainable_params
        lines = [
            (f"Input {'x'.join(map(str, self.input_shape))} (C x H x W), batch {n}, {b} bytes per number, "
             f"optimizer {self.optimizer} ({slots} cache{'s' if slots != 1 else ''} per parameter)"),
            f"Total params: {self.total_params:,} (weights {self.total_weights:,} + biases {self.total_biases:,})",
            f"Trainable params: {self.trainable_params:,}   Non-trainable: {frozen:,}"
            + (f"   Buffers: {self.buffer_count:,}" if self.buffer_count else ""),
            f"Activations per image: {self.activations:,} ({format_bytes(self.activations * b)})",
            f"Forward compute: {_si(self.macs_per_image)}MACs, {_si(self.flops_per_image)}FLOPs per image"
            + (f"; {_si(self.macs)}MACs, {_si(self.flops)}FLOPs per batch" if n != 1 else ""),
            "Memory (the notes' bookkeeping):",
            f"  activations (forward)      {format_bytes(self.activation_bytes):>10}",
            f"  activation gradients       {format_bytes(self.gradient_bytes):>10}   "
            "(same again: the notes' ~x2 for backward)",
            f"  parameters                 {format_bytes(self.param_bytes):>10}",
            f"  parameter gradients        {format_bytes(self.param_grad_bytes):>10}",
            f"  optimizer state            {format_bytes(self.optimizer_bytes):>10}   ({slots} x parameters)",
            f"  total                      {format_bytes(self.total_bytes):>10}",
            f"Peak of one convnp training step (estimate): {format_bytes(self.peak_bytes)} ({self.peak.where})",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table() + "\n" + self.totals_text()

    def __repr__(self) -> str:
        return (f"Summary(input_shape={self.input_shape}, batch_size={self.batch_size}, "
                f"total_params={self.total_params:,}, activations={self.activations:,}, "
                f"macs_per_image={self.macs_per_image:,})")


#: The notes' VGG-16 totals next to what their own rows add up to (float32, per image).
NOTES_VGG16 = {
    "notes_total_memory": "24M * 4 bytes ~= 93MB / image (only forward! ~*2 for bwd)",
    "notes_total_params": "138M parameters",
    "rows_activations": 15_237_608,
    "rows_activation_bytes": 15_237_608 * 4,
    "rows_weights": 138_344_128,
    "params_with_biases": 138_357_544,
    "macs": 15_470_264_320,
}


def summary(net, input_shape=None, batch_size: int = 1, optimizer: str = "momentum", dtype_bytes=None,
            frozen=None) -> Summary:
    """Walk ``net`` on an input of ``input_shape`` (C, H, W) (or ``"3x224x224"``) and count.

    ``input_shape`` defaults to ``net.input_shape``. ``batch_size`` scales the batch totals
    (FLOPs, MACs, memory); ``optimizer`` ("sgd", "momentum", "nesterov", "adagrad", "rmsprop",
    "adam", "adamw") sets the optimizer state; ``dtype_bytes`` defaults to the itemsize of
    the net's parameters (4 for float32). ``frozen``: parameter names or prefixes that get
    no gradient or optimizer state.
    """
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ConfigError("summary: pass input_shape (C, H, W); this net has none recorded")
    input_shape = parse_input_shape(input_shape)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"summary: batch_size must be a positive int, got {batch_size!r}")
    optimizer_slots(optimizer)
    if dtype_bytes is None:
        dtype_bytes = dtype_bytes_of(net)
    if isinstance(dtype_bytes, bool) or not isinstance(dtype_bytes, (int, np.integer)) or dtype_bytes < 1:
        raise ConfigError(f"summary: dtype_bytes must be a positive int, got {dtype_bytes!r}")
    if frozen is None:
        frozen = ()
    elif isinstance(frozen, str):
        frozen = (frozen,)
    nodes, shapes = trace(net, input_shape)
    rows = [Row("input", "Input", input_shape, math.prod(input_shape), math.prod(input_shape), 0, 0, 0, 0)]
    for node in nodes:
        weights, biases = _weights_and_biases(node.layer)
        macs, flops = node.layer.costs(node.in_shapes, node.out_shape)
        elems = math.prod(node.out_shape)
        in_place = node.layer.in_place(node.in_shapes, node.out_shape)   # elementwise layers and views
        rows.append(Row(node.path, type(node.layer).__name__, node.out_shape, 0 if in_place else elems, elems, weights,
                        weights + biases, macs, flops, in_place, node.layer))
    out_shape = shapes[nodes[-1].output] if nodes else tuple(input_shape)
    return Summary(rows, nodes, shapes, input_shape, out_shape, int(batch_size), optimizer, int(dtype_bytes),
                   tuple(frozen))


def summary_text(net, input_shape=None, batch_size: int = 1, optimizer: str = "momentum", budget=None,
                 dtype_bytes=None) -> str:
    """What ``convnp summary`` prints: the table and totals, plus, given a ``budget`` ("8GB",
    "512MiB" or bytes), the largest batch that fits it by convnp's peak estimate and by the
    notes' bookkeeping."""
    s = summary(net, input_shape, batch_size=batch_size, optimizer=optimizer, dtype_bytes=dtype_bytes)
    text = str(s)
    if budget is not None:
        nbytes = parse_bytes(budget)
        lines = [f"Largest batch within {budget} ({nbytes:,} bytes), optimizer {s.optimizer}:"]
        for estimate, label in (("peak", "convnp peak estimate"), ("notes", "the notes' bookkeeping")):
            try:
                n = fit_batch_size(net, s.input_shape, nbytes, optimizer=optimizer, dtype_bytes=s.dtype_bytes,
                                   estimate=estimate)
                lines.append(f"  {label:<24} {n:,}")
            except ConfigError as err:
                lines.append(f"  {label:<24} none: {err}")
        text += "\n" + "\n".join(lines)
    return text


# --- memory budgets ----------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value) -> int:
    """``"8GB"`` -> 8,000,000,000, ``"512MiB"`` -> 536,870,912, ``"1.5G"`` -> 1,500,000,000; an int passes.

    KB/MB/GB/TB (and K/M/G/T) are decimal, KiB/MiB/GiB/TiB binary; case does not matter.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"a memory budget must be positive, got {value!r}")
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        return int(value)
    if not isinstance(value, str):
        raise ConfigError(f"a memory budget must be like '8GB' or '512MiB', got {value!r}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", value)
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(f"cannot read the memory budget {value!r}; write e.g. 8GB, 512MiB, 1.5G or 1000000 "
                          "(KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ConfigError(f"a memory budget must be positive, got {value!r}")
    return n


def fit_batch_size(net, input_shape=None, budget_bytes="8GB", optimizer: str = "momentum", dtype_bytes=None,
                   estimate: str = "peak", max_batch: int = 1 << 24) -> int:
    """The largest batch whose estimated training memory fits ``budget_bytes`` (``"8GB"``, ``"512MiB"``, an int).

    ``estimate="peak"`` uses convnp's simulated peak (``estimate_peak``), ``"notes"`` the notes'
    bookkeeping (``Summary.total_bytes``: activations and their gradients, parameters x3 with
    momentum). Both grow with the batch, so a binary search finds the answer. Raises ConfigError
    when even a batch of 1 does not fit, naming what it needs.
    """
    budget = parse_bytes(budget_bytes)
    if estimate not in ("peak", "notes"):
        raise ConfigError(f"fit_batch_size: estimate must be 'peak' or 'notes', got {estimate!r}")
    shape = input_shape_of(net, input_shape)
    b = dtype_bytes_of(net) if dtype_bytes is None else int(dtype_bytes)
    nodes, shapes = trace(net, shape)
    optimizer_slots(optimizer)

    def need(n: int) -> int:
        if estimate == "peak":
            return estimate_peak_from_nodes(nodes, shapes, n, optimizer, b).total
        return summary(net, shape, batch_size=n, optimizer=optimizer, dtype_bytes=b).total_bytes

    one = need(1)
    if one > budget:
        raise ConfigError(f"fit_batch_size: even a batch of 1 needs {format_bytes(one)} ({one:,} bytes) by the "
                          f"{estimate!r} estimate, more than the budget of {format_bytes(budget)} ({budget:,} bytes)")
    lo, hi = 1, 2
    while hi <= max_batch and need(hi) <= budget:
        lo, hi = hi, hi * 2
    if hi > max_batch:
        return lo if need(max_batch) > budget else max_batch
    while hi - lo > 1:  # need(lo) fits, need(hi) does not
        mid = (lo + hi) // 2
        if need(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo
