"""Inverted dropout (PyTorch's convention: p is the probability of ZEROING a unit).

In training each unit is kept with probability 1 - p and scaled by 1 / (1 - p),
so the expected output equals the input and evaluation is the identity. The
mask, drawn from a numpy Generator, holds 0 or 1 / (1 - p) and is the cache:
backward multiplies by the same mask. ``channelwise=True`` draws one value per
(sample, channel) and broadcasts it over the spatial axes (Dropout2d).
"""

from __future__ import annotations

from .backend import array_module


def dropout_mask(shape, p: float, rng, dtype):
    """An array of ``shape`` with 1/(1-p) where a unit is kept (probability 1-p), else 0."""
    keep = rng.random(shape) >= p  # float64 uniforms in [0, 1): p=0 keeps all, p=1 keeps none
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return keep.astype(dtype) * dtype.type(scale)


def dropout_forward(x, p: float, rng, train: bool = True, channelwise: bool = False):
    """(N, *) -> (N, *): x * mask in training, x itself otherwise (cache None)."""
    if not train or p == 0:
        return x, None
    shape = x.shape[:2] + (1,) * (x.ndim - 2) if channelwise else x.shape
    mask = dropout_mask(shape, p, rng, x.dtype)
    mask = array_module(x).asarray(mask)  # the Generator is NumPy's: move the mask to x's device
    return x * mask, mask


def dropout_backward(dout, cache):
    return dout if cache is None else dout * cache
