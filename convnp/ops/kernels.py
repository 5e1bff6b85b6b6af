"""Optional compiled kernels (numba) behind the NumPy ops, and the switch that picks them.

    pip install "convnp[fast]"        # numba
    CONVNP_KERNELS=numpy              # force the pure-NumPy code (default "auto": numba if installed)
    with convnp.ops.kernels.use("numpy"): ...

The kernels are plain loops over channels-last (NHWC) memory, compiled with ``nogil=True`` so
convnp's worker threads run them side by side, and never ``parallel=True`` (convnp does its own
threading; numba's OpenMP-style pools next to it collapse throughput). Every op that uses one
has a NumPy path computing the same numbers, and the tests run both. Compiled code is cached
on disk (``cache=True``), so only the first process pays the compile time (about a second).

What is here: bias + ReLU on a matrix-multiply output while it is still in cache, single-pass
max pooling with the argmax "switches" and its backward, and ReLU forward/backward in one pass;
``kernels_winograd`` holds the Winograd 3x3 convolution; the loops themselves are in ``kernels_numba``
(imported on first use, so ``import convnp`` never imports numba) and ``warmup.warm()`` compiles
them all up front. (An im2col kernel was tried and dropped:
NumPy's strided copy into cache-sized chunks measured 1.5-3x faster than the numba loop.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tracemalloc

from ..errors import ConfigError

CHOICES = ("auto", "numba", "numpy")
ENV_VAR = "CONVNP_KERNELS"

#: numba is installed (found without importing it: ``import convnp`` stays light; the compiled
#: kernels load on first use, from numba's on-disk cache after the first process).
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None

_choice = {"value": None}


def _resolve(value: str) -> bool:
    if value not in CHOICES:
        raise ConfigError(f"kernels must be one of {CHOICES}, got {value!r}")
    if value == "numba" and not _HAVE_NUMBA:
        raise ConfigError("kernels='numba' needs numba: pip install 'convnp[fast]'")
    return _HAVE_NUMBA and value in ("auto", "numba")


def available() -> bool:
    """True when numba is installed."""
    return _HAVE_NUMBA


def enabled() -> bool:
    """True when the compiled kernels are in use (numba installed and not switched off).

    While ``tracemalloc`` traces (``convnp.memory.measure_peak``) the NumPy code runs instead,
    unless ``warm()`` ran first: numba's first call in a process loads its compiler and the
    cached machine code, about 20 MB of Python objects that a memory measurement would count.
    """
    if _choice["value"] is None:
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        try:
            _choice["value"] = _resolve(env)
        except ConfigError as err:
            raise ConfigError(f"{ENV_VAR}={env!r}: {err}") from None
    return _choice["value"] and (_warm["done"] or not tracemalloc.is_tracing())


_warm = {"done": False}


def mark_warm() -> None:
    """Record that ``warmup.warm()`` loaded the kernels (the NumPy fallback under tracemalloc ends)."""
    _warm["done"] = True


def set_kernels(value: str) -> None:
    """"auto" (numba when installed), "numba" (error without it) or "numpy"."""
    _choice["value"] = _resolve(value)


@contextlib.contextmanager
def use(value: str):
    """Context manager: ``set_kernels(value)`` inside the block."""
    before = enabled()
    set_kernels(value)
    try:
        yield
    finally:
        _choice["value"] = before


def name() -> str:
    return "numba" if enabled() else "numpy"


# --- helpers for the ops ----------------------------------------------------------------------------
def flat_view(x):
    """A 1-d view of all of ``x`` in memory order when its memory is one contiguous block, else None."""
    if x.flags.c_contiguous:
        return x.reshape(-1)
    if x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous:  # NCHW view of NHWC memory
        return x.transpose(0, 2, 3, 1).reshape(-1)
    return None


def flat_pair(a, b):
    """1-d views of ``a`` and ``b`` in one common memory order (same shape and layout), else (None, None)."""
    if a.shape != b.shape:
        return None, None
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return a.reshape(-1), b.reshape(-1)
    if a.ndim == 4 and not a.flags.c_contiguous and not b.flags.c_contiguous:
        ta, tb = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
        if ta.flags.c_contiguous and tb.flags.c_contiguous:
            return ta.reshape(-1), tb.reshape(-1)
    return None, None


def compiled_dtype(*arrays) -> bool:
    """True when every array is float32 or float64 (the dtypes the kernels are compiled for)."""
    return all(a.dtype.kind == "f" and a.dtype.itemsize in (4, 8) for a in arrays)


_COMPILED = {"module": None}


def __getattr__(name: str):
    """``kernels.bias_relu`` and friends: the compiled kernel, importing numba on first use."""
    if name.startswith("_") or not _HAVE_NUMBA:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _COMPILED["module"] is None:
        from . import kernels_numba  # noqa: PLC0415 - the one place numba is imported

        _COMPILED["module"] = kernels_numba
    try:
        return getattr(_COMPILED["module"], name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
