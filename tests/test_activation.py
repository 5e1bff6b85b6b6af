"""Activation layers: PyTorch oracle, naive loops, float64 gradient checks, properties, errors."""

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.activation import ELU, LeakyReLU, ReLU, Sigmoid, Tanh
from convnp.layers.base import get_layer_class

from .gradcheck import check_layer_gradients

# --- naive scalar references (the definitions, one element at a time) -------------------------


def _naive_sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


# name -> (layer class, kwargs, f(v), f'(v)); f' at a kink is PyTorch's choice.
NAIVE = {
    "relu": (ReLU, {}, lambda v, k: max(v, 0.0), lambda v, k: 1.0 if v > 0 else 0.0),
    "leaky_default": (LeakyReLU, {}, lambda v, k: v if v > 0 else 0.01 * v,
                      lambda v, k: 1.0 if v > 0 else 0.01),
    "leaky_0.2": (LeakyReLU, {"negative_slope": 0.2}, lambda v, k: v if v > 0 else 0.2 * v,
                  lambda v, k: 1.0 if v > 0 else 0.2),
    "leaky_neg": (LeakyReLU, {"negative_slope": -0.5}, lambda v, k: v if v > 0 else -0.5 * v,
                  lambda v, k: 1.0 if v > 0 else -0.5),
    "elu_default": (ELU, {}, lambda v, k: v if v > 0 else math.exp(v) - 1.0,
                    lambda v, k: 1.0 if v > 0 else math.exp(v)),
    "elu_0.5": (ELU, {"alpha": 0.5}, lambda v, k: v if v > 0 else 0.5 * (math.exp(v) - 1.0),
                lambda v, k: 1.0 if v > 0 else 0.5 * math.exp(v)),
    "tanh": (Tanh, {}, lambda v, k: math.tanh(v), lambda v, k: 1.0 - math.tanh(v) ** 2),
    "sigmoid": (Sigmoid, {}, lambda v, k: _naive_sigmoid(v),
                lambda v, k: _naive_sigmoid(v) * (1.0 - _naive_sigmoid(v))),
}
CASES = sorted(NAIVE)


def make(case):
    cls, kwargs, _, _ = NAIVE[case]
    return cls(**kwargs)


def naive_forward_backward(case, x, dout):
    _, kwargs, f, df = NAIVE[case]
    out = np.empty(x.shape, dtype=np.float64)
    dx = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(*x.shape):
        v = float(x[idx])
        out[idx] = f(v, kwargs)
        dx[idx] = df(v, kwargs) * float(dout[idx])
    return out, dx


def torch_module(case):
    torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
    cls, kwargs, _, _ = NAIVE[case]
    if cls is ReLU:
        return torch, torch.nn.ReLU()
    if cls is LeakyReLU:
        return torch, torch.nn.LeakyReLU(**kwargs)
    if cls is ELU:
        return torch, torch.nn.ELU(**kwargs)
    return torch, {Tanh: torch.nn.Tanh, Sigmoid: torch.nn.Sigmoid}[cls]()


def inputs_with_kinks(rng, shape, dtype):
    """Random normals with some exact zeros, to pin down the gradient at the kinks."""
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    x.flat[:: 3] = 0.0
    return x


# --- (1) PyTorch oracle --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_matches_torch(case, shape, dtype, tol, rng):
    torch, module = torch_module(case)
    x = inputs_with_kinks(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    layer = make(case)
    out = layer.forward(x)
    dx = layer.backward(dout)
    assert out.dtype == dtype and dx.dtype == dtype and out.shape == shape
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = module(xt)
    yt.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("case,expected", [
    ("relu", [0.0, 0.0, 1.0]),              # PyTorch: no gradient at exactly 0
    ("leaky_0.2", [0.2, 0.2, 1.0]),         # slope at 0
    ("elu_0.5", [0.5 * math.exp(-1), 0.5, 1.0]),  # alpha at 0
])
def test_gradient_at_kink(case, expected):
    torch, module = torch_module(case)
    x = np.array([-1.0, 0.0, 1.0])
    layer = make(case)
    layer.forward(x)
    dx = layer.backward(np.ones(3))
    np.testing.assert_allclose(dx, expected, rtol=1e-15)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    module(xt).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-15)


# --- (2) naive loops -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_matches_naive_loops(case, rng):
    x = inputs_with_kinks(rng, (2, 3, 4), np.float64)
    dout = rng.standard_normal(x.shape)
    layer = make(case)
    out = layer.forward(x)
    dx = layer.backward(dout)
    ref_out, ref_dx = naive_forward_backward(case, x, dout)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(CASES),
       x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
                    elements=st.floats(-20, 20, allow_nan=False)),
       seed=st.integers(0, 2**16))
def test_random_shapes_match_naive(case, x, seed):
    dout = np.random.default_rng(seed).standard_normal(x.shape)
    layer = make(case)
    out = layer.forward(x)
    dx = layer.backward(dout)
    ref_out, ref_dx = naive_forward_backward(case, x, dout)
    assert out.shape == x.shape and dx.shape == x.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-15)


# --- (3) numerical gradient check in float64 ------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_float64(case, rng):
    u = rng.standard_normal((3, 2, 4))
    x = np.sign(u) * (0.1 + np.abs(u))  # away from the kink at 0
    errors = check_layer_gradients(make(case), x, tol=1e-6)
    assert set(errors) == {"x"}


# --- behaviour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_backward_uses_the_forward_cache(case, rng):
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 5))
    layer = make(case)
    layer.forward(x.copy())
    expected = layer.backward(dout)
    x_in = x.copy()
    layer.forward(x_in)
    x_in[...] = -x_in  # mutating the input after forward must not change the gradient
    np.testing.assert_array_equal(layer.backward(dout), expected)


@pytest.mark.parametrize("case", CASES)
def test_nan_and_inf_propagate_without_warnings(case):
    torch, module = torch_module(case)
    x = np.array([[np.nan, -1.0, 0.5], [2.0, np.nan, np.inf], [-np.inf, 0.0, 3.0]], dtype=np.float32)
    layer = make(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])
    assert dx.shape == x.shape
    np.testing.assert_allclose(out, module(torch.from_numpy(x)).numpy(), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("case", ["sigmoid", "tanh", "elu_default"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_large_inputs(case, dtype):
    torch, module = torch_module(case)
    x = np.array([-1e4, -800.0, -100.0, -30.0, 0.0, 30.0, 100.0, 800.0, 1e4], dtype=dtype)
    layer = make(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in exp
        out = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    # atol: float32 sigmoid(-100) = 3.8e-44 is subnormal; PyTorch rounds it to 0, we keep it.
    np.testing.assert_allclose(out, module(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-40)


def test_sigmoid_extremes_are_exact():
    out = Sigmoid().forward(np.array([-1e4, 0.0, 1e4]))
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("case", CASES)
def test_shapes_params_and_config_round_trip(case, rng):
    layer = make(case)
    assert layer.output_shape((3, 8, 8)) == (3, 8, 8)
    assert layer.params == {} and layer.num_params == 0
    cfg = layer.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    twin = get_layer_class(type(layer).__name__).from_config(cfg)
    assert type(twin) is type(layer) and twin.get_config() == cfg and repr(twin) == repr(layer)
    x = rng.standard_normal((2, 3))
    np.testing.assert_array_equal(twin.forward(x), layer.forward(x))


@pytest.mark.parametrize("layer,text", [
    (ReLU(), "ReLU()"), (LeakyReLU(), "LeakyReLU(negative_slope=0.01)"),
    (LeakyReLU(0.2), "LeakyReLU(negative_slope=0.2)"), (ELU(alpha=0.5), "ELU(alpha=0.5)"),
    (Tanh(), "Tanh()"), (Sigmoid(), "Sigmoid()"),
])
def test_repr(layer, text):
    assert repr(layer) == text


@pytest.mark.parametrize("case", CASES)
def test_input_and_order_errors(case):
    layer = make(case)
    with pytest.raises(StateError):
        layer.backward(np.ones(3))
    with pytest.raises(ShapeError, match=type(layer).__name__):
        layer.forward(np.arange(6).reshape(2, 3))  # integer dtype
    with pytest.raises(ShapeError):
        layer.forward([[1.0, 2.0]])  # not an array
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ShapeError, match=r"\(3, 2\)"):
        layer.backward(np.ones((3, 2)))
    layer.forward(np.ones((2, 3)))
    layer.backward(np.ones((2, 3)))
    with pytest.raises(StateError):
        layer.backward(np.ones((2, 3)))  # twice for one forward


@pytest.mark.parametrize("cls,kwargs", [
    (LeakyReLU, {"negative_slope": "0.1"}), (LeakyReLU, {"negative_slope": float("nan")}),
    (LeakyReLU, {"negative_slope": True}), (ELU, {"alpha": float("inf")}), (ELU, {"alpha": None}),
])
def test_config_errors(cls, kwargs):
    with pytest.raises(ConfigError, match=cls.__name__):
        cls(**kwargs)
