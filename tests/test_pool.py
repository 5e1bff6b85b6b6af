"""POOL layers: PyTorch oracle, naive-loop reference, float64 gradient checks, properties, errors."""

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import get_layer_class
from convnp.layers.pool import AvgPool2d, GlobalAvgPool2d, LPPool2d, MaxPool2d
from tests.gradcheck import check_layer_gradients


def _torch():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# --- the naive reference: plain loops, the notes' definitions -------------------------------------
def naive_out(size, k, s, p, d, rounding):
    span = d * (k - 1) + 1
    if rounding == "ceil":
        o = math.ceil((size + 2 * p - span) / s) + 1
        if (o - 1) * s >= size + p:  # PyTorch: no window starts in the right padding
            o -= 1
        return o
    return (size + 2 * p - span) // s + 1


def naive_pool(x, dout, kind, k, s=None, p=0, d=1, rounding="exact", norm=2):
    """Forward and dx of a pool by explicit loops over batch, channel, output position and tap."""
    k = _pair(k)
    s = k if s is None else _pair(s)
    p, d = _pair(p), _pair(d)
    n, c, h, w = x.shape
    oh = naive_out(h, k[0], s[0], p[0], d[0], rounding)
    ow = naive_out(w, k[1], s[1], p[1], d[1], rounding)
    out = np.zeros((n, c, oh, ow))
    dx = np.zeros(x.shape)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    taps = []  # (row, col, inside the input?, inside input+padding?)
                    for a in range(k[0]):
                        for e in range(k[1]):
                            r = i * s[0] - p[0] + a * d[0]
                            q = j * s[1] - p[1] + e * d[1]
                            inside = 0 <= r < h and 0 <= q < w
                            padded = -p[0] <= r < h + p[0] and -p[1] <= q < w + p[1]
                            taps.append((r, q, inside, padded))
                    g = 0.0 if dout is None else float(dout[b, ch, i, j])
                    if kind == "max":
                        best, where = -math.inf, None
                        for r, q, inside, _ in taps:
                            v = x[b, ch, r, q] if inside else -math.inf
                            if v > best or where is None:
                                best, where = v, (r, q, inside)
                        out[b, ch, i, j] = best
                        if where[2]:
                            dx[b, ch, where[0], where[1]] += g
                    elif kind == "avg":
                        count = sum(1 for t in taps if t[3])
                        out[b, ch, i, j] = sum(x[b, ch, r, q] for r, q, inside, _ in taps if inside) / count
                        for r, q, inside, _ in taps:
                            if inside:
                                dx[b, ch, r, q] += g / count
                    elif kind == "lp" and norm == math.inf:
                        best, where = -1.0, None
                        for r, q, inside, _ in taps:
                            if inside and abs(x[b, ch, r, q]) > best:
                                best, where = abs(x[b, ch, r, q]), (r, q)
                        out[b, ch, i, j] = best
                        dx[b, ch, where[0], where[1]] += g * np.sign(x[b, ch, where[0], where[1]])
                    else:  # lp: (sum x^p)^(1/p), PyTorch's scaling of windows hanging past the input
                        inside_taps = [(r, q) for r, q, inside, _ in taps if inside]
                        scale = len(taps) / len(inside_taps)
                        total = scale * sum(x[b, ch, r, q] ** norm for r, q in inside_taps)
                        val = total ** (1.0 / norm)
                        out[b, ch, i, j] = val
                        if total != 0:
                            for r, q in inside_taps:
                                dx[b, ch, r, q] += g * val / total * scale * x[b, ch, r, q] ** (norm - 1)
    return out, dx


def make_layer(kind, k, s=None, p=0, d=1, rounding="exact", norm=2):
    if kind == "max":
        return MaxPool2d(k, s, p, d, rounding=rounding)
    if kind == "avg":
        return AvgPool2d(k, s, p, rounding=rounding)
    return LPPool2d(norm, k, s, rounding=rounding)


def torch_pool(torch, t, kind, k, s=None, p=0, d=1, rounding="exact", norm=2):
    F = torch.nn.functional
    ceil = rounding == "ceil"
    if kind == "max":
        return F.max_pool2d(t, k, s, p, d, ceil_mode=ceil)
    if kind == "avg":
        return F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=True)
    return F.lp_pool2d(t, norm, k, s, ceil_mode=ceil)


# (kernel, stride, padding, dilation, rounding, input shape N, C, H, W)
GEOMETRIES = [
    (2, None, 0, 1, "exact", (2, 3, 8, 8)),          # the notes' F=2, S=2
    (3, 2, 0, 1, "exact", (2, 2, 9, 7)),             # overlapping F=3, S=2
    (3, 2, 1, 1, "exact", (1, 1, 7, 9)),             # batch 1, one channel, padding
    (3, 1, 1, 1, "exact", (2, 2, 5, 6)),             # stride 1 keeps the size
    ((3, 2), (2, 1), (1, 0), 1, "floor", (2, 3, 8, 7)),  # non-square everything
    (3, 2, 0, 1, "floor", (1, 2, 8, 10)),            # floor drops the partial window
    (3, 2, 0, 1, "ceil", (2, 2, 8, 8)),              # ceil keeps it (GoogLeNet)
    (3, 2, 1, 1, "ceil", (1, 2, 6, 7)),              # ceil + padding
    (2, 2, 1, 1, "ceil", (2, 1, 5, 5)),              # ceil never starts a window in the padding
    ((1, 4), (1, 3), 0, 1, "ceil", (1, 2, 3, 9)),    # 1-row windows
]
MAX_ONLY = [
    (2, 1, 0, 2, "exact", (2, 2, 6, 6)),             # dilation 2
    ((3, 2), 2, 1, (2, 3), "floor", (1, 2, 9, 10)),  # dilation and padding, non-square
]


def _kind_cases():
    """(kind, geometry) rows: dilation is MaxPool2d-only and LPPool2d has no padding, as in PyTorch."""
    out = []
    for kind in ("max", "avg", "lp"):
        for k, s, p, d, rnd, shape in GEOMETRIES + (MAX_ONLY if kind == "max" else []):
            if kind == "lp" and _pair(p) != (0, 0):
                continue
            out.append(pytest.param(kind, k, s, p, d, rnd, shape,
                                    id=f"{kind}-k{k}-s{s}-p{p}-d{d}-{rnd}-{'x'.join(map(str, shape))}"))
    return out


def _no_ties(rng, shape):
    """Distinct values (a scaled permutation), so argmax and the numerical gradient are well defined."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) - size / 2) * (4.0 / size)


def _layer_args(kind, k, s, p, d, rnd, norm=2):
    kw = {"s": s, "rounding": rnd, "norm": norm}
    if kind != "lp":
        kw["p"] = p
    if kind == "max":
        kw["d"] = d
    return kw


# --- (1) PyTorch oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,k,s,p,d,rnd,shape", _kind_cases())
def test_forward_backward_match_torch(kind, k, s, p, d, rnd, shape, rng):
    torch = _torch()
    kw = _layer_args(kind, k, s, p, d, rnd)
    layer = make_layer(kind, k, **kw)
    x = rng.standard_normal(shape).astype(np.float32)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    t = torch.tensor(x, requires_grad=True)
    ref = torch_pool(torch, t, kind, k, **kw)
    ref.backward(torch.tensor(dout))
    assert out.dtype == np.float32 and dx.dtype == np.float32 and dx.shape == x.shape
    assert out.shape == tuple(ref.shape) == (shape[0],) + layer.output_shape(shape[1:])
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", [1, 2, 3, 1.5, math.inf])
@pytest.mark.parametrize("k,s,rnd,hw", [
    (2, None, "exact", (6, 8)), (3, 2, "ceil", (8, 7)), ((2, 3), (1, 2), "floor", (5, 8)),
])
def test_lppool_norms_match_torch(norm, k, s, rnd, hw, rng):
    torch = _torch()
    # Positive inputs for non-even p: PyTorch's x^p of a negative x is negative or NaN.
    x = rng.standard_normal((2, 3, *hw)) if norm in (2, math.inf) else rng.uniform(0.2, 2.0, (2, 3, *hw))
    x = x.astype(np.float32)
    layer = LPPool2d(norm, k, s, rounding=rnd)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    t = torch.tensor(x, requires_grad=True)
    ref = torch_pool(torch, t, "lp", k, s, rounding=rnd, norm=norm)
    ref.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_lppool_zero_window_has_zero_gradient_like_torch(rng):
    torch = _torch()
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    x[:, :, :2, :2] = 0.0  # one window with sum 0
    layer = LPPool2d(2, 2)
    out = layer.forward(x)
    dout = np.ones_like(out)
    dx = layer.backward(dout)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.lp_pool2d(t, 2, 2).backward(torch.tensor(dout))
    assert np.all(np.isfinite(dx)) and np.all(dx[:, :, :2, :2] == 0)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, torch.nn.functional.lp_pool2d(torch.tensor(x), 2, 2).numpy(), atol=1e-6)


@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), (3, 1, 1)])
def test_maxpool_ties_go_to_first_max_like_torch(k, s, p, rng):
    torch = _torch()
    x = rng.integers(0, 3, (2, 2, 7, 7)).astype(np.float32)  # many ties
    layer = MaxPool2d(k, s, p, rounding="floor")
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(t, k, s, p).backward(torch.tensor(dout))
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-6, atol=1e-6)
    ref, ref_dx = naive_pool(x.astype(np.float64), dout, "max", k, s, p, rounding="floor")
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 1), (3, 4, 6, 6)])
def test_global_avgpool_matches_torch(shape, rng):
    torch = _torch()
    x = rng.standard_normal(shape).astype(np.float32)
    layer = GlobalAvgPool2d()
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    t = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.adaptive_avg_pool2d(t, 1)
    ref.backward(torch.tensor(dout))
    assert out.shape == (shape[0], shape[1], 1, 1) == (shape[0],) + layer.output_shape(shape[1:])
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-4, atol=1e-6)


# --- (2) naive-loop reference ---------------------------------------------------------------------
@pytest.mark.parametrize("kind,k,s,p,d,rnd,shape", _kind_cases())
def test_forward_backward_match_naive(kind, k, s, p, d, rnd, shape, rng):
    kw = _layer_args(kind, k, s, p, d, rnd)
    layer = make_layer(kind, k, **kw)
    x = _no_ties(rng, shape)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    ref, ref_dx = naive_pool(x, dout, kind, k, **{"p": 0, "d": 1, **kw})
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)


def test_global_avgpool_matches_naive(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = GlobalAvgPool2d()
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    for b in range(2):
        for c in range(3):
            total = 0.0
            for i in range(4):
                for j in range(5):
                    total += x[b, c, i, j]
                    assert dx[b, c, i, j] == pytest.approx(dout[b, c, 0, 0] / 20)
            assert out[b, c, 0, 0] == pytest.approx(total / 20)


# --- (3) numerical gradients in float64 -----------------------------------------------------------
@pytest.mark.parametrize("kind,k,s,p,d,rnd,shape", [
    ("max", 2, None, 0, 1, "exact", (2, 2, 4, 4)),
    ("max", 3, 2, 1, 1, "exact", (1, 2, 5, 5)),
    ("max", (3, 2), (2, 1), (1, 0), 1, "ceil", (2, 1, 6, 5)),
    ("max", 2, 1, 0, 2, "floor", (1, 2, 5, 6)),
    ("avg", 2, None, 0, 1, "exact", (2, 2, 4, 4)),
    ("avg", 3, 2, 1, 1, "exact", (1, 2, 5, 5)),
    ("avg", (3, 2), (2, 1), (1, 0), 1, "ceil", (2, 1, 6, 5)),
    ("lp", 2, None, 0, 1, "exact", (2, 2, 4, 4)),
    ("lp", 3, 2, 0, 1, "ceil", (1, 2, 6, 6)),
    ("lp", (3, 2), (2, 1), 0, 1, "floor", (2, 1, 6, 5)),
])
def test_gradcheck_float64(kind, k, s, p, d, rnd, shape, rng):
    layer = make_layer(kind, k, **_layer_args(kind, k, s, p, d, rnd))
    check_layer_gradients(layer, _no_ties(rng, shape), tol=1e-6)


@pytest.mark.parametrize("norm", [1, 3, 1.5, math.inf])
def test_lppool_gradcheck_other_norms(norm, rng):
    x = rng.uniform(0.2, 2.0, (2, 2, 4, 4))  # positive: x^p of a negative x is not real for p=1.5
    check_layer_gradients(LPPool2d(norm, 2, 1), x, tol=1e-6)


def test_global_avgpool_gradcheck(rng):
    check_layer_gradients(GlobalAvgPool2d(), rng.standard_normal((2, 3, 3, 4)), tol=1e-6)


# --- properties -----------------------------------------------------------------------------------
@st.composite
def valid_geometry(draw):
    kind = draw(st.sampled_from(["max", "avg", "lp"]))
    rnd = draw(st.sampled_from(["exact", "floor", "ceil"]))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (0, 0) if kind == "lp" else (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" else (1, 1)
    hw = []
    for a in range(2):
        span = d[a] * (k[a] - 1) + 1
        extra = 0 if rnd == "exact" else draw(st.integers(0, s[a] - 1))
        hw.append((draw(st.integers(1, 4)) - 1) * s[a] + span - 2 * p[a] + extra)
    assume(min(hw) >= 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *hw)
    return kind, rnd, k, s, p, d, shape


@settings(max_examples=25, deadline=None)
@given(valid_geometry(), st.integers(0, 2**32 - 1))
def test_property_valid_geometry_matches_naive(geom, seed):
    kind, rnd, k, s, p, d, shape = geom
    rng = np.random.default_rng(seed)
    layer = make_layer(kind, k, s, p, d, rnd)
    x = _no_ties(rng, shape)
    out = layer.forward(x)
    assert out.shape == (shape[0],) + layer.output_shape(shape[1:])
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    ref, ref_dx = naive_pool(x, dout, kind, k, s, p, d, rnd)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["max", "avg", "lp"]), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2),
       st.integers(1, 20), st.integers(1, 20), st.sampled_from(["exact", "floor", "ceil"]))
def test_property_invalid_geometry_always_shape_error(kind, k, s, p, h, w, rnd):
    p = 0 if kind == "lp" else min(p, k // 2)
    bad_fit = (h + 2 * p - k) % s != 0 or (w + 2 * p - k) % s != 0
    too_small = k > h + 2 * p or k > w + 2 * p
    assume(too_small or (rnd == "exact" and bad_fit))
    layer = make_layer(kind, k, s, p, 1, rnd)
    for call in (lambda: layer.output_shape((2, h, w)), lambda: layer.forward(np.zeros((1, 2, h, w)))):
        with pytest.raises(ShapeError) as e:
            call()
        assert repr(layer) in str(e.value) and f"{h}x{w}" in str(e.value)


# --- the notes' numbers, messages, errors ---------------------------------------------------------
def test_notes_numbers():
    assert MaxPool2d(2, 2).output_shape((64, 224, 224)) == (64, 112, 112)
    assert MaxPool2d(3, 2).output_shape((96, 55, 55)) == (96, 27, 27)
    assert AvgPool2d(2).output_shape((64, 224, 224)) == (64, 112, 112)
    assert MaxPool2d(3, 2, rounding="ceil").output_shape((64, 112, 112)) == (64, 56, 56)  # GoogLeNet
    assert GlobalAvgPool2d().output_shape((512, 7, 7)) == (512, 1, 1)
    assert all(layer.num_params == 0 for layer in (MaxPool2d(2), AvgPool2d(2), LPPool2d(2, 2), GlobalAvgPool2d()))


def test_shape_error_names_layer_size_and_formula():
    layer = MaxPool2d(3, 2)
    with pytest.raises(ShapeError) as e:
        layer.output_shape((3, 10, 10))
    msg = str(e.value)
    assert "MaxPool2d(kernel_size=3, stride=2)" in msg and "10x10" in msg and "(10-3+2*0)/2+1 = 4.5" in msg
    assert MaxPool2d(3, 2, rounding="floor").output_shape((3, 10, 10)) == (3, 4, 4)
    assert MaxPool2d(3, 2, rounding="ceil").output_shape((3, 10, 10)) == (3, 5, 5)


@pytest.mark.parametrize("layer", [MaxPool2d(2), AvgPool2d(2), LPPool2d(2, 2), GlobalAvgPool2d()], ids=repr)
def test_error_cases(layer):
    with pytest.raises(ShapeError, match="4-d"):
        layer.forward(np.zeros((2, 4, 4)))
    with pytest.raises(ShapeError, match="floating"):
        layer.forward(np.zeros((1, 2, 4, 4), dtype=np.int64))
    with pytest.raises(ShapeError):
        layer.output_shape((4, 4))
    with pytest.raises(StateError):
        layer.backward(np.zeros((1, 2, 2, 2)))
    out = layer.forward(np.ones((1, 2, 4, 4)))
    with pytest.raises(ShapeError, match="dout"):
        layer.backward(np.zeros((1, 2, 3, 3)))
    layer.backward(np.ones_like(out))
    with pytest.raises(StateError):
        layer.backward(np.ones_like(out))  # the cache is used once


@pytest.mark.parametrize("make", [
    lambda: MaxPool2d(0), lambda: MaxPool2d(2, stride=0), lambda: MaxPool2d(2, padding=-1),
    lambda: MaxPool2d(3, padding=2), lambda: AvgPool2d((4, 2), padding=(1, 2)), lambda: MaxPool2d(2, dilation=0),
    lambda: MaxPool2d(2, rounding="round"), lambda: AvgPool2d(2.5), lambda: LPPool2d(0, 2),
    lambda: LPPool2d(-1, 2), lambda: LPPool2d("2", 2), lambda: LPPool2d(True, 2), lambda: LPPool2d(math.nan, 2),
    lambda: MaxPool2d(True),
])
def test_config_errors(make):
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize("layer", [
    MaxPool2d(2), MaxPool2d((3, 2), (2, 1), (1, 0), (1, 2), rounding="ceil"), AvgPool2d(3, 2, 1, rounding="floor"),
    LPPool2d(2, 3, 2, rounding="floor"), LPPool2d(math.inf, (2, 3), rounding="ceil"), LPPool2d(1.5, 2),
    GlobalAvgPool2d(),
], ids=repr)
def test_config_round_trip(layer):
    cfg = layer.get_config()
    rebuilt = get_layer_class(type(layer).__name__).from_config(json.loads(json.dumps(cfg)))
    assert type(rebuilt) is type(layer) and rebuilt.get_config() == cfg and repr(rebuilt) == repr(layer)
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8))
    np.testing.assert_array_equal(rebuilt.forward(x), layer.forward(x))


def test_repr_reads_like_pytorch():
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2)"
    assert repr(MaxPool2d(3, 2, 1, rounding="ceil")) == "MaxPool2d(kernel_size=3, stride=2, padding=1, rounding='ceil')"
    assert repr(AvgPool2d((3, 2), 1)) == "AvgPool2d(kernel_size=(3, 2), stride=1)"
    assert repr(LPPool2d(2, 2)) == "LPPool2d(norm_type=2, kernel_size=2, stride=2)"
    assert repr(GlobalAvgPool2d()) == "GlobalAvgPool2d()"


@pytest.mark.parametrize("layer", [MaxPool2d(2), MaxPool2d(3, 1, 1), AvgPool2d(2), LPPool2d(2, 2), GlobalAvgPool2d()],
                         ids=repr)
def test_nan_input_propagates_without_crash(layer):
    x = np.ones((1, 2, 4, 4), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    out = layer.forward(x)
    assert np.isnan(out[0, 0, 0, 0]) and np.all(np.isfinite(out[0, 1]))
    dx = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape and np.all(np.isfinite(dx[0, 1]))


def test_maxpool_nan_like_torch():
    torch = _torch()
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 0] = np.nan
    layer = MaxPool2d(2)
    out = layer.forward(x)
    ref = torch.nn.functional.max_pool2d(torch.tensor(x), 2).numpy()
    np.testing.assert_array_equal(out, ref)  # NaN in the same places
    dx = layer.backward(np.ones_like(out))
    assert dx[0, 0, 1, 0] == 1 and dx[0, 0, :2, :2].sum() == 1  # the NaN took the switch


def test_float64_stays_float64(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    for layer in (MaxPool2d(2), AvgPool2d(2), LPPool2d(2, 2), GlobalAvgPool2d()):
        out = layer.forward(x)
        assert out.dtype == np.float64 and layer.backward(np.ones_like(out)).dtype == np.float64
