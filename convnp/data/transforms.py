"""Batch transforms for NCHW image arrays, composable and seeded.

Every transform is called as ``t(x, rng=None)`` on a whole batch (N, C, H, W) (a single
(C, H, W) image works too) and returns a new array; the input is never modified. Random
transforms draw from ``rng`` (a ``numpy.random.Generator``) when given, else from the
generator made from their own ``rng=`` argument, so a ``DataLoader`` that passes a per-batch
generator derived from (seed, epoch, step) makes augmentation exactly reproducible.
Semantics and argument names follow torchvision.transforms.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from .._util import make_rng, pair

_PAD_MODES = ("constant", "edge", "reflect", "symmetric")


def _as_batch(x, who: str):
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ShapeError(f"{who}: expected NCHW (or CHW) images, got shape {x.shape}")
    return x, False


def _unbatch(x, single):
    return x[0] if single else x


class Transform:
    """Base class: ``__call__(x, rng=None)``; ``random`` tells whether it uses ``rng``."""

    random = False

    def __init__(self, rng=None):
        self._rng = make_rng(rng) if self.random else None

    def _gen(self, rng) -> np.random.Generator:
        return make_rng(rng) if rng is not None else self._rng

    def __call__(self, x, rng=None):
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Compose(Transform):
    """Apply ``transforms`` in order, handing each the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ConfigError(f"Compose: {t!r} is not callable")
        self.random = any(getattr(t, "random", False) for t in self.transforms)
        self._rng = None

    def __call__(self, x, rng=None):
        gen = make_rng(rng) if rng is not None else None
        for t in self.transforms:
            x = t(x, gen) if isinstance(t, Transform) else t(x)
        return x

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class ToFloat(Transform):
    """uint8 images -> float in [0, 1] (divides by 255); float input passes unchanged."""

    def __init__(self, dtype="float32"):
        super().__init__()
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ConfigError(f"ToFloat: dtype must be floating, got {self.dtype}")

    def __call__(self, x, rng=None):
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return x
        return np.divide(x, self.dtype.type(255.0), dtype=self.dtype)

    def extra_repr(self):
        return f"dtype={self.dtype.name}"


class Normalize(Transform):
    """``(x - mean[c]) / std[c]`` per channel. Float input only; the dtype is kept."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1 or len(self.mean) != len(self.std):
            raise ConfigError(f"Normalize: mean and std must be equal-length sequences, got "
                              f"{self.mean.tolist()} and {self.std.tolist()}")
        if np.any(self.std <= 0) or not np.all(np.isfinite(self.std)):
            raise ConfigError(f"Normalize: std must be positive, got {self.std.tolist()}")

    def __call__(self, x, rng=None):
        x, single = _as_batch(x, repr(self))
        if x.dtype.kind != "f":
            raise ShapeError(f"{self!r}: expects float images, got {x.dtype} (use ToFloat first)")
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ShapeError(f"{self!r}: {len(self.mean)} channel statistics for {c}-channel "
                             f"input of shape {x.shape}")
        mean = self.mean.astype(x.dtype).reshape(-1, 1, 1)
        inv = (1.0 / self.std).astype(x.dtype).reshape(-1, 1, 1)
        return _unbatch((x - mean) * inv, single)

    def extra_repr(self):
        f = lambda v: "(" + ", ".join(f"{t:.4g}" for t in v) + ")"  # noqa: E731
        return f"mean={f(self.mean)}, std={f(self.std)}"

    @classmethod
    def from_data(cls, data) -> Normalize:
        """``Normalize`` with the per-channel mean/std of ``data`` (e.g. the training split)."""
        from .datasets import channel_stats  # noqa: PLC0415

        return cls(*channel_stats(data))


def _padding4(padding) -> tuple[int, int, int, int]:
    """torchvision's padding: int, (left/right, top/bottom) or (left, top, right, bottom)."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = (int(padding),) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) in (2, 4) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in padding):
        p = tuple(int(v) for v in padding)
        p = (p[0], p[1], p[0], p[1]) if len(p) == 2 else p
    else:
        raise ConfigError(f"padding must be an int or a sequence of 2 or 4 ints, got {padding!r}")
    if min(p) < 0:
        raise ConfigError(f"padding must be >= 0, got {padding!r}")
    return p


class RandomCrop(Transform):
    """Pad by ``padding`` then crop a random ``size`` = (h, w) window, one offset per image.

    ``padding_mode``: ``"constant"`` (with ``fill``), ``"edge"``, ``"reflect"``, ``"symmetric"``.
    Output (N, C, h, w).
    """

    random = True

    def __init__(self, size, padding=0, fill=0.0, padding_mode="constant", rng=None):
        super().__init__(rng)
        self.size = pair(size, "RandomCrop size")
        self.padding = _padding4(padding)
        if padding_mode not in _PAD_MODES:
            raise ConfigError(f"RandomCrop: padding_mode must be one of {_PAD_MODES}, "
                              f"got {padding_mode!r}")
        self.fill = fill
        self.padding_mode = padding_mode

    def __call__(self, x, rng=None):
        gen = self._gen(rng)
        x, single = _as_batch(x, repr(self))
        left, top, right, bottom = self.padding
        if any(self.padding):
            kw = {"constant_values": self.fill} if self.padding_mode == "constant" else {}
            x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)),
                       mode=self.padding_mode, **kw)
        n, _, hp, wp = x.shape
        h, w = self.size
        if h > hp or w > wp:
            raise ShapeError(f"{self!r}: crop {h}x{w} larger than the padded input {hp}x{wp}")
        oy = gen.integers(0, hp - h + 1, size=n)
        ox = gen.integers(0, wp - w + 1, size=n)
        windows = np.lib.stride_tricks.sliding_window_view(x, (h, w), axis=(2, 3))
        out = windows[np.arange(n), :, oy, ox]  # (N, C, h, w)
        return _unbatch(np.ascontiguousarray(out), single)

    def extra_repr(self):
        s = f"size={self.size}"
        if any(self.padding):
            s += f", padding={self.padding}"
            s += f", fill={self.fill}" if self.padding_mode == "constant" else \
                f", padding_mode={self.padding_mode!r}"
        return s


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``."""

    random = True

    def __init__(self, p=0.5, rng=None):
        super().__init__(rng)
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x, rng=None):
        gen = self._gen(rng)
        x, single = _as_batch(x, repr(self))
        flip = gen.random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip][..., ::-1]
        return _unbatch(out, single)

    def extra_repr(self):
        return f"p={self.p}"


class CenterCrop(Transform):
    """Crop the central ``size`` = (h, w) window (torchvision's rounding of the offset)."""

    def __init__(self, size):
        super().__init__()
        self.size = pair(size, "CenterCrop size")

    def __call__(self, x, rng=None):
        x, single = _as_batch(x, repr(self))
        hi, wi = x.shape[2:]
        h, w = self.size
        if h > hi or w > wi:
            raise ShapeError(f"{self!r}: crop {h}x{w} larger than the input {hi}x{wi}")
        top = int(round((hi - h) / 2.0))
        left = int(round((wi - w) / 2.0))
        return _unbatch(np.ascontiguousarray(x[:, :, top:top + h, left:left + w]), single)

    def extra_repr(self):
        return f"size={self.size}"


def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of bilinear (triangle-filter) resampling, half-pixel centres.

    Upsampling is plain bilinear interpolation; downsampling with ``antialias`` widens the
    triangle by the scale factor (as Pillow and ``interpolate(..., antialias=True)`` do).
    Weights outside the input are dropped and each row renormalised (edge clamping).
    """
    scale = n_in / n_out
    support = scale if (antialias and scale > 1.0) else 1.0
    centers = (np.arange(n_out) + 0.5) * scale  # in input pixel units
    j = np.arange(n_in) + 0.5
    wts = np.maximum(0.0, 1.0 - np.abs(j[None, :] - centers[:, None]) / support)
    return wts / wts.sum(axis=1, keepdims=True)


class Resize(Transform):
    """Deterministic bilinear resize of a batch to ``size`` = (h, w).

    Matches ``torch.nn.functional.interpolate(x, size, mode="bilinear",
    align_corners=False, antialias=antialias)``. Float input only.
    """

    def __init__(self, size, antialias: bool = True):
        super().__init__()
        self.size = pair(size, "Resize size")
        self.antialias = bool(antialias)

    def __call__(self, x, rng=None):
        x, single = _as_batch(x, repr(self))
        if x.dtype.kind != "f":
            raise ShapeError(f"{self!r}: expects float images, got {x.dtype} (use ToFloat first)")
        hi, wi = x.shape[2:]
        h, w = self.size
        if (h, w) == (hi, wi):
            return _unbatch(x.copy(), single)
        ry = _resize_matrix(hi, h, self.antialias).astype(x.dtype)
        rx = _resize_matrix(wi, w, self.antialias).astype(x.dtype)
        out = np.matmul(np.matmul(ry, x), rx.T)  # (h, hi) @ (..., hi, wi) @ (wi, w)
        return _unbatch(out, single)

    def extra_repr(self):
        return f"size={self.size}" + ("" if self.antialias else ", antialias=False")
