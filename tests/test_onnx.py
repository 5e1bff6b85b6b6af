"""ONNX export: every layer type and every zoo model, run by onnxruntime, equal to convnp's forward.

Each exported model passes ``onnx.checker.check_model(full_check=True)`` and onnxruntime's
output equals ``net.forward(x, train=False)`` within 1e-4 (relative to the output's scale).
convnp's layers are oracle-tested against PyTorch elsewhere, so this pins the ONNX graph to
PyTorch's semantics too. Needs the ``onnx`` extra (onnx, onnxruntime); skipped without it.
"""

import json
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convnp.layers.conv as conv_module
import convnp.layers.linear as linear_module
import convnp.layers.locally_connected as lc_module
from convnp.errors import ConfigError, ShapeError
from convnp.io import onnx_export
from convnp.io.onnx_export import export_onnx, register_onnx_converter
from convnp.layers.activation import ELU, LeakyReLU, ReLU, Sigmoid, Tanh
from convnp.layers.base import LAYER_TYPES, Layer
from convnp.layers.conv import Conv2d
from convnp.layers.dropout import Dropout, Dropout2d
from convnp.layers.linear import Flatten, Linear
from convnp.layers.locally_connected import LocallyConnected2d
from convnp.layers.norm import BatchNorm1d, BatchNorm2d, GroupNorm, LocalResponseNorm
from convnp.layers.pool import AvgPool2d, GlobalAvgPool2d, LPPool2d, MaxPool2d
from convnp.models import get_model, list_models
from convnp.layers.pool import AdaptiveAvgPool2d
from convnp.layers.shortcut import ZeroPadShortcut
from convnp.nets.graph import Add, Concat, Graph
from convnp.nets.sequential import Sequential

GIANT_ENV = "CONVNP_TEST_GIANT"


def _deps():
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra (pip install onnx onnxruntime)")
    ort = pytest.importorskip("onnxruntime", reason="running exports needs the onnx extra (pip install onnxruntime)")
    return onnx, ort


def _session(path):
    """An onnxruntime CPU session on one thread (the test machine is shared; small graphs gain nothing)."""
    _, ort = _deps()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _randomize(net, seed=1):
    """Every float param and buffer random (biases and BN statistics included), variances positive."""
    rng = np.random.default_rng(seed)
    for key, arr in net.state_dict().items():
        if arr.dtype.kind != "f":
            continue
        if key.endswith("running_var") or (arr.ndim == 1 and key.endswith("weight")):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
        elif arr.ndim <= 1 or key.endswith(("bias", "running_mean")):
            arr[...] = rng.normal(0, 0.2, arr.shape)
    return net


def _roundtrip(net, shape, tmp_path, batch=2, x=None, opset=17, atol=1e-4, seed=0, **kwargs):
    """Export, check, run in onnxruntime and compare with convnp's eval forward; returns the model."""
    onnx, _ = _deps()
    path = os.path.join(tmp_path, "model.onnx")
    model = export_onnx(net, path, shape, opset=opset, **kwargs)  # runs check_model(full_check=True)
    if len(model.graph.initializer) < 50:  # big models: once (inside export) is enough
        onnx.checker.check_model(path, full_check=True)
    if x is None:
        x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    got = _session(path).run(None, {"input": x})[0]
    want = net.forward(x, train=False)
    assert got.shape == want.shape
    declared = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert declared[1:] == list(want.shape[1:])
    scale = max(1.0, float(np.nanmax(np.abs(want))) if np.isfinite(want).any() else 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol * scale, equal_nan=True)
    return model


def _ops(model) -> set:
    return {n.op_type for n in model.graph.node}


def _seq(*layers):
    return Sequential(*layers)


# --- every layer type -----------------------------------------------------------------------------
LAYER_CASES = {
    # name: (net builder, input shape (C, H, W), ONNX ops that must appear)
    "conv": (lambda: _seq(Conv2d(3, 4, 3, rng=0)), (3, 7, 7), {"Conv"}),
    "conv_stride_pad": (lambda: _seq(Conv2d(3, 4, 3, stride=2, padding=1, rng=0)), (3, 9, 9), {"Conv"}),
    "conv_dilation_rect": (lambda: _seq(Conv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(2, 1),
                                               rng=0)), (2, 9, 6), {"Conv"}),
    "conv_no_bias_floor": (lambda: _seq(Conv2d(3, 4, 3, stride=2, bias=False, rounding="floor", rng=0)),
                           (3, 8, 8), {"Conv"}),
    "conv_ceil": (lambda: _seq(Conv2d(2, 3, 3, stride=2, padding=1, rounding="ceil", rng=0)), (2, 8, 8), {"Conv"}),
    # k=1, p=1, ceil on 3: the window that would start in the right padding is dropped (convnp 4, ONNX 5)
    "conv_ceil_drops_padding_window": (lambda: _seq(Conv2d(2, 2, 1, padding=1, rounding="ceil", rng=0)), (2, 3, 4),
                                       {"Conv"}),
    "maxpool": (lambda: _seq(MaxPool2d(2)), (3, 8, 8), {"MaxPool"}),
    "maxpool_pad_floor": (lambda: _seq(MaxPool2d(3, stride=2, padding=1, rounding="floor")), (2, 8, 8),
                          {"MaxPool"}),
    "maxpool_ceil": (lambda: _seq(MaxPool2d(3, stride=2, rounding="ceil")), (2, 8, 8), {"MaxPool"}),
    "maxpool_dilation": (lambda: _seq(MaxPool2d(2, stride=1, dilation=2)), (2, 6, 6), {"MaxPool"}),
    "avgpool": (lambda: _seq(AvgPool2d(2)), (3, 8, 8), {"AveragePool"}),
    "avgpool_pad_counts": (lambda: _seq(AvgPool2d(3, stride=2, padding=1)), (2, 7, 7), {"AveragePool"}),
    "avgpool_ceil": (lambda: _seq(AvgPool2d(3, stride=2, rounding="ceil")), (2, 8, 8), {"AveragePool"}),
    "avgpool_ceil_pad": (lambda: _seq(AvgPool2d(3, stride=2, padding=1, rounding="ceil")), (2, 8, 8),
                         {"AveragePool", "Pad"}),
    # height 6: the last window hangs past the padded input; width 5: a window starting in the padding dropped
    "avgpool_ceil_mixed": (lambda: _seq(AvgPool2d(3, stride=3, padding=1, rounding="ceil")), (2, 6, 5),
                           {"AveragePool", "Pad"}),
    "lppool2": (lambda: _seq(LPPool2d(2, 2)), (2, 6, 6), {"LpPool"}),
    "lppool2_ceil": (lambda: _seq(LPPool2d(2, 3, stride=2, rounding="ceil")), (2, 8, 8), {"AveragePool", "Pow"}),
    "lppool3_mixed_signs": (lambda: _seq(LPPool2d(3, 2)), (2, 6, 6), {"Pow"}),
    "lppool1.5": (lambda: _seq(ReLU(), LPPool2d(1.5, (2, 3), stride=(2, 1))), (2, 6, 7), {"Pow"}),
    "lppool_inf": (lambda: _seq(LPPool2d(math.inf, 2)), (2, 6, 6), {"Abs", "MaxPool"}),
    "global_avgpool": (lambda: _seq(GlobalAvgPool2d()), (3, 5, 4), {"GlobalAveragePool"}),
    "relu": (lambda: _seq(ReLU()), (3, 4, 4), {"Relu"}),
    "leaky_relu": (lambda: _seq(LeakyReLU(0.2)), (3, 4, 4), {"LeakyRelu"}),
    "elu": (lambda: _seq(ELU(0.7)), (3, 4, 4), {"Elu"}),
    "tanh": (lambda: _seq(Tanh()), (3, 4, 4), {"Tanh"}),
    "sigmoid": (lambda: _seq(Sigmoid()), (3, 4, 4), {"Sigmoid"}),
    "flatten_linear": (lambda: _seq(Flatten(), Linear(48, 5, rng=0)), (3, 4, 4), {"Flatten", "Gemm"}),
    "linear_no_bias": (lambda: _seq(Flatten(), Linear(48, 5, bias=False, rng=0)), (3, 4, 4), {"Gemm"}),
    "flatten_partial": (lambda: _seq(Flatten(start_dim=2)), (3, 4, 5), {"Reshape"}),
    "dropout": (lambda: _seq(Dropout(0.5, rng=0), Dropout2d(0.3, rng=0)), (3, 4, 4), {"Identity"}),
    "batchnorm2d": (lambda: _seq(BatchNorm2d(3, eps=1e-3)), (3, 4, 4), {"BatchNormalization"}),
    "batchnorm2d_no_affine": (lambda: _seq(BatchNorm2d(3, affine=False)), (3, 4, 4), {"BatchNormalization"}),
    "groupnorm": (lambda: _randomize(_seq(GroupNorm(2, 6, eps=1e-3))), (6, 3, 5), {"InstanceNormalization", "Mul"}),
    "groupnorm_no_affine": (lambda: _seq(GroupNorm(3, 3, affine=False)), (3, 4, 4), {"InstanceNormalization"}),
    "batchnorm1d_features": (lambda: _seq(Flatten(), BatchNorm1d(12)), (3, 2, 2), {"BatchNormalization"}),
    "batchnorm1d_sequence": (lambda: _seq(Flatten(start_dim=2), BatchNorm1d(3)), (3, 2, 4), {"BatchNormalization"}),
    "lrn_odd": (lambda: _seq(LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)), (7, 3, 3), {"LRN"}),
    "lrn_even": (lambda: _seq(LocalResponseNorm(4, alpha=0.5, beta=0.6, k=1.0)), (6, 3, 3), {"AveragePool", "Div"}),
    "lrn_size1": (lambda: _seq(LocalResponseNorm(1, alpha=0.3, beta=0.5, k=1.5)), (3, 2, 2), {"LRN"}),
    "lrn_3d_input": (lambda: _seq(Flatten(start_dim=2), LocalResponseNorm(3, alpha=0.4, beta=0.75)), (5, 2, 3),
                     {"Div"}),
    "locally_connected": (lambda: _seq(LocallyConnected2d(2, 3, 5, 3, rng=0)), (2, 5, 5), {"Conv", "MatMul"}),
    "locally_connected_stride_pad": (lambda: _seq(LocallyConnected2d(2, 3, (7, 6), (3, 2), stride=2, padding=1,
                                                                     rng=0)), (2, 7, 6), {"MatMul", "Add"}),
    "locally_connected_no_bias": (lambda: _seq(LocallyConnected2d(3, 2, 4, 2, bias=False, rng=0)), (3, 4, 4),
                                  {"MatMul"}),
    "adaptive_identity": (lambda: _seq(AdaptiveAvgPool2d(4)), (2, 4, 4), {"Identity"}),
    "adaptive_global": (lambda: _seq(AdaptiveAvgPool2d(1)), (2, 5, 3), {"GlobalAveragePool"}),
    "adaptive_divisible": (lambda: _seq(AdaptiveAvgPool2d(2)), (2, 6, 4), {"AveragePool"}),
    "adaptive_overlapping": (lambda: _seq(AdaptiveAvgPool2d((3, 4))), (2, 7, 5), {"MatMul"}),
    "adaptive_upsample": (lambda: _seq(AdaptiveAvgPool2d(7)), (2, 1, 2), {"MatMul"}),
    "zero_pad_shortcut": (lambda: _seq(ZeroPadShortcut(4, 8, 2)), (4, 5, 5), {"Slice", "Pad"}),
    "zero_pad_shortcut_stride1": (lambda: _seq(ZeroPadShortcut(3, 6, 1)), (3, 4, 4), {"Pad"}),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_each_layer_matches_onnxruntime(case, tmp_path):
    build, shape, ops = LAYER_CASES[case]
    net = _randomize(build())
    model = _roundtrip(net, shape, tmp_path, batch=3)
    assert ops <= _ops(model), f"{case}: expected ONNX ops {ops}, got {_ops(model)}"


def test_every_layer_type_has_a_case():
    """Adding a layer type to convnp without an ONNX case here fails this test."""
    covered = set()
    for build, _, _ in LAYER_CASES.values():
        covered |= {type(m).__name__ for _, m in build().named_modules()}
    exportable = {name for name, cls in LAYER_TYPES.items()
                  if cls.__module__.startswith("convnp.layers.")}
    assert exportable - covered == set()


def test_graph_with_concat_add_and_sum(tmp_path):
    """A DAG: two branches concatenated, a three-way residual sum (ONNX Sum), fan-out of the input."""
    net = Graph([
        ("a", Conv2d(3, 4, 3, padding=1, rng=0), "input"),
        ("b", Sequential(Conv2d(3, 2, 1, rng=1), ReLU()), "input"),
        ("cat", Concat(), ["a", "b"]),
        ("proj", Conv2d(6, 3, 1, rng=2), "cat"),
        ("sum", Add(), ["proj", "input", "a_skip"]),
        ("a_skip", Tanh(), "input"),
        ("out", Sequential(GlobalAvgPool2d(), Flatten(), Linear(3, 4, rng=3)), "sum"),
    ])
    model = _roundtrip(_randomize(net), (3, 6, 6), tmp_path)
    assert {"Concat", "Sum", "Gemm"} <= _ops(model)
    names = {t.name for t in model.graph.initializer}
    assert {"a.weight", "b.0.weight", "out.2.weight"} <= names  # initializers carry the state_dict names


def test_residual_and_inception_blocks(tmp_path):
    from convnp.nets.blocks import BasicBlock, Bottleneck, Inception

    net = Sequential(BasicBlock(4, 4, rng=0), BasicBlock(4, 8, stride=2, rng=1), Bottleneck(8, 4, stride=2, rng=2),
                     Inception(16, 4, 3, 4, 2, 3, 2, branch3_kernel_size=5, rng=3))
    model = _roundtrip(_randomize(net), (4, 9, 9), tmp_path)
    assert {"Add", "Concat", "BatchNormalization"} <= _ops(model)


@pytest.mark.parametrize("k, s, p, size", [(2, 2, 1, 3), (2, 3, 0, 3), (3, 3, 1, 3), (4, 3, 2, 3)])
def test_dilated_ceil_maxpool_pads_with_minus_inf_first(k, s, p, size, tmp_path):
    """A dilated window's ceil-mode overhang can reach the kernel size, which onnxruntime refuses as pads."""
    layer = MaxPool2d(k, stride=s, padding=p, dilation=2, rounding="ceil")
    model = _roundtrip(Sequential(layer), (2, size, size + 1), tmp_path)
    assert "Pad" in _ops(model)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["conv", "max", "avg", "lp"]), k=st.integers(1, 4), s=st.integers(1, 3),
       p=st.integers(0, 2), d=st.integers(1, 2), size=st.integers(3, 9),
       rounding=st.sampled_from(["exact", "floor", "ceil"]))
def test_window_geometry_property(kind, k, s, p, d, size, rounding, tmp_path_factory):
    """Any legal kernel/stride/padding/dilation/rounding exports to the same output (size and values)."""
    _deps()
    try:
        if kind == "conv":
            layer = Conv2d(2, 3, k, stride=s, padding=p, dilation=d, rounding=rounding, rng=0)
        elif kind == "max":
            layer = MaxPool2d(k, stride=s, padding=p, dilation=d, rounding=rounding)
        elif kind == "avg":
            layer = AvgPool2d(k, stride=s, padding=p, rounding=rounding)
        else:
            layer = LPPool2d(2, k, stride=s, rounding=rounding)
        Sequential(layer).output_shape((2, size, size + 1))
    except (ConfigError, ShapeError):
        assume(False)
    _roundtrip(_randomize(Sequential(layer)), (2, size, size + 1), tmp_path_factory.mktemp("geom"))


# --- every zoo model ------------------------------------------------------------------------------
def _fast_he(rng, shape, fan_in, dtype):
    """He init drawing float32 directly (VGG's 100M-weight FC in ~1 s instead of ~3 s)."""
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))).astype(dtype)


@pytest.fixture
def fast_init(monkeypatch):
    for module in (conv_module, linear_module, lc_module):
        monkeypatch.setattr(module, "he_normal", _fast_he)


# model -> (input shape, options); the smallest input that works keeps the giant FC nets cheap
ZOO = {
    "lenet5": ((1, 28, 28), {}),
    "cs231n_3layer": ((3, 32, 32), {}),
    "cifar_convnet": ((3, 32, 32), {}),
    "cifar_fast": ((3, 32, 32), {}),
    "alexnet": ((3, 64, 64), {"num_classes": 10}),  # 57M weights; the adaptive 6x6 pool repeats the 1x1 map
    "googlenet": ((3, 64, 64), {"num_classes": 10}),
    "resnet18": ((3, 64, 64), {"num_classes": 10}),
    "resnet34": ((3, 64, 64), {"num_classes": 10}),
    "resnet50": ((3, 64, 64), {"num_classes": 10}),
    "resnet20": ((3, 32, 32), {}),
    "resnet32": ((3, 32, 32), {}),
    "resnet44": ((3, 32, 32), {}),
    "resnet56": ((3, 32, 32), {}),
}
# Each of these takes 5-20 s on two cores (export of 60-140M float32 weights, the checker, onnxruntime's
# load) and uses only layer types and blocks that the models above and the layer cases already cover.
GIANT = {
    "vgg11_bn": ((3, 32, 32), {"num_classes": 10}),  # five pools give 1x1, spread to 7x7
    "alexnet_v1": ((3, 227, 227), {"num_classes": 10}),  # exact sizes need 227 (LRN, overlapping pools)
    "zfnet": ((3, 224, 224), {"num_classes": 10}),       # the FC needs the paper's 6x6x256 at 224
    "vgg11": ((3, 32, 32), {"num_classes": 10}),
    "vgg13": ((3, 32, 32), {"num_classes": 10}),
    "vgg16": ((3, 32, 32), {"num_classes": 10}),
    "vgg19": ((3, 32, 32), {"num_classes": 10}),
    "vgg13_bn": ((3, 32, 32), {"num_classes": 10}),
    "vgg16_bn": ((3, 32, 32), {"num_classes": 10}),
    "vgg19_bn": ((3, 32, 32), {"num_classes": 10}),
    "resnet101": ((3, 64, 64), {"num_classes": 10}),
    "resnet152": ((3, 64, 64), {"num_classes": 10}),
}
VARIANTS = {
    "cifar_convnet_bn": ("cifar_convnet", (3, 32, 32), {"batch_norm": True}),
    "resnet20_option_b": ("resnet20", (3, 32, 32), {"shortcut": "B"}),
    "lenet5_32": ("lenet5", (1, 32, 32), {"input_size": 32}),
    "googlenet_aux": ("googlenet", (3, 64, 64), {"num_classes": 7, "aux_logits": True}),  # trunk only
}


def test_zoo_table_covers_every_model():
    assert set(ZOO) | set(GIANT) == set(list_models())
    assert not set(ZOO) & set(GIANT)


def _zoo_case(name, shape, options, tmp_path):
    net = _randomize(get_model(name, rng=0, **options))
    model = _roundtrip(net, shape, tmp_path, batch=1 if shape[-1] > 100 else 2)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_onnxruntime(name, fast_init, tmp_path):
    shape, options = ZOO[name]
    _zoo_case(name, shape, options, tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_zoo_variants_match_onnxruntime(variant, fast_init, tmp_path):
    name, shape, options = VARIANTS[variant]
    _zoo_case(name, shape, options, tmp_path)


@pytest.mark.skipif(os.environ.get(GIANT_ENV) != "1",
                    reason=f"60-140M-parameter model: 5-20 s each to export, check and load in onnxruntime; "
                           f"its layers and blocks are covered by the layer cases and alexnet/resnet50; "
                           f"set {GIANT_ENV}=1 to run")
@pytest.mark.parametrize("name", sorted(GIANT))
def test_giant_zoo_model_matches_onnxruntime(name, fast_init, tmp_path):
    shape, options = GIANT[name]
    _zoo_case(name, shape, options, tmp_path)


# --- options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opsets(opset, tmp_path):
    net = _randomize(Sequential(Conv2d(3, 4, 3, rng=0), BatchNorm2d(4), ReLU(), LocalResponseNorm(4),
                                AvgPool2d(3, stride=2, padding=1, rounding="ceil"), LPPool2d(2, 2, rounding="ceil"),
                                LocallyConnected2d(4, 2, 2, 1, rng=1), Flatten(), Linear(8, 3, rng=2)))
    model = _roundtrip(net, (3, 9, 9), tmp_path, opset=opset)
    assert model.opset_import[0].version == opset


def test_static_batch_and_names(tmp_path):
    _deps()
    net = _randomize(get_model("lenet5", rng=0))
    path = str(tmp_path / "m.onnx")
    model = export_onnx(net, path, batch_size=4, input_name="images", output_name="scores")  # net.input_shape
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 1, 28, 28]
    assert model.graph.output[0].name == "scores" and model.producer_name == "convnp"
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    got = _session(path).run(["scores"], {"images": x})[0]
    np.testing.assert_allclose(got, net.forward(x), atol=1e-4)


def test_symbolic_batch_runs_any_batch_size(tmp_path):
    _deps()
    net = _randomize(get_model("resnet20", rng=0))
    path = str(tmp_path / "m.onnx")
    export_onnx(net, path, (3, 32, 32))
    sess = _session(path)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], net.forward(x), atol=1e-4)


def test_float64_net_exports_float32(tmp_path):
    net = _randomize(Sequential(Conv2d(2, 3, 3, rng=0), ReLU(), Flatten(), Linear(12, 2, rng=1))).to("float64")
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    _deps()
    model = export_onnx(net, str(tmp_path / "m.onnx"), (2, 4, 4))
    assert all(t.data_type == 1 for t in model.graph.initializer)  # FLOAT
    _roundtrip(net, (2, 4, 4), tmp_path, x=x)


def test_path_none_returns_model_without_writing(tmp_path):
    _deps()
    model = export_onnx(get_model("lenet5", rng=0), None)
    assert model.graph.node and not list(tmp_path.iterdir())


def test_custom_layer_via_register_onnx_converter(tmp_path, monkeypatch):
    class Negate(Layer):
        def forward(self, x, train=False):
            return -x

    try:
        net = Sequential(Conv2d(1, 2, 3, rng=0), Negate())
        _deps()
        with pytest.raises(ConfigError, match=r"no ONNX mapping for layer '1' \(Negate\).*register_onnx_converter"):
            export_onnx(net, str(tmp_path / "m.onnx"), (1, 5, 5))
        monkeypatch.setitem(onnx_export._CONVERTERS, Negate,
                            lambda b, layer, x, shape, path: (b.node("Neg", [x], path), shape))
        _roundtrip(net, (1, 5, 5), tmp_path)
    finally:
        LAYER_TYPES.pop("Negate", None)


def test_register_onnx_converter_decorator(monkeypatch, tmp_path):
    class Double(Layer):
        def forward(self, x, train=False):
            return 2 * x

    try:
        monkeypatch.setattr(onnx_export, "_CONVERTERS", dict(onnx_export._CONVERTERS))

        @register_onnx_converter(Double)
        def _double(b, layer, x, shape, path):
            return b.node("Add", [x, x], path), shape

        _roundtrip(Sequential(Double()), (2, 3, 3), tmp_path)
    finally:
        LAYER_TYPES.pop("Double", None)


# --- errors --------------------------------------------------------------------------------------------
def test_errors(tmp_path):
    onnx, _ = _deps()
    net = get_model("lenet5", rng=0)
    path = str(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="opset must be an int from 13"):
        export_onnx(net, path, opset=12)
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(net, path, opset=onnx.defs.onnx_opset_version() + 1)
    with pytest.raises(ConfigError, match="input_shape must be positive ints"):
        export_onnx(net, path, (1, 0, 28))
    with pytest.raises(ConfigError, match="batch_size"):
        export_onnx(net, path, batch_size=0)
    with pytest.raises(ConfigError, match="pass input_shape"):
        export_onnx(Sequential(ReLU()), path)
    with pytest.raises(ConfigError, match="JSON-able"):
        export_onnx(net, path, metadata={"classes": {1, 2}})
    with pytest.raises(ShapeError, match="features"):  # the failing layer is named, nothing written
        export_onnx(net, path, (1, 8, 8))
    assert not os.path.exists(path)


def test_missing_onnx_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match="pip install onnx"):
        export_onnx(get_model("lenet5", rng=0), str(tmp_path / "m.onnx"))


# --- export_model: what `convnp export` runs ------------------------------------------------------
def test_export_model_from_a_saved_model_file(tmp_path):
    from convnp.io.model_file import save_model
    from convnp.app.export import export_model

    onnx, _ = _deps()
    net = _randomize(get_model("lenet5", num_classes=3, rng=0))
    extra = {"classes": ["a", "b", "c"], "input_shape": [1, 28, 28], "mean": [0.1], "std": [0.3], "dataset": "x"}
    save_model(net, tmp_path / "model.safetensors", extra=extra)
    out = tmp_path / "model.onnx"
    _, shape = export_model(str(tmp_path / "model.safetensors"), out)
    assert shape == (1, 28, 28)
    model = onnx.load(str(out))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props == extra
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_session(out).run(None, {"input": x})[0], net.forward(x), atol=1e-4)
    with pytest.raises(ConfigError, match="not to a saved model file"):
        export_model(str(tmp_path / "model.safetensors"), out, num_classes=4)


def test_export_model_from_zoo_names_and_specs(tmp_path):
    from convnp.app.export import export_model
    from convnp.io.torch_weights import save_torch_state_dict

    _deps()
    net, shape = export_model("resnet20:shortcut='B'", tmp_path / "r.onnx", input_shape="3x16x16", num_classes=4)
    assert shape == (3, 16, 16) and net.output_shape(shape) == (4,)
    assert "downsample.0.weight" in " ".join(net.state_dict())
    spec = "INPUT[8x8x1] -> CONV3-4 -> RELU -> POOL2 -> FC-3"
    net, shape = export_model(spec, tmp_path / "s.onnx")
    assert shape == (1, 8, 8)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_session(tmp_path / "s.onnx").run(None, {"input": x})[0], net.forward(x), atol=1e-4)
    # weights from a state_dict file (a head of another class count stays fresh)
    src = _randomize(get_model("lenet5", rng=3))
    save_torch_state_dict(src, tmp_path / "w.safetensors")
    net, _ = export_model("lenet5", tmp_path / "l.onnx", weights=tmp_path / "w.safetensors")
    np.testing.assert_array_equal(net.state_dict()["features.0.weight"], src.state_dict()["features.0.weight"])
    with pytest.raises(ConfigError, match="format must be 'onnx'"):
        export_model("lenet5", tmp_path / "l.tflite", format="tflite")
