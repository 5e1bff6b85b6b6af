"""The Layer contract every convnp layer follows.

A layer maps a batch ``x`` (N, ...) to ``forward(x, train)`` and, given the
gradient of the loss with respect to its output, ``backward(dout)`` returns the
gradient with respect to ``x`` and overwrites ``grads`` (same keys as ``params``).
Non-learned state (BatchNorm's running statistics) lives in ``buffers``.
Shapes passed to ``output_shape`` exclude the batch axis, e.g. (C, H, W).
"""

from __future__ import annotations

import importlib

import numpy as np

from ..errors import ConfigError, ShapeError, StateError

LAYER_TYPES: dict[str, type] = {}


def get_layer_class(name: str) -> type:
    """The Layer subclass registered under ``name`` (its class name)."""
    try:
        return LAYER_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown layer type {name!r}; known: {', '.join(sorted(LAYER_TYPES))}") from None


def make_rng(rng) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise ConfigError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def state_mismatch(expected: dict, state: dict) -> tuple[list, list, list]:
    """(missing, unexpected, wrong-shape) keys of ``state`` against ``expected`` (name -> array)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(np.shape(state[k])) != tuple(np.shape(expected[k]))]
    return missing, unexpected, wrong


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
        missing, unexpected, wrong = state_mismatch(own, state)
        if missing or unexpected or wrong:
            details = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                       "wrong shape " + ", ".join(f"{k}: {np.shape(state[k])} vs {own[k].shape}" for k in wrong)
                       if wrong else ""]
            raise ShapeError(f"{self!r}: cannot load state: " + "; ".join(d for d in details if d))
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
    if entry["type"] not in LAYER_TYPES:  # its module may not be imported yet: convnp imports them all
        importlib.import_module("convnp")
    cls = get_layer_class(entry["type"])
    try:
        return cls.from_config(dict(entry.get("config", {})))
    except TypeError as err:  # unknown or missing constructor arguments
        raise ConfigError(f"{where}: cannot build {entry['type']} from {entry.get('config')!r}: {err}") from None
