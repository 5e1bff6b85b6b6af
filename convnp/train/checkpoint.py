"""Checkpoints: one safetensors file holding arrays plus JSON metadata, written atomically.

A checkpoint is a plain safetensors file. Its header metadata (string -> string) holds::

    {"format": "convnp-checkpoint", "version": "1", "convnp_version": "...",
     "convnp": json.dumps(meta)}

Loading parses only the safetensors header (JSON) and raw little-endian array bytes, so
opening a file never runs code from it: there is no pickle anywhere in convnp's file formats.

Writing goes to a hidden temporary file in the target's directory, is flushed and fsynced,
then ``os.replace``-d onto the target (and the directory fsynced): a crash or a kill in the
middle leaves the previous file intact (a killed process may leave its ``.<name>.<hex>.tmp``,
or safetensors' own ``.tmpXXXXXX``: safetensors >= 0.8 also writes via a temp file and rename,
but does not fsync, and convnp does not rely on that).

``save_state``/``load_state`` store a whole nested training state (model weights, optimizer
state, schedule, RNG states, loader position, metrics history, net config) in one file:
arrays go in the safetensors body, everything else in the JSON metadata, and loading gives
back the same tree.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

from ..errors import ConvnpError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_checkpoint_meta", "save_state",
           "load_state", "flatten_state", "unflatten_state", "rng_state", "restore_rng", "atomic_path",
           "atomic_write_bytes", "FORMAT", "VERSION", "SUPPORTED_DTYPES"]

FORMAT = "convnp-checkpoint"
VERSION = 1
MODEL_FORMAT = "convnp-model"  # written by convnp.io.model_file; named here for clear errors

# numpy dtypes safetensors stores (bfloat16/float8 have no numpy dtype).
SUPPORTED_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                    "float16", "float32", "float64", "complex64")

_ARRAY = "__array__"  # marker key in a flattened state's skeleton: {"__array__": "<array name>"}
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class CheckpointError(ConvnpError):
    """A checkpoint or saved model cannot be written or read: names the path and the problem."""


# --- atomic writing ---------------------------------------------------------------------------
@contextmanager
def atomic_path(path):
    """Yield a fresh temporary path next to ``path``; on success move it onto ``path`` atomically.

    The caller writes the complete file to the yielded path. On a clean exit the file is
    fsynced, ``os.replace``-d onto ``path`` and the directory fsynced; on any exception
    (KeyboardInterrupt included) the temporary file is removed and ``path`` is untouched.
    Missing parent directories are created.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"cannot write {path!r}: it is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot write {path!r}: cannot create directory {directory!r}: {e}") from e
    base = os.path.basename(path)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise CheckpointError(f"cannot write {path!r}: {e}") from e
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; filesystems/platforms that cannot fsync a directory are skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()


# --- JSON conversion --------------------------------------------------------------------------
def _jsonable(obj, where: str):
    """A JSON-ready copy of ``obj``: numpy scalars become Python scalars, tuples become lists.

    Dict keys must be strings (JSON would silently turn 1 into "1"); arrays are refused
    (they belong in the arrays dict). NaN/inf are kept (Python's json round-trips them).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: dict keys must be strings, got {type(k).__name__} {k!r}")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        raise CheckpointError(f"{where}: is an array {obj.shape} {obj.dtype}; store arrays in the arrays "
                              "dict (or use save_state), not in the JSON metadata")
    raise CheckpointError(f"{where}: {type(obj).__name__} is not JSON-serialisable "
                          "(allowed: None, bool, int, float, str, list, tuple, dict with str keys)")


def _dumps(obj, where: str) -> str:
    return json.dumps(_jsonable(obj, where), ensure_ascii=False, separators=(",", ":"))


# --- generic safetensors file with a convnp header ---------------------------------------------
def _prepare_arrays(arrays, path: str, what: str) -> dict:
    if not isinstance(arrays, Mapping):
        raise CheckpointError(f"cannot save {what} {path!r}: arrays must be a dict name -> array, "
                              f"got {type(arrays).__name__}")
    out = {}
    for k, v in arrays.items():
        if not isinstance(k, str):
            raise CheckpointError(f"cannot save {what} {path!r}: array names must be strings, got {k!r}")
        if k == "__metadata__":
            raise CheckpointError(f"cannot save {what} {path!r}: '__metadata__' is reserved by safetensors")
        try:
            a = np.asarray(v)
        except Exception as e:  # e.g. a GPU array that refuses implicit conversion
            raise CheckpointError(f"cannot save {what} {path!r}: {k!r} is not convertible to a numpy "
                                  f"array ({type(v).__name__}): {e}") from e
        if a.dtype.name not in SUPPORTED_DTYPES:
            raise CheckpointError(f"cannot save {what} {path!r}: {k!r} has dtype {a.dtype}, which "
                                  f"safetensors cannot store (supported: {', '.join(SUPPORTED_DTYPES)})")
        if not a.flags.c_contiguous:  # safetensors.numpy writes raw memory: must be C-ordered
            a = a.copy(order="C")
        out[k] = a
    return out


def write_safetensors(path, arrays, metadata: dict, what: str = "checkpoint") -> None:
    """Atomically write ``arrays`` and string ``metadata`` as one safetensors file."""
    import safetensors.numpy as stnp

    path = os.fspath(path)
    prepared = _prepare_arrays(arrays, path, what)
    with atomic_path(path) as tmp:
        mode = os.stat(tmp).st_mode & 0o777  # 0o666 minus the umask, as created by atomic_path
        try:
            stnp.save_file(prepared, tmp, metadata=metadata)
        except Exception as e:
            raise CheckpointError(f"cannot save {what} {path!r}: {e}") from e
        os.chmod(tmp, mode)  # safetensors creates its file 0o600; give it the usual permissions


def _sniff(path: str) -> str | None:
    """Name a file kind we recognise by its first bytes (for error messages), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (e.g. a legacy torch.save .pth/.pt)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (e.g. a torch.save .pth/.pt or a numpy .npz)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (e.g. Keras .h5)"
    return None


def _open_error(path: str, what: str, err: Exception) -> CheckpointError:
    size = os.path.getsize(path)
    kind = _sniff(path)
    if size == 0:
        return CheckpointError(f"{what} {path!r} is empty (0 bytes)")
    if kind is not None:
        return CheckpointError(f"{what} {path!r} is {kind}, not a convnp safetensors file; convnp never "
                               "unpickles files (unpickling can run arbitrary code). For PyTorch weights, "
                               "re-save them where you trust them with safetensors.torch.save_file(model."
                               "state_dict(), ...) and import that")
    return CheckpointError(f"{what} {path!r} is not a valid safetensors file (corrupt or truncated, "
                           f"{size} bytes): {err}")


@contextmanager
def _open_safetensors(path, what: str):
    """safe_open ``path`` for numpy, turning every failure into a CheckpointError."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path!r} is a directory, not a file")
    try:
        handle = safe_open(path, framework="numpy")
    except OSError as e:
        raise CheckpointError(f"cannot open {what} {path!r}: {e}") from e
    except Exception as e:  # SafetensorError: bad header length, bad JSON, bad offsets, truncation
        raise _open_error(path, what, e) from e
    with handle as f:
        yield f


def _check_format(path: str, metadata, expected: str, what: str) -> dict:
    md = dict(metadata or {})
    fmt = md.get("format")
    if fmt != expected:
        if fmt is None:
            raise CheckpointError(f"{what} {path!r} is a safetensors file without convnp metadata (no "
                                  f"'format' in its header): not written by convnp's {expected} writer")
        hint = ""
        if fmt == MODEL_FORMAT:
            hint = "; it is a saved model: load it with convnp.io.model_file.load_model (convnp.load)"
        elif fmt == FORMAT:
            hint = "; it is a training checkpoint: load it with convnp.train.checkpoint.load_checkpoint"
        raise CheckpointError(f"{what} {path!r} has format {fmt!r}, expected {expected!r}{hint}")
    try:
        version = int(md.get("version", ""))
    except ValueError:
        raise CheckpointError(f"{what} {path!r} has an invalid format version {md.get('version')!r}") from None
    if version > VERSION or version < 1:
        raise CheckpointError(f"{what} {path!r} has format version {version}; this convnp reads version "
                              f"{VERSION} (a newer convnp wrote it?)")
    return md


def read_safetensors(path, expected_format: str, what: str = "checkpoint",
                     with_arrays: bool = True) -> tuple[dict, dict]:
    """(arrays, header metadata) of a convnp safetensors file whose format is ``expected_format``.

    Arrays are writable copies in the file's key order; with ``with_arrays=False`` only the
    header is read. Every failure raises CheckpointError naming the path.
    """
    path = os.fspath(path)
    with _open_safetensors(path, what) as f:
        md = _check_format(path, f.metadata(), expected_format, what)
        arrays = {}
        if with_arrays:
            try:
                for k in f.keys():
                    arrays[k] = np.array(f.get_tensor(k), copy=True)
            except Exception as e:
                raise CheckpointError(f"{what} {path!r}: cannot read array data: {e}") from e
    return arrays, md


def json_field(path, md: dict, key: str, what: str, required: bool = True):
    """json.loads of header field ``key``; CheckpointError when missing (if required) or malformed."""
    if key not in md:
        if required:
            raise CheckpointError(f"{what} {os.fspath(path)!r} has no {key!r} entry in its header")
        return None
    try:
        return json.loads(md[key])
    except ValueError as e:
        raise CheckpointError(f"{what} {os.fspath(path)!r}: header entry {key!r} is not valid JSON: {e}") from e


def _convnp_version() -> str:
    import convnp

    return str(getattr(convnp, "__version__", "unknown"))


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
