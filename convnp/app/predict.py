"""Prediction on image files with a saved model: load, resize, normalise, softmax, top-k."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
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


def predict_images(net, extra: dict, paths, k: int | None = None, input_shape=None):
    """For each path: (path, [(class name, probability), ...] top ``k``), using the saved metadata.

    ``k``: 1 to the number of classes (default 3, or fewer classes). ``input_shape`` (C, H, W):
    default the recorded ``extra["input_shape"]``, else the net's own. Both are checked before
    any image is read.
    """
    shape = input_shape or extra.get("input_shape") or getattr(net, "input_shape", None)
    if not shape:
        raise ConfigError("the model records no input shape (saved without extra={'input_shape': [C, H, W]}): "
                          "give one, input_shape=(C, H, W) or convnp predict --input CxHxW")
    input_shape = tuple(shape)
    if len(input_shape) != 3:
        raise ConfigError(f"images need a (C, H, W) input shape (--input CxHxW), got {input_shape}")
    if ("mean" in extra) != ("std" in extra):
        raise ConfigError("the model records only one of the normalisation's mean and std")
    num_classes = net.output_shape(input_shape)[0]
    if k is None:
        k = min(3, num_classes)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise ConfigError(f"top k (--top) must be 1 to the model's {num_classes} classes, got {k!r}")
    classes = extra.get("classes") or [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ConfigError(f"the model records {len(classes)} class names for its {num_classes} outputs")
    x = np.stack([load_image(p, input_shape) for p in paths])
    if "mean" in extra:
        mean = np.asarray(extra["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(extra["std"], np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    probs = probabilities(net.forward(x, train=False))
    results = []
    for path, row in zip(paths, probs):
        top = np.argsort(-row)[:k]
        results.append((str(path), [(classes[i], float(row[i])) for i in top]))
    return results
