"""Checkpoints: one safetensors file holding arrays plus JSON metadata, written atomically.

A checkpoint is a plain safetensors file. Its header metadata (string -> string) holds::

    {"format": "convnp-checkpoint", "version": "1", "convnp_version": "...",
     "convnp": json.dumps(meta)}

The file handling (atomic writes, header checks, clear errors) is ``convnp.io.safetensors_file``'s.

``save_state``/``load_state`` store a whole nested training state (model weights, optimizer
state, schedule, RNG states, loader position, metrics history, net config) in one file:
arrays go in the safetensors body, everything else in the JSON metadata, and loading gives
back the same tree.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..io.safetensors_file import (
    CHECKPOINT_FORMAT,
    SUPPORTED_DTYPES,
    VERSION,
    CheckpointError,
    _convnp_version,
    _dumps,
    _jsonable,
    atomic_path,
    atomic_write_bytes,
    json_field,
    read_safetensors,
    write_safetensors,
)

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_checkpoint_meta", "save_state",
           "load_state", "flatten_state", "unflatten_state", "kept_path", "keep_previous", "load_last_good",
           "rng_state", "restore_rng", "atomic_path", "atomic_write_bytes", "FORMAT", "VERSION", "SUPPORTED_DTYPES"]

FORMAT = CHECKPOINT_FORMAT
_ARRAY = "__array__"  # marker key in a flattened state's skeleton: {"__array__": "<array name>"}
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


# --- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(path, arrays: Mapping, meta: Mapping | None = None) -> None:
    """Atomically write ``arrays`` (name -> ndarray) and JSON-able ``meta`` as one safetensors file.

    Supported dtypes: SUPPORTED_DTYPES (bool, ints, uint8..uint64, float16/32/64, complex64);
    0-d and empty arrays round-trip. ``meta`` may hold None/bool/int/float/str/list/dict with
    string keys; numpy scalars become Python scalars and tuples become lists.
    """
    path = os.fspath(path)
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"cannot save checkpoint {path!r}: meta must be a dict, got {type(meta).__name__}")
    header = {"format": FORMAT, "version": str(VERSION), "convnp_version": _convnp_version(),
              "convnp": _dumps(meta, f"cannot save checkpoint {path!r}: meta")}
    write_safetensors(path, arrays, header, "checkpoint")


def load_checkpoint(path) -> tuple[dict, dict]:
    """(arrays, meta) from a file written by ``save_checkpoint``; never executes code from the file.

    A missing, empty, truncated, corrupt or foreign file (pickle/.pth, safetensors without
    convnp metadata, a saved model) raises CheckpointError naming the path and the problem.
    """
    arrays, md = read_safetensors(path, FORMAT, "checkpoint")
    meta = json_field(path, md, "convnp", "checkpoint")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: its meta is a {type(meta).__name__}, not a dict")
    return arrays, meta


def load_checkpoint_meta(path) -> dict:
    """Only the ``meta`` of a checkpoint (reads the header, not the arrays)."""
    _, md = read_safetensors(path, FORMAT, "checkpoint", with_arrays=False)
    meta = json_field(path, md, "convnp", "checkpoint")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r}: its meta is a {type(meta).__name__}, not a dict")
    return meta


# --- keeping the last k checkpoints ------------------------------------------------------------------
def kept_path(path, i: int) -> Path:
    """The i-th previous checkpoint kept beside ``path`` (``checkpoint.safetensors``: ``checkpoint.<i>.safetensors``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{i}{path.suffix}")


def keep_previous(path, keep: int) -> None:
    """Before ``path`` is overwritten: shift its kept copies one place older and keep it as copy 1.

    Afterwards the newest ``keep - 1`` previous checkpoints survive the write; ``keep=1`` keeps
    none. The current file becomes copy 1 by a hard link (by a copy where the filesystem has no
    links), so ``path`` itself never goes missing, even for a moment.
    """
    for i in range(keep - 2, 0, -1):
        if kept_path(path, i).exists():
            os.replace(kept_path(path, i), kept_path(path, i + 1))
    if keep > 1 and Path(path).exists():
        with atomic_path(kept_path(path, 1)) as tmp:
            os.unlink(tmp)
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)


def load_last_good(path) -> tuple[Path, dict, dict]:
    """(path, arrays, meta) of the newest checkpoint among ``path`` and its kept copies that loads.

    A newer one that is missing, truncated, unreadable or fails its digests is skipped with a
    message on stderr naming it and the one used instead, and is moved aside to
    ``<name>.corrupt``, so that keeping later checkpoints never pushes it over a good copy.
    CheckpointError when none loads, naming each and why.
    """
    path = Path(path)
    numbered = re.compile(re.escape(path.stem) + r"\.([1-9][0-9]*)" + re.escape(path.suffix))
    kept = sorted((int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
                  if (m := numbered.fullmatch(p.name)))
    failures = []
    for candidate in [path] + [p for _, p in kept]:
        try:
            arrays, meta = load_checkpoint(candidate)
        except CheckpointError as err:
            failures.append((candidate, err))
            continue
        for bad, err in failures:
            note = ""
            if bad.exists():
                aside = bad.with_name(bad.name + ".corrupt")
                try:
                    os.replace(bad, aside)
                except OSError as e:
                    raise CheckpointError(f"{err}; cannot move it aside to {str(aside)!r}: {e}") from e
                note = f"; moved it aside to {aside}"
            print(f"convnp: {err}{note}", file=sys.stderr, flush=True)
        if failures:
            print(f"convnp: resuming from the previous good checkpoint {candidate}", file=sys.stderr, flush=True)
        return candidate, arrays, meta
    if len(failures) == 1:
        raise failures[0][1]
    raise CheckpointError("no checkpoint loads: " + "; ".join(str(err) for _, err in failures))


# --- nested state trees -------------------------------------------------------------------------
def _escape(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


def flatten_state(prefix: str, tree) -> tuple[dict, object]:
    """Split a nested state into (arrays, skeleton) for ``save_checkpoint``.

    ``tree`` is any nesting of dicts (string keys), lists/tuples, ndarrays and JSON scalars.
    Each ndarray goes into ``arrays`` under ``"<prefix>/<key>/<key>..."`` (a '/' or '%' in a
    key is %-escaped, so dotted PyTorch names stay readable: ``optim/m/features.0.weight``);
    the skeleton is the same tree with every array replaced by ``{"__array__": name}`` and is
    JSON-able, so it can go into ``meta``. ``unflatten_state(arrays, skeleton)`` inverts it.
    Numpy scalars become Python scalars (same value), tuples become lists.
    """
    arrays: dict[str, np.ndarray] = {}

    def walk(node, parts):
        if isinstance(node, np.ndarray):
            name = "/".join(parts)
            arrays[name] = node
            return {_ARRAY: name}
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                if not isinstance(k, str):
                    raise CheckpointError(f"state {'/'.join(parts) or '<root>'}: dict keys must be strings, "
                                          f"got {type(k).__name__} {k!r}")
                if k == _ARRAY:
                    raise CheckpointError(f"state {'/'.join(parts) or '<root>'}: the key {_ARRAY!r} is reserved")
                out[k] = walk(v, parts + [_escape(k)])
            return out
        if isinstance(node, (list, tuple)):
            return [walk(v, parts + [str(i)]) for i, v in enumerate(node)]
        return _jsonable(node, f"state {'/'.join(parts) or '<root>'}")

    skeleton = walk(tree, [prefix] if prefix else [])
    return arrays, skeleton


def unflatten_state(arrays: Mapping, skeleton):
    """Inverse of ``flatten_state``: the skeleton with each ``{"__array__": name}`` -> ``arrays[name]``."""

    def walk(node, where):
        if isinstance(node, dict):
            if set(node) == {_ARRAY} and isinstance(node[_ARRAY], str):
                name = node[_ARRAY]
                if name not in arrays:
                    raise CheckpointError(f"state {where}: array {name!r} is missing from the checkpoint")
                return arrays[name]
            return {k: walk(v, f"{where}/{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(node)]
        return node

    return walk(skeleton, "<root>")


def save_state(path, state: Mapping) -> None:
    """Atomically save a nested training state (see ``flatten_state``) as one checkpoint.

    E.g. ``{"model": net.state_dict(), "optimizer": opt.state_dict(), "schedule": {...},
    "rng": {"data": rng_state(g)}, "loader": {"epoch": 3, "step": 17}, "history": {...},
    "net": layer_to_config(net)}``; ``load_state(path)`` returns an equal tree.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"cannot save checkpoint {os.fspath(path)!r}: state must be a dict, "
                              f"got {type(state).__name__}")
    arrays, skeleton = flatten_state("", state)
    save_checkpoint(path, arrays, {"state": skeleton})


def load_state(path) -> dict:
    """The nested state saved by ``save_state``, arrays included."""
    arrays, meta = load_checkpoint(path)
    if "state" not in meta:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} was written by save_checkpoint, not "
                              "save_state (no 'state' in its meta); use load_checkpoint")
    return unflatten_state(arrays, meta["state"])


# --- random generators --------------------------------------------------------------------------
def _encode_rng(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.name}
    if isinstance(obj, dict):
        return {k: _encode_rng(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode_rng(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__", "dtype"}:
            return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        return {k: _decode_rng(v) for k, v in obj.items()}
    return obj


def rng_state(gen) -> dict:
    """The exact state of a numpy Generator (or BitGenerator) as a JSON-able dict.

    PCG64's 128-bit integers stay Python ints (JSON keeps them exact); array parts of other
    bit generators (MT19937, Philox) become ``{"__ndarray__": [...], "dtype": ...}``.
    """
    if isinstance(gen, np.random.Generator):
        bg = gen.bit_generator
    elif isinstance(gen, np.random.BitGenerator):
        bg = gen
    else:
        raise CheckpointError(f"rng_state needs a numpy Generator or BitGenerator, got {type(gen).__name__}")
    return _encode_rng(bg.state)


def restore_rng(state: Mapping, into: np.random.Generator | None = None) -> np.random.Generator:
    """A Generator that continues exactly where the one ``rng_state`` saw left off.

    With ``into``, that Generator's state is overwritten in place and it is returned, so
    layers that hold a reference to it (dropout, augmentation) continue the saved stream.
    Only the stream is restored, not the SeedSequence used by ``spawn``.
    """
    if not isinstance(state, Mapping) or state.get("bit_generator") not in _BIT_GENERATORS:
        name = state.get("bit_generator") if isinstance(state, Mapping) else None
        raise CheckpointError(f"not a saved numpy RNG state (bit_generator {name!r}; known: "
                              f"{', '.join(_BIT_GENERATORS)})")
    decoded = _decode_rng(dict(state))
    if into is None:
        bg = getattr(np.random, decoded["bit_generator"])(0)
        gen = np.random.Generator(bg)
    elif isinstance(into, np.random.Generator):
        bg, gen = into.bit_generator, into
        if type(bg).__name__ != decoded["bit_generator"]:
            raise CheckpointError(f"cannot restore a {decoded['bit_generator']} state into a Generator "
                                  f"using {type(bg).__name__}")
    else:
        raise CheckpointError(f"restore_rng(into=...) needs a numpy Generator, got {type(into).__name__}")
    try:
        bg.state = decoded
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"invalid saved {decoded['bit_generator']} RNG state: {e}") from e
    return gen
