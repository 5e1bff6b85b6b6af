"""Converting FC layers to CONV layers, and dense sliding evaluation (the notes' trick).

An FC layer that looks at a C x H x W volume computes the same numbers as a CONV layer
with F = H x W filters and no padding: the first FC of VGG-16 (7x7x512 -> 4096) becomes
CONV F=7, K=4096, the next ones (4096 -> 4096, 4096 -> 1000) become 1x1 CONVs.
``to_fully_convolutional(net)`` does that to a copy of ``net``: each Linear after the conv
stack becomes a Conv2d whose weight is the Linear's (out, C*H*W) weight reshaped to
(out, C, H, W) (Flatten is C order over (C, H, W), like ``torch.flatten``), the Flatten
goes, ReLU/Dropout stay, a BatchNorm1d after an FC becomes a BatchNorm2d with the same
numbers, a global average pool becomes an H x W average pool with stride 1 and an
adaptive pool that is the identity at the training size goes. On the training size the
new net outputs (N, K, 1, 1) with the same numbers; on a larger image it slides: VGG-16
trained at 224x224 gives a 6x6 map of class scores at 384x384, in one pass.

Score (i, j) of that map is what the original net gives on the training-size crop at
(i*S, j*S), S = ``total_stride(net)`` (32 for VGG and AlexNet), exactly so when no
CONV or POOL pads with zeros; with padding the big pass sees the real pixels where a
lone crop would see zeros at its border, so interior scores differ (the big pass is
arguably the better one). ``dense_eval(net, image, stride)`` reaches strides finer than
S, the notes' "forward the image several times, shifted": it runs the converted net on
the image shifted by every multiple of ``stride`` below S and interleaves the maps.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import ConfigError, ShapeError

__all__ = ["dense_eval", "to_fully_convolutional", "total_stride"]

# Layers that act per element or per channel: they work on an (N, K, 1, 1) map as on (N, K).
_POINTWISE = ("ReLU", "LeakyReLU", "ELU", "Tanh", "Sigmoid", "Dropout", "Identity")
# Layers that already slide over space.
_SPATIAL = ("Conv2d", "MaxPool2d", "AvgPool2d", "LPPool2d", "Dropout2d", "BatchNorm2d", "LocalResponseNorm",
            "ZeroPadShortcut")


def _classes():
    """The layer and container classes, imported late (the nets import the layers)."""
    from types import SimpleNamespace  # noqa: PLC0415

    from ..layers.conv import Conv2d  # noqa: PLC0415
    from ..layers.norm import BatchNorm2d  # noqa: PLC0415
    from ..layers.pool import AvgPool2d  # noqa: PLC0415
    from ..nets.container import Container  # noqa: PLC0415
    from ..nets.graph import INPUT, Graph, Merge  # noqa: PLC0415
    from ..nets.sequential import Sequential  # noqa: PLC0415

    return SimpleNamespace(Conv2d=Conv2d, BatchNorm2d=BatchNorm2d, AvgPool2d=AvgPool2d, Container=Container,
                           Graph=Graph, Merge=Merge, Sequential=Sequential, INPUT=INPUT)


def _training_shape(net, input_shape) -> tuple:
    from ..inspect.summary import parse_input_shape  # noqa: PLC0415

    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ConfigError("pass input_shape=(C, H, W), the size the net was trained on; "
                              "this net has none recorded")
    shape = parse_input_shape(input_shape)
    if len(shape) != 3:
        raise ConfigError(f"a fully convolutional net needs an image input (C, H, W), got {shape}")
    return shape


# --- conversion -----------------------------------------------------------------------------------
class _State:
    """Shape of the value as the original net sees it and as the converted net does."""

    def __init__(self, shape):
        self.orig = tuple(shape)   # e.g. (25088,) after a Flatten
        self.new = tuple(shape)    # e.g. (512, 7, 7): the converted net keeps the volume


def _as_volume(shape: tuple) -> tuple:
    return shape if len(shape) == 3 else (shape[0], 1, 1)


def _convert_leaf(layer, path: str, st: _State):
    """The converted layer (None to drop it) for ``layer`` reading ``st``; updates ``st``."""
    L = _classes()
    kind = type(layer).__name__
    where = f"{path!r} ({layer!r})"
    if kind == "Flatten":
        out = tuple(layer.output_shape(st.orig))
        if len(st.new) == 3 and (layer.start_dim, layer.end_dim) not in ((1, -1), (1, 3)):
            raise ConfigError(f"to_fully_convolutional: {where} flattens only part of the volume")
        st.orig = out
        return None  # the volume stays a volume
    if kind == "Linear":
        st.orig = tuple(layer.output_shape(st.orig))
        c, h, w = _as_volume(st.new)
        if c * h * w != layer.in_features:
            raise ShapeError(f"to_fully_convolutional: {where} takes {layer.in_features} features but its "
                             f"input volume is {h}x{w}x{c} = {c * h * w}")
        weight = layer.params["weight"]
        conv = L.Conv2d(c, layer.out_features, (h, w), bias=layer.has_bias, dtype=weight.dtype)
        conv.params["weight"] = np.ascontiguousarray(weight.reshape(layer.out_features, c, h, w)).copy()
        if layer.has_bias:
            conv.params["bias"] = layer.params["bias"].copy()
        st.new = (layer.out_features, 1, 1)
        return conv
    if kind == "BatchNorm1d" and len(st.orig) == 1:
        bn = L.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                         dtype=next(iter(layer.buffers.values())).dtype, bias=layer.use_bias)
        bn.load_state_dict({k: np.array(v, copy=True) for k, v in layer.state_dict().items()})
        st.new = _as_volume(st.orig)
        return bn
    if kind in ("GlobalAvgPool2d", "AdaptiveAvgPool2d"):
        c, h, w = st.new
        oh, ow = (1, 1) if kind == "GlobalAvgPool2d" else layer.output_size
        st.orig = tuple(layer.output_shape(st.orig))
        if (h, w) == (oh, ow):
            return None  # the identity at the training size
        if h % oh or w % ow:
            raise ConfigError(f"to_fully_convolutional: {where} pools {h}x{w} to {oh}x{ow} with uneven bins; "
                              "only an even split becomes a sliding average pool")
        kh, kw = h // oh, w // ow
        st.new = (c, oh, ow)
        return L.AvgPool2d((kh, kw), stride=(kh, kw) if (oh, ow) != (1, 1) else 1)
    if kind == "LocallyConnected2d":
        raise ConfigError(f"to_fully_convolutional: {where} has one filter per output position, so it "
                          "cannot slide over a larger input")
    if kind in _POINTWISE:  # the same shape out as in, in either net
        st.orig = tuple(layer.output_shape(st.orig))
        return copy.deepcopy(layer)
    if len(st.orig) == 3 and (kind in _SPATIAL or len(st.new) == 3):
        st.orig = tuple(layer.output_shape(st.orig))
        st.new = st.orig
        return copy.deepcopy(layer)
    raise ConfigError(f"to_fully_convolutional: cannot turn {where} into a convolution (it reads a vector "
                      f"of shape {st.orig})")


def _needs_change(layer) -> bool:
    L = _classes()
    if isinstance(layer, L.Container):
        return any(_needs_change(child) for child in layer.children())
    return type(layer).__name__ in ("Flatten", "Linear", "BatchNorm1d", "GlobalAvgPool2d", "AdaptiveAvgPool2d",
                                    "LocallyConnected2d")


def _convert(layer, path: str, st: _State):
    L = _classes()
    if isinstance(layer, L.Container) and not _needs_change(layer):
        st.orig = tuple(layer.output_shape(st.orig))
        st.new = st.orig
        return copy.deepcopy(layer)
    if isinstance(layer, L.Sequential):
        named = []
        for name, child in layer.named_children():
            new = _convert(child, f"{path}.{name}" if path else name, st)
            if new is not None and not (isinstance(new, L.Sequential) and len(new) == 0):
                named.append((name, new))
        return L.Sequential(named, loss=layer.loss)
    if isinstance(layer, L.Graph):
        states = {L.INPUT: _State(st.orig)}
        states[L.INPUT].new = st.new
        alias, nodes = {}, []
        for name in layer.order:
            child, reads = layer[name], layer.inputs_of(name)
            srcs = tuple(alias.get(s, s) for s in reads)  # a dropped node passes its input on
            if isinstance(child, L.Merge):
                ins = [states[s] for s in reads]
                if any(len(s.new) != 3 for s in ins):  # pragma: no cover - a merge of vectors is unusual
                    raise ConfigError(f"to_fully_convolutional: merge {name!r} reads vectors")
                out = _State(child.output_shape([s.orig for s in ins]))
                out.new = tuple(child.output_shape([s.new for s in ins]))
                states[name] = out
                nodes.append((name, copy.deepcopy(child), list(srcs)))
                continue
            sub = _State(states[reads[0]].orig)
            sub.new = states[reads[0]].new
            new = _convert(child, f"{path}.{name}" if path else name, sub)
            states[name] = sub
            if new is None:
                alias[name] = srcs[0]
            else:
                nodes.append((name, new, list(srcs)))
        output = alias.get(layer.output_name, layer.output_name)
        st.orig, st.new = states[layer.output_name].orig, states[layer.output_name].new
        if not nodes:
            return L.Sequential([])
        return L.Graph(nodes, output=output)
    if isinstance(layer, L.Container):
        raise ConfigError(f"to_fully_convolutional: {path!r} is a {type(layer).__name__}, which cannot be "
                          "rebuilt; only Sequential and Graph containers can hold the converted layers")
    return _convert_leaf(layer, path, st)


def to_fully_convolutional(net, input_shape=None):
    """A copy of ``net`` with every FC layer turned into a CONV layer (see the module docstring).

    ``input_shape`` (C, H, W) is the size ``net`` was trained on (default ``net.input_shape``);
    it fixes the first CONV's F. The result is a Sequential (or Graph) whose ``input_shape``
    is that training size; its output is (N, K, OH, OW), (N, K, 1, 1) at the training size.
    Raises ConfigError for a layer that cannot slide (e.g. a locally connected layer).
    """
    L = _classes()
    shape = _training_shape(net, input_shape)
    st = _State(shape)
    new = _convert(net, "", st)
    if new is None:
        raise ConfigError("to_fully_convolutional: the net is a single layer that converts to nothing")
    if not isinstance(new, L.Container):
        new = L.Sequential([new])
    if isinstance(new, L.Sequential):
        new.input_shape = shape
    if len(st.new) != 3:  # pragma: no cover - every converted path ends in a volume
        raise ConfigError(f"to_fully_convolutional: the converted net ends in shape {st.new}, not a volume")
    return new


# --- strides --------------------------------------------------------------------------------------
def _layer_stride(layer) -> tuple:
    kind = type(layer).__name__
    if kind in ("Linear", "Flatten", "GlobalAvgPool2d", "AdaptiveAvgPool2d"):
        return (1, 1)
    value = getattr(layer, "stride", None)
    if value is None:
        return (1, 1)
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    return (int(value[0]), int(value[1]))


def _stride(layer) -> tuple:
    L = _classes()
    if isinstance(layer, L.Sequential):
        sh = sw = 1
        for child in layer.children():
            h, w = _stride(child)
            sh, sw = sh * h, sw * w
        return sh, sw
    if isinstance(layer, L.Graph):
        strides = {L.INPUT: (1, 1)}
        for name in layer.order:
            srcs = [strides[s] for s in layer.inputs_of(name)]
            if len(set(srcs)) != 1:
                raise ConfigError(f"total_stride: merge {name!r} joins paths with strides {srcs}")
            h, w = (1, 1) if isinstance(layer[name], L.Merge) else _stride(layer[name])
            strides[name] = (srcs[0][0] * h, srcs[0][1] * w)
        return strides[layer.output_name]
    if isinstance(layer, L.Container):
        sh = sw = 1
        for child in layer.children():
            h, w = _stride(child)
            sh, sw = sh * h, sw * w
        return sh, sw
    return _layer_stride(layer)


def total_stride(net) -> int:
    """The product of the strides of every CONV and POOL from the input to the output: how far
    apart in input pixels two neighbouring outputs of the converted net are (32 for VGG-16).

    Raises ConfigError when the height and width strides differ.
    """
    sh, sw = _stride(net)
    if sh != sw:
        raise ConfigError(f"total_stride: the net strides {sh} along the height and {sw} along the width")
    return sh


# --- dense evaluation -----------------------------------------------------------------------------
def _has_fc(net) -> bool:
    L = _classes()
    if isinstance(net, L.Container):
        return any(_has_fc(c) for c in net.children())
    return type(net).__name__ in ("Linear", "Flatten", "GlobalAvgPool2d", "AdaptiveAvgPool2d")


def dense_eval(net, image, stride: int | None = None, input_shape=None):
    """Class scores of every training-size crop of ``image`` whose corner lies on a ``stride`` grid.

    ``image`` is (C, H, W) or (N, C, H, W) with H, W >= the training size (H0, W0) =
    ``input_shape[1:]`` (default ``net.input_shape``). Returns (N, K, OH, OW) (no N for a
    single image) with OH = (H - H0) // stride + 1: entry (i, j) scores the crop at
    (i*stride, j*stride). ``stride`` must divide S = ``total_stride(net)`` (default S).
    ``net`` may be the original net (it is converted first) or a converted one; it is run
    in evaluation mode once per shift, (S/stride)^2 passes in all, never once per crop.
    """
    shape = _training_shape(net, input_shape)
    fc = to_fully_convolutional(net, shape) if _has_fc(net) else net
    s_total = total_stride(fc)
    stride = s_total if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ConfigError(f"dense_eval: stride must be a positive int, got {stride!r}")
    if s_total % stride:
        raise ConfigError(f"dense_eval: stride {stride} must divide the net's total stride {s_total} "
                          f"(shifted passes cover multiples of it)")
    x = np.asarray(image)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != shape[0]:
        raise ShapeError(f"dense_eval: expected an image (C, H, W) or a batch (N, C, H, W) with C={shape[0]}, "
                         f"got shape {tuple(np.shape(image))}")
    _, h0, w0 = shape
    n, _, h, w = x.shape
    if h < h0 or w < w0:
        raise ShapeError(f"dense_eval: the image is {h}x{w}, smaller than the {h0}x{w0} crops the net was "
                         "trained on")
    oh, ow = (h - h0) // stride + 1, (w - w0) // stride + 1
    r = s_total // stride
    out = None
    for dy in range(r):
        top = dy * stride
        if top > h - h0:
            break
        rows = (h - h0 - top) // s_total + 1
        for dx in range(r):
            left = dx * stride
            if left > w - w0:
                break
            cols = (w - w0 - left) // s_total + 1
            sub = x[:, :, top:top + h0 + s_total * (rows - 1), left:left + w0 + s_total * (cols - 1)]
            scores = fc.forward(np.ascontiguousarray(sub), train=False)
            if scores.ndim != 4 or scores.shape[2:] != (rows, cols):
                raise ShapeError(f"dense_eval: the converted net gave scores of shape {scores.shape} for a "
                                 f"{sub.shape[2]}x{sub.shape[3]} input; expected a {rows}x{cols} map "
                                 f"(is {s_total} really its total stride?)")
            if out is None:
                out = np.empty((n, scores.shape[1], oh, ow), dtype=scores.dtype)
            out[:, :, dy::r, dx::r] = scores
    return out[0] if single else out
