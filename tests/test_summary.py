"""convnp.inspect.summary: the notes' VGG-16 table row by row, AlexNet, per-layer costs, memory bookkeeping."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError
from convnp.layers.activation import ReLU
from convnp.layers.conv import Conv2d
from convnp.layers.dropout import Dropout
from convnp.layers.linear import Flatten, Linear
from convnp.layers.norm import BatchNorm2d, LocalResponseNorm
from convnp.layers.pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from convnp.nets.graph import Add, Concat, Graph
from convnp.nets.sequential import Sequential
from convnp.notation.spec import parse
from convnp.inspect.summary import (
    NOTES_VGG16,
    format_bytes,
    parse_input_shape,
    summary,
    summary_text,
    volume_str,
)

VGG16_SPEC = ("INPUT[224x224x3] -> [CONV3-64 -> RELU]*2 -> POOL2 -> [CONV3-128 -> RELU]*2 -> POOL2 -> "
              "[CONV3-256 -> RELU]*3 -> POOL2 -> [CONV3-512 -> RELU]*3 -> POOL2 -> [CONV3-512 -> RELU]*3 -> POOL2 -> "
              "FC-4096 -> RELU -> DROPOUT -> FC-4096 -> RELU -> DROPOUT -> FC-1000")


@functools.cache
def vgg16():
    """VGG-16 from the notes' spec (138M parameters: built once per session, shared with test_convert)."""
    return parse(VGG16_SPEC, rng=0)


@functools.cache
def alexnet_torchvision():
    """torchvision's AlexNet built layer by layer (64-192-384-256-256, floor rounding at 224)."""
    gen = np.random.default_rng(0)

    def conv(cin, cout, k, s=1, p=0):
        return Conv2d(cin, cout, k, stride=s, padding=p, rounding="floor", rng=gen)

    def pool():
        return MaxPool2d(3, stride=2, rounding="floor")

    features = Sequential(conv(3, 64, 11, 4, 2), ReLU(), pool(), conv(64, 192, 5, p=2), ReLU(), pool(),
                          conv(192, 384, 3, p=1), ReLU(), conv(384, 256, 3, p=1), ReLU(),
                          conv(256, 256, 3, p=1), ReLU(), pool())
    classifier = Sequential(Dropout(0.5, rng=gen), Linear(9216, 4096, rng=gen), ReLU(), Dropout(0.5, rng=gen),
                            Linear(4096, 4096, rng=gen), ReLU(), Linear(4096, 1000, rng=gen))
    return Sequential([("features", features), ("flatten", Flatten()), ("classifier", classifier)],
                      input_shape=(3, 224, 224))


# The notes' VGGNet table: (volume, memory = activations, weights), written as the notes write them.
NOTES_VGG16_TABLE = [
    ("224x224x3", 224 * 224 * 3, 0),                  # INPUT
    ("224x224x64", 224 * 224 * 64, (3 * 3 * 3) * 64),  # CONV3-64
    ("224x224x64", 224 * 224 * 64, (3 * 3 * 64) * 64),
    ("112x112x64", 112 * 112 * 64, 0),                # POOL2
    ("112x112x128", 112 * 112 * 128, (3 * 3 * 64) * 128),
    ("112x112x128", 112 * 112 * 128, (3 * 3 * 128) * 128),
    ("56x56x128", 56 * 56 * 128, 0),
    ("56x56x256", 56 * 56 * 256, (3 * 3 * 128) * 256),
    ("56x56x256", 56 * 56 * 256, (3 * 3 * 256) * 256),
    ("56x56x256", 56 * 56 * 256, (3 * 3 * 256) * 256),
    ("28x28x256", 28 * 28 * 256, 0),
    ("28x28x512", 28 * 28 * 512, (3 * 3 * 256) * 512),
    ("28x28x512", 28 * 28 * 512, (3 * 3 * 512) * 512),
    ("28x28x512", 28 * 28 * 512, (3 * 3 * 512) * 512),
    ("14x14x512", 14 * 14 * 512, 0),
    ("14x14x512", 14 * 14 * 512, (3 * 3 * 512) * 512),
    ("14x14x512", 14 * 14 * 512, (3 * 3 * 512) * 512),
    ("14x14x512", 14 * 14 * 512, (3 * 3 * 512) * 512),
    ("7x7x512", 7 * 7 * 512, 0),
    ("1x1x4096", 4096, 7 * 7 * 512 * 4096),           # FC
    ("1x1x4096", 4096, 4096 * 4096),
    ("1x1x1000", 1000, 4096 * 1000),
]


@pytest.fixture(scope="module")
def vgg_summary():
    return summary(vgg16(), (3, 224, 224))


# --- VGG-16: the notes' table ----------------------------------------------------------------------------
def test_vgg16_rows_reproduce_the_notes_table(vgg_summary):
    counted = [r for r in vgg_summary.rows if not r.in_place]
    assert [(r.volume, r.activations, r.weights) for r in counted] == NOTES_VGG16_TABLE
    assert [r.type for r in counted] == (["Input"] + ["Conv2d"] * 2 + ["MaxPool2d"] + ["Conv2d"] * 2 + ["MaxPool2d"]
                                         + (["Conv2d"] * 3 + ["MaxPool2d"]) * 3 + ["Linear"] * 3)
    # literal spot checks from the notes' text
    assert counted[1].activations == 3_211_264 and counted[1].weights == 1_728
    assert counted[2].weights == 36_864 and counted[3].activations == 802_816
    assert [r.weights for r in counted[-3:]] == [102_760_448, 16_777_216, 4_096_000]
    # params add the biases; the in-place rows (ReLU, Dropout, Flatten) count nothing
    assert all(r.params == r.weights + (int(r.volume.split("x")[-1]) if r.type in ("Conv2d", "Linear") else 0)
               for r in counted)
    in_place = [r for r in vgg_summary.rows if r.in_place]
    assert {r.type for r in in_place} == {"ReLU", "Dropout", "Flatten"}
    assert all(r.activations == 0 and r.output_elements > 0 for r in in_place)


def test_vgg16_totals(vgg_summary):
    s = vgg_summary
    assert s.activations == sum(a for _, a, _ in NOTES_VGG16_TABLE) == 15_237_608
    assert s.total_weights == sum(w for _, _, w in NOTES_VGG16_TABLE) == 138_344_128
    assert s.total_biases == 13_416
    assert s.total_params == s.trainable_params == 138_357_544  # torchvision's vgg16
    assert s.buffer_count == 0
    conv_macs = sum(w * int(np.prod([int(v) for v in vol.split("x")[:2]]))
                    for vol, _, w in NOTES_VGG16_TABLE[1:-3])
    fc_macs = sum(w for _, _, w in NOTES_VGG16_TABLE[-3:])
    assert s.macs_per_image == s.macs == conv_macs + fc_macs == 15_470_264_320
    conv_out = sum(a for (vol, a, w) in NOTES_VGG16_TABLE[1:-3] if w)
    pool_out = sum(a for (vol, a, w) in NOTES_VGG16_TABLE[1:-3] if not w)
    # 2 per MAC + bias adds + one per ReLU output + 3 comparisons per 2x2 max
    expected = 2 * s.macs_per_image + (conv_out + 9192) + (conv_out + 8192) + 3 * pool_out
    assert s.flops_per_image == s.flops == expected
    assert s.output_shape == (1000,)
    # the notes' claims next to what the rows add up to
    assert NOTES_VGG16["rows_activations"] == s.activations
    assert NOTES_VGG16["rows_weights"] == s.total_weights
    assert NOTES_VGG16["params_with_biases"] == s.total_params
    assert NOTES_VGG16["macs"] == s.macs_per_image


@pytest.mark.parametrize("optimizer, slots", [("sgd", 0), ("momentum", 1), ("nesterov", 1), ("adagrad", 1),
                                              ("rmsprop", 1), ("adam", 2), ("adamw", 2)])
@pytest.mark.parametrize("batch", [1, 8])
def test_vgg16_memory_bookkeeping(vgg_summary, optimizer, slots, batch):
    s = summary(vgg16(), "3x224x224", batch_size=batch, optimizer=optimizer)
    assert s.activation_bytes == 15_237_608 * 4 * batch == 60_950_432 * batch
    assert s.gradient_bytes == s.activation_bytes
    assert s.param_bytes == s.param_grad_bytes == 138_357_544 * 4
    assert s.optimizer_bytes == slots * 138_357_544 * 4
    assert s.total_bytes == 2 * 60_950_432 * batch + (2 + slots) * 553_430_176
    assert s.flops == batch * vgg_summary.flops_per_image and s.macs == batch * 15_470_264_320
    # the peak estimate holds the parameters, grads and optimizer state plus the largest FC gradient
    assert s.peak_bytes >= (2 + slots) * 553_430_176 + 102_760_448 * 4


def test_vgg16_printed_table(vgg_summary):
    text = str(vgg_summary)
    for piece in ("224x224x64", "3,211,264", "1,728", "36,864", "102,760,448", "1x1x1000",
                  "Total params: 138,357,544 (weights 138,344,128 + biases 13,416)",
                  "Activations per image: 15,237,608 (61.0 MB)", "15.47 GMACs", "(in place)",
                  "optimizer state", "Peak of one convnp training step"):
        assert piece in text, piece
    lines = vgg_summary.table().splitlines()
    assert len(lines) == len(vgg_summary.rows) + 3  # header, rules
    assert json.loads(json.dumps(vgg_summary.as_dict()))["total_params"] == 138_357_544


# --- AlexNet -------------------------------------------------------------------------------------------
def test_alexnet_torchvision_layout():
    s = summary(alexnet_torchvision())
    assert s.total_params == 61_100_840
    counted = [(r.volume, r.params) for r in s.rows if not r.in_place]
    assert counted == [("224x224x3", 0), ("55x55x64", 23_296), ("27x27x64", 0), ("27x27x192", 307_392),
                       ("13x13x192", 0), ("13x13x384", 663_936), ("13x13x256", 884_992), ("13x13x256", 590_080),
                       ("6x6x256", 0), ("1x1x4096", 37_752_832), ("1x1x4096", 16_781_312), ("1x1x1000", 4_097_000)]
    assert s.rows[1].name == "features.0" and s.rows[-1].name == "classifier.6"


def test_alexnet_notes_conv1_row():
    # the notes' AlexNet: [227x227x3] -> CONV1 96 11x11 filters at stride 4 -> [55x55x96]
    net = parse("INPUT[227x227x3] -> CONV11-96/S4/P0 -> RELU -> NORM -> POOL3/S2 -> CONV5-256 -> RELU -> NORM "
                "-> POOL3/S2 -> CONV3-384 -> RELU -> CONV3-384 -> RELU -> CONV3-256 -> RELU -> POOL3/S2")
    s = summary(net)
    conv1 = s.rows[1]
    assert (conv1.volume, conv1.activations, conv1.weights, conv1.params) == ("55x55x96", 290_400, 34_848, 34_944)
    assert conv1.macs == 11 * 11 * 3 * 96 * 55 * 55 == 105_415_200
    assert [r.volume for r in s.rows if r.type == "MaxPool2d"] == ["27x27x96", "13x13x256", "6x6x256"]
    lrn = next(r for r in s.rows if r.type == "LocalResponseNorm")
    assert lrn.activations == 290_400 and lrn.flops == (2 * 5 + 3) * 290_400


# --- per-layer costs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, in_shape, macs, flops", [
    (Conv2d(3, 8, 3, padding=1), (3, 10, 10), 8 * 3 * 9 * 100, 2 * 8 * 3 * 9 * 100 + 8 * 100),
    (Conv2d(3, 8, 3, bias=False), (3, 10, 10), 8 * 3 * 9 * 64, 2 * 8 * 3 * 9 * 64),
    (Conv2d(4, 6, (3, 5), stride=2), (4, 11, 13), 6 * 4 * 15 * 5 * 5, 2 * 6 * 4 * 15 * 25 + 6 * 25),
    (Conv2d(2, 2, 3, dilation=2), (2, 9, 9), 2 * 2 * 9 * 25, 2 * 2 * 2 * 9 * 25 + 2 * 25),
    (Linear(20, 7), (20,), 140, 280 + 7),
    (Linear(20, 7, bias=False), (20,), 140, 280),
    (MaxPool2d(2), (3, 8, 8), 0, 3 * 3 * 16),
    (MaxPool2d(3, stride=2), (3, 9, 9), 0, 8 * 3 * 16),
    (AvgPool2d(2), (3, 8, 8), 0, 4 * 3 * 16),
    (GlobalAvgPool2d(), (5, 4, 4), 0, 80),
    (ReLU(), (5, 4, 4), 0, 80),
    (BatchNorm2d(5), (5, 4, 4), 0, 160),
    (LocalResponseNorm(3), (5, 4, 4), 0, 9 * 80),
    (Dropout(0.5), (5, 4, 4), 0, 0),
    (Flatten(), (5, 4, 4), 0, 0),
])
def test_layer_costs(layer, in_shape, macs, flops):
    out = layer.output_shape(in_shape)
    assert layer.costs((in_shape,), out) == (macs, flops)


def _naive_conv_macs(k, c, kh, kw, h, w, stride, pad):
    """Count the multiply-adds of the notes' definition with plain loops (positions x filter taps)."""
    count = 0
    for _filter in range(k):
        for _top in range(0, h + 2 * pad - kh + 1, stride):
            for _left in range(0, w + 2 * pad - kw + 1, stride):
                count += c * kh * kw
    return count


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 4), c=st.integers(1, 3), f=st.integers(1, 4), extra=st.integers(0, 6),
       stride=st.integers(1, 3), pad=st.integers(0, 2))
def test_conv_macs_match_a_naive_count(k, c, f, extra, stride, pad):
    size = f + extra + stride * 2  # big enough; use floor so every size works
    conv = Conv2d(c, k, f, stride=stride, padding=pad, rounding="floor")
    s = summary(Sequential(conv), (c, size, size))
    assert s.macs_per_image == _naive_conv_macs(k, c, f, f, size, size, stride, pad)
    assert s.flops_per_image == 2 * s.macs_per_image + math.prod(s.output_shape)


# --- graphs, options, errors -------------------------------------------------------------------------------
def _inception_like():
    branch = Sequential(Conv2d(4, 2, 1, rng=0), ReLU())
    return Graph([
        ("stem", Conv2d(3, 4, 3, padding=1, rng=0), "input"),
        ("a", Conv2d(4, 6, 1, rng=0), "stem"),
        ("b", branch, "stem"),
        ("cat", Concat(), ["a", "b"]),
        ("proj", Conv2d(8, 4, 1, rng=0), "cat"),
        ("add", Add(), ["proj", "stem"]),
        ("pool", GlobalAvgPool2d(), "add"),
    ])


def test_graph_rows_in_topological_order():
    s = summary(_inception_like(), (3, 8, 8))
    assert [r.name for r in s.rows] == ["input", "stem", "a", "b.0", "b.1", "cat", "proj", "add", "pool"]
    assert s.rows[5].volume == "8x8x8" and s.rows[5].flops == 0
    assert s.rows[7].activations == 4 * 64 and s.rows[7].flops == 4 * 64
    assert s.total_params == (4 * 27 + 4) + (6 * 4 + 6) + (2 * 4 + 2) + (4 * 8 + 4)
    assert s.output_shape == (4, 1, 1)


def test_options_frozen_dtype_and_batch():
    net = parse("INPUT[8x8x2] -> CONV3-4 -> BN -> RELU -> FC-3", rng=0, dtype="float64")
    s = summary(net, frozen=["0"], optimizer="adam", batch_size=5)
    assert s.dtype_bytes == 8
    assert s.total_params == 2 * 9 * 4 + 4 + 8 + 256 * 3 + 3
    assert s.trainable_params == s.total_params - (2 * 9 * 4 + 4)
    assert s.buffer_count == 8  # running mean and variance (the int64 counter is not a number of the net)
    assert s.optimizer_bytes == 2 * s.trainable_params * 8
    assert s.param_bytes == (s.total_params + 8) * 8
    assert s.activation_bytes == s.activations * 5 * 8
    assert summary(net, dtype_bytes=2).activation_bytes == s.activations * 2


@pytest.mark.parametrize("text, shape", [("3x224x224", (3, 224, 224)), ("3,32,32", (3, 32, 32)), ("784", (784,)),
                                         ("1 X 28 X 28", (1, 28, 28)), ((3, 8, 8), (3, 8, 8))])
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("bad", ["", "3xax3", "0x3x3", "3x-1x2", None, (3, 0, 2), (True, 2, 2), "1x2x3x4x5"])
def test_parse_input_shape_errors(bad):
    with pytest.raises(ConfigError):
        parse_input_shape(bad)


def test_formatting_helpers():
    assert volume_str((64, 224, 224)) == "224x224x64" and volume_str((4096,)) == "1x1x4096"
    assert format_bytes(60_950_432) == "61.0 MB" and format_bytes(512) == "512 B"
    assert format_bytes(1.66e9) == "1.7 GB"


def test_errors_name_the_layer():
    net = parse("INPUT[32x32x3] -> CONV3-8 -> POOL2 -> FC-10")
    with pytest.raises(ShapeError, match=r"layer '0'.*Conv2d"):
        summary(net, (4, 32, 32))
    with pytest.raises(ConfigError, match="input_shape"):
        summary(Sequential(ReLU()))
    with pytest.raises(ConfigError, match="optimizer"):
        summary(net, optimizer="lbfgs")
    with pytest.raises(ConfigError, match="batch_size"):
        summary(net, batch_size=0)
    with pytest.raises(ConfigError, match="dtype_bytes"):
        summary(net, dtype_bytes=0)


def test_summary_text_with_budget():
    net = parse("INPUT[32x32x3] -> CONV7-32 -> RELU -> POOL2 -> FC-100 -> RELU -> FC-10")
    text = summary_text(net, batch_size=4, budget="512MiB")
    assert "Largest batch within 512MiB (536,870,912 bytes)" in text and "convnp peak estimate" in text
    assert "none: fit_batch_size: even a batch of 1" in summary_text(net, budget=1000)
