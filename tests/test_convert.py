"""convnp.notation.convert: FC -> CONV conversion, total stride, dense evaluation against every crop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.notation.convert import dense_eval, to_fully_convolutional, total_stride
from convnp.errors import ConfigError, ShapeError
from convnp.layers.activation import ReLU
from convnp.layers.conv import Conv2d
from convnp.layers.dropout import Dropout
from convnp.layers.linear import Flatten, Linear
from convnp.layers.locally_connected import LocallyConnected2d
from convnp.layers.norm import BatchNorm1d
from convnp.layers.pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from convnp.nets.graph import Add, Graph
from convnp.nets.sequential import Sequential
from convnp.notation.spec import parse

from .test_summary import alexnet_torchvision, vgg16

# A tiny VGG-like net without zero padding, trained on 30x30: 30 -> 28 -> 14 -> 12 -> 6, total stride 4.
TINY = ("INPUT[30x30x3] -> CONV3-8/P0 -> RELU -> POOL2 -> CONV3-16/P0 -> RELU -> POOL2 -> FC-32 -> RELU -> DROPOUT "
        "-> FC-10")


def tiny(rng=0):
    return parse(TINY, rng=rng, dtype="float64")


def crops(net, image, size, stride):
    """The original net on every size x size crop whose corner lies on the stride grid (the slow way)."""
    n, _, h, w = image.shape
    rows, cols = (h - size[0]) // stride + 1, (w - size[1]) // stride + 1
    out = None
    for i in range(rows):
        for j in range(cols):
            s = net.forward(image[:, :, i * stride:i * stride + size[0], j * stride:j * stride + size[1]])
            if out is None:
                out = np.empty((n, s.shape[1], rows, cols))
            out[:, :, i, j] = s
    return out


def bn_head_net():
    """Conv stack, then Dropout -> FC -> BatchNorm1d -> ReLU -> FC (AlexNet's head starts with a
    Dropout on the flat vector), with non-trivial running statistics."""
    gen = np.random.default_rng(5)
    bn = BatchNorm1d(12, dtype="float64")
    bn.params["weight"][:] = gen.uniform(0.5, 2, 12)
    bn.params["bias"][:] = gen.standard_normal(12)
    bn.buffers["running_mean"][:] = gen.standard_normal(12)
    bn.buffers["running_var"][:] = gen.uniform(0.5, 2, 12)
    return Sequential([
        ("features", Sequential(Conv2d(2, 4, 3, rng=1, dtype="float64"), ReLU(), MaxPool2d(2))),
        ("flatten", Flatten()),
        ("classifier", Sequential(Dropout(0.5), Linear(4 * 5 * 5, 12, rng=2, dtype="float64"), bn, ReLU(),
                                  Linear(12, 6, rng=3, dtype="float64"))),
    ], input_shape=(2, 12, 12))


def gap_net():
    """Global average pooling head (ResNet style): it becomes a 5x5 average pool with stride 1."""
    return parse("INPUT[14x14x2] -> CONV3-6/P0 -> RELU -> POOL2 -> CONV1-8 -> GPOOL -> FC-5", rng=3, dtype="float64")


def graph_net():
    """A residual Graph with 1x1 convs (no padding), then Flatten -> FC as graph nodes."""
    return Graph([
        ("stem", Conv2d(3, 4, 3, rng=0, dtype="float64"), "input"),
        ("pool", MaxPool2d(2), "stem"),
        ("a", Conv2d(4, 4, 1, rng=1, dtype="float64"), "pool"),
        ("relu", ReLU(), "a"),
        ("b", Conv2d(4, 4, 1, rng=2, dtype="float64"), "relu"),
        ("add", Add(), ["b", "pool"]),
        ("flat", Flatten(), "add"),
        ("fc", Linear(4 * 4 * 4, 7, rng=3, dtype="float64"), "flat"),
    ])


NETS = [("tiny", tiny, (3, 30, 30), 4), ("bn_head", bn_head_net, (2, 12, 12), 2), ("gap", gap_net, (2, 14, 14), 2),
        ("graph", graph_net, (3, 10, 10), 2)]


@pytest.mark.parametrize("name, build, shape, stride", NETS, ids=[n[0] for n in NETS])
def test_same_outputs_on_the_training_size(name, build, shape, stride):
    net = build()
    fc = to_fully_convolutional(net, shape)
    x = np.random.default_rng(1).standard_normal((3, *shape))
    ref = net.forward(x)
    out = fc.forward(x)
    assert out.shape == (3, ref.shape[1], 1, 1)
    np.testing.assert_allclose(out[:, :, 0, 0], ref, rtol=1e-10, atol=1e-12)
    assert total_stride(net) == total_stride(fc) == stride
    # no FC or Flatten is left, every parameter kept its name
    kinds = {type(layer).__name__ for _, layer in fc.named_modules()}
    assert not kinds & {"Linear", "Flatten", "BatchNorm1d", "GlobalAvgPool2d"}
    assert set(fc.state_dict()) == set(net.state_dict())
    # the original is untouched
    np.testing.assert_array_equal(net.forward(x), ref)


@pytest.mark.parametrize("name, build, shape, stride", NETS, ids=[n[0] for n in NETS])
def test_every_crop_of_a_larger_image(name, build, shape, stride):
    net = build()
    fc = to_fully_convolutional(net, shape)
    c, h0, w0 = shape
    image = np.random.default_rng(2).standard_normal((2, c, h0 + 4 * stride, w0 + 3 * stride))
    scores = fc.forward(image)
    assert scores.shape[2:] == (5, 4)
    np.testing.assert_allclose(scores, crops(net, image, (h0, w0), stride), rtol=1e-10, atol=1e-12)


def test_the_weights_are_reshaped_linear_weights():
    net = tiny()
    fc = to_fully_convolutional(net)
    assert [type(layer).__name__ for layer in fc] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
                                                      "Conv2d", "ReLU", "Dropout", "Conv2d"]
    first, last = fc["7"], fc["10"]
    assert first.kernel_size == (6, 6) and first.params["weight"].shape == (32, 16, 6, 6)
    assert last.kernel_size == (1, 1) and last.params["weight"].shape == (10, 32, 1, 1)
    w = net["7"].params["weight"]  # (32, 16*6*6), flattened in C order over (C, H, W)
    for k, c, i, j in [(0, 0, 0, 0), (3, 5, 2, 4), (31, 15, 5, 5)]:
        assert first.params["weight"][k, c, i, j] == w[k, c * 36 + i * 6 + j]
    np.testing.assert_array_equal(first.params["bias"], net["7"].params["bias"])
    assert fc.input_shape == (3, 30, 30)
    # copies, not shared arrays
    first.params["bias"][0] += 1
    assert first.params["bias"][0] != net["7"].params["bias"][0]


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_dense_eval_equals_every_crop(stride):
    net = tiny()
    image = np.random.default_rng(3).standard_normal((2, 3, 41, 38))
    out = dense_eval(net, image, stride)
    assert out.shape == (2, 10, (41 - 30) // stride + 1, (38 - 30) // stride + 1)
    np.testing.assert_allclose(out, crops(net, image, (30, 30), stride), rtol=1e-10, atol=1e-12)
    # a single image (C, H, W) and an already converted net give the same map
    single = dense_eval(to_fully_convolutional(net), image[1], stride)
    np.testing.assert_allclose(single, out[1], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(extra_h=st.integers(0, 9), extra_w=st.integers(0, 9), stride=st.sampled_from([1, 2, 4]))
def test_dense_eval_property(extra_h, extra_w, stride):
    net = tiny(rng=7)
    image = np.random.default_rng(extra_h * 10 + extra_w).standard_normal((1, 3, 30 + extra_h, 30 + extra_w))
    np.testing.assert_allclose(dense_eval(net, image, stride), crops(net, image, (30, 30), stride),
                               rtol=1e-10, atol=1e-12)


def test_dense_eval_errors():
    net = tiny()
    with pytest.raises(ConfigError, match="must divide the net's total stride 4"):
        dense_eval(net, np.zeros((3, 40, 40)), 3)
    with pytest.raises(ShapeError, match="smaller than the 30x30"):
        dense_eval(net, np.zeros((3, 29, 40)), 2)
    with pytest.raises(ShapeError, match="C=3"):
        dense_eval(net, np.zeros((2, 40, 40)), 2)
    with pytest.raises(ConfigError, match="stride"):
        dense_eval(net, np.zeros((3, 40, 40)), 0)


def test_conversion_errors():
    with pytest.raises(ConfigError, match="input_shape"):
        to_fully_convolutional(Sequential(Conv2d(3, 4, 3), Flatten(), Linear(4, 2)))
    lc = Sequential(LocallyConnected2d(2, 3, 6, 3), Flatten(), Linear(3 * 16, 2))
    with pytest.raises(ConfigError, match="cannot slide"):
        to_fully_convolutional(lc, (2, 6, 6))
    mlp = Sequential(Linear(12, 4), ReLU(), Linear(4, 2))
    with pytest.raises(ConfigError, match="image input"):
        to_fully_convolutional(mlp, (12,))


def test_padded_net_converts_exactly_on_the_training_size_only():
    # with zero padding, a crop sees zeros at its border where the big pass sees pixels (see the module docs)
    net = parse("INPUT[16x16x2] -> CONV3-4 -> RELU -> POOL2 -> CONV3-4 -> RELU -> POOL2 -> FC-3", rng=0,
                dtype="float64")
    fc = to_fully_convolutional(net)
    x = np.random.default_rng(0).standard_normal((1, 2, 16, 16))
    np.testing.assert_allclose(fc.forward(x)[:, :, 0, 0], net.forward(x), rtol=1e-10, atol=1e-12)
    big = np.random.default_rng(1).standard_normal((1, 2, 24, 24))
    scores = fc.forward(big)
    assert scores.shape == (1, 3, 3, 3)
    assert not np.allclose(scores, crops(net, big, (16, 16), 4))


def test_avg_pool_head_and_strides():
    assert total_stride(Sequential(Conv2d(3, 4, 3, stride=2), MaxPool2d(3, stride=2), AvgPool2d(2))) == 8
    with pytest.raises(ConfigError, match="height"):
        total_stride(Sequential(Conv2d(3, 4, 3, stride=(2, 1))))
    net = Sequential(Conv2d(1, 2, 3, rng=0, dtype="float64"), GlobalAvgPool2d(), Flatten(),
                     Linear(2, 3, rng=1, dtype="float64"), Dropout(0.5))
    fc = to_fully_convolutional(net, (1, 9, 9))
    assert isinstance(fc[1], AvgPool2d) and fc[1].kernel_size == (7, 7) and fc[1].stride == (1, 1)


# --- the notes' examples, shapes only -------------------------------------------------------------------------
def test_vgg16_at_384_gives_a_6x6_map_of_scores():
    net = vgg16()
    assert total_stride(net) == 32
    fc = to_fully_convolutional(net, (3, 224, 224))
    first = fc["32"]
    assert first.kernel_size == (7, 7) and first.params["weight"].shape == (4096, 512, 7, 7)
    assert fc["35"].kernel_size == (1, 1) and fc["38"].params["weight"].shape == (1000, 4096, 1, 1)
    assert fc.output_shape((3, 224, 224)) == (1000, 1, 1)
    assert fc.output_shape((3, 384, 384)) == (1000, 6, 6)
    with pytest.raises(ShapeError, match=r"7\.5"):  # 240 is off the stride-32 grid: dense_eval's job
        fc.output_shape((3, 240, 240))


def test_alexnet_at_384_gives_a_6x6_map_of_scores():
    net = alexnet_torchvision()
    assert total_stride(net) == 32
    fc = to_fully_convolutional(net)
    assert fc["classifier"]["1"].kernel_size == (6, 6)
    assert fc.output_shape((3, 224, 224)) == (1000, 1, 1)
    assert fc.output_shape((3, 384, 384)) == (1000, 6, 6)
