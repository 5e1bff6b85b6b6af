"""LocallyConnected2d: PyTorch oracle (unfold + einsum, autograd), naive loops, gradient checks, errors."""

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import get_layer_class
from convnp.layers.locally_connected import LocallyConnected2d
from tests.gradcheck import check_layer_gradients


def _torch():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def torch_locally_connected(torch, x, w, b, stride, padding):
    """The same layer built from PyTorch parts: unfold the patches, one einsum over positions."""
    oh, ow, k, c, kh, kw = w.shape
    cols = torch.nn.functional.unfold(x, (kh, kw), stride=stride, padding=padding)  # (N, C*KH*KW, OH*OW)
    out = torch.einsum("ndl,lkd->nkl", cols, w.reshape(oh * ow, k, c * kh * kw))
    out = out.reshape(x.shape[0], k, oh, ow)
    return out if b is None else out + b


def naive_locally_connected(x, w, b, stride, padding):
    """Forward, dx, dw, db by explicit loops (dout = ones-weighted by ``g``), the notes' definition."""
    stride, padding = _pair(stride), _pair(padding)
    oh, ow, k, c, kh, kw = w.shape
    n, _, h, wd = x.shape
    out = np.zeros((n, k, oh, ow))
    for bi in range(n):
        for f in range(k):
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if b is None else b[f, i, j]
                    for ch in range(c):
                        for a in range(kh):
                            for e in range(kw):
                                r = i * stride[0] - padding[0] + a
                                q = j * stride[1] - padding[1] + e
                                if 0 <= r < h and 0 <= q < wd:
                                    acc += w[i, j, f, ch, a, e] * x[bi, ch, r, q]
                    out[bi, f, i, j] = acc
    return out


def naive_backward(x, w, dout, stride, padding):
    stride, padding = _pair(stride), _pair(padding)
    oh, ow, k, c, kh, kw = w.shape
    n, _, h, wd = x.shape
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for bi in range(n):
        for f in range(k):
            for i in range(oh):
                for j in range(ow):
                    g = dout[bi, f, i, j]
                    for ch in range(c):
                        for a in range(kh):
                            for e in range(kw):
                                r = i * stride[0] - padding[0] + a
                                q = j * stride[1] - padding[1] + e
                                if 0 <= r < h and 0 <= q < wd:
                                    dx[bi, ch, r, q] += g * w[i, j, f, ch, a, e]
                                    dw[i, j, f, ch, a, e] += g * x[bi, ch, r, q]
    return dx, dw, dout.sum(axis=0)


# (N, C, K, input_size, kernel_size, stride, padding, bias)
CASES = [
    (2, 3, 4, 6, 3, 1, 0, True),
    (2, 2, 3, (7, 5), 3, 2, 1, True),             # non-square input, stride 2, padding
    (1, 1, 2, 5, (3, 2), (1, 3), (1, 0), True),   # batch 1, one channel, non-square kernel
    (3, 2, 1, 4, 1, 1, 0, False),                 # 1x1 windows, no bias
    (2, 3, 2, 6, 2, 2, 0, True),                  # non-overlapping windows
]


def _layer(c, k, size, kernel, stride, padding, bias, seed=0, dtype="float32"):
    layer = LocallyConnected2d(c, k, size, kernel, stride=stride, padding=padding, bias=bias, rng=seed, dtype=dtype)
    if bias:  # a non-zero bias, so the bias path is checked too
        layer.params["bias"] = np.random.default_rng(seed + 1).standard_normal(layer.params["bias"].shape).astype(dtype)
    return layer


@pytest.mark.parametrize("n,c,k,size,kernel,stride,padding,bias", CASES)
def test_matches_torch_unfold_einsum(n, c, k, size, kernel, stride, padding, bias, rng):
    torch = _torch()
    layer = _layer(c, k, size, kernel, stride, padding, bias)
    x = rng.standard_normal((n, c, *_pair(size))).astype(np.float32)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["weight"], requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True) if bias else None
    ref = torch_locally_connected(torch, xt, wt, bt, _pair(stride), _pair(padding))
    ref.backward(torch.tensor(dout))
    assert out.dtype == dx.dtype == layer.grads["weight"].dtype == np.float32
    assert out.shape == tuple(ref.shape) == (n,) + layer.output_shape((c, *_pair(size)))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grads["weight"], wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), rtol=1e-4, atol=1e-4)
    else:
        assert set(layer.grads) == {"weight"} and set(layer.params) == {"weight"}


@pytest.mark.parametrize("n,c,k,size,kernel,stride,padding,bias", CASES)
def test_shared_filters_equal_conv2d(n, c, k, size, kernel, stride, padding, bias, rng):
    torch = _torch()
    layer = _layer(c, k, size, kernel, stride, padding, bias)
    filt = rng.standard_normal((k, c, *_pair(kernel))).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    layer.params["weight"][...] = filt  # the same filter bank at every position
    if bias:
        layer.params["bias"][...] = b[:, None, None]
    x = rng.standard_normal((n, c, *_pair(size))).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(filt), torch.tensor(b) if bias else None,
                                     stride=stride, padding=padding).numpy()
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,c,k,size,kernel,stride,padding,bias", CASES)
def test_matches_naive_loops(n, c, k, size, kernel, stride, padding, bias, rng):
    layer = _layer(c, k, size, kernel, stride, padding, bias, dtype="float64")
    x = rng.standard_normal((n, c, *_pair(size)))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    w, b = layer.params["weight"], layer.params.get("bias")
    np.testing.assert_allclose(out, naive_locally_connected(x, w, b, stride, padding), rtol=1e-10, atol=1e-12)
    ref_dx, ref_dw, ref_db = naive_backward(x, w, dout, stride, padding)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], ref_dw, rtol=1e-10, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.grads["bias"], ref_db, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,c,k,size,kernel,stride,padding,bias", CASES)
def test_gradcheck_float64(n, c, k, size, kernel, stride, padding, bias, rng):
    layer = _layer(c, k, size, kernel, stride, padding, bias)
    errors = check_layer_gradients(layer, rng.standard_normal((n, c, *_pair(size))), tol=1e-6)
    assert set(errors) == {"x", "weight", "bias"} if bias else {"x", "weight"}


@st.composite
def geometry(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = (draw(st.integers(1, 3)) - 1) * sh + kh - 2 * ph
    w = (draw(st.integers(1, 3)) - 1) * sw + kw - 2 * pw
    assume(h >= 1 and w >= 1)
    return (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3)), (h, w), (kh, kw),
            (sh, sw), (ph, pw), draw(st.booleans()))


@settings(max_examples=25, deadline=None)
@given(geometry(), st.integers(0, 2**32 - 1))
def test_property_matches_naive(geom, seed):
    n, c, k, size, kernel, stride, padding, bias = geom
    rng = np.random.default_rng(seed)
    layer = _layer(c, k, size, kernel, stride, padding, bias, dtype="float64")
    x = rng.standard_normal((n, c, *size))
    out = layer.forward(x)
    assert out.shape == (n,) + layer.output_shape((c, *size))
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    w, b = layer.params["weight"], layer.params.get("bias")
    np.testing.assert_allclose(out, naive_locally_connected(x, w, b, stride, padding), rtol=1e-10, atol=1e-12)
    ref_dx, ref_dw, _ = naive_backward(x, w, dout, stride, padding)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], ref_dw, rtol=1e-10, atol=1e-12)


def test_shapes_params_and_init():
    layer = LocallyConnected2d(3, 16, 32, 5, rng=0)
    assert layer.output_shape((3, 32, 32)) == (16, 28, 28)
    assert layer.params["weight"].shape == (28, 28, 16, 3, 5, 5)
    assert layer.params["bias"].shape == (16, 28, 28)
    assert layer.num_params == 28 * 28 * (16 * 3 * 5 * 5 + 16)
    w = layer.params["weight"]
    assert w.dtype == np.float32 and abs(w.std() / np.sqrt(2 / 75) - 1) < 0.02
    assert abs(w.mean()) < 0.01 and not layer.params["bias"].any()
    same = LocallyConnected2d(3, 16, 32, 5, rng=0)
    np.testing.assert_array_equal(same.params["weight"], w)
    other = LocallyConnected2d(3, 16, 32, 5, rng=np.random.default_rng(1)).params["weight"]
    assert not np.array_equal(other, w)
    assert LocallyConnected2d(2, 4, (9, 7), (3, 1), stride=2, padding=(1, 0)).output_shape((2, 9, 7)) == (4, 5, 4)
    assert LocallyConnected2d(2, 4, 6, 3, bias=False, dtype="float64").params["weight"].dtype == np.float64


def test_errors():
    layer = LocallyConnected2d(3, 4, (6, 5), 3)
    with pytest.raises(ShapeError) as e:
        layer.output_shape((3, 6, 6))
    assert repr(layer) in str(e.value) and "6x5" in str(e.value) and "6x6" in str(e.value)
    with pytest.raises(ShapeError, match="6x6"):
        layer.forward(np.zeros((1, 3, 6, 6), np.float32))
    with pytest.raises(ShapeError, match="input channels"):
        layer.forward(np.zeros((1, 2, 6, 5), np.float32))
    with pytest.raises(ShapeError, match="input channels"):
        layer.output_shape((2, 6, 5))
    with pytest.raises(ShapeError, match="4-d"):
        layer.forward(np.zeros((3, 6, 5), np.float32))
    with pytest.raises(ShapeError, match="floating"):
        layer.forward(np.zeros((1, 3, 6, 5), np.int32))
    with pytest.raises(StateError):
        layer.backward(np.zeros((1, 4, 4, 3), np.float32))
    out = layer.forward(np.zeros((1, 3, 6, 5), np.float32))
    with pytest.raises(ShapeError, match="dout"):
        layer.backward(np.zeros((1, 4, 3, 3), np.float32))
    layer.backward(np.zeros_like(out))
    with pytest.raises(StateError):
        layer.backward(np.zeros_like(out))


def test_geometry_error_is_a_config_error_with_the_formula():
    with pytest.raises(ConfigError) as e:
        LocallyConnected2d(3, 8, 10, 3, stride=2)
    assert "LocallyConnected2d(3, 8, input_size=10, kernel_size=3, stride=2)" in str(e.value)
    assert "(10-3+2*0)/2+1 = 4.5" in str(e.value) and "10x10" in str(e.value)


@pytest.mark.parametrize("kwargs", [
    {"in_channels": 0}, {"out_channels": -1}, {"in_channels": 2.0}, {"input_size": (4,)}, {"kernel_size": 0},
    {"stride": 0}, {"padding": -1}, {"bias": "yes"}, {"dtype": "int32"}, {"rng": "seed"}, {"kernel_size": 9},
])
def test_config_errors(kwargs):
    args = {"in_channels": 2, "out_channels": 3, "input_size": 6, "kernel_size": 3, **kwargs}
    with pytest.raises(ConfigError):
        LocallyConnected2d(**args)


@pytest.mark.parametrize("layer", [
    LocallyConnected2d(3, 4, 6, 3), LocallyConnected2d(2, 5, (7, 5), (3, 1), stride=(2, 1), padding=(1, 0),
                                                       bias=False, dtype="float64"),
], ids=repr)
def test_config_round_trip(layer):
    cfg = layer.get_config()
    rebuilt = get_layer_class("LocallyConnected2d").from_config(json.loads(json.dumps(cfg)))
    assert rebuilt.get_config() == cfg and repr(rebuilt) == repr(layer)
    assert {k: v.shape for k, v in rebuilt.params.items()} == {k: v.shape for k, v in layer.params.items()}
    assert rebuilt.params["weight"].dtype == layer.params["weight"].dtype
    rebuilt.load_state_dict(layer.state_dict())
    x = np.random.default_rng(0).standard_normal((1, cfg["in_channels"], *_pair(cfg["input_size"])))
    x = x.astype(layer.params["weight"].dtype)
    np.testing.assert_array_equal(rebuilt.forward(x), layer.forward(x))


def test_repr():
    assert repr(LocallyConnected2d(3, 8, 32, 3, padding=1)) == \
        "LocallyConnected2d(3, 8, input_size=32, kernel_size=3, stride=1, padding=1)"
    assert repr(LocallyConnected2d(3, 8, (9, 7), (3, 1), bias=False)) == \
        "LocallyConnected2d(3, 8, input_size=(9, 7), kernel_size=(3, 1), stride=1, bias=False)"


def test_nan_input_propagates_without_crash():
    layer = LocallyConnected2d(2, 3, 4, 2, stride=2, rng=0)
    x = np.ones((1, 2, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    out = layer.forward(x)
    assert np.isnan(out[0, :, 0, 0]).all() and np.isfinite(out[0, :, 1, 1]).all()
    dx = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape and np.isnan(layer.grads["weight"][0, 0]).any()
