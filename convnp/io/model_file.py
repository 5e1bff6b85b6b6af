"""Saved models: one safetensors file with a net's weights and the config that rebuilds it.

The body holds ``net.state_dict()`` (PyTorch-style dotted names, e.g. ``features.0.weight``);
the header metadata holds::

    {"format": "convnp-model", "version": "1", "convnp_version": "...",
     "config": json.dumps(layer_to_config(net)),     # {"type": ..., "config": {...}}, nested
     "extra": json.dumps(extra),                     # e.g. classes, input_shape, mean/std
     "modules": json.dumps({layer type: module})}    # only for layers defined outside convnp

``load_model`` rebuilds the net from the config with ``layer_from_config`` and loads the
weights, so prediction needs only convnp, not the code that built the net. Nothing in the
file is executed: the header is JSON and the arrays are raw bytes (no pickle).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping

from ..errors import ConvnpError
from ..layers.base import LAYER_TYPES, layer_from_config, layer_to_config
from .safetensors_file import (
    MODEL_FORMAT,
    VERSION,
    CheckpointError,
    _convnp_version,
    _dumps,
    json_field,
    read_safetensors,
    write_safetensors,
)

FORMAT = MODEL_FORMAT


def _layer_types(config) -> set[str]:
    """Every layer type named anywhere in a (possibly nested) layer config.

    base.layer_to_config names the class under "type"; the nets' child entries under "class".
    """
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("type", "class"):
                if isinstance(node.get(key), str) and "config" in node:
                    found.add(node[key])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


_BUILTIN_PACKAGES = ("convnp.layers", "convnp.nets")


def _import_builtin_layers() -> None:
    """Import every module of convnp's layer and net packages so their classes are registered.

    A fresh process that only imported ``convnp.io.model_file`` can then rebuild any built-in
    layer named in a config, however ``convnp/__init__`` wires its imports.
    """
    for package_name in _BUILTIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as e:
            if e.name == package_name:
                continue
            raise
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            importlib.import_module(info.name)


def save_model(net, path, extra: Mapping | None = None) -> None:
    """Atomically write ``net`` (weights + config) and JSON-able ``extra`` to one safetensors file.

    ``extra`` is for what a user of the model needs besides the weights, e.g.
    ``{"classes": [...], "input_shape": [3, 32, 32], "mean": [...], "std": [...]}``;
    ``load_model(path, with_meta=True)`` returns it.
    """
    path = os.fspath(path)
    where = f"cannot save model {path!r}"
    if not hasattr(net, "state_dict") or not hasattr(net, "get_config"):
        raise CheckpointError(f"{where}: expected a convnp Layer/net, got {type(net).__name__}")
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise CheckpointError(f"{where}: extra must be a dict, got {type(extra).__name__}")
    config = layer_to_config(net)
    modules = {}
    for name in sorted(_layer_types(config)):
        cls = LAYER_TYPES.get(name)
        module = getattr(cls, "__module__", "") if cls is not None else ""
        if not module.startswith("convnp."):
            modules[name] = module
    header = {"format": FORMAT, "version": str(VERSION), "convnp_version": _convnp_version(),
              "config": _dumps(config, f"{where}: the net's config"),
              "extra": _dumps(extra, f"{where}: extra")}
    if modules:
        header["modules"] = _dumps(modules, f"{where}: modules")
    write_safetensors(path, net.state_dict(), header, "model")


def load_model(path, with_meta: bool = False):
    """The net saved by ``save_model``, ready for ``net(x)``; ``(net, extra)`` with ``with_meta=True``.

    Raises CheckpointError (naming the path) for a missing/corrupt/foreign file, a file
    without a config, a config convnp cannot rebuild, or weights that do not fit the net.
    Weights keep their saved float dtype (a net saved after ``net.to("float64")`` loads as
    float64).
    """
    path = os.fspath(path)
    arrays, md = read_safetensors(path, FORMAT, "model file")
    config = json_field(path, md, "config", "model file")
    extra = json_field(path, md, "extra", "model file", required=False)
    extra = {} if extra is None else extra
    modules = json_field(path, md, "modules", "model file", required=False) or {}
    if not _layer_types(config) <= set(LAYER_TYPES):
        _import_builtin_layers()
    try:
        net = layer_from_config(config)
    except (ConvnpError, TypeError, ValueError, KeyError) as e:
        hint = ""
        missing = {t: m for t, m in modules.items() if t not in LAYER_TYPES} if isinstance(modules, dict) else {}
        if missing:
            hint = " (layers defined outside convnp: " + ", ".join(
                f"{t} from module {m!r}" for t, m in sorted(missing.items())) + "; import them before loading)"
        raise CheckpointError(f"model file {path!r}: cannot rebuild the net from its config: {e}{hint}") from e
    saved = {a.dtype for a in arrays.values() if a.dtype.kind == "f"}
    own = {a.dtype for a in net.state_dict().values() if a.dtype.kind == "f"}
    if len(saved) == 1 and saved != own and own:
        net.to(next(iter(saved)))
    try:
        net.load_state_dict(arrays)
    except (ConvnpError, ValueError, KeyError) as e:
        raise CheckpointError(f"model file {path!r}: its weights do not fit the net its config builds "
                              f"({type(net).__name__}): {e}") from e
    return (net, extra) if with_meta else net


def model_info(path) -> dict:
    """The header of a saved model without loading weights: {"config", "extra", "convnp_version"}."""
    _, md = read_safetensors(path, FORMAT, "model file", with_arrays=False)
    return {"config": json_field(path, md, "config", "model file"),
            "extra": json_field(path, md, "extra", "model file", required=False) or {},
            "convnp_version": md.get("convnp_version", "unknown")}


__all__ = ["FORMAT", "save_model", "load_model", "model_info", "CheckpointError"]
