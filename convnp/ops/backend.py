"""The array module of an input: NumPy, or CuPy when a GPU backend hands us its arrays."""

import numpy as np


def array_module(x):
    """Return the module (numpy or cupy) that owns array ``x``."""
    if type(x).__module__.startswith("cupy"):
        import cupy  # noqa: PLC0415 - only reached with cupy arrays

        return cupy
    return np
