"""Linear and Flatten: PyTorch oracle, naive loops, float64 gradient checks, init, errors, config."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import get_layer_class
from convnp.layers.linear import Flatten, Linear

from .gradcheck import check_layer_gradients


def oracle():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


def naive_linear(x, w, b):
    """out[n, o] = sum_i x[n, i] * w[o, i] + b[o], one scalar at a time."""
    n_, in_ = x.shape
    out_ = w.shape[0]
    out = np.zeros((n_, out_))
    for n in range(n_):
        for o in range(out_):
            acc = 0.0 if b is None else float(b[o])
            for i in range(in_):
                acc += float(x[n, i]) * float(w[o, i])
            out[n, o] = acc
    return out


def naive_linear_grads(x, w, dout):
    dx = np.zeros(x.shape)
    dw = np.zeros(w.shape)
    db = np.zeros(w.shape[0])
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            db[o] += dout[n, o]
            for i in range(x.shape[1]):
                dx[n, i] += dout[n, o] * w[o, i]
                dw[o, i] += dout[n, o] * x[n, i]
    return dx, dw, db


LINEAR_CASES = [  # (N, in_features, out_features, bias)
    (1, 1, 1, True), (4, 3, 5, True), (2, 7, 3, False), (8, 32, 10, True), (3, 10, 1, False),
]


# --- Linear: (1) PyTorch oracle ----------------------------------------------------------------


@pytest.mark.parametrize("n,fin,fout,bias", LINEAR_CASES)
def test_linear_matches_torch(n, fin, fout, bias, rng):
    torch = oracle()
    layer = Linear(fin, fout, bias=bias, rng=1)
    if bias:  # a nonzero bias so its effect is visible
        layer.params["bias"] = rng.standard_normal(fout).astype(np.float32)
    x = rng.standard_normal((n, fin)).astype(np.float32)
    dout = rng.standard_normal((n, fout)).astype(np.float32)
    out = layer.forward(x)
    dx = layer.backward(dout)
    ref = torch.nn.Linear(fin, fout, bias=bias)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dout))
    tol = dict(rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(out, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), **tol)
    assert set(layer.grads) == ({"weight", "bias"} if bias else {"weight"})
    if bias:
        np.testing.assert_allclose(layer.grads["bias"], ref.bias.grad.numpy(), **tol)
    assert all(layer.grads[k].dtype == np.float32 for k in layer.grads)


def test_linear_state_dict_matches_torch_names_and_shapes():
    torch = oracle()
    for bias in (True, False):
        ours = {k: v.shape for k, v in Linear(6, 4, bias=bias).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in torch.nn.Linear(6, 4, bias=bias).state_dict().items()}
        assert ours == theirs


# --- Linear: (2) naive loops -----------------------------------------------------------------------


@pytest.mark.parametrize("n,fin,fout,bias", LINEAR_CASES)
def test_linear_matches_naive_loops(n, fin, fout, bias, rng):
    layer = Linear(fin, fout, bias=bias, rng=2, dtype="float64")
    if bias:
        layer.params["bias"] = rng.standard_normal(fout)
    x = rng.standard_normal((n, fin))
    dout = rng.standard_normal((n, fout))
    out = layer.forward(x)
    dx = layer.backward(dout)
    w = layer.params["weight"]
    np.testing.assert_allclose(out, naive_linear(x, w, layer.params.get("bias")), rtol=1e-12, atol=1e-12)
    ref_dx, ref_dw, ref_db = naive_linear_grads(x, w, dout)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], ref_dw, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.grads["bias"], ref_db, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), fin=st.integers(1, 6), fout=st.integers(1, 6), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_linear_property_matches_naive(n, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(fin, fout, bias=bias, rng=rng, dtype=np.float64)
    x = rng.standard_normal((n, fin))
    dout = rng.standard_normal((n, fout))
    out = layer.forward(x)
    dx = layer.backward(dout)
    np.testing.assert_allclose(out, naive_linear(x, layer.params["weight"], layer.params.get("bias")),
                               rtol=1e-12, atol=1e-12)
    ref_dx, ref_dw, _ = naive_linear_grads(x, layer.params["weight"], dout)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], ref_dw, rtol=1e-12, atol=1e-12)
    assert layer.output_shape((fin,)) == (fout,) == out.shape[1:]


# --- Linear: (3) numerical gradients ---------------------------------------------------------------


@pytest.mark.parametrize("n,fin,fout,bias", LINEAR_CASES)
def test_linear_gradcheck_float64(n, fin, fout, bias, rng):
    layer = Linear(fin, fout, bias=bias, rng=3)
    if bias:
        layer.params["bias"] = rng.standard_normal(fout)
    errors = check_layer_gradients(layer, rng.standard_normal((n, fin)))
    assert set(errors) == ({"x", "weight", "bias"} if bias else {"x", "weight"})


# --- Linear: init, shapes, errors, config ----------------------------------------------------------


def test_linear_he_normal_init():
    layer = Linear(512, 256, rng=0)
    w = layer.params["weight"]
    assert w.shape == (256, 512) and w.dtype == np.float32
    np.testing.assert_array_equal(layer.params["bias"], np.zeros(256, np.float32))
    # 131072 draws: the sample std is within 1% of sqrt(2/fan_in) with overwhelming probability.
    assert abs(w.std() / np.sqrt(2.0 / 512) - 1) < 0.01
    assert abs(w.mean()) < 4 * np.sqrt(2.0 / 512) / np.sqrt(w.size)
    assert layer.num_params == 512 * 256 + 256


def test_linear_rng_and_dtype():
    a, b, c = Linear(5, 3, rng=7), Linear(5, 3, rng=7), Linear(5, 3, rng=8)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.array_equal(a.params["weight"], c.params["weight"])
    gen = np.random.default_rng(7)
    np.testing.assert_array_equal(Linear(5, 3, rng=gen).params["weight"], a.params["weight"])
    d = Linear(5, 3, dtype="float64")
    assert d.params["weight"].dtype == np.float64 and d.params["bias"].dtype == np.float64
    assert d.forward(np.ones((2, 5))).dtype == np.float64


def test_linear_four_d_input_suggests_flatten():
    layer = Linear(48, 10)
    with pytest.raises(ShapeError) as e:
        layer.forward(np.ones((2, 3, 4, 4), np.float32))
    msg = str(e.value)
    assert "Linear(in_features=48, out_features=10, bias=True)" in msg
    assert "Flatten()" in msg and "3*4*4 = 48" in msg and "(2, 3, 4, 4)" in msg
    with pytest.raises(ShapeError, match=r"Flatten\(\).*but this layer takes in_features=10"):
        Linear(10, 2).forward(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(ShapeError, match=r"Flatten\(\).*3\*4\*4 = 48"):
        layer.output_shape((3, 4, 4))


def test_linear_shape_and_order_errors():
    layer = Linear(4, 2)
    assert layer.output_shape((4,)) == (2,)
    with pytest.raises(ShapeError, match="expected 4 input features, got 5"):
        layer.forward(np.ones((3, 5), np.float32))
    with pytest.raises(ShapeError, match="expected 4 input features, got 5"):
        layer.output_shape((5,))
    with pytest.raises(ShapeError, match="2-d input"):
        layer.forward(np.ones(4, np.float32))
    with pytest.raises(ShapeError, match="floating-point"):
        layer.forward(np.ones((3, 4), np.int64))
    with pytest.raises(StateError):
        layer.backward(np.ones((3, 2), np.float32))
    layer.forward(np.ones((3, 4), np.float32))
    with pytest.raises(ShapeError, match="dout"):
        layer.backward(np.ones((3, 3), np.float32))


@pytest.mark.parametrize("args,kwargs", [
    ((0, 3), {}), ((3, 0), {}), ((3.0, 2), {}), ((True, 2), {}), ((3, 2), {"bias": "yes"}),
    ((3, 2), {"dtype": "int32"}), ((3, 2), {"rng": "seed"}),
])
def test_linear_config_errors(args, kwargs):
    with pytest.raises(ConfigError):
        Linear(*args, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"dtype": "float64"}])
def test_linear_config_round_trip(kwargs, rng):
    layer = Linear(6, 4, rng=0, **kwargs)
    cfg = layer.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    twin = get_layer_class("Linear").from_config(cfg)
    assert twin.get_config() == cfg and repr(twin) == repr(layer)
    assert {k: v.shape for k, v in twin.params.items()} == {k: v.shape for k, v in layer.params.items()}
    twin.load_state_dict(layer.state_dict())
    x = rng.standard_normal((2, 6)).astype(cfg["dtype"])
    np.testing.assert_array_equal(twin.forward(x), layer.forward(x))


def test_linear_repr_like_torch():
    assert repr(Linear(3, 4)) == "Linear(in_features=3, out_features=4, bias=True)"
    assert repr(Linear(3, 4, bias=False, dtype="float64")) == \
        "Linear(in_features=3, out_features=4, bias=False, dtype='float64')"
    assert Linear(3, 4).to("float64").get_config()["dtype"] == "float64"


# --- Flatten -----------------------------------------------------------------------------------


FLATTEN_CASES = [  # (kwargs, input shape)
    ({}, (2, 3, 4, 5)), ({}, (2, 7)), ({}, (3, 2, 5)), ({"start_dim": 2}, (2, 3, 4, 5)),
    ({"end_dim": 2}, (2, 3, 4, 5)), ({"start_dim": 1, "end_dim": -2}, (2, 3, 4, 5)),
    ({"start_dim": 3, "end_dim": 3}, (2, 3, 4, 5)),
]


@pytest.mark.parametrize("kwargs,shape", FLATTEN_CASES)
def test_flatten_matches_torch(kwargs, shape, rng):
    torch = oracle()
    x = rng.standard_normal(shape).astype(np.float32)
    layer = Flatten(**kwargs)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = torch.nn.Flatten(**kwargs)(xt)
    yt.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(out, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    assert layer.output_shape(shape[1:]) == tuple(yt.shape[1:])


def test_flatten_naive_order_and_gradcheck(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    out = Flatten().forward(x)
    for n in range(2):  # C order: index c*H*W + h*W + w
        for c in range(3):
            for h in range(2):
                for w in range(2):
                    assert out[n, c * 4 + h * 2 + w] == x[n, c, h, w]
    check_layer_gradients(Flatten(), x)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=5), data=st.data())
def test_flatten_property_round_trip(shape, data):
    ndim = len(shape)
    start = data.draw(st.integers(1, ndim - 1))
    end = data.draw(st.integers(start, ndim - 1))
    end_arg = data.draw(st.sampled_from([end, end - ndim]))
    x = np.random.default_rng(0).standard_normal(shape)
    layer = Flatten(start, end_arg)
    out = layer.forward(x)
    assert out.shape == tuple(shape[:start]) + (int(np.prod(shape[start:end + 1])),) + tuple(shape[end + 1:])
    assert out.shape[1:] == layer.output_shape(tuple(shape[1:]))
    np.testing.assert_array_equal(out.ravel(), x.ravel())
    np.testing.assert_array_equal(layer.backward(out), x)


def test_flatten_errors_and_config():
    assert Flatten().output_shape((256, 6, 6)) == (9216,)
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    with pytest.raises(ShapeError, match="Flatten"):
        Flatten().forward(np.ones(3))  # nothing after the batch axis
    with pytest.raises(ShapeError, match="Flatten"):
        Flatten(start_dim=3).forward(np.ones((2, 3, 4)))
    with pytest.raises(ShapeError, match="Flatten"):
        Flatten(start_dim=2).output_shape((5,))
    with pytest.raises(ShapeError, match="floating-point"):
        Flatten().forward(np.ones((2, 3), np.int32))
    with pytest.raises(StateError):
        Flatten().backward(np.ones((2, 3)))
    for bad in [{"start_dim": 0}, {"end_dim": 0}, {"start_dim": 3, "end_dim": 2}, {"start_dim": 1.0}]:
        with pytest.raises(ConfigError):
            Flatten(**bad)
    layer = Flatten(2, -2)
    cfg = layer.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert get_layer_class("Flatten").from_config(cfg).get_config() == cfg
