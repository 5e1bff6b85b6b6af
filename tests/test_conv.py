"""Conv2d: PyTorch oracle, a naive loop reference, float64 gradient checks, geometry and errors."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convnp.ops.conv as conv_ops
from convnp import threads
from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import get_layer_class
from convnp.layers.conv import Conv2d
from convnp.ops.conv import conv2d_backward, conv2d_forward

from .gradcheck import check_layer_gradients

# --- the naive reference: the notes' definition, plain loops ------------------------------------

def _pairs(*values):
    return [(v, v) if isinstance(v, int) else tuple(v) for v in values]


def naive_out_size(size, k, s, p, d, rounding="exact"):
    """Written out again here (not taken from convnp): PyTorch's floor and ceil rules."""
    span = d * (k - 1) + 1
    numer = size + 2 * p - span
    if rounding == "ceil":
        out = -(-numer // s) + 1
        return out - 1 if (out - 1) * s >= size + p else out
    return numer // s + 1


def naive_conv(x, w, b, stride=1, padding=0, dilation=1, rounding="exact"):
    """out[n,k,i,j] = b[k] + sum_{c,u,v} w[k,c,u,v] * x[n, c, i*S+u*D-P, j*S+v*D-P] (zero outside)."""
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    n_, c_, h, wd = x.shape
    k_, _, kh, kw = w.shape
    oh, ow = naive_out_size(h, kh, sh, ph, dh, rounding), naive_out_size(wd, kw, sw, pw, dw, rounding)
    out = np.zeros((n_, k_, oh, ow))
    for n in range(n_):
        for k in range(k_):
            for i in range(oh):
                for j in range(ow):
                    total = 0.0 if b is None else b[k]
                    for c in range(c_):
                        for u in range(kh):
                            for v in range(kw):
                                r, q = i * sh + u * dh - ph, j * sw + v * dw - pw
                                if 0 <= r < h and 0 <= q < wd:
                                    total += w[k, c, u, v] * x[n, c, r, q]
                    out[n, k, i, j] = total
    return out


def naive_conv_backward(dout, x, w, stride=1, padding=0, dilation=1):
    """dx, dw, db of ``naive_conv`` by the same loops, each product's gradient added where it came from."""
    (sh, sw), (ph, pw), (dh, dw_) = _pairs(stride, padding, dilation)
    n_, c_, h, wd = x.shape
    k_, _, kh, kw = w.shape
    oh, ow = dout.shape[2:]
    dx, dw, db = np.zeros(x.shape), np.zeros(w.shape), np.zeros(k_)
    for n in range(n_):
        for k in range(k_):
            for i in range(oh):
                for j in range(ow):
                    g = dout[n, k, i, j]
                    db[k] += g
                    for c in range(c_):
                        for u in range(kh):
                            for v in range(kw):
                                r, q = i * sh + u * dh - ph, j * sw + v * dw_ - pw
                                if 0 <= r < h and 0 <= q < wd:
                                    dx[n, c, r, q] += g * w[k, c, u, v]
                                    dw[k, c, u, v] += g * x[n, c, r, q]
    return dx, dw, db


def run_layer(layer, x, dout_seed=1):
    out = layer.forward(x)
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(x.dtype)
    dx = layer.backward(dout)
    return out, dout, dx


# --- the table --------------------------------------------------------------------------------
# (x shape, out_channels, kernel_size, stride, padding, dilation, bias, rounding)
CASES = [
    ((2, 3, 7, 7), 4, 3, 1, 0, 1, True, "exact"),
    ((2, 3, 7, 7), 4, 3, 1, 1, 1, True, "exact"),
    ((2, 3, 7, 7), 4, 3, 2, 1, 1, True, "exact"),
    ((2, 3, 9, 9), 4, 3, 2, 0, 1, True, "exact"),
    ((2, 3, 8, 8), 4, 3, 1, 2, 1, True, "exact"),
    ((2, 3, 9, 9), 4, 3, 1, 2, 2, True, "exact"),
    ((2, 3, 9, 9), 4, 3, 2, 0, 2, True, "exact"),
    ((2, 3, 7, 10), 4, (3, 2), (1, 2), (1, 0), 1, True, "exact"),      # non-square input and kernel
    ((2, 2, 8, 9), 3, (2, 3), 1, (0, 1), (2, 1), True, "exact"),       # per-axis dilation
    ((1, 3, 6, 6), 2, 3, 1, 1, 1, True, "exact"),                     # batch 1
    ((2, 1, 6, 6), 1, 3, 1, 1, 1, True, "exact"),                     # one channel in and out
    ((2, 4, 5, 5), 3, 1, 1, 0, 1, True, "exact"),                     # 1x1
    ((2, 4, 5, 5), 3, 1, 2, 0, 1, True, "exact"),                     # 1x1, stride 2
    ((2, 3, 6, 6), 4, 3, 1, 1, 1, False, "exact"),                    # no bias
    ((2, 2, 5, 5), 3, 2, 1, 2, 1, True, "exact"),                     # padding wider than the kernel
    ((2, 2, 7, 7), 3, 2, 3, 2, 1, True, "exact"),                     # stride 3
    ((2, 3, 10, 10), 4, 3, 2, 0, 1, True, "floor"),                   # PyTorch's rounding
    ((2, 3, 10, 11), 4, 3, 2, (0, 1), 1, True, "floor"),
]
IDS = [f"x{c[0]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-{'b' if c[6] else 'nob'}-{c[7]}" for c in CASES]


def make_layer(case, dtype="float32", seed=0):
    _, k, ks, s, p, d, bias, rounding = case
    layer = Conv2d(case[0][1], k, ks, stride=s, padding=p, dilation=d, bias=bias, rounding=rounding,
                   rng=seed, dtype=dtype)
    if bias:  # non-zero bias so a wrong bias path shows
        layer.params["bias"] = np.random.default_rng(seed + 7).standard_normal(k).astype(dtype)
    return layer


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_pytorch_float32(case):
    torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
    layer = make_layer(case)
    x = np.random.default_rng(3).standard_normal(case[0]).astype(np.float32)
    out, dout, dx = run_layer(layer, x)
    assert out.dtype == dx.dtype == np.float32

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["weight"], requires_grad=True)
    tb = torch.tensor(layer.params["bias"], requires_grad=True) if "bias" in layer.params else None
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=layer.stride, padding=layer.padding,
                                      dilation=layer.dilation)
    tout.backward(torch.tensor(dout))
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["weight"], tw.grad.numpy(), **tol)
    if tb is not None:
        np.testing.assert_allclose(layer.grads["bias"], tb.grad.numpy(), **tol)
    else:
        assert set(layer.grads) == {"weight"}


@pytest.mark.parametrize("case", CASES + [((2, 2, 8, 8), 3, 3, 2, 0, 1, True, "ceil"),
                                          ((1, 2, 6, 6), 2, 2, (2, 3), 1, (1, 2), False, "ceil")],
                         ids=IDS + ["ceil-1", "ceil-2"])
def test_matches_naive_loops_float64(case):
    layer = make_layer(case, dtype="float64")
    x = np.random.default_rng(4).standard_normal(case[0])
    out, dout, dx = run_layer(layer, x)
    w, b = layer.params["weight"], layer.params.get("bias")
    ref = naive_conv(x, w, b, layer.stride, layer.padding, layer.dilation, layer.rounding)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)
    rdx, rdw, rdb = naive_conv_backward(dout, x, w, layer.stride, layer.padding, layer.dilation)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["weight"], rdw, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=1e-10, atol=1e-10)
    # every way of finding dx, not only the one "auto" picks for this geometry
    _, cache = conv2d_forward(x, w, b, layer.stride, layer.padding, layer.dilation, layer.rounding)
    methods = ["col2im", "col2im_cnhw"] + (["flip"] if layer.stride == (1, 1) else [])
    for method in methods:
        gdx, gdw, gdb = conv2d_backward(dout, cache, dx_method=method)
        np.testing.assert_allclose(gdx, rdx, rtol=1e-10, atol=1e-10, err_msg=method)
        np.testing.assert_allclose(gdw, rdw, rtol=1e-10, atol=1e-10, err_msg=method)
        assert (gdb is None) == (b is None)
        if b is not None:
            np.testing.assert_allclose(gdb, rdb, rtol=1e-10, atol=1e-10, err_msg=method)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[7], CASES[8], CASES[13], CASES[14],
                                  ((1, 2, 8, 8), 2, 3, 2, 0, 1, True, "ceil")],
                         ids=["s1p1", "s2p1", "nonsquare", "dilation", "nobias", "widepad", "ceil"])
def test_gradcheck_float64(case):
    layer = make_layer(case, dtype="float64")
    x = np.random.default_rng(5).standard_normal(case[0])
    errors = check_layer_gradients(layer, x, tol=1e-6)
    assert set(errors) == {"x", *layer.params}


# --- the kernels underneath -----------------------------------------------------------------

@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("chunk", [1, 2, 99], ids=["1img", "2img", "all"])
def test_chunks_threads_and_dx_methods_agree(monkeypatch, chunk, n_threads):
    # 5 images in chunks of 1, 2 (with a remainder chunk when unthreaded) and all, split over 1
    # or 3 threads (batch ranges of 1, 2 and 2 images): every path equals the naive loops.
    flip_bytes_per_image = 9 * 9 * 3 * 3 * 4 * 8          # im2col of the padded dout, float64
    monkeypatch.setattr(conv_ops, "CHUNK_BYTES", chunk * flip_bytes_per_image * n_threads)
    monkeypatch.setattr(conv_ops, "MIN_PARALLEL_BYTES", 0)
    with threads.num_threads(n_threads):
        _check_every_path()


def _check_every_path():
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((5, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    all_methods = ("auto", "flip", "col2im", "col2im_cnhw")
    for stride, padding, methods in [(1, 1, all_methods), (2, 1, ("auto", "col2im", "col2im_cnhw"))]:
        out, cache = conv2d_forward(x, w, b, stride, padding)
        np.testing.assert_allclose(out, naive_conv(x, w, b, stride, padding), rtol=1e-10, atol=1e-10)
        dout = rng.standard_normal(out.shape)
        ref = naive_conv_backward(dout, x, w, stride, padding)
        for method in methods:
            for got, want in zip(conv2d_backward(dout, cache, dx_method=method), ref):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="stride 1"):
        conv2d_backward(dout, cache, dx_method="flip")


@pytest.mark.parametrize("c,stride", [(3, 1), (3, 2), (8, 1), (8, 2)])
def test_backward_without_input_grad(c, stride):
    # input_grad=False (a network's first layer): the same parameter gradients, no dx
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, c, 7, 7))
    full, part = (Conv2d(c, 4, 3, stride=stride, padding=1, rng=0, dtype="float64") for _ in range(2))
    dout = rng.standard_normal((3, *full.output_shape((c, 7, 7))))
    full.forward(x)
    full.backward(dout)
    part.forward(x)
    assert Conv2d.accepts_input_grad and part.backward(dout, input_grad=False) is None
    for name in ("weight", "bias"):
        np.testing.assert_allclose(part.grads[name], full.grads[name], rtol=1e-12, atol=1e-12)
    with pytest.raises(StateError):
        part.backward(dout)


def test_any_memory_layout_gives_the_same_answer():
    # NCHW-contiguous, channels-last and strided (sliced) inputs and douts all work alike.
    rng = np.random.default_rng(7)
    layer = Conv2d(3, 4, 3, padding=1, rng=0, dtype="float64")
    x = rng.standard_normal((2, 3, 6, 6))
    dout = rng.standard_normal((2, 4, 6, 6))
    out = layer.forward(x)
    dx = layer.backward(dout)
    dw = layer.grads["weight"].copy()
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    wide = np.zeros((2, 3, 6, 12))
    wide[..., ::2] = x
    sliced = wide[..., ::2]
    for variant in (channels_last, sliced):
        np.testing.assert_allclose(layer.forward(variant), out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.backward(dout.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)),
                                   dx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.grads["weight"], dw, rtol=1e-12, atol=1e-12)


# --- hypothesis ------------------------------------------------------------------------------

@st.composite
def geometries(draw):
    """Any geometry, valid or not: sizes 1..9, kernels 1..4, stride 1..3, padding 0..2, dilation 1..2."""
    g = {name: draw(st.integers(lo, hi)) for name, lo, hi in (
        ("h", 1, 9), ("w", 1, 9), ("kh", 1, 4), ("kw", 1, 4), ("sh", 1, 3), ("sw", 1, 3),
        ("ph", 0, 2), ("pw", 0, 2), ("dh", 1, 2), ("dw", 1, 2))}
    return {**g, "rounding": draw(st.sampled_from(["exact", "floor", "ceil"]))}


def is_valid(g):
    for axis in ("h", "w"):
        size, k, s, p, d = (g[name] for name in (axis, "k" + axis, "s" + axis, "p" + axis, "d" + axis))
        numer = size + 2 * p - (d * (k - 1) + 1)
        if numer < 0 or (g["rounding"] == "exact" and numer % s):
            return False
    return True


def layer_for(g, c=2, k=3):
    return Conv2d(c, k, (g["kh"], g["kw"]), stride=(g["sh"], g["sw"]), padding=(g["ph"], g["pw"]),
                  dilation=(g["dh"], g["dw"]), rounding=g["rounding"], rng=1, dtype="float64")


@settings(max_examples=25, deadline=None)
@given(geometries(), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_random_valid_geometries_match_naive(g, n, seed):
    if not is_valid(g):
        g = {**g, "h": 9, "w": 9, "kh": 3, "kw": 3, "dh": 1, "dw": 1, "rounding": "floor"}
    layer = layer_for(g)
    layer.params["bias"] = np.arange(3.0)
    x = np.random.default_rng(seed).standard_normal((n, 2, g["h"], g["w"]))
    out, dout, dx = run_layer(layer, x, dout_seed=seed)
    args = (layer.stride, layer.padding, layer.dilation)
    assert out.shape[1:] == layer.output_shape(x.shape[1:])
    np.testing.assert_allclose(out, naive_conv(x, layer.params["weight"], layer.params["bias"], *args,
                                               rounding=layer.rounding), rtol=1e-10, atol=1e-10)
    rdx, rdw, rdb = naive_conv_backward(dout, x, layer.params["weight"], *args)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["weight"], rdw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(geometries(), st.booleans())
def test_invalid_geometries_always_raise_shape_error(g, wrong_channels):
    layer = layer_for(g)
    c = 3 if wrong_channels else 2
    x = np.ones((1, c, g["h"], g["w"]))
    if is_valid(g) and not wrong_channels:
        assert layer.forward(x).shape[1:] == layer.output_shape((c, g["h"], g["w"]))
        return
    with pytest.raises(ShapeError) as err:
        layer.output_shape((c, g["h"], g["w"]))
    assert str(err.value).startswith(repr(layer))
    with pytest.raises(ShapeError):
        layer.forward(x)


# --- the notes' numbers --------------------------------------------------------------------

def test_alexnet_conv1():
    conv = Conv2d(3, 96, kernel_size=11, stride=4, padding=0)
    shape = conv.output_shape((3, 227, 227))
    assert shape == (96, 55, 55)
    assert int(np.prod(shape)) == 290_400
    assert conv.num_params == 34_944 == 96 * (11 * 11 * 3) + 96
    assert repr(conv) == "Conv2d(3, 96, kernel_size=11, stride=4)"


@pytest.mark.parametrize("stride,expected", [(1, 5), (2, 3)])
def test_notes_1d_example(stride, expected):
    # W=5, F=3, P=1: 5 outputs at S=1 and 3 at S=2; the notes' weights [1, 0, -1], bias 0.
    conv = Conv2d(1, 1, (1, 3), stride=stride, padding=(0, 1), rng=0, dtype="float64")
    conv.params["weight"][...] = np.array([1.0, 0.0, -1.0]).reshape(1, 1, 1, 3)
    assert conv.output_shape((1, 1, 5)) == (1, 1, expected)
    x = np.array([0.0, 1, 2, -1, 1]).reshape(1, 1, 1, 5)
    out = conv.forward(x).ravel()
    full = np.array([-1.0, -2, 2, 1, -1])      # by hand: 0-1, 0-2, 1+1, 2-1, -1-0
    np.testing.assert_allclose(out, full[::stride])


def test_notes_non_integer_example():
    conv = Conv2d(3, 8, kernel_size=3, stride=2)
    with pytest.raises(ShapeError) as err:
        conv.output_shape((3, 10, 10))
    msg = str(err.value)
    assert msg.startswith("Conv2d(3, 8, kernel_size=3, stride=2): input 10x10")
    assert "(10-3+2*0)/2+1 = 4.5" in msg and "not an integer" in msg
    with pytest.raises(ShapeError, match="4.5"):
        conv.forward(np.zeros((1, 3, 10, 10), np.float32))
    assert Conv2d(3, 8, 3, stride=2, rounding="floor").output_shape((3, 10, 10)) == (8, 4, 4)
    assert Conv2d(3, 8, 3, stride=2, rounding="ceil").output_shape((3, 10, 10)) == (8, 5, 5)


# --- init, config, errors --------------------------------------------------------------------

def test_init_he_normal_zero_bias_and_rng():
    conv = Conv2d(16, 64, 3, rng=0)
    w = conv.params["weight"]
    assert w.shape == (64, 16, 3, 3) and w.dtype == np.float32
    assert conv.params["bias"].shape == (64,) and not conv.params["bias"].any()
    assert abs(w.std() - np.sqrt(2.0 / (16 * 9))) < 0.05 * np.sqrt(2.0 / (16 * 9))
    assert abs(w.mean()) < 0.01
    np.testing.assert_array_equal(w, Conv2d(16, 64, 3, rng=0).params["weight"])
    assert not np.array_equal(w, Conv2d(16, 64, 3, rng=1).params["weight"])
    assert Conv2d(2, 3, 1, bias=False, dtype="float64").state_dict().keys() == {"weight"}
    assert Conv2d(2, 3, 1, dtype="float64").params["weight"].dtype == np.float64


def test_config_round_trip():
    conv = Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False,
                  rounding="floor", rng=0, dtype="float64")
    cfg = conv.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    clone = get_layer_class("Conv2d").from_config(cfg)
    assert clone.get_config() == cfg and repr(clone) == repr(conv)
    assert repr(conv) == ("Conv2d(3, 5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), "
                          "dilation=(1, 2), bias=False, rounding='floor')")
    clone.load_state_dict(conv.state_dict())
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    np.testing.assert_array_equal(clone.forward(x), conv.forward(x))


@pytest.mark.parametrize("kwargs", [
    {"in_channels": 0}, {"out_channels": -1}, {"kernel_size": 0}, {"stride": 0},
    {"padding": -1}, {"dilation": 0}, {"kernel_size": (3, 0)}, {"kernel_size": 2.5},
    {"in_channels": True}, {"bias": "yes"}, {"rounding": "round"}, {"dtype": "int32"},
    {"rng": "seed"},
])
def test_bad_constructor_arguments(kwargs):
    args = {"in_channels": 3, "out_channels": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ConfigError):
        Conv2d(**args)


def test_input_errors():
    conv = Conv2d(3, 4, 3, padding=1)
    with pytest.raises(ShapeError, match=r"4-d input"):
        conv.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="expected 3 input channels, got 2"):
        conv.forward(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="expected 3 input channels"):
        conv.output_shape((2, 8, 8))
    with pytest.raises(ShapeError, match="floating-point"):
        conv.forward(np.zeros((1, 3, 8, 8), np.int64))
    with pytest.raises(ShapeError, match="too small"):
        Conv2d(3, 4, 7, padding=1).forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ShapeError, match="too small"):
        Conv2d(3, 4, 3, dilation=3).output_shape((3, 6, 6))
    with pytest.raises(ShapeError) as err:
        conv_ops.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((4, 3, 3, 3)))
    assert "2 channels" in str(err.value)


def test_backward_errors():
    conv = Conv2d(3, 4, 3, padding=1)
    with pytest.raises(StateError):
        conv.backward(np.zeros((1, 4, 8, 8), np.float32))
    conv.forward(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="dout has shape"):
        conv.backward(np.zeros((1, 4, 8, 7), np.float32))
    conv.forward(np.zeros((1, 3, 8, 8), np.float32))
    conv.backward(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(StateError):  # the cache is used up by one backward
        conv.backward(np.zeros((1, 4, 8, 8), np.float32))


def test_nan_and_inf_propagate():
    conv = Conv2d(2, 3, 3, padding=1, rng=0)
    x = np.zeros((1, 2, 5, 5), np.float32)
    x[0, 0, 2, 2] = np.nan
    x[0, 1, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):  # inf * 0 inside the matrix multiply: NumPy's warning, not ours
        out = conv.forward(x)
        dx = conv.backward(np.ones_like(out))
    assert np.isnan(out[0, :, 1:4, 1:4]).all()      # every window that sees the NaN
    assert np.isfinite(out[0, :, 4, 4]).all()       # a window that sees neither stays finite
    assert np.isnan(conv.grads["weight"]).any() and dx.shape == x.shape


def test_float64_input_and_layout_of_outputs():
    conv = Conv2d(3, 4, 3, padding=1, rng=0)
    out = conv.forward(np.ones((2, 3, 5, 5)))
    assert out.shape == (2, 4, 5, 5) and out.dtype == np.float64
    dx = conv.backward(np.ones_like(out))
    assert dx.dtype == np.float64 and conv.grads["weight"].dtype == np.float32
