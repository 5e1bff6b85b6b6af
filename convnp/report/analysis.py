"""What a trained net has learned, as arrays: the numbers behind the report's pictures.

Pure NumPy, no plotting. Every function takes a convnp net (anything with ``forward`` and
``backward``) and inputs already in the form the net expects (normalised NCHW).

* ``saliency_map``: |d score_class / d x|, max over channels (Simonyan et al. 2014).
* ``occlusion_map``: drop of the class probability while a patch is greyed out (Zeiler & Fergus 2014).
* ``confusion_matrix``, ``per_class_accuracy``, ``most_confident_mistakes``.
* ``filter_grid``: a conv layer's filters tiled into one image, like the notes' AlexNet figure.
* ``activation_maps``: the outputs of named layers for a batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, ShapeError
from ..losses import probabilities
from ..ops.im2col import output_hw, pair

__all__ = [
    "Mistake",
    "activation_maps",
    "confusion_matrix",
    "default_activation_layers",
    "filter_grid",
    "first_conv",
    "most_confident_mistakes",
    "occlusion_map",
    "occlusion_pixel_map",
    "per_class_accuracy",
    "saliency_map",
    "tile_images",
]

#: Layer types whose output the report shows as "the activation" of a conv layer.


def _image_batch(x, owner: str):
    """(N, C, H, W) float array and whether a single (C, H, W) image was given."""
    x = np.asarray(x) if not hasattr(x, "shape") else x
    if x.ndim not in (3, 4):
        raise ShapeError(f"{owner}: expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype.kind != "f":
        raise ShapeError(f"{owner}: expected a floating-point input, got dtype {x.dtype}")
    return (x[None], True) if x.ndim == 3 else (x, False)


def _class_indices(class_index, n: int, num_classes: int, owner: str) -> np.ndarray:
    idx = np.asarray(class_index)
    if idx.ndim == 0:
        idx = np.full(n, int(idx))
    if idx.shape != (n,) or idx.dtype.kind not in "iu":
        raise ConfigError(f"{owner}: class_index must be an int or {n} ints, got {class_index!r}")
    if idx.min() < 0 or idx.max() >= num_classes:
        raise ConfigError(f"{owner}: class_index {class_index!r} out of range for {num_classes} classes")
    return idx.astype(np.int64)


def _scores(net, x, owner: str):
    scores = net.forward(x, train=False)
    if not hasattr(scores, "ndim") or scores.ndim != 2:
        raise ShapeError(f"{owner}: the net must output class scores (N, K), got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    return scores


# --- saliency -------------------------------------------------------------------------------------
def saliency_map(net, x, class_index):
    """max over channels of |d score[class] / d x|: (C, H, W) -> (H, W), (N, C, H, W) -> (N, H, W).

    One forward (``train=False``) and one backward with dout = one-hot of ``class_index`` at the
    score layer (the net's raw output, before any softmax). ``class_index`` is an int or one per image.
    """
    xb, single = _image_batch(x, "saliency_map")
    scores = _scores(net, xb, "saliency_map")
    idx = _class_indices(class_index, len(xb), scores.shape[1], "saliency_map")
    dout = np.zeros_like(scores)
    dout[np.arange(len(xb)), idx] = 1
    dx = net.backward(dout)
    sal = np.abs(dx).max(axis=1)
    return sal[0] if single else sal


# --- occlusion ------------------------------------------------------------------------------------
def _occlusion_grid(hw, patch, stride):
    """Patch positions: windows of ``patch`` every ``stride``, the last one clipped at the border."""
    patch, stride = pair(patch, "patch"), pair(stride, "stride")
    if patch[0] > hw[0] or patch[1] > hw[1]:
        raise ConfigError(f"occlusion patch {patch} is larger than the {hw[0]}x{hw[1]} image")
    oh, ow = output_hw(hw, patch, stride, (0, 0), rounding="ceil", layer="occlusion_map")
    return patch, stride, oh, ow


def occlusion_map(net, x, class_index: int, patch, stride, fill=0.0, batch_size: int = 64):
    """Drop in p(class_index) when a ``patch`` is set to ``fill``, for each patch position.

    ``x`` is one image (C, H, W) in the net's input space; with normalised inputs ``fill=0.0``
    is the dataset's mean colour (a grey patch). ``fill`` may also be one value per channel.
    Positions start every ``stride`` pixels; the last row/column of patches is clipped at the
    border, so every pixel is covered. Returns (OH, OW): p(original) - p(occluded), positive where
    hiding the patch hurts the class, with OH = ceil((H - patch) / stride) + 1 (likewise OW).
    """
    xb, single = _image_batch(x, "occlusion_map")
    if not single:
        raise ShapeError(f"occlusion_map: expected one image (C, H, W), got shape {tuple(np.shape(x))}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"occlusion_map: batch_size must be a positive int, got {batch_size!r}")
    c, h, w = xb.shape[1:]
    (ph, pw), (sh, sw), oh, ow = _occlusion_grid((h, w), patch, stride)
    fill_arr = np.asarray(fill, dtype=xb.dtype)
    if fill_arr.ndim == 1 and fill_arr.shape[0] == c:
        fill_arr = fill_arr.reshape(c, 1, 1)
    elif fill_arr.ndim != 0:
        raise ConfigError(f"occlusion_map: fill must be a number or {c} per-channel values, got {fill!r}")
    base = probabilities(_scores(net, xb, "occlusion_map"))
    k = int(_class_indices(class_index, 1, base.shape[1], "occlusion_map")[0])
    positions = [(i, j) for i in range(oh) for j in range(ow)]
    drops = np.empty(len(positions), dtype=np.float64)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        batch = np.repeat(xb, len(chunk), axis=0)
        for b, (i, j) in enumerate(chunk):
            batch[b, :, i * sh:i * sh + ph, j * sw:j * sw + pw] = fill_arr
        probs = probabilities(net.forward(batch, train=False))
        drops[start:start + len(chunk)] = base[0, k] - probs[:, k]
    return drops.reshape(oh, ow)


def occlusion_pixel_map(drops, image_hw, patch, stride):
    """Spread an ``occlusion_map`` back onto pixels: each pixel gets the mean drop of the patches covering it."""
    drops = np.asarray(drops, dtype=np.float64)
    (ph, pw), (sh, sw), oh, ow = _occlusion_grid(tuple(image_hw), patch, stride)
    if drops.shape != (oh, ow):
        raise ShapeError(f"occlusion_pixel_map: expected a {oh}x{ow} map for a {image_hw[0]}x{image_hw[1]} image "
                         f"with patch {(ph, pw)} and stride {(sh, sw)}, got shape {drops.shape}")
    total = np.zeros(tuple(image_hw))
    count = np.zeros(tuple(image_hw))
    for i in range(oh):
        for j in range(ow):
            total[i * sh:i * sh + ph, j * sw:j * sw + pw] += drops[i, j]
            count[i * sh:i * sh + ph, j * sw:j * sw + pw] += 1
    return total / np.maximum(count, 1)


# --- classification errors ------------------------------------------------------------------------
def _labels(y, name: str, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ShapeError(f"confusion_matrix: {name} must be a 1-D array of ints, got shape {y.shape}, dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"confusion_matrix: {name} has labels outside [0, {num_classes}): "
                          f"min {y.min()}, max {y.max()}")
    return y.astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: entry [t, p] is how many examples of class t were predicted as p."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}")
    t, p = _labels(y_true, "y_true", num_classes), _labels(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise ShapeError(f"confusion_matrix: y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm) -> np.ndarray:
    """Diagonal over row sums of a confusion matrix (recall per class); NaN for a class with no examples."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(cm) / np.maximum(rows, 1), np.nan)


class Mistake(NamedTuple):
    """One misclassified example: its index, true and predicted class, and p(predicted)."""

    index: int
    true: int
    pred: int
    prob: float


def most_confident_mistakes(probs, y_true, k: int = 16) -> list:
    """The ``k`` wrong predictions with the highest predicted probability, most confident first.

    ``probs`` is (N, K) class probabilities (softmax of the scores), ``y_true`` (N,) labels;
    ties go to the lower index.
    """
    probs = np.asarray(probs)
    y = np.asarray(y_true)
    if probs.ndim != 2 or y.shape != (probs.shape[0],):
        raise ShapeError(f"most_confident_mistakes: expected probs (N, K) and labels (N,), got {probs.shape} "
                         f"and {y.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"most_confident_mistakes: k must be an int >= 0, got {k!r}")
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(y)), pred]
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    return [Mistake(int(i), int(y[i]), int(pred[i]), float(conf[i])) for i in order]


# --- pictures of weights and activations ------------------------------------------------------------
def tile_images(tiles, ncols: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile (n, h, w) or (n, h, w, 3) images row by row into one image with ``pad`` pixels between."""
    tiles = np.asarray(tiles, dtype=np.float64)
    if tiles.ndim not in (3, 4) or (tiles.ndim == 4 and tiles.shape[3] != 3) or len(tiles) == 0:
        raise ShapeError(f"tile_images: expected a non-empty (n, h, w) or (n, h, w, 3) array, got {tiles.shape}")
    n, h, w = tiles.shape[:3]
    ncols = int(ncols) if ncols else math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad) + tiles.shape[3:], pad_value)
    for k in range(n):
        r, c = divmod(k, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = tiles[k]
    return grid


def _unit(a: np.ndarray, axes) -> np.ndarray:
    """Scale to [0, 1] along ``axes`` (min -> 0, max -> 1); a constant block becomes 0.5."""
    lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0.5)


def filter_grid(weights, ncols: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """A conv layer's weights (K, C, kh, kw) as one image in [0, 1], each filter scaled on its own.

    With C == 3 each filter is an RGB tile and the result is (H, W, 3), like the notes' AlexNet
    figure; otherwise every channel of every filter is a grey tile (filter by filter, C tiles
    each) and the result is (H, W). ``ncols`` defaults to a square-ish grid.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ShapeError(f"filter_grid: expected conv weights (K, C, kh, kw), got shape {w.shape}")
    k, c, kh, kw = w.shape
    w = _unit(w, (1, 2, 3))
    if c == 3:
        tiles = w.transpose(0, 2, 3, 1)
    else:
        tiles = w.reshape(k * c, kh, kw)
    return tile_images(tiles, ncols, pad, pad_value)


def _leaves(net) -> list:
    """(dotted path, layer) for every layer inside ``net`` that is not itself a container."""
    modules = net.named_modules() if hasattr(net, "named_modules") else [("", net)]
    return [(path, layer) for path, layer in modules if path and not hasattr(layer, "named_children")]


def first_conv(net):
    """(dotted path, layer) of the first layer whose filters the report shows (``report_role == "filters"``,
    a Conv2d), in definition order, or None."""
    for path, layer in _leaves(net):
        if getattr(layer, "report_role", None) == "filters":
            return path, layer
    return None


def default_activation_layers(net, max_layers: int = 3) -> list:
    """Names of the layers the report shows: the first conv, its activation (ReLU), and the
    activations after the next conv layers, up to ``max_layers`` names. Empty if there is no conv."""
    leaves = _leaves(net)
    names: list = []
    for i, (path, layer) in enumerate(leaves):
        if getattr(layer, "report_role", None) != "filters":
            continue
        act = path
        for later_path, later in leaves[i + 1:]:
            role = getattr(later, "report_role", None)
            if role == "activation":
                act = later_path
                break
            if role != "transparent":
                break
        if not names and act != path:
            names.append(path)
        names.append(act)
        if len(names) >= max_layers:
            break
    return names[:max_layers]


def activation_maps(net, x, layer_names) -> dict:
    """{name: output of that layer} for the batch ``x`` (N, C, H, W), in the order of ``layer_names``.

    Names are dotted paths as in ``net.named_modules()`` (``"features.0"``; for a plain
    Sequential ``"0"``, ``"1"``, ...). The net runs once, ``train=False``; each named layer's
    output is captured on its way to the next layer (a copy, so later in-place work cannot change it).
    """
    xb, _ = _image_batch(x, "activation_maps")
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    modules = dict(net.named_modules()) if hasattr(net, "named_modules") else {}
    unknown = [n for n in layer_names if not n or n not in modules]
    if unknown:
        known = [p for p in modules if p]
        raise ConfigError(f"activation_maps: unknown layer(s) {unknown}; known: {known}")
    captured: dict = {}
    patched = []
    try:
        for name in dict.fromkeys(layer_names):
            layer = modules[name]
            original = layer.forward

            def capture(inp, train=False, _name=name, _forward=original):
                out = _forward(inp, train=train)
                captured[_name] = np.array(out, copy=True)
                return out

            layer.__dict__["forward"] = capture  # an instance attribute shadows the method for this call only
            patched.append(layer)
        net.forward(xb, train=False)
    finally:
        for layer in patched:
            layer.__dict__.pop("forward", None)
    missing = [n for n in layer_names if n not in captured]
    if missing:
        raise ConfigError(f"activation_maps: layer(s) {missing} did not run in an evaluation forward pass")
    return {name: captured[name] for name in layer_names}
