"""Gradient clipping in place, PyTorch's formulas (``torch.nn.utils.clip_grad_norm_``/``_value_``)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ConvnpError
from .optimizers import _real


class NonFiniteError(ConvnpError, FloatingPointError):
    """The total gradient norm is NaN or infinite (``clip_grad_norm(..., error_if_nonfinite=True)``)."""


def _arrays(grads) -> list:
    if isinstance(grads, dict):
        return [g for g in grads.values() if g is not None]
    if hasattr(grads, "shape"):
        return [grads]
    return [g for g in grads if g is not None]


def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so that their joint norm is at most ``max_norm``; return the
    norm before clipping.

    total = (sum_i ||g_i||_p ** p) ** (1/p)  (p = inf: the largest |g|);
    every g_i *= min(1, max_norm / (total + 1e-6)).  ``grads``: a dict name -> array or a list.
    """
    max_norm = _real(max_norm, "max_norm")
    if max_norm < 0:
        raise ConfigError(f"max_norm must be >= 0, got {max_norm}")
    p = float(norm_type) if not isinstance(norm_type, bool) else None
    if p is None or not (p > 0):
        raise ConfigError(f"norm_type must be > 0 or inf, got {norm_type!r}")
    arrays = _arrays(grads)
    if not arrays:
        return 0.0
    norms = [float(np.linalg.norm(g.ravel(), ord=p)) if g.size else 0.0 for g in arrays]
    if math.isinf(p):
        total = max(norms)
    else:
        total = float(np.linalg.norm(np.asarray(norms), ord=p))
    if error_if_nonfinite and not math.isfinite(total):
        raise NonFiniteError(f"the total norm of order {norm_type} of the gradients is {total}; "
                             "pass error_if_nonfinite=False to clip anyway")
    coef = min(max_norm / (total + 1e-6), 1.0) if not math.isnan(total) else math.nan
    for g in arrays:
        g *= coef
    return total


def clip_grad_value(grads, clip_value) -> None:
    """Clamp every gradient in place to [-clip_value, clip_value]."""
    clip_value = _real(clip_value, "clip_value")
    if clip_value < 0:
        raise ConfigError(f"clip_value must be >= 0, got {clip_value}")
    for g in _arrays(grads):
        np.clip(g, -clip_value, clip_value, out=g)
