"""Losses on class scores: softmax cross-entropy and the multiclass SVM (hinge).

Each is called as ``loss, dscores = SoftmaxCrossEntropy()(scores, labels)``:
``scores`` is (N, C) floating point, ``labels`` (N,) integers in [0, C). ``loss``
is the mean over the batch (a Python float) and ``dscores`` (N, C), in the dtype
of ``scores``, is the gradient of that mean. The functional forms
``softmax_cross_entropy`` and ``multiclass_svm`` do the same without a class.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError, ShapeError
from .ops.backend import array_module

LOSS_TYPES: dict[str, type] = {}
LOSS_ALIASES = {"softmax": "SoftmaxCrossEntropy", "cross_entropy": "SoftmaxCrossEntropy",
                "svm": "MulticlassSVM", "hinge": "MulticlassSVM"}


def get_loss(name: str, **config) -> "Loss":
    """A loss by class name (``"SoftmaxCrossEntropy"``) or alias (softmax, cross_entropy, svm, hinge)."""
    cls = LOSS_TYPES.get(LOSS_ALIASES.get(name, name))
    if cls is None:
        known = sorted(LOSS_TYPES) + sorted(LOSS_ALIASES)
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(known)}")
    return cls.from_config(config)


def _as_array(a):
    return a if hasattr(a, "shape") else np.asarray(a)


def log_softmax(scores, axis: int = -1):
    """log of the softmax along ``axis``, with the max subtracted first so large scores cannot overflow."""
    scores = _as_array(scores)
    xp = array_module(scores)
    shifted = scores - scores.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def probabilities(scores, axis: int = -1):
    """Softmax of ``scores`` along ``axis`` (the class axis of (N, C) scores): rows sum to 1."""
    scores = _as_array(scores)
    xp = array_module(scores)
    e = xp.exp(scores - scores.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _real_arg(value, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be a finite real number, got {value!r}")
    return float(value)


def _check_smoothing(label_smoothing) -> float:
    eps = _real_arg(label_smoothing, "label_smoothing", "SoftmaxCrossEntropy")
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def _check_margin(margin) -> float:
    m = _real_arg(margin, "margin", "MulticlassSVM")
    if m < 0:
        raise ConfigError(f"MulticlassSVM: margin must be >= 0, got {margin!r}")
    return m


def _check_inputs(scores, labels, owner: str):
    """scores (N, C) float and labels (N,) ints in [0, C), or a ShapeError naming ``owner``."""
    scores, labels = _as_array(scores), _as_array(labels)
    if scores.ndim != 2:
        raise ShapeError(f"{owner}: expected scores of shape (N, C), got shape {tuple(scores.shape)}")
    if scores.dtype.kind != "f":
        raise ShapeError(f"{owner}: expected floating-point scores, got dtype {scores.dtype}")
    n, c = scores.shape
    if n == 0 or c == 0:
        raise ShapeError(f"{owner}: scores of shape {(n, c)} hold no samples or no classes")
    if labels.ndim != 1:
        raise ShapeError(f"{owner}: expected labels of shape (N,), got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise ShapeError(f"{owner}: labels must be integer class indices, got dtype {labels.dtype} "
                         "(use labels.astype(int))")
    if labels.shape[0] != n:
        raise ShapeError(f"{owner}: {n} rows of scores but {labels.shape[0]} labels")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= c:
        bad = lo if lo < 0 else hi
        raise ShapeError(f"{owner}: label {bad} is out of range for {c} classes (labels must be in [0, {c}))")
    return scores, labels, array_module(scores)


def _batch_mean(v):
    """Mean of a 1-d array as v[0] + mean(v - v[0]): exact when every row agrees (ln C for zero scores)."""
    return v[0] + (v - v[0]).mean()


def softmax_cross_entropy(scores, labels, label_smoothing: float = 0.0):
    """Mean over the batch of -sum_j t_j log softmax(s)_j, with t = (1-eps) onehot(y) + eps/C.

    eps = label_smoothing (0 gives the plain -log p_y). Same as
    ``torch.nn.CrossEntropyLoss(label_smoothing=eps)``. Returns (loss, dscores) with
    dscores = (softmax(s) - t) / N, whose rows sum to 0.
    """
    label_smoothing = _check_smoothing(label_smoothing)
    scores, labels, xp = _check_inputs(scores, labels, "SoftmaxCrossEntropy")
    n, c = scores.shape
    rows = xp.arange(n)
    logp = log_softmax(scores)
    loss = _batch_mean(-logp[rows, labels])
    if label_smoothing:
        # (1-eps) * nll + eps * mean_i(-(1/C) sum_j log p_ij): torch's formula.
        loss = (1 - label_smoothing) * loss - label_smoothing * _batch_mean(logp.mean(axis=1))
    target = xp.full(scores.shape, label_smoothing / c, dtype=scores.dtype)
    target[rows, labels] += scores.dtype.type(1 - label_smoothing)
    dscores = (xp.exp(logp) - target) / scores.dtype.type(n)
    return float(loss), dscores


def multiclass_svm(scores, labels, margin: float = 1.0):
    """Mean over the batch of sum_{j != y} max(0, s_j - s_y + margin): the CS231n hinge loss.

    Equals ``C * torch.nn.MultiMarginLoss(margin=margin)`` (torch divides by C). The
    subgradient at a margin of exactly 0 is 0. Returns (loss, dscores).
    """
    margin = _check_margin(margin)
    scores, labels, xp = _check_inputs(scores, labels, "MulticlassSVM")
    n = scores.shape[0]
    rows = xp.arange(n)
    correct = scores[rows, labels][:, None]
    margins = xp.maximum(scores - correct + scores.dtype.type(margin), 0)
    margins[rows, labels] = 0
    loss = margins.sum() / n
    active = (margins > 0).astype(scores.dtype)
    active[rows, labels] = -active.sum(axis=1)
    return float(loss), active / scores.dtype.type(n)


class Loss:
    """Base class: ``loss, dscores = loss_fn(scores, labels)``; config round-trip; registry by class name."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LOSS_TYPES[cls.__name__] = cls

    def __call__(self, scores, labels):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, cfg: dict):
        return cls(**cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SoftmaxCrossEntropy(Loss):
    """Softmax classifier loss, mean over the batch; ``label_smoothing`` in [0, 1] as in PyTorch.

    scores (N, C), labels (N,) -> (loss, dscores (N, C)). With all-zero scores the loss is ln C.
    """

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = _check_smoothing(label_smoothing)

    def __call__(self, scores, labels):
        return softmax_cross_entropy(scores, labels, self.label_smoothing)

    def get_config(self) -> dict:
        return {"label_smoothing": self.label_smoothing}


class MulticlassSVM(Loss):
    """Multiclass SVM (Weston-Watkins hinge) loss, mean over the batch, with margin delta >= 0.

    scores (N, C), labels (N,) -> (loss, dscores (N, C)). With all-zero scores the loss is (C-1)*margin.
    """

    def __init__(self, margin: float = 1.0):
        self.margin = _check_margin(margin)

    def __call__(self, scores, labels):
        return multiclass_svm(scores, labels, self.margin)

    def get_config(self) -> dict:
        return {"margin": self.margin}
