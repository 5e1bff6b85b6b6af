"""PNG pictures for the report: matplotlib figures and arrays, rendered off-screen (Agg) to bytes.

matplotlib is optional (``pip install convnp[report]``) and imported only when a picture is
made. Figures are drawn on their own Agg canvas, never through pyplot, so nothing here touches
matplotlib's global backend or figure list.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import ConvnpError

__all__ = [
    "MissingDependencyError",
    "array_png",
    "confusion_png",
    "figure",
    "figure_png",
    "require_matplotlib",
    "training_curves_png",
    "upscale",
]


class MissingDependencyError(ConvnpError, ImportError):
    """An optional dependency (matplotlib for the report) is not installed."""


def require_matplotlib():
    """The matplotlib module, or a MissingDependencyError saying how to install it."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError("the training report needs matplotlib: pip install 'convnp[report]'") from None
    return matplotlib


def figure(width: float, height: float):
    """A matplotlib Figure (inches) attached to its own Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def upscale(a: np.ndarray, target: int) -> np.ndarray:
    """Nearest-neighbour enlarge by the integer factor that brings the longer side near ``target``."""
    factor = max(1, round(target / max(a.shape[0], a.shape[1])))
    if factor == 1:
        return a
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def array_png(a, cmap: str = "gray", vmin: float | None = 0.0, vmax: float | None = 1.0, target: int = 0) -> bytes:
    """An (H, W) array through ``cmap`` (or an (H, W, 3) RGB array in [0, 1]) as PNG bytes.

    ``target`` > 0 enlarges small images (nearest neighbour) so they stay crisp in any viewer.
    """
    require_matplotlib()
    from matplotlib.image import imsave  # noqa: PLC0415

    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = np.clip(a, 0.0, 1.0)
    a = np.nan_to_num(a)
    if target:
        a = upscale(a, target)
    buf = io.BytesIO()
    if a.ndim == 3:
        imsave(buf, a, format="png")
    else:
        imsave(buf, a, cmap=cmap, vmin=vmin, vmax=vmax, format="png")
    return buf.getvalue()


def training_curves_png(history: list) -> bytes:
    """Loss, accuracy (training and validation) and learning rate per epoch, side by side, and
    validation accuracy against wall-clock minutes when the history has times."""
    timed = any(row.get("time") is not None for row in history) and \
        any(row.get("val_accuracy") is not None for row in history)
    fig = figure(16 if timed else 12, 3.4)
    axes = fig.subplots(1, 4 if timed else 3)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]

    def series(key):
        values = [row.get(key) for row in history]
        return None if all(v is None for v in values) else [np.nan if v is None else v for v in values]

    for ax, (title, keys) in zip(axes, [("loss", ("train_loss", "val_loss")),
                                        ("accuracy", ("train_accuracy", "val_accuracy")),
                                        ("learning rate (end of epoch)", ("lr",))]):
        for key in keys:
            values = series(key)
            if values is not None:
                label = {"lr": "lr"}.get(key, "training" if key.startswith("train") else "validation")
                ax.plot(epochs, values, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        if len(keys) > 1 and ax.lines:
            ax.legend()
    if timed:
        ax = axes[3]
        points = [(row["time"] / 60, row["val_accuracy"]) for row in history
                  if row.get("time") is not None and row.get("val_accuracy") is not None]
        ax.plot(*zip(*points), marker="o", label="validation")
        ax.set_title("accuracy against wall-clock time")
        ax.set_xlabel("minutes")
        ax.grid(True, alpha=0.3)
    return figure_png(fig)


def confusion_png(cm: np.ndarray, classes: list) -> bytes:
    """The confusion matrix: rows true, columns predicted; colour is the row's fraction, text the count."""
    cm = np.asarray(cm)
    k = cm.shape[0]
    size = min(12.0, max(4.5, 0.4 * k + 1.8))
    fig = figure(size + 1.0, size)
    ax = fig.subplots()
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 30:
        labels = [str(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=90 if max(map(len, labels)) > 3 else 0)
        ax.set_yticks(range(k), labels)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    frac = cm[i, j] / rows[i, 0]
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if frac > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return figure_png(fig)

