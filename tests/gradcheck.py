"""Numerical gradient checks in float64, the notes' way (centered differences, relative error)."""

import numpy as np


def rel_error(a, b) -> float:
    """||a - b|| / max(||a||, ||b||): the notes' relative error, taken over the whole array."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f() / d x by centered differences, perturbing ``x`` in place (it is restored)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def check_layer_gradients(layer, x, train: bool = False, seed: int = 0, tol: float = 1e-6,
                          forward=None) -> dict:
    """Compare a layer's analytic dx and parameter gradients to numerical ones in float64.

    ``forward(x)`` overrides ``layer.forward(x, train)`` (e.g. to fix a dropout mask).
    Returns {name: relative error}; asserts each is below ``tol``.
    """
    layer.to(np.float64)
    x = np.array(x, dtype=np.float64)
    fwd = forward or (lambda inp: layer.forward(inp, train=train))
    out = fwd(x)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    dx = layer.backward(dout)
    analytic = {"x": dx, **{k: v.copy() for k, v in layer.grads.items()}}
    targets = {"x": x, **layer.params}
    errors = {}
    for name, arr in targets.items():
        num = numerical_gradient(lambda: float(np.sum(fwd(x) * dout)), arr)
        errors[name] = rel_error(analytic[name], num)
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"{layer!r}: gradient check failed (relative errors {bad}, tol {tol})"
    return errors
