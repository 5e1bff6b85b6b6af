"""Dropout and Dropout2d: statistics, the PyTorch convention, fixed-mask gradients, errors, config."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import get_layer_class
from convnp.layers.dropout import Dropout, Dropout2d

from .gradcheck import check_layer_gradients


def oracle():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


def nonzero_input(rng, shape, dtype=np.float64):
    """Entries bounded away from 0, so a zero in the output means a dropped unit."""
    u = rng.standard_normal(shape)
    return (np.sign(u) * (0.5 + np.abs(u))).astype(dtype)


def naive_dropout(x, p, seed):
    """The definition, one unit at a time, with the same uniforms the layer draws."""
    u = np.random.default_rng(seed).random(x.shape)
    out = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        out[idx] = x[idx] / (1.0 - p) if u[idx] >= p else 0.0
    return out


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_matches_naive_definition(p, rng):
    x = nonzero_input(rng, (3, 4, 5))
    out = Dropout(p, rng=11).forward(x, train=True)
    np.testing.assert_allclose(out, naive_dropout(x, p, 11), rtol=1e-15, atol=0)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_zeroed_fraction_and_scale_like_torch(p, rng):
    torch = oracle()
    x = nonzero_input(rng, (200, 500), np.float32)
    out = Dropout(p, rng=0).forward(x, train=True)
    ref = torch.nn.functional.dropout(torch.from_numpy(x), p=p, training=True).numpy()
    for y in (out, ref):  # both: a fraction p is zeroed, the rest is x / (1 - p)
        kept = y != 0
        assert abs((~kept).mean() - p) < 0.01  # std of the fraction is ~0.002 here
        np.testing.assert_allclose(y[kept], x[kept] / np.float32(1 - p), rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_expectation_preserved(p, rng):
    x = nonzero_input(rng, (1, 20))
    layer = Dropout(p, rng=5)
    draws = 5000
    mean = sum(layer.forward(x, train=True) for _ in range(draws)) / draws
    # per-element std of the mean is |x| sqrt(p/(1-p)/draws) <= 0.043 |x|; allow 5 sigma
    sigma = np.abs(x) * np.sqrt(p / (1 - p) / draws)
    assert np.all(np.abs(mean - x) < 5 * sigma)


def test_eval_is_identity_like_torch(rng):
    torch = oracle()
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    for layer in (Dropout(0.5, rng=0), Dropout2d(0.5, rng=0)):
        out = layer.forward(x)  # train defaults to False
        np.testing.assert_array_equal(out, x)
        dout = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(layer.backward(dout), dout)
    np.testing.assert_array_equal(torch.nn.Dropout(0.5).eval()(torch.from_numpy(x)).numpy(), x)


def test_same_seed_same_mask_and_fresh_mask_per_call(rng):
    x = nonzero_input(rng, (8, 16))
    a, b, c = Dropout(0.5, rng=3), Dropout(0.5, rng=3), Dropout(0.5, rng=4)
    first = a.forward(x, train=True)
    np.testing.assert_array_equal(first, b.forward(x, train=True))
    assert not np.array_equal(first, c.forward(x, train=True))
    assert not np.array_equal(first, a.forward(x, train=True))  # next call draws a new mask
    gen = np.random.default_rng(3)
    np.testing.assert_array_equal(Dropout(0.5, rng=gen).forward(x, train=True), first)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_backward_uses_the_same_mask_like_torch(p, rng):
    torch = oracle()
    x = nonzero_input(rng, (6, 7))
    dout = rng.standard_normal(x.shape)
    layer = Dropout(p, rng=9)
    out = layer.forward(x, train=True)
    dx = layer.backward(dout)
    keep = (out != 0).astype(np.float64)  # the mask this forward drew
    xt = torch.from_numpy(x.copy()).requires_grad_()
    (xt * torch.from_numpy(keep) / (1 - p)).backward(torch.from_numpy(dout))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-15)
    assert np.all((dx == 0) == (out == 0))


@pytest.mark.parametrize("cls,shape", [(Dropout, (3, 4)), (Dropout, (2, 3, 2, 2)), (Dropout2d, (2, 3, 2, 2))])
def test_gradcheck_with_the_mask_fixed(cls, shape, rng):
    layer = cls(0.4)

    def forward(inp):  # reseed before every call: the same mask each time
        layer.rng = np.random.default_rng(21)
        return layer.forward(inp, train=True)

    x = nonzero_input(rng, shape)
    out = forward(x)
    assert np.any(out == 0) and np.any(out != 0)  # the check covers dropped and kept units
    check_layer_gradients(layer, x, forward=forward)


def test_p_zero_and_p_one_like_torch(rng):
    torch = oracle()
    x = nonzero_input(rng, (5, 6), np.float32)
    np.testing.assert_array_equal(Dropout(0.0, rng=0).forward(x, train=True), x)
    layer = Dropout(1.0, rng=0)
    out = layer.forward(x, train=True)
    np.testing.assert_array_equal(out, np.zeros_like(x))
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.zeros_like(x))
    ref = torch.nn.functional.dropout(torch.from_numpy(x), p=1.0, training=True).numpy()
    np.testing.assert_array_equal(out, ref)


def test_nan_propagates(rng):
    x = np.array([[np.nan, 1.0], [2.0, np.inf]])
    out = Dropout(0.0).forward(x, train=True)
    assert np.isnan(out[0, 0]) and np.isinf(out[1, 1])
    out = Dropout(0.5, rng=0).forward(np.full((50,), np.nan), train=True)
    assert np.all(np.isnan(out))  # a dropped NaN is 0 * NaN = NaN, as in PyTorch


@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
                    elements=st.floats(0.5, 10) | st.floats(-10, -0.5)),
       p=st.floats(0.0, 0.95), seed=st.integers(0, 2**16))
def test_property_units_are_dropped_or_scaled(x, p, seed):
    layer = Dropout(p, rng=seed)
    out = layer.forward(x, train=True)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-12)
    dout = np.ones_like(x)
    np.testing.assert_allclose(layer.backward(dout), np.where(kept, 1 / (1 - p), 0.0), rtol=1e-12)


def test_dropout2d_zeroes_whole_channels_like_torch(rng):
    torch = oracle()
    p = 0.5
    x = nonzero_input(rng, (40, 50, 3, 3), np.float32)
    out = Dropout2d(p, rng=0).forward(x, train=True)
    ref = torch.nn.functional.dropout2d(torch.from_numpy(x), p=p, training=True).numpy()
    for y in (out, ref):
        dropped = np.all(y == 0, axis=(2, 3))
        kept = np.all(y != 0, axis=(2, 3))
        assert np.all(dropped | kept)  # each channel is dropped or kept as a whole
        assert abs(dropped.mean() - p) < 0.05  # 2000 channels: std 0.011
        np.testing.assert_allclose(y[kept], x[kept] / np.float32(1 - p), rtol=1e-6)


def test_errors_and_order():
    for bad in (-0.1, 1.5, float("nan"), "0.5", True, None):
        with pytest.raises(ConfigError, match="Dropout"):
            Dropout(bad)
    with pytest.raises(ConfigError):
        Dropout(0.5, rng="seed")
    layer = Dropout(0.5, rng=0)
    with pytest.raises(StateError):
        layer.backward(np.ones(3))
    with pytest.raises(ShapeError, match=r"Dropout\(p=0.5\)"):
        layer.forward(np.ones((2, 3), np.int64), train=True)
    layer.forward(np.ones((2, 3)), train=True)
    with pytest.raises(ShapeError, match="dout"):
        layer.backward(np.ones((3, 2)))
    with pytest.raises(ShapeError, match="Dropout2d"):
        Dropout2d().forward(np.ones((2, 3, 4)), train=True)
    with pytest.raises(ShapeError, match="Dropout2d"):
        Dropout2d().output_shape((3, 4))
    assert Dropout2d().output_shape((3, 4, 4)) == (3, 4, 4)
    assert Dropout().output_shape((7,)) == (7,)


@pytest.mark.parametrize("cls", [Dropout, Dropout2d])
def test_config_round_trip(cls, rng):
    layer = cls(0.3, rng=0)
    cfg = layer.get_config()
    assert cfg == {"p": 0.3} and json.loads(json.dumps(cfg)) == cfg
    twin = get_layer_class(cls.__name__).from_config(cfg)
    assert type(twin) is cls and twin.get_config() == cfg
    assert repr(twin) == repr(layer) == f"{cls.__name__}(p=0.3)"
    assert twin.params == {} and twin.num_params == 0
