"""Prediction on image files with a saved model: load, resize, normalise, softmax, top-k."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..losses import probabilities


def load_image(path, input_shape) -> np.ndarray:
    """An image file as float32 (C, H, W) in [0, 1], converted to the model's channels and size."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def predict_images(net, extra: dict, paths, k: int = 3):
    """For each path: (path, [(class name, probability), ...] top ``k``), using the saved metadata."""
    input_shape = tuple(extra["input_shape"])
    x = np.stack([load_image(p, input_shape) for p in paths])
    if "mean" in extra:
        mean = np.asarray(extra["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(extra["std"], np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    probs = probabilities(net.forward(x, train=False))
    classes = extra.get("classes") or [str(i) for i in range(probs.shape[1])]
    results = []
    for path, row in zip(paths, probs):
        top = np.argsort(-row)[:k]
        results.append((str(path), [(classes[i], float(row[i])) for i in top]))
    return results
