"""The layer-pattern notation: parse, errors with columns, and the to_spec round trip."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError
from convnp.nets.graph import Add, Graph
from convnp.nets.sequential import Sequential
from convnp.notation.spec import SpecError, parse, to_spec

BRIEF = "INPUT[32x32x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2 -> FC-256 -> RELU -> FC-10"


def sq(value):
    """An int from a config's int or (h, w) pair of equal ints."""
    if isinstance(value, (list, tuple)):
        assert value[0] == value[1]
        return value[0]
    return value


def kinds(net):
    return [type(layer).__name__ for layer in net]


def configs(net):
    return [(type(layer).__name__, layer.get_config()) for layer in net]


def shapes(net):
    return [s for _, _, s in net.shapes()]


# --- the notes' examples -------------------------------------------------------------------------------
def test_the_brief_example():
    net = parse(BRIEF, rng=0)
    assert kinds(net) == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Conv2d", "ReLU",
                          "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert shapes(net) == [(32, 32, 32)] * 4 + [(32, 16, 16)] + [(64, 16, 16)] * 4 + [(64, 8, 8), (4096,),
                                                                                     (256,), (256,), (10,)]
    conv = net[0].get_config()
    assert (conv["in_channels"], conv["out_channels"], conv["bias"]) == (3, 32, True)
    assert [sq(conv[k]) for k in ("kernel_size", "stride", "padding")] == [3, 1, 1]
    assert net[2].get_config()["in_channels"] == 32 and net[11].get_config()["in_features"] == 4096
    assert net.input_shape == (3, 32, 32) and net.loss is None
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert net(x).shape == (2, 10)
    assert to_spec(net) == BRIEF


def test_notes_cifar_example_input_conv_relu_pool_fc():
    """The notes' [INPUT - CONV - RELU - POOL - FC]: 32x32x3 -> 32x32x12 -> 16x16x12 -> 1x1x10."""
    net = parse("INPUT[32x32x3] -> CONV3-12 -> RELU -> POOL2 -> FC-10")
    assert shapes(net) == [(12, 32, 32), (12, 32, 32), (12, 16, 16), (3072,), (10,)]


def test_notes_vgg_sizes_with_fewer_channels():
    """VGGNet's layout (channels scaled down to keep the test light): 224 -> 112 -> 56 -> 28 -> 14 -> 7."""
    spec = ("INPUT[224x224x3] -> [CONV3-2 -> RELU]*2 -> POOL2 -> [CONV3-3 -> RELU]*2 -> POOL2 -> "
            "[CONV3-4 -> RELU]*3 -> POOL2 -> [CONV3-5 -> RELU]*3 -> POOL2 -> [CONV3-5 -> RELU]*3 -> POOL2 -> "
            "FC-8 -> RELU -> FC-8 -> RELU -> FC-10")
    net = parse(spec)
    pools = [s for layer, s in zip(net, shapes(net)) if type(layer).__name__ == "MaxPool2d"]
    assert pools == [(2, 112, 112), (3, 56, 56), (4, 28, 28), (5, 14, 14), (5, 7, 7)]
    assert net[-5].in_features == 5 * 7 * 7
    # spec() folds every repeat, including the two identical last stages
    assert to_spec(net) == ("INPUT[224x224x3] -> [CONV3-2 -> RELU]*2 -> POOL2 -> [CONV3-3 -> RELU]*2 -> POOL2 -> "
                          "[CONV3-4 -> RELU]*3 -> POOL2 -> [[CONV3-5 -> RELU]*3 -> POOL2]*2 -> "
                          "[FC-8 -> RELU]*2 -> FC-10")


def test_notes_alexnet_first_layers():
    """AlexNet: 227x227x3 with 96 11x11 filters at stride 4 gives 55x55x96 (34,944 params); pool 3/2 -> 27."""
    net = parse("INPUT[227x227x3] -> CONV11-96/S4/P0 -> RELU -> NORM -> POOL3/S2 -> CONV5-8 -> RELU")
    assert shapes(net) == [(96, 55, 55), (96, 55, 55), (96, 55, 55), (96, 27, 27), (8, 27, 27), (8, 27, 27)]
    assert net[0].num_params == 34944
    assert net[2].get_config() == {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}
    assert to_spec(net) == "INPUT[227x227x3] -> CONV11-96/S4/P0 -> RELU -> NORM -> POOL3/S2 -> CONV5-8 -> RELU"


def test_notes_general_pattern_nested_repeats():
    """INPUT -> [[CONV -> RELU]*N -> POOL?]*M -> [FC -> RELU]*K -> FC with N=2, M=2, K=2."""
    net = parse("INPUT[8x8x3] -> [[CONV3-4 -> RELU]*2 -> POOL2]*2 -> [FC-6 -> RELU]*2 -> FC-3")
    assert kinds(net) == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"] * 2 + [
        "Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert net[0].get_config()["in_channels"] == 3 and net[5].get_config()["in_channels"] == 4
    assert net.output_shape() == (3,)
    assert to_spec(net) == "INPUT[8x8x3] -> [[CONV3-4 -> RELU]*2 -> POOL2]*2 -> [FC-6 -> RELU]*2 -> FC-3"


def test_linear_classifier_with_input_shape_keyword():
    net = parse("INPUT -> FC-10", input_shape=(3, 4, 4))
    assert kinds(net) == ["Flatten", "Linear"] and net[1].in_features == 48
    assert to_spec(parse("FC-5 -> TANH -> FC-2", input_shape=(7,))) == "INPUT[7] -> FC-5 -> TANH -> FC-2"
    assert kinds(parse("INPUT[6] -> FC-2")) == ["Linear"]


def test_every_item_builds_its_layer():
    net = parse("INPUT[8x8x2] -> CONV5-4/S1/P2/NB -> BN -> LRELU -> ELU -> TANH -> SIGMOID -> AVGPOOL2 "
                "-> L2POOL2 -> POOL2/S1/P1 -> GPOOL -> DROPOUT0.25 -> FC-5/NB -> BN -> LRELU0.2 -> ELU0.5 -> FC-3",
                rng=1)
    cfg = configs(net)
    assert [c[0] for c in cfg] == ["Conv2d", "BatchNorm2d", "LeakyReLU", "ELU", "Tanh", "Sigmoid", "AvgPool2d",
                                   "LPPool2d", "MaxPool2d", "GlobalAvgPool2d", "Dropout", "Flatten", "Linear",
                                   "BatchNorm1d", "LeakyReLU", "ELU", "Linear"]
    assert cfg[0][1]["bias"] is False and cfg[12][1]["bias"] is False
    assert cfg[2][1] == {"negative_slope": 0.01} and cfg[14][1] == {"negative_slope": 0.2}
    assert cfg[3][1] == {"alpha": 1.0} and cfg[15][1] == {"alpha": 0.5}
    assert cfg[10][1] == {"p": 0.25} and cfg[7][1]["norm_type"] == 2
    assert cfg[1][1]["num_features"] == 4 and cfg[13][1]["num_features"] == 5
    assert shapes(net)[6:10] == [(4, 4, 4), (4, 2, 2), (4, 3, 3), (4, 1, 1)]
    assert parse(to_spec(net)).get_config() == net.get_config()


def test_default_conv_padding_keeps_the_size_and_even_filters_need_p():
    net = parse("INPUT[9x9x1] -> CONV1-2 -> CONV3-2 -> CONV5-2 -> CONV7-2 -> CONV4-2/P0 -> CONV2-2/P1")
    assert [s[1] for s in shapes(net)] == [9, 9, 9, 9, 6, 7]
    with pytest.raises(SpecError, match=r"CONV4-2: an even filter size .* CONV4-2/P0") as info:
        parse("INPUT[9x9x1] -> CONV3-2 -> CONV4-2")
    assert info.value.column == len("INPUT[9x9x1] -> CONV3-2 -> ") + 1


def test_softmax_and_svm_mark_the_loss_and_the_net_outputs_scores():
    net = parse("INPUT[4x4x1] -> FC-3 -> SOFTMAX")
    assert kinds(net) == ["Flatten", "Linear"] and net.loss == "softmax"
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    assert not np.allclose(net(x).sum(axis=1), 1.0)  # raw scores, not probabilities
    assert to_spec(net) == "INPUT[4x4x1] -> FC-3 -> SOFTMAX"
    assert parse("INPUT[3] -> FC-2 -> svm").loss == "svm"


def test_case_and_whitespace_do_not_matter():
    a = parse(BRIEF)
    b = parse(" input [ 32 x32x 3 ]->[ conv3 - 32->relu ] * 2->pool2->[Conv3-64 ->Relu]*2\n"
              "->Pool2->fc-256->relu->Fc-10 ")
    assert b.get_config() == a.get_config()
    assert parse("INPUT[8x8x1] → CONV3-2").get_config() == parse("INPUT[8x8x1] -> CONV3-2").get_config()


def test_flatten_is_inserted_once_and_explicit_flatten_round_trips():
    net = parse("INPUT[4x4x2] -> FC-4 -> FC-3")
    assert kinds(net) == ["Flatten", "Linear", "Linear"]
    net = parse("INPUT[4x4x2] -> FLATTEN -> DROPOUT0.5 -> FC-3")
    assert kinds(net) == ["Flatten", "Dropout", "Linear"]
    assert to_spec(net) == "INPUT[4x4x2] -> FLATTEN -> DROPOUT0.5 -> FC-3"
    net = parse("INPUT[4x4x2] -> FC-4 -> FLATTEN -> FC-3")
    assert to_spec(net) == "INPUT[4x4x2] -> FC-4 -> FLATTEN -> FC-3"


def test_input_shape_is_required_and_must_agree():
    with pytest.raises(ConfigError, match=r"input shape is unknown.*INPUT\[HxWxC\].*input_shape"):
        parse("CONV3-8 -> RELU")
    with pytest.raises(ConfigError, match=r"INPUT gives \(C, H, W\) = \(3, 8, 8\) but input_shape=\(1, 8, 8\)"):
        parse("INPUT[8x8x3] -> RELU", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="input_shape must be"):
        parse("RELU", input_shape=(3, 8))
    with pytest.raises(ConfigError, match="no layers"):
        parse("INPUT[8x8x3]")
    with pytest.raises(ConfigError, match="must be a string"):
        parse(None)


def test_dtype_and_rng():
    a, b = parse("INPUT[6] -> FC-4", rng=3), parse("INPUT[6] -> FC-4", rng=3)
    np.testing.assert_array_equal(a[0].params["weight"], b[0].params["weight"])
    assert parse("INPUT[6] -> FC-4", rng=4)[0].params["weight"].tolist() != a[0].params["weight"].tolist()
    assert parse("INPUT[6] -> FC-4 -> BN", dtype="float64")[1].get_config()["dtype"] == "float64"


# --- syntax errors: column, what was expected, a caret ------------------------------------------------
SYNTAX_ERRORS = [
    # spec, the text the caret points at (first occurrence; "<x" the last; "$" the end), expected message
    ("INPUT[32x32x3] -> CONV3 -> RELU", " -> RELU", "'-' and the number of filters after CONV3"),
    ("CONV3-32 -> RELUX", "X", "expected '->' or the end of the spec, found 'X'"),
    ("[CONV3-32 -> RELU*2", "*", "expected '->' or ']' to close the '[' at column 1, found '*'"),
    ("[CONV3-32 -> RELU]", "$", "expected '*N' after ']'"),
    ("[RELU]*0", "0", "repeat count must be at least 1"),
    ("[RELU]*x", "x", "a repeat count after '*', found 'x'"),
    ("RELU -> FOO2 -> RELU", "FOO2", "unknown layer 'FOO2'; expected one of AVGPOOL, BN, CONV"),
    ("CONV3-32 ->", "$", "expected a layer after '->', found the end of the spec"),
    ("CONV3-32/Q2", "Q2", "expected an option of CONV: /S, /P, /NB; found 'Q2'"),
    ("CONV3-32/S", "$", "a number after /S"),
    ("RELU/S2", "/S2", "RELU takes no /options"),
    ("CONV3-32/S2/S2", "<S2", "option /S given twice"),
    ("L2POOL2/P1", "P1", "expected an option of L2POOL: /S"),
    ("INPUT[32x32] -> RELU", "]", "INPUT takes [HxWxC] (or [D] for a flat input), got 2 sizes"),
    ("INPUT[32x32x3 -> RELU", "->", "expected 'x' or ']' in INPUT[HxWxC]"),
    ("CONV3-32 -> INPUT[4x4x3]", "INPUT", "INPUT can only be the first item"),
    ("SOFTMAX -> FC-10", "SOFTMAX", "SOFTMAX marks the loss and can only be the last item"),
    ("[FC-10 -> SVM]*1", "SVM", "SVM marks the loss"),
    ("FC-10 ]", "]", "unmatched ']'"),
    ("FC10", "10", "'-' and the number of outputs after FC (as in FC-10), found '10'"),
    ("FC -> RELU", " -> RELU", "'-' and the number of outputs after FC"),
    ("CONV0-8", "CONV0", "F must be at least 1"),
    ("POOL2/S0", "POOL2", "S must be at least 1"),
    ("CONV3-0", "CONV3", "K must be at least 1"),
    ("CONV", "$", "the filter size F after CONV (as in CONV3-32), found the end of the spec"),
    ("POOL -> RELU", " -> RELU", "the window size after POOL (as in POOL2)"),
    ("DROPOUT1.5", "DROPOUT", "DROPOUT1.5: Dropout"),
    ("   ", "$", "the spec is empty"),
]


@pytest.mark.parametrize("spec, at, expected", SYNTAX_ERRORS)
def test_syntax_errors_name_column_and_expected(spec, at, expected):
    with pytest.raises(SpecError) as info:
        parse(spec, input_shape=(3, 8, 8))
    err = info.value
    if at == "$":  # the end of the spec
        index = len(spec.rstrip())
    elif at.startswith("<"):  # the last occurrence
        index = spec.rindex(at[1:])
    else:  # the first occurrence, past leading spaces
        index = spec.index(at) + len(at) - len(at.lstrip())
    assert expected in err.reason
    assert err.column == index + 1
    lines = str(err).split("\n")
    assert lines[0] == f"spec error at column {index + 1}: {err.reason}"
    assert lines[1] == "    " + spec and lines[2] == "    " + " " * index + "^"
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)


def test_syntax_error_on_a_later_line_gives_line_and_column():
    spec = "INPUT[8x8x3]\n  -> CONV3-8\n  -> POOOL2"
    with pytest.raises(SpecError) as info:
        parse(spec)
    assert info.value.line == 3 and info.value.column == 6
    assert str(info.value).split("\n") == [
        f"spec error at line 3, column 6: {info.value.reason}", "      -> POOOL2", "         ^"]


# --- sizes that do not work ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec, column, expected", [
    ("INPUT[10x10x3] -> CONV3-8/S2/P0", 19, [r"CONV3-8/S2/P0 \(layer 0, column 19\) does not fit: Conv2d\(3, 8",
                                            r"4\.5"]),
    ("INPUT[4x4x3] -> RELU -> POOL3", 25, [r"POOL3 \(layer 1, column 25\) does not fit: MaxPool2d"]),
    ("INPUT[2x2x3] -> POOL2 -> POOL2", 26, [r"POOL2 \(layer 1, column 26\) does not fit", "too small"]),
    ("INPUT[8x8x3] -> FC-4 -> CONV3-2", 25, [r"CONV3-2 \(column 25\) needs a \(C, H, W\) volume"]),
    ("INPUT[8x8x3] -> FC-4 -> POOL2", 25, [r"POOL2 \(column 25\) needs a \(C, H, W\) volume"]),
])
def test_sizes_that_do_not_work_raise_shape_errors_naming_the_layer(spec, column, expected):
    with pytest.raises(ShapeError) as info:
        parse(spec)
    msg = str(info.value)
    for pattern in expected:
        assert re.search(pattern, msg), (pattern, msg)
    assert msg.split("\n")[-2:] == ["    " + spec, "    " + " " * (column - 1) + "^"]


# --- writing nets back ----------------------------------------------------------------------------------
def test_to_spec_canonical_forms():
    net = parse("input[6x6x1]->conv5-8/p0/s1/nb->[relu]*1->pool2/s2")
    assert to_spec(net) == "INPUT[6x6x1] -> CONV5-8/P0/NB -> RELU -> POOL2"
    net = parse("INPUT[8x8x1] -> RELU -> RELU -> RELU -> TANH -> TANH")
    assert to_spec(net) == "INPUT[8x8x1] -> [RELU]*3 -> TANH -> TANH"  # folding two items saves nothing
    net = parse("INPUT[8x8x1] -> [[CONV3-2]*1 -> [POOL1]*1]*1 -> CONV3-2 -> POOL1")
    assert to_spec(net) == "INPUT[8x8x1] -> [CONV3-2 -> POOL1]*2"


def test_to_spec_without_a_known_input_shape():
    from convnp.layers.linear import Linear

    net = Sequential(Linear(4, 3), Sequential(Linear(3, 2)))  # nested Sequentials flatten
    assert to_spec(net) == "FC-3 -> FC-2"
    assert to_spec(net, input_shape=(4,)) == "INPUT[4] -> FC-3 -> FC-2"
    assert parse(to_spec(net), input_shape=(4,)).get_config()["layers"] == Sequential(
        Linear(4, 3), Linear(3, 2)).get_config()["layers"]


def test_to_spec_refuses_what_the_notation_cannot_say():
    from convnp.layers.activation import Tanh
    from convnp.layers.norm import BatchNorm2d, LocalResponseNorm

    with pytest.raises(ConfigError, match="'1' is a Graph"):
        to_spec(Sequential(Tanh(), Graph([("a", Tanh(), "input"), ("s", Add(), ["a", "input"])])))
    with pytest.raises(ConfigError, match="NORM stands for LocalResponseNorm"):
        to_spec(Sequential(LocalResponseNorm(3)))
    with pytest.raises(ConfigError, match="BN stands for the default"):
        to_spec(Sequential(BatchNorm2d(3, eps=1e-3)))
    with pytest.raises(ConfigError, match="expected a Sequential"):
        to_spec(Tanh())


def test_to_spec_refuses_conv_and_pool_variants():
    from convnp.layers.conv import Conv2d
    from convnp.layers.pool import LPPool2d, MaxPool2d

    with pytest.raises(ConfigError, match="dilation and groups must be 1"):
        to_spec(Sequential(Conv2d(3, 4, 3, dilation=2)))
    with pytest.raises(ConfigError, match="rounding='exact'"):
        to_spec(Sequential(Conv2d(3, 4, 3, stride=2, rounding="floor")))
    with pytest.raises(ConfigError, match="non-square kernel_size"):
        to_spec(Sequential(Conv2d(3, 4, (3, 1))))
    with pytest.raises(ConfigError, match="rounding='exact'"):
        to_spec(Sequential(MaxPool2d(2, rounding="floor")))
    with pytest.raises(ConfigError, match="norm_type=2"):
        to_spec(Sequential(LPPool2d(3, 2)))


# --- property tests ---------------------------------------------------------------------------------------
PRESERVING = ["RELU", "TANH", "SIGMOID", "LRELU", "LRELU0.3", "ELU", "ELU0.5", "BN", "DROPOUT0.5", "DROPOUT0.125"]


@st.composite
def valid_specs(draw):
    """Random specs whose sizes work: tracks the shape while drawing items."""
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 12)), draw(st.integers(3, 12))
    shape = (c, h, w)
    items = [f"INPUT[{h}x{w}x{c}]"]
    for _ in range(draw(st.integers(1, 6))):
        volume = len(shape) == 3
        kind = draw(st.sampled_from(["conv", "pool", "gpool", "norm", "act", "group", "fc", "flatten"]
                                    if volume else ["act", "fc", "flatten", "group"]))
        if kind == "conv":
            f = draw(st.sampled_from([k for k in (1, 2, 3, 5) if k <= min(shape[1:])]))
            k = draw(st.integers(1, 4))
            pad = None if f % 2 and draw(st.booleans()) else draw(st.integers(0, f // 2))
            p = (f - 1) // 2 if pad is None else pad
            stride = draw(st.sampled_from([s for s in (1, 2, 3)
                                           if all((n - f + 2 * p) % s == 0 for n in shape[1:])]))
            text = f"CONV{f}-{k}" + (f"/S{stride}" if stride != 1 or draw(st.booleans()) else "")
            text += "" if pad is None else f"/P{pad}"
            text += "/NB" if draw(st.booleans()) else ""
            shape = (k, *[(n - f + 2 * p) // stride + 1 for n in shape[1:]])
        elif kind == "pool":
            name = draw(st.sampled_from(["POOL", "AVGPOOL", "L2POOL"]))
            f = draw(st.sampled_from([k for k in (1, 2, 3) if k <= min(shape[1:])]))
            stride = draw(st.sampled_from([s for s in (1, 2, 3) if all((n - f) % s == 0 for n in shape[1:])]))
            text = f"{name}{f}" + (f"/S{stride}" if stride != f else "")
            shape = (shape[0], *[(n - f) // stride + 1 for n in shape[1:]])
        elif kind == "gpool":
            text, shape = "GPOOL", (shape[0], 1, 1)
        elif kind == "norm":
            text = "NORM"
        elif kind == "act":
            text = draw(st.sampled_from(PRESERVING))
        elif kind == "group":  # size-preserving repeats, sometimes nested
            inner = draw(st.lists(st.sampled_from(PRESERVING + (["CONV3-2", "CONV1-3"] if volume else ["FC-3"])),
                                  min_size=1, max_size=3))
            if len(shape) == 1 and "FC-3" in inner:
                shape = (3,)
            if len(shape) == 3 and any(i.startswith("CONV") for i in inner):
                shape = (2 if [i for i in inner if i.startswith("CONV")][-1] == "CONV3-2" else 3, *shape[1:])
            body = " -> ".join(inner)
            if draw(st.booleans()):
                body = f"[{body}]*{draw(st.integers(1, 2))} -> RELU"
            text = f"[{body}]*{draw(st.integers(1, 3))}"
        elif kind == "fc":
            n = draw(st.integers(1, 5))
            text, shape = f"FC-{n}" + ("/NB" if draw(st.booleans()) else ""), (n,)
        else:
            text, shape = "FLATTEN", (int(np.prod(shape)),)
        items.append(text)
    if draw(st.booleans()):
        items.append(draw(st.sampled_from(["SOFTMAX", "SVM"])))
    return " -> ".join(items)


@settings(max_examples=25, deadline=None)
@given(spec=valid_specs())
def test_round_trip_parse_spec_parse_gives_identical_configs(spec):
    net = parse(spec, rng=0)
    text = to_spec(net)
    again = parse(text, rng=1)
    assert again.get_config() == net.get_config()
    assert to_spec(again) == text  # the written form is a fixed point
    net.output_shape()


@settings(max_examples=25, deadline=None)
@given(spec=valid_specs(), data=st.data())
def test_whitespace_and_case_never_change_the_net(spec, data):
    mangled = []
    for ch in spec:
        if data.draw(st.booleans()):
            ch = ch.lower() if data.draw(st.booleans()) else ch
        mangled.append(ch + data.draw(st.sampled_from(["", "", " ", "\n", "\t"])))
    assert parse("".join(mangled)).get_config() == parse(spec).get_config()
