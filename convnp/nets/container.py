"""What Sequential and Graph share: named children and PyTorch-style dotted state names.

A container is itself a Layer. Its ``params``, ``grads`` and ``buffers`` are flat dicts
keyed by dotted paths (``"features.0.weight"``) that hold the SAME array objects as the
child layers, so an optimizer updating ``net.params[k]`` in place updates the layer.
Gradients are overwritten by every ``backward`` (there is nothing to zero), and
train/eval is chosen per call by ``forward(x, train=...)``: no mode is stored.
"""

from __future__ import annotations


import numpy as np

from ..errors import ConfigError, ShapeError, StateError
from ..layers.base import LAYER_TYPES, Layer, check_dtype
from .._util import listed, mismatch_problems

def relocate(err: Exception, name: str, extra: str = ""):
    """Prefix a child's error with its dotted path (``layer 'features.3'``) and re-raise it.

    The exception object, type and traceback are kept; nested containers build the path
    from the inside out.
    """
    inner = getattr(err, "layer_path", None)
    path = f"{name}.{inner}" if inner else name
    suffix = err.layer_suffix if inner else extra
    detail = err.layer_detail if inner else (str(err.args[0]) if err.args else str(err))
    err.layer_path, err.layer_suffix, err.layer_detail = path, suffix, detail
    err.args = (f"layer {path!r}{suffix}: {detail}",)
    raise err


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


class Container(Layer):
    """Base of Sequential and Graph: an ordered dict of named child layers."""

    #: names a child may not take because the container uses them as attributes
    _reserved = frozenset({"input_shape", "loss", "output_name", "training"})

    def _set_children(self, named: list) -> None:
        self._cache = None
        children: dict[str, Layer] = {}
        for name, layer in named:
            self._check_child(name, layer, children)
            children[name] = layer
        self.__dict__["_children"] = children
        self._check_no_shared_layers()

    def _check_child(self, name, layer, children: dict) -> None:
        owner = type(self).__name__
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{owner}: a child name must be a non-empty string, got {name!r}")
        if "." in name or name.startswith("_") or any(ch.isspace() for ch in name):
            raise ConfigError(f"{owner}: child name {name!r} may not contain '.' or whitespace "
                              "or start with '_' (names become dotted state_dict keys)")
        if name in self._reserved or hasattr(type(self), name):
            raise ConfigError(f"{owner}: child name {name!r} clashes with an attribute of {owner}")
        if name in children:
            raise ConfigError(f"{owner}: duplicate child name {name!r}")
        if not isinstance(layer, Layer):
            raise ConfigError(f"{owner}: child {name!r} must be a convnp Layer, got {type(layer).__name__}")

    def _check_no_shared_layers(self) -> None:
        seen: dict[int, str] = {}
        for path, layer in self.named_modules():
            if path and id(layer) in seen:
                raise ConfigError(
                    f"{type(self).__name__}: the same {type(layer).__name__} object appears at "
                    f"{seen[id(layer)]!r} and {path!r}; a layer keeps the cache of its last forward, "
                    "so one object cannot sit at two places (build two layers)")
            seen[id(layer)] = path

    # --- children -----------------------------------------------------------------------------
    def named_children(self):
        """(name, layer) pairs of the direct children, in order."""
        return list(self.__dict__.get("_children", {}).items())

    def children(self) -> list:
        return list(self.__dict__.get("_children", {}).values())

    def named_modules(self, prefix: str = ""):
        """(dotted path, layer) for this container and every layer inside it, depth first."""
        out = [(prefix, self)]
        for name, child in self.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, Container):
                out.extend(child.named_modules(path))
            else:
                out.append((path, child))
        return out

    def __getattr__(self, name):
        # Only reached when normal lookup fails: lets ``net.features`` or ``block.conv1`` work.
        children = self.__dict__.get("_children")
        if children is not None and name in children:
            return children[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute or child {name!r}")

    # --- flattened state ------------------------------------------------------------------------
    def _named(self, kind: str) -> dict:
        out = {}
        for name, child in self.named_children():
            store = child._named(kind) if isinstance(child, Container) else getattr(child, kind)
            for key, arr in store.items():
                out[f"{name}.{key}"] = arr
        return out

    def _slots(self) -> dict:
        """dotted name -> (leaf dict, key) for every param and buffer, for load_state_dict."""
        out = {}
        for name, child in self.named_children():
            if isinstance(child, Container):
                for key, slot in child._slots().items():
                    out[f"{name}.{key}"] = slot
            else:
                for store in (child.params, child.buffers):
                    for key in store:
                        out[f"{name}.{key}"] = (store, key)
        return out

    def named_parameters(self) -> dict:
        """Dotted name -> parameter array (the very arrays the layers hold)."""
        return self._named("params")

    def named_buffers(self) -> dict:
        """Dotted name -> buffer array (e.g. ``bn1.running_mean``)."""
        return self._named("buffers")

    def named_grads(self) -> dict:
        """Dotted name -> gradient of the last ``backward``, same names as ``named_parameters``."""
        grads = self._named("grads")
        missing = [k for k in self.named_parameters() if k not in grads]
        if missing:
            raise StateError(f"{type(self).__name__}: no gradient yet for {listed(missing)}; "
                             "call forward and backward first")
        return {k: grads[k] for k in self.named_parameters()}

    # the Layer contract's dicts, flattened (read-only views built on each access)
    params = property(named_parameters, doc="Same as named_parameters().")
    buffers = property(named_buffers, doc="Same as named_buffers().")
    grads = property(named_grads, doc="Same as named_grads().")

    def parameters(self) -> list:
        return list(self.named_parameters().values())

    def state_dict(self) -> dict:
        """Dotted name -> array for every parameter and buffer (PyTorch's naming, no copies)."""
        out = {}
        for name, child in self.named_children():
            for key, arr in child.state_dict().items():
                out[f"{name}.{key}"] = arr
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list, list]:
        """Copy ``state`` into the layers' arrays in place (an optimizer's references stay valid).

        Checks everything before writing anything: missing or unexpected keys raise a
        ConfigError (with ``strict=False`` they are skipped and returned), wrong shapes a
        ShapeError; the message lists every offending key. Returns (missing, unexpected).
        """
        slots = self._slots()
        problems, missing, unexpected, wrong = mismatch_problems(
            {k: store[key] for k, (store, key) in slots.items()}, state, strict)
        if problems:
            cls = ConfigError if (strict and (missing or unexpected)) else ShapeError
            raise cls(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for key, (store, leaf_key) in slots.items():
            if key in state:
                store[leaf_key][...] = np.asarray(state[key])
        return missing, unexpected

    def to(self, dtype) -> "Container":
        """Cast every child's params and buffers to ``dtype`` (arrays are replaced; grads cleared)."""
        check_dtype(dtype)
        for child in self.children():
            child.to(dtype)
        return self

    def _child_dtype(self) -> str:
        for arr in self.named_parameters().values():
            return str(arr.dtype)
        return "float32"

    def __len__(self) -> int:
        return len(self.__dict__.get("_children", {}))

    # --- repr -----------------------------------------------------------------------------------
    def _child_label(self, name: str) -> str:
        return name

    def _repr_lines(self) -> list:
        return [f"({self._child_label(name)}): {_indent(repr(child))}" for name, child in self.named_children()]

    def __repr__(self) -> str:
        lines = self._repr_lines()
        if not lines:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def extra_repr(self) -> str:  # a container shows its children instead
        return ""


del LAYER_TYPES["Container"]  # a shared base, not a layer type of its own
