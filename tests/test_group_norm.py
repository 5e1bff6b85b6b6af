"""GroupNorm: the proof that a layer is one file's worth of facts. Checked against PyTorch, a naive
loop and a float64 gradient check, and through every walker (summary, memory, spec, model file,
torch state_dict, ONNX, the engine, the report)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convnp as cn
from convnp.errors import ConfigError, ShapeError
from convnp.layers.norm import GroupNorm

from .gradcheck import check_layer_gradients

torch = pytest.importorskip("torch", reason="PyTorch is the test oracle (pip install torch==2.13.0)")

CASES = [
    # (num_groups, num_channels, input shape without N, eps, affine)
    (1, 4, (4, 3, 3), 1e-5, True),     # one group: LayerNorm over (C, H, W)
    (4, 4, (4, 3, 3), 1e-5, True),     # one channel per group: InstanceNorm
    (2, 6, (6, 5, 4), 1e-3, True),
    (3, 6, (6,), 1e-5, True),          # (N, C) input
    (2, 4, (4, 7), 1e-5, False),       # (N, C, L), no affine
    (7, 7, (7, 2, 2), 1e-1, True),
]


def _naive(x, g, weight, bias, eps):
    """Loops over examples and groups, the paper's definition."""
    n, c = x.shape[:2]
    out = np.empty_like(x, dtype=np.float64)
    per = c // g
    for i in range(n):
        for j in range(g):
            block = x[i, j * per:(j + 1) * per].astype(np.float64)
            out[i, j * per:(j + 1) * per] = (block - block.mean()) / np.sqrt(block.var() + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape) + bias.reshape(shape)
    return out


def _random_params(layer, rng):
    if layer.affine:
        layer.params["weight"][...] = rng.uniform(0.5, 1.5, layer.num_channels)
        layer.params["bias"][...] = rng.standard_normal(layer.num_channels)


@pytest.mark.parametrize("g,c,shape,eps,affine", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_forward_and_backward(g, c, shape, eps, affine, dtype):
    rng = np.random.default_rng(0)
    layer = GroupNorm(g, c, eps=eps, affine=affine, dtype=dtype)
    _random_params(layer, rng)
    x = (rng.standard_normal((3, *shape)) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    ref = torch.nn.GroupNorm(g, c, eps=eps, affine=affine).to(torch.float64)
    ref.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.state_dict().items()})
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(dout.astype(np.float64)))
    tol = 1e-5 if dtype == np.float32 else 1e-10
    y = layer.forward(x, train=True)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=tol, rtol=tol)
    np.testing.assert_allclose(y, _naive(x, g, layer.params.get("weight"), layer.params.get("bias"), eps),
                               atol=tol, rtol=tol)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=10 * tol, rtol=10 * tol)
    if affine:
        np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), atol=10 * tol, rtol=10 * tol)
        np.testing.assert_allclose(layer.grads["bias"], ref.bias.grad.numpy(), atol=10 * tol, rtol=10 * tol)
    else:
        assert layer.grads == {}
    # the same in evaluation: no batch statistics, no running state
    np.testing.assert_array_equal(layer.forward(x, train=False), y)


@pytest.mark.parametrize("g,c,shape,eps,affine", CASES)
def test_gradient_check_float64(g, c, shape, eps, affine):
    rng = np.random.default_rng(1)
    layer = GroupNorm(g, c, eps=eps, affine=affine)
    _random_params(layer, rng)
    errors = check_layer_gradients(layer, rng.standard_normal((2, *shape)), tol=1e-6)
    assert set(errors) >= ({"x", "weight", "bias"} if affine else {"x"})


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), groups=st.integers(1, 4), per=st.integers(1, 3), h=st.integers(1, 4))
def test_each_example_is_normalized_on_its_own(n, groups, per, h):
    """Property: every (example, group) block has mean 0 and variance var/(var+eps), whatever the batch."""
    c = groups * per
    x = np.random.default_rng(n * 100 + c).standard_normal((n, c, h, 3)) * 3 + 2
    layer = GroupNorm(groups, c, dtype=np.float64)
    y = layer.forward(x).reshape(n, groups, -1)
    var = x.reshape(n, groups, -1).var(axis=2)
    np.testing.assert_allclose(y.mean(axis=2), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=2), var / (var + 1e-5), atol=1e-9)
    np.testing.assert_allclose(layer.forward(x[:1]), layer.forward(x)[:1], atol=1e-12)  # batch-independent


@pytest.mark.parametrize("args,match", [
    ((3, 4), "num_channels \\(4\\) must be divisible by num_groups \\(3\\)"),
    ((0, 4), "num_groups must be an int >= 1"),
    ((2, 4.0), "num_channels must be an int"),
    ((2, 4, 0.0), "eps must be > 0"),
    ((2, 4, 1e-5, "yes"), "affine must be True or False"),
])
def test_bad_arguments_name_the_argument(args, match):
    with pytest.raises(ConfigError, match=match):
        GroupNorm(*args)


def test_bad_inputs_are_clear_errors():
    layer = GroupNorm(2, 4)
    with pytest.raises(ShapeError, match="expected 4 input channels, got 3"):
        layer.forward(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ShapeError, match="floating-point"):
        layer.forward(np.zeros((2, 4, 5, 5), np.int64))
    with pytest.raises(ShapeError, match="expected 4 input channels"):
        layer.output_shape((3, 5, 5))
    with pytest.raises(cn.StateError, match="backward called before forward"):
        layer.backward(np.zeros((2, 4, 5, 5), np.float32))


# --- everywhere a layer is used -------------------------------------------------------------------
def test_summary_costs_and_memory_model():
    net = cn.parse("INPUT[8x8x4] -> CONV3-8 -> GN4 -> RELU -> FC-3", rng=0)
    s = cn.summary(net)
    row = next(r for r in s.rows if r.type == "GroupNorm")
    assert (row.params, row.macs, row.flops, row.activations) == (16, 0, 7 * 8 * 8 * 8, 8 * 8 * 8)
    assert s.peak_bytes > 0
    for spec in ("INPUT[16x16x16] -> GN4 -> RELU -> FC-3", "INPUT[16x16x8] -> CONV3-16 -> GN4 -> RELU -> FC-3"):
        gn_net = cn.parse(spec, rng=0)
        measured = cn.memory.measure_peak(gn_net, batch_size=16)
        estimate = cn.memory.estimate_peak(gn_net, batch_size=16)
        assert abs(estimate.total - measured.peak_bytes) <= 0.25 * measured.peak_bytes, spec


def test_spec_token_round_trip():
    net = cn.parse("INPUT[8x8x6] -> CONV3-6 -> GN3 -> RELU -> POOL2 -> FC-2", rng=0)
    assert isinstance(net[1], GroupNorm) and (net[1].num_groups, net[1].num_channels) == (3, 6)
    text = cn.to_spec(net)
    assert text == "INPUT[8x8x6] -> CONV3-6 -> GN3 -> RELU -> POOL2 -> FC-2"
    assert cn.parse(text).get_config() == net.get_config()
    with pytest.raises(ShapeError, match="needs a \\(C, H, W\\) volume"):
        cn.parse("INPUT[8x8x6] -> FC-4 -> GN2")
    with pytest.raises(cn.SpecError, match="the number of groups after GN"):
        cn.parse("INPUT[8x8x6] -> GN")
    with pytest.raises(ConfigError, match="cannot be written"):
        cn.to_spec(cn.Sequential(GroupNorm(2, 4, eps=1e-3)), input_shape=(4, 3, 3))


def test_model_file_and_torch_state_dict(tmp_path):
    net = cn.Sequential(cn.Conv2d(3, 4, 3, padding=1, rng=0), GroupNorm(2, 4), cn.ReLU())
    _random_params(net[1], np.random.default_rng(2))
    path = tmp_path / "gn.safetensors"
    cn.io.save_model(net, path, extra={"input_shape": [3, 6, 6]})
    again = cn.load(path)
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), net.forward(x))
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU())
    torch_file = tmp_path / "gn.pt"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in net.state_dict().items()}, torch_file)
    twin.load_state_dict(torch.load(torch_file, weights_only=True))
    fresh = cn.Sequential(cn.Conv2d(3, 4, 3, padding=1, rng=9), GroupNorm(2, 4), cn.ReLU())
    cn.io.load_torch_state_dict(fresh, torch_file)
    np.testing.assert_allclose(fresh.forward(x), twin(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_the_engine_shards_it_in_training(monkeypatch):
    """Statistics per example: the batch may be split over threads even in training, with equal results."""
    from convnp.nets import engine

    net = cn.Sequential(cn.Conv2d(3, 8, 3, padding=1, rng=0), GroupNorm(4, 8), cn.ReLU())
    assert engine.shardable(net[1], train=True) and engine.shardable(net, train=True)
    x = np.random.default_rng(4).standard_normal((16, 3, 16, 16)).astype(np.float32)
    with cn.num_threads(1):
        one = net.forward(x, train=True)
    with cn.num_threads(2):
        two = net.forward(x, train=True)
    np.testing.assert_allclose(one, two, atol=1e-6)


def test_report_search_passes_over_it_and_fc_conv_keeps_it():
    from convnp.report.analysis import default_activation_layers

    net = cn.Sequential(cn.Conv2d(3, 4, 3, rng=0), GroupNorm(2, 4), cn.ReLU(), cn.Flatten(), cn.Linear(4 * 6 * 6, 2))
    assert default_activation_layers(net) == ["0", "2"]
    fc = cn.convert.to_fully_convolutional(net, (3, 8, 8))
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(fc.forward(x).reshape(2, 2), net.forward(x), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx extra")
    ort = pytest.importorskip("onnxruntime", reason="running exports needs onnxruntime")
    net = cn.Sequential(cn.Conv2d(3, 6, 3, rng=0), GroupNorm(3, 6), cn.ReLU())
    _random_params(net[1], np.random.default_rng(6))
    path = str(tmp_path / "gn.onnx")
    cn.io.export_onnx(net, path, (3, 7, 7))
    x = np.random.default_rng(7).standard_normal((2, 3, 7, 7)).astype(np.float32)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, net.forward(x), atol=1e-4)
