"""The Layer contract every convnp layer follows.

A layer maps a batch ``x`` (N, ...) to ``forward(x, train)`` and, given the
gradient of the loss with respect to its output, ``backward(dout)`` returns the
gradient with respect to ``x`` and overwrites ``grads`` (same keys as ``params``).
Non-learned state (BatchNorm's running statistics) lives in ``buffers``.
Shapes passed to ``output_shape`` exclude the batch axis, e.g. (C, H, W).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from .._util import mismatch_problems
from ..errors import ConfigError, ShapeError, StateError

LAYER_TYPES: dict[str, type] = {}

#: The facts a layer type states for the generic walkers, and the members that state each one.
#: Every layer type defined in convnp states each fact or names it in ``absent_facts`` (a test checks).
FACTS = {
    "costs": ("costs",),                       # MACs and FLOPs (inspect.summary)
    "memory": ("memory",),                     # what one training step allocates (inspect.memory)
    "shardable": ("shardable",),               # the batch may be split over threads (nets.engine)
    "fc_conv": ("fc_conv_role", "to_fully_convolutional"),  # FC->CONV conversion (notation.convert)
    "onnx": ("to_onnx",),                      # ONNX emission (io.onnx_export)
    "spec": ("to_spec",),                      # the layer-pattern notation (notation.spec)
    "torch_twin": ("torch_module",),           # the same layer in PyTorch (app.bench)
    "report_role": ("report_role",),           # what the report's activation search does with it
}


def get_layer_class(name: str) -> type:
    """The Layer subclass registered under ``name`` (its class name)."""
    try:
        return LAYER_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown layer type {name!r}; known: {', '.join(sorted(LAYER_TYPES))}") from None


@dataclass
class LayerMemory:
    """What one training forward/backward of a layer allocates (bytes, whole batch); a layer's
    ``memory`` fact returns one and ``convnp.inspect.memory`` simulates a step from them."""

    out_new: bool = True        # the output is a new array (False: a view of input 0)
    out_bytes: int = 0          # size of the output when new
    keeps_input: bool = False   # the cache references input 0 until backward
    keeps_output: bool = False  # the cache references the output until backward
    saved: int = 0              # new arrays the cache keeps until backward
    fwd_work: int = 0           # scratch alive during forward only
    bwd_work: int = 0           # scratch alive during backward only (besides dout, dx, grads)
    dx_new: bool = True         # dx is a new array (False: a view of dout)
    dx_shared: bool = False     # every input gets the same dout array as its gradient (Add)
    dx_bytes: int | None = None  # size of dx when it is bigger than the input (a padded buffer)
    grad_bytes: int = 0         # the new parameter gradients backward makes
    out_nhwc: bool = False      # the output's memory is channels-last (a conv's), so it is not C-contiguous


@dataclass(frozen=True)
class SpecToken:
    """One item of the layer-pattern notation that a layer class parses (``Layer.spec_tokens``).

    ``args``: "" (none, as RELU), "F" (an int right after the keyword, as POOL2), "F-K" (two ints, as
    CONV3-32), "-N" (a dash and an int, as FC-10) or "X?" (an optional number, as DROPOUT0.5).
    ``options``: the /options it takes; "NB" is a flag, the others take an int (/S2, /P1).
    ``volume``: the item needs a (C, H, W) input (a clear error after an FC otherwise).
    ``arg_names``: what the numbers mean, for syntax errors (e.g. "the window size").
    """

    keyword: str
    args: str = ""
    options: tuple = ()
    volume: bool = False
    arg_names: tuple = ()


def square(value, what: str, layer) -> int:
    """The one size of a square (h, w) pair; the notation has no spelling for a non-square one."""
    if value[0] != value[1]:
        raise layer.no_spelling(f"a non-square {what} {tuple(value)!r}")
    return int(value[0])


def elementwise_costs(per_element: int):
    """A ``costs`` fact of ``per_element`` FLOPs for each output number and no MACs."""
    def costs(self, in_shapes, out_shape):
        return 0, per_element * math.prod(out_shape)
    return costs


def check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ConfigError(f"dtype must be a floating type, got {dt}")
    return dt


def he_normal(rng: np.random.Generator, shape, fan_in: int, dtype) -> np.ndarray:
    """Kaiming/He normal init: N(0, 2/fan_in), the notes' recommendation for ReLU nets."""
    dt = np.dtype(dtype)
    draw = dt if dt in (np.float32, np.float64) else np.float64   # float32 draws halve the time of big layers
    return (rng.standard_normal(shape, dtype=draw) * np.sqrt(2.0 / fan_in)).astype(dt, copy=False)


class Layer:
    """Base class: explicit forward/backward, params/grads/buffers dicts, config round-trip."""

    #: Facts of ``FACTS`` this type does not have, on purpose (e.g. a layer with no ONNX operator).
    absent_facts: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYER_TYPES[cls.__name__] = cls

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self._cache = None

    # --- the contract -------------------------------------------------------------------------
    def forward(self, x, train: bool = False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def output_shape(self, input_shape: tuple) -> tuple:
        """Output shape without the batch axis; the default keeps the shape."""
        return tuple(input_shape)

    def get_config(self) -> dict:
        """Constructor arguments as JSON-friendly values; ``from_config`` rebuilds the layer."""
        return {}

    @classmethod
    def from_config(cls, cfg: dict):
        return cls(**cfg)

    # --- conveniences -------------------------------------------------------------------------
    def __call__(self, x, train: bool = False):
        return self.forward(x, train=train)

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.params, **self.buffers}

    def load_state_dict(self, state: dict) -> None:
        own = self.state_dict()
        problems = mismatch_problems(own, state)[0]
        if problems:
            raise ShapeError(f"{self!r}: cannot load state: " + "; ".join(problems))
        for k, v in state.items():
            target = self.params if k in self.params else self.buffers
            target[k] = np.array(v, dtype=own[k].dtype, copy=True)

    def to(self, dtype) -> "Layer":
        """Cast params and buffers to ``dtype`` in place (e.g. float64 for gradient checks)."""
        dt = check_dtype(dtype)
        for store in (self.params, self.buffers):
            for k, v in store.items():
                if v.dtype.kind == "f":
                    store[k] = v.astype(dt)
        self.grads = {}
        return self

    # --- facts for the generic walkers (defaults; each layer type states its own) ---------------------
    def costs(self, in_shapes: tuple, out_shape: tuple) -> tuple[int, int]:
        """(MACs, FLOPs) of one forward pass for ONE image, input shapes and output shape
        without the batch axis (conventions in ``convnp.inspect.summary``)."""
        return 0, 0

    def in_place(self, in_shapes: tuple, out_shape: tuple) -> bool:
        """True when the notes count no new activation for this layer (elementwise, a view)."""
        return False

    def memory(self, in_shapes: tuple, out_shape: tuple, n: int, b: int, in_nhwc: bool = False) -> LayerMemory:
        """What one training step allocates for a batch of ``n`` numbers of ``b`` bytes; ``in_nhwc``:
        input 0 is a channels-last view. The default keeps the input and makes parameter gradients."""
        return LayerMemory(out_bytes=math.prod(out_shape) * n * b, keeps_input=True, grad_bytes=self._param_bytes())

    def shardable(self, train: bool) -> bool:
        """True when ``forward(x, train)`` on row slices of x gives the row slices of the output."""
        return False

    #: For FC->CONV conversion: "pointwise" (acts per element or channel, the same on (N, K, 1, 1) as on
    #: (N, K)), "spatial" (already slides over space) or None (only on a volume that stays a volume).
    fc_conv_role: str | None = None

    def to_fully_convolutional(self, st, where: str):
        """The layer that replaces this one in the converted net (None drops it); ``st.orig`` and
        ``st.new`` are the shapes the original and the converted net see, updated here."""
        if self.fc_conv_role == "pointwise":
            st.orig = tuple(self.output_shape(st.orig))
            return copy.deepcopy(self)
        if len(st.orig) == 3 and (self.fc_conv_role == "spatial" or len(st.new) == 3):
            st.orig = st.new = tuple(self.output_shape(st.orig))
            return copy.deepcopy(self)
        raise ConfigError(f"to_fully_convolutional: cannot turn {where} into a convolution (it reads a vector "
                          f"of shape {st.orig})")

    def stride_hw(self) -> tuple[int, int]:
        """How far apart, in input pixels, two neighbouring outputs are (1, 1 for non-spatial layers)."""
        return 1, 1

    def to_onnx(self, b, x, shape: tuple, path: str):
        """Add this layer's ONNX nodes to builder ``b`` reading tensor ``x`` (per-example ``shape``);
        returns (output tensor name, output shape). See ``convnp.io.onnx_export``."""
        raise ConfigError(f"export_onnx: no ONNX mapping for layer {path or '<net>'!r} ({type(self).__name__}); "
                          "give the layer a to_onnx method, or add one with register_onnx_converter")

    #: The notation's items this class parses (``SpecToken``s); see ``convnp.notation.spec``.
    spec_tokens: tuple = ()

    @classmethod
    def from_spec(cls, token: str, args: tuple, opts: dict, shape: tuple, rng, dtype) -> list:
        """The layers one spec item ``token`` stands for on an input of ``shape``."""
        raise ConfigError(f"{cls.__name__} parses no spec item {token!r}")

    def to_spec(self, next_layer, shape) -> str | None:
        """This layer as a spec item (None: implied by the next layer); ``shape``: its input shape or None."""
        raise self.no_spelling("no spec item stands for this layer type")

    def no_spelling(self, why: str) -> ConfigError:
        return ConfigError(f"to_spec: {self!r} cannot be written in the notation: {why}")

    def torch_module(self, nn):
        """The same layer as a ``torch.nn`` module (``nn`` is ``torch.nn``), for the benchmarks."""
        raise ConfigError(f"bench: no PyTorch equivalent for {type(self).__name__}")

    #: For the report's activation search after each conv: "filters" (a conv whose filters and output
    #: the report shows), "activation" (a nonlinearity: its output is shown), "transparent" (passed
    #: over: normalisation, dropout) or None (the search stops).
    report_role: str | None = None

    def _param_bytes(self) -> int:
        return sum(int(v.nbytes) for v in self.params.values())

    # --- helpers for subclasses -----------------------------------------------------------------
    def _check_input(self, x, ndim: int, channels: int | None = None, what: str = "(N, C, H, W)"):
        """Raise a ShapeError naming this layer unless ``x`` is a float array of ``ndim`` dims."""
        shape = getattr(x, "shape", None)
        if shape is None:
            raise ShapeError(f"{self!r}: expected an array, got {type(x).__name__}")
        if len(shape) != ndim:
            raise ShapeError(f"{self!r}: expected a {ndim}-d input {what}, got shape {tuple(shape)}")
        if x.dtype.kind != "f":
            raise ShapeError(f"{self!r}: expected a floating-point input, got dtype {x.dtype}")
        if channels is not None and shape[1] != channels:
            raise ShapeError(f"{self!r}: expected {channels} input channels, got {shape[1]} "
                             f"(input shape {tuple(shape)})")

    def _check_shape(self, input_shape, ndim: int, channels: int | None = None, what: str = "(C, H, W)"):
        """Like ``_check_input`` for an ``output_shape`` argument (no batch axis)."""
        shape = tuple(input_shape)
        if len(shape) != ndim:
            raise ShapeError(f"{self!r}: expected an input shape {what}, got {shape}")
        if channels is not None and shape[0] != channels:
            raise ShapeError(f"{self!r}: expected {channels} input channels, got {shape[0]} (input shape {shape})")
        return shape

    def _pop_cache(self, dout, out_shape=None):
        """The cache saved by forward; errors when backward comes first or dout has the wrong shape."""
        if self._cache is None:
            raise StateError(f"{self!r}: backward called before forward (or twice for one forward)")
        if out_shape is not None and tuple(dout.shape) != tuple(out_shape):
            raise ShapeError(f"{self!r}: dout has shape {tuple(dout.shape)} but forward produced {tuple(out_shape)}")
        cache, self._cache = self._cache, None
        return cache


def layer_to_config(layer: Layer) -> dict:
    """{"type": class name, "config": get_config()}: enough to rebuild the layer without code."""
    return {"type": type(layer).__name__, "config": layer.get_config()}


def layer_from_config(entry: dict, where: str = "layer") -> Layer:
    """Inverse of ``layer_to_config``; unknown types raise ConfigError listing the known ones."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ConfigError(f"{where}: expected a dict with 'type' and 'config', got {entry!r}")
    cls = get_layer_class(entry["type"])
    try:
        return cls.from_config(dict(entry.get("config", {})))
    except TypeError as err:  # unknown or missing constructor arguments
        raise ConfigError(f"{where}: cannot build {entry['type']} from {entry.get('config')!r}: {err}") from None
