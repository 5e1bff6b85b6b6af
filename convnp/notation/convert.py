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
from ..inspect.trace import input_shape_of
from ..layers.base import Layer
from ..nets.container import Container
from ..nets.graph import INPUT, Graph, Merge
from ..nets.sequential import Sequential

__all__ = ["dense_eval", "to_fully_convolutional", "total_stride"]

def _training_shape(net, input_shape) -> tuple:
    shape = input_shape_of(net, input_shape, "the size the net was trained on")
    if len(shape) != 3:
        raise ConfigError(f"a fully convolutional net needs an image input (C, H, W), got {shape}")
    return shape


# --- conversion -----------------------------------------------------------------------------------
class _State:
    """Shape of the value as the original net sees it and as the converted net does."""

    def __init__(self, shape):
        self.orig = tuple(shape)   # e.g. (25088,) after a Flatten
        self.new = tuple(shape)    # e.g. (512, 7, 7): the converted net keeps the volume


def _needs_change(layer) -> bool:
    """True when some leaf converts itself (an FC, a Flatten, a pool to a fixed size ...)."""
    if isinstance(layer, Container):
        return any(_needs_change(child) for child in layer.children())
    return type(layer).to_fully_convolutional is not Layer.to_fully_convolutional


def _convert(layer, path: str, st: _State):
    if isinstance(layer, Container) and not _needs_change(layer):
        st.orig = tuple(layer.output_shape(st.orig))
        st.new = st.orig
        return copy.deepcopy(layer)
    if isinstance(layer, Sequential):
        named = []
        for name, child in layer.named_children():
            new = _convert(child, f"{path}.{name}" if path else name, st)
            if new is not None and not (isinstance(new, Sequential) and len(new) == 0):
                named.append((name, new))
        return Sequential(named, loss=layer.loss)
    if isinstance(layer, Graph):
        states = {INPUT: _State(st.orig)}
        states[INPUT].new = st.new
        alias, nodes = {}, []
        for name in layer.order:
            child, reads = layer[name], layer.inputs_of(name)
            srcs = tuple(alias.get(s, s) for s in reads)  # a dropped node passes its input on
            if isinstance(child, Merge):
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
            return Sequential([])
        return Graph(nodes, output=output)
    if isinstance(layer, Container):
        raise ConfigError(f"to_fully_convolutional: {path!r} is a {type(layer).__name__}, which cannot be "
                          "rebuilt; only Sequential and Graph containers can hold the converted layers")
    return layer.to_fully_convolutional(st, f"{path!r} ({layer!r})")


def to_fully_convolutional(net, input_shape=None):
    """A copy of ``net`` with every FC layer turned into a CONV layer (see the module docstring).

    ``input_shape`` (C, H, W) is the size ``net`` was trained on (default ``net.input_shape``);
    it fixes the first CONV's F. The result is a Sequential (or Graph) whose ``input_shape``
    is that training size; its output is (N, K, OH, OW), (N, K, 1, 1) at the training size.
    Raises ConfigError for a layer that cannot slide (e.g. a locally connected layer).
    """
    shape = _training_shape(net, input_shape)
    st = _State(shape)
    new = _convert(net, "", st)
    if new is None:
        raise ConfigError("to_fully_convolutional: the net is a single layer that converts to nothing")
    if not isinstance(new, Container):
        new = Sequential([new])
    if isinstance(new, Sequential):
        new.input_shape = shape
    if len(st.new) != 3:  # pragma: no cover - every converted path ends in a volume
        raise ConfigError(f"to_fully_convolutional: the converted net ends in shape {st.new}, not a volume")
    return new


# --- strides --------------------------------------------------------------------------------------
def _stride(layer) -> tuple:
    if isinstance(layer, Sequential):
        sh = sw = 1
        for child in layer.children():
            h, w = _stride(child)
            sh, sw = sh * h, sw * w
        return sh, sw
    if isinstance(layer, Graph):
        strides = {INPUT: (1, 1)}
        for name in layer.order:
            srcs = [strides[s] for s in layer.inputs_of(name)]
            if len(set(srcs)) != 1:
                raise ConfigError(f"total_stride: merge {name!r} joins paths with strides {srcs}")
            h, w = (1, 1) if isinstance(layer[name], Merge) else _stride(layer[name])
            strides[name] = (srcs[0][0] * h, srcs[0][1] * w)
        return strides[layer.output_name]
    if isinstance(layer, Container):
        sh = sw = 1
        for child in layer.children():
            h, w = _stride(child)
            sh, sw = sh * h, sw * w
        return sh, sw
    return tuple(layer.stride_hw())


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
    fc = to_fully_convolutional(net, shape) if _needs_change(net) else net
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
