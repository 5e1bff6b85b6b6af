"""BatchNorm1d/2d and LocalResponseNorm: PyTorch oracle, naive loops, float64 gradient checks."""

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import LAYER_TYPES, get_layer_class, layer_from_config, layer_to_config
from convnp.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnp.ops.norm import lrn_backward, lrn_forward
from tests.gradcheck import check_layer_gradients

F32 = dict(rtol=1e-4, atol=1e-4)
F64 = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


# --- naive references: plain loops, the definitions -----------------------------------------------

def _channel_indices(shape, c):
    """Every index of x (N, C, *) that belongs to channel c."""
    rest = [range(shape[0])] + [range(s) for s in shape[2:]]
    for idx in itertools.product(*rest):
        yield (idx[0], c) + tuple(idx[1:])


def naive_bn_forward(x, weight, bias, mean, var, eps, train):
    """y = w * (x - mu) / sqrt(var + eps) + b per channel; returns y and the statistics used."""
    y = np.zeros_like(x)
    used_mean, used_var = [], []
    for c in range(x.shape[1]):
        idx = list(_channel_indices(x.shape, c))
        if train:
            mu = sum(float(x[i]) for i in idx) / len(idx)
            v = sum((float(x[i]) - mu) ** 2 for i in idx) / len(idx)
        else:
            mu, v = float(mean[c]), float(var[c])
        w = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        for i in idx:
            y[i] = w * (float(x[i]) - mu) / math.sqrt(v + eps) + b
        used_mean.append(mu)
        used_var.append(v)
    return y, used_mean, used_var


def naive_bn_backward(x, dout, weight, mean, var, eps, train):
    """dx, dweight, dbias by the step-by-step chain rule through mean, var, std (the staged graph)."""
    dx = np.zeros_like(x)
    dw, db = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        idx = list(_channel_indices(x.shape, c))
        m = len(idx)
        w = 1.0 if weight is None else float(weight[c])
        mu = sum(float(x[i]) for i in idx) / m if train else float(mean[c])
        xc = [float(x[i]) - mu for i in idx]
        v = sum(t * t for t in xc) / m if train else float(var[c])
        std = math.sqrt(v + eps)
        for n, i in enumerate(idx):
            db[c] += float(dout[i])
            dw[c] += float(dout[i]) * xc[n] / std
        if not train:  # fixed statistics: y is affine in x
            for i in idx:
                dx[i] = float(dout[i]) * w / std
            continue
        dxhat = [float(dout[i]) * w for i in idx]
        dstd = sum(-dxhat[n] * xc[n] / std ** 2 for n in range(m))
        dvar = dstd * 0.5 / std
        dxc = [dxhat[n] / std + dvar * 2.0 * xc[n] / m for n in range(m)]
        dmu = -sum(dxc)
        for n, i in enumerate(idx):
            dx[i] = dxc[n] + dmu / m
    return dx, dw, db


def naive_lrn_forward(x, size, alpha, beta, k):
    y = np.zeros_like(x)
    channels = x.shape[1]
    for i in np.ndindex(*x.shape):
        c = i[1]
        total = 0.0
        for cc in range(c - size // 2, c + (size - 1) // 2 + 1):
            if 0 <= cc < channels:
                total += float(x[(i[0], cc) + i[2:]]) ** 2
        y[i] = float(x[i]) / (k + alpha / size * total) ** beta
    return y


def naive_lrn_backward(x, dout, size, alpha, beta, k):
    """dx_j = sum_c dout_c * d b_c / d a_j, the Jacobian entries one at a time."""
    dx = np.zeros_like(x)
    channels = x.shape[1]
    for i in np.ndindex(*x.shape):
        n, c, rest = i[0], i[1], i[2:]
        window = [cc for cc in range(c - size // 2, c + (size - 1) // 2 + 1) if 0 <= cc < channels]
        s = k + alpha / size * sum(float(x[(n, cc) + rest]) ** 2 for cc in window)
        a_c = float(x[i])
        for j in window:
            jac = -beta * a_c * s ** (-beta - 1) * (alpha / size) * 2.0 * float(x[(n, j) + rest])
            if j == c:
                jac += s ** (-beta)
            dx[(n, j) + rest] += float(dout[i]) * jac
    return dx


def naive_running(rm, rv, means, variances, m, momentum):
    new_m = [(1 - momentum) * float(rm[c]) + momentum * means[c] for c in range(len(rm))]
    new_v = [(1 - momentum) * float(rv[c]) + momentum * variances[c] * m / (m - 1) for c in range(len(rv))]
    return np.array(new_m), np.array(new_v)


# --- helpers ------------------------------------------------------------------------------------

def torch_run(torch, module, x, dout):
    """Forward + backward through a torch module: (out, dx, {param name: grad})."""
    xt = torch.tensor(x, requires_grad=True)
    for p in module.parameters():
        p.grad = None
    out = module(xt)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), {k: p.grad.numpy() for k, p in module.named_parameters()}


def make_bn(cls, c, rng, dtype="float32", randomize=True, **kw):
    layer = cls(c, dtype=dtype, **kw)
    if randomize:
        for k in layer.params:
            layer.params[k] = rng.uniform(0.5, 1.5, c).astype(dtype) * rng.choice([-1, 1], c).astype(dtype)
        layer.buffers["running_mean"] = rng.standard_normal(c).astype(dtype)
        layer.buffers["running_var"] = rng.uniform(0.5, 2.0, c).astype(dtype)
    return layer


def torch_bn_like(torch, layer):
    mod = getattr(torch.nn, type(layer).__name__)(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                                                  affine=layer.affine, bias=layer.use_bias)
    with torch.no_grad():
        for k, v in layer.state_dict().items():
            getattr(mod, k).copy_(torch.from_numpy(np.array(v)))
    return mod


def assert_buffers_match_torch(layer, mod):
    np.testing.assert_allclose(layer.buffers["running_mean"], mod.running_mean.numpy(), **F32)
    np.testing.assert_allclose(layer.buffers["running_var"], mod.running_var.numpy(), **F32)
    assert layer.buffers["num_batches_tracked"].dtype == np.int64
    assert int(layer.buffers["num_batches_tracked"]) == int(mod.num_batches_tracked)


# cls, input shape, momentum, eps, affine
BN_CASES = [
    (BatchNorm2d, (2, 3, 4, 4), 0.1, 1e-5, True),
    (BatchNorm2d, (2, 3, 1, 1), 0.1, 1e-5, True),      # batch 2, 1x1: two values per channel
    (BatchNorm2d, (5, 4, 1, 1), 0.3, 1e-5, True),      # 1x1 spatial, batch > 1
    (BatchNorm2d, (1, 2, 3, 3), 0.1, 1e-5, True),      # batch 1 with spatial extent trains fine
    (BatchNorm2d, (3, 1, 2, 3), 0.5, 1e-3, True),      # one channel
    (BatchNorm2d, (2, 5, 3, 2), 1.0, 1e-5, False),     # momentum 1: running = last batch; no affine
    (BatchNorm2d, (4, 3, 2, 2), 0.0, 0.1, True),       # momentum 0: running stats frozen
    (BatchNorm2d, (3, 2, 2, 2), None, 1e-5, True),     # cumulative moving average
    (BatchNorm1d, (2, 3), 0.1, 1e-5, True),
    (BatchNorm1d, (8, 1), 0.2, 1e-5, True),
    (BatchNorm1d, (4, 6), 0.1, 1e-2, False),
    (BatchNorm1d, (3, 4, 5), 0.1, 1e-5, True),         # (N, C, L)
    (BatchNorm1d, (1, 2, 3), None, 1e-5, True),        # (N, C, L) with batch 1
]

# shape, size, alpha, beta, k  (alphas well above 1e-4 so the window really matters)
LRN_CASES = [
    ((2, 7, 3, 3), 5, 1e-4, 0.75, 2.0),    # AlexNet's constants
    ((2, 7, 3, 3), 5, 2.0, 0.75, 2.0),
    ((2, 6, 2, 2), 1, 0.5, 0.75, 1.0),
    ((2, 6, 2, 2), 2, 1.5, 0.75, 1.0),     # even: window c-1 .. c
    ((1, 6, 2, 3), 3, 1.0, 0.5, 1.0),
    ((2, 6, 2, 2), 4, 3.0, 1.25, 0.5),     # even: window c-2 .. c+1
    ((2, 3, 2, 2), 5, 2.0, 0.75, 1.0),     # window wider than the channels
    ((3, 1, 2, 2), 3, 4.0, 0.75, 1.0),     # one channel
    ((2, 5, 4), 3, 1.0, 0.75, 1.0),        # (N, C, L)
    ((2, 5, 4), 2, 1.0, 2.0, 3.0),
]


def _ids(cases):
    return [f"{c[0].__name__ if isinstance(c[0], type) else c[0]}-{c[1:]}" for c in cases]


# --- PyTorch oracle -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,shape,momentum,eps,affine", BN_CASES, ids=_ids(BN_CASES))
def test_batchnorm_matches_torch(torch, cls, shape, momentum, eps, affine):
    rng = np.random.default_rng(1)
    layer = make_bn(cls, shape[1], rng, momentum=momentum, eps=eps, affine=affine)
    mod = torch_bn_like(torch, layer)
    mod.train()
    for _ in range(3):  # several training steps: outputs, gradients and running statistics
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)
        out = layer.forward(x, train=True)
        dx = layer.backward(dout)
        t_out, t_dx, t_grads = torch_run(torch, mod, x, dout)
        np.testing.assert_allclose(out, t_out, **F32)
        np.testing.assert_allclose(dx, t_dx, **F32)
        assert set(layer.grads) == set(t_grads)
        for k in t_grads:
            np.testing.assert_allclose(layer.grads[k], t_grads[k], **F32)
        assert_buffers_match_torch(layer, mod)
    mod.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    out = layer.forward(x, train=False)
    dx = layer.backward(dout)
    t_out, t_dx, t_grads = torch_run(torch, mod, x, dout)
    np.testing.assert_allclose(out, t_out, **F32)
    np.testing.assert_allclose(dx, t_dx, **F32)
    for k in t_grads:
        np.testing.assert_allclose(layer.grads[k], t_grads[k], **F32)
    assert_buffers_match_torch(layer, mod)  # evaluation leaves the buffers alone
    assert int(layer.buffers["num_batches_tracked"]) == 3


@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (3, 4, 2, 2)), (BatchNorm1d, (5, 3))])
def test_batchnorm_without_bias_matches_torch(torch, cls, shape):
    rng = np.random.default_rng(2)
    layer = make_bn(cls, shape[1], rng, bias=False)
    assert set(layer.params) == {"weight"}
    mod = torch_bn_like(torch, layer)
    x, dout = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    out = layer.forward(x, train=True)
    dx = layer.backward(dout)
    t_out, t_dx, t_grads = torch_run(torch, mod, x, dout)
    np.testing.assert_allclose(out, t_out, **F32)
    np.testing.assert_allclose(dx, t_dx, **F32)
    np.testing.assert_allclose(layer.grads["weight"], t_grads["weight"], **F32)
    assert set(layer.grads) == {"weight"}


def test_batchnorm_empty_batch_matches_torch(torch):
    layer = make_bn(BatchNorm2d, 3, np.random.default_rng(3))
    mod = torch_bn_like(torch, layer)
    x = np.zeros((0, 3, 2, 2), np.float32)
    out = layer.forward(x, train=True)
    t_out = mod(torch.from_numpy(x)).detach().numpy()
    assert out.shape == t_out.shape == (0, 3, 2, 2)
    assert_buffers_match_torch(layer, mod)  # statistics untouched, counter +1 like PyTorch
    assert layer.backward(out).shape == x.shape


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES, ids=_ids(LRN_CASES))
def test_lrn_matches_torch(torch, shape, size, alpha, beta, k):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    layer = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
    out = layer.forward(x)
    dx = layer.backward(dout)
    t_out, t_dx, _ = torch_run(torch, torch.nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k), x, dout)
    np.testing.assert_allclose(out, t_out, **F32)
    np.testing.assert_allclose(dx, t_dx, **F32)
    assert layer.grads == {} and layer.params == {}


def test_state_dict_from_torch_gives_torch_eval_output(torch):
    rng = np.random.default_rng(5)
    mod = torch.nn.BatchNorm2d(4)
    mod.train()
    for _ in range(2):
        mod(torch.from_numpy(rng.standard_normal((3, 4, 2, 2)).astype(np.float32)))
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(rng.standard_normal(4).astype(np.float32)))
    sd = {k: v.numpy() for k, v in mod.state_dict().items()}
    layer = BatchNorm2d(4)
    assert list(layer.state_dict()) == list(sd)  # same names, same order as PyTorch
    layer.load_state_dict(sd)
    assert layer.buffers["num_batches_tracked"].dtype == np.int64 and int(layer.buffers["num_batches_tracked"]) == 2
    mod.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), mod(torch.from_numpy(x)).detach().numpy(), **F32)


# --- naive loops ----------------------------------------------------------------------------------

def check_bn_against_naive(layer, x, dout, train):
    w = layer.params.get("weight")
    b = layer.params.get("bias")
    rm, rv = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    nbt = int(layer.buffers["num_batches_tracked"])
    out = layer.forward(x, train=train)
    dx = layer.backward(dout)
    ref, means, variances = naive_bn_forward(x, w, b, rm, rv, layer.eps, train)
    rdx, rdw, rdb = naive_bn_backward(x, dout, w, rm, rv, layer.eps, train)
    np.testing.assert_allclose(out, ref, **F64)
    np.testing.assert_allclose(dx, rdx, **F64)
    if w is not None:
        np.testing.assert_allclose(layer.grads["weight"], rdw, **F64)
    if b is not None:
        np.testing.assert_allclose(layer.grads["bias"], rdb, **F64)
    if train:
        m = x.size // x.shape[1]
        mom = layer.momentum if layer.momentum is not None else 1.0 / (nbt + 1)
        new_m, new_v = naive_running(rm, rv, means, variances, m, mom)
        np.testing.assert_allclose(layer.buffers["running_mean"], new_m, **F64)
        np.testing.assert_allclose(layer.buffers["running_var"], new_v, **F64)
        assert int(layer.buffers["num_batches_tracked"]) == nbt + 1
    else:
        np.testing.assert_array_equal(layer.buffers["running_mean"], rm)
        assert int(layer.buffers["num_batches_tracked"]) == nbt


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cls,shape,momentum,eps,affine", BN_CASES, ids=_ids(BN_CASES))
def test_batchnorm_matches_naive(cls, shape, momentum, eps, affine, train):
    rng = np.random.default_rng(6)
    layer = make_bn(cls, shape[1], rng, dtype="float64", momentum=momentum, eps=eps, affine=affine)
    for _ in range(2):
        check_bn_against_naive(layer, rng.standard_normal(shape) * 3 - 1, rng.standard_normal(shape), train)


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES, ids=_ids(LRN_CASES))
def test_lrn_matches_naive(shape, size, alpha, beta, k):
    rng = np.random.default_rng(7)
    x, dout = rng.standard_normal(shape) * 1.5, rng.standard_normal(shape)
    layer = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
    np.testing.assert_allclose(layer.forward(x), naive_lrn_forward(x, size, alpha, beta, k), **F64)
    np.testing.assert_allclose(layer.backward(dout), naive_lrn_backward(x, dout, size, alpha, beta, k), **F64)


def test_batchnorm_by_hand():
    layer = BatchNorm1d(1, eps=1e-5, momentum=0.1, dtype="float64")
    out = layer.forward(np.array([[1.0], [3.0]]), train=True)
    np.testing.assert_allclose(out[:, 0], np.array([-1.0, 1.0]) / np.sqrt(1 + 1e-5), **F64)
    np.testing.assert_allclose(layer.buffers["running_mean"], [0.2], **F64)            # 0.9*0 + 0.1*2
    np.testing.assert_allclose(layer.buffers["running_var"], [0.9 + 0.1 * 2.0], **F64)  # unbiased var 2
    np.testing.assert_allclose(layer.forward(np.array([[0.2]])), [[0.0]], **F64)       # eval: running stats


def test_lrn_by_hand_even_size_window():
    # size 2, alpha/size = 1, beta = 1, k = 1: b_c = a_c / (1 + a_{c-1}^2 + a_c^2), the window is c-1..c.
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    out = LocalResponseNorm(2, alpha=2.0, beta=1.0, k=1.0).forward(x).ravel()
    np.testing.assert_allclose(out, [1 / 2, 2 / 6, 3 / 14], **F64)


# --- float64 gradient checks ----------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cls,shape,eps,affine", [
    (BatchNorm2d, (3, 2, 2, 2), 1e-5, True),
    (BatchNorm2d, (2, 3, 1, 1), 0.1, True),     # two values per channel: dx lives on eps alone
    (BatchNorm2d, (2, 2, 2, 3), 1e-5, False),
    (BatchNorm1d, (4, 3), 1e-5, True),
    (BatchNorm1d, (2, 2, 3), 1e-3, True),
])
def test_batchnorm_gradcheck(cls, shape, eps, affine, train):
    rng = np.random.default_rng(8)
    layer = make_bn(cls, shape[1], rng, eps=eps, affine=affine)
    errors = check_layer_gradients(layer, rng.standard_normal(shape) * 2 + 1, train=train)
    assert set(errors) == {"x"} | set(layer.params)


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES, ids=_ids(LRN_CASES))
def test_lrn_gradcheck(shape, size, alpha, beta, k):
    rng = np.random.default_rng(9)
    check_layer_gradients(LocalResponseNorm(size, alpha=alpha, beta=beta, k=k), rng.standard_normal(shape))


# --- hypothesis properties ------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 3), w=st.integers(1, 3),
       momentum=st.one_of(st.none(), st.floats(0.0, 1.0)), eps=st.floats(1e-6, 1.0),
       affine=st.booleans(), train=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_batchnorm2d_property_vs_naive(n, c, h, w, momentum, eps, affine, train, seed):
    if train and n * h * w == 1:
        return  # one value per channel cannot train; covered by test_single_value_per_channel_in_training
    rng = np.random.default_rng(seed)
    layer = make_bn(BatchNorm2d, c, rng, dtype="float64", momentum=momentum, eps=eps, affine=affine)
    shape = (n, c, h, w)
    check_bn_against_naive(layer, rng.standard_normal(shape) * 2, rng.standard_normal(shape), train)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 4), c=st.integers(1, 4), length=st.one_of(st.none(), st.integers(1, 3)),
       momentum=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_batchnorm1d_property_vs_naive(n, c, length, momentum, seed):
    rng = np.random.default_rng(seed)
    layer = make_bn(BatchNorm1d, c, rng, dtype="float64", momentum=momentum)
    shape = (n, c) if length is None else (n, c, length)
    check_bn_against_naive(layer, rng.standard_normal(shape), rng.standard_normal(shape), True)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 7), h=st.integers(1, 3), size=st.integers(1, 7),
       alpha=st.floats(0.0, 3.0), beta=st.floats(0.1, 2.0), k=st.floats(0.5, 3.0), seed=st.integers(0, 2 ** 16))
def test_lrn_property_vs_naive(n, c, h, size, alpha, beta, k, seed):
    rng = np.random.default_rng(seed)
    x, dout = rng.standard_normal((n, c, h, 2)), rng.standard_normal((n, c, h, 2))
    out, cache = lrn_forward(x, size, alpha, beta, k)
    np.testing.assert_allclose(out, naive_lrn_forward(x, size, alpha, beta, k), **F64)
    np.testing.assert_allclose(lrn_backward(dout, cache), naive_lrn_backward(x, dout, size, alpha, beta, k), **F64)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer,x", [
    (BatchNorm2d(3), np.zeros((2, 4, 2, 2), np.float32)),     # wrong channels
    (BatchNorm2d(3), np.zeros((2, 3, 2), np.float32)),        # wrong ndim
    (BatchNorm2d(3), np.zeros((2, 3, 2, 2), np.int64)),       # int dtype
    (BatchNorm1d(3), np.zeros((2, 4), np.float32)),
    (BatchNorm1d(3), np.zeros((2, 3, 2, 2), np.float32)),
    (BatchNorm1d(3), np.zeros((2,), np.float32)),
    (BatchNorm1d(3), np.zeros((2, 3), np.int32)),
    (BatchNorm1d(3), [[1.0, 2.0, 3.0]]),                      # not an array
    (LocalResponseNorm(3), np.zeros((2, 3), np.float32)),     # needs (N, C, *)
    (LocalResponseNorm(3), np.zeros((2, 3, 2, 2), np.int64)),
])
@pytest.mark.parametrize("train", [True, False])
def test_bad_inputs_raise_shape_error_naming_layer(layer, x, train):
    with pytest.raises(ShapeError) as e:
        layer.forward(x, train=train)
    assert type(layer).__name__ in str(e.value)


@pytest.mark.parametrize("layer,x", [
    (BatchNorm2d(3), np.zeros((1, 3, 1, 1), np.float32)),
    (BatchNorm1d(3), np.zeros((1, 3), np.float32)),
    (BatchNorm1d(3), np.zeros((1, 3, 1), np.float32)),
])
def test_single_value_per_channel_in_training(layer, x):
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        layer.forward(x, train=True)
    assert int(layer.buffers["num_batches_tracked"]) == 0
    assert layer.forward(x, train=False).shape == x.shape  # evaluation is fine


@pytest.mark.parametrize("layer,shape", [(BatchNorm2d(2), (2, 2, 3, 3)), (BatchNorm1d(2), (3, 2)),
                                         (LocalResponseNorm(3), (2, 4, 2, 2))])
def test_backward_state_errors(layer, shape):
    x = np.ones(shape, np.float32)
    x[0] = 2
    with pytest.raises(StateError):
        layer.backward(np.ones(shape, np.float32))
    layer.forward(x, train=True)
    with pytest.raises(ShapeError):
        layer.backward(np.ones((1,) + shape[1:], np.float32))
    layer.forward(x, train=True)
    layer.backward(np.ones(shape, np.float32))
    with pytest.raises(StateError):  # one backward per forward
        layer.backward(np.ones(shape, np.float32))


@pytest.mark.parametrize("make", [
    lambda: BatchNorm2d(0), lambda: BatchNorm2d(2.0), lambda: BatchNorm2d(True),
    lambda: BatchNorm2d(2, eps=0.0), lambda: BatchNorm2d(2, eps=-1e-5), lambda: BatchNorm2d(2, eps=float("nan")),
    lambda: BatchNorm2d(2, momentum=1.5), lambda: BatchNorm2d(2, momentum=-0.1), lambda: BatchNorm2d(2, momentum="0.1"),
    lambda: BatchNorm2d(2, affine="yes"), lambda: BatchNorm2d(2, bias=1), lambda: BatchNorm1d(2, dtype="int32"),
    lambda: BatchNorm1d(2, rng="seed"),
    lambda: LocalResponseNorm(0), lambda: LocalResponseNorm(2.5), lambda: LocalResponseNorm(3, alpha=-1.0),
    lambda: LocalResponseNorm(3, beta=float("inf")), lambda: LocalResponseNorm(3, k=-1.0),
    lambda: LocalResponseNorm(3, k=None),
])
def test_bad_config(make):
    with pytest.raises(ConfigError):
        make()


def test_output_shape():
    assert BatchNorm2d(3).output_shape((3, 5, 7)) == (3, 5, 7)
    assert BatchNorm1d(3).output_shape((3,)) == (3,)
    assert BatchNorm1d(3).output_shape((3, 8)) == (3, 8)
    assert LocalResponseNorm(5).output_shape((96, 55, 55)) == (96, 55, 55)
    for layer, shape in [(BatchNorm2d(3), (4, 5, 7)), (BatchNorm2d(3), (3, 5)), (BatchNorm1d(3), (3, 4, 5)),
                         (LocalResponseNorm(5), (96,))]:
        with pytest.raises(ShapeError):
            layer.output_shape(shape)


# --- config, state, dtypes, NaN -------------------------------------------------------------------

@pytest.mark.parametrize("layer,text", [
    (BatchNorm2d(64), "BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True)"),
    (BatchNorm1d(10, eps=1e-3, momentum=None, affine=False, dtype="float64"),
     "BatchNorm1d(10, eps=0.001, momentum=None, affine=False, dtype='float64')"),
    (BatchNorm2d(8, bias=False), "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=False)"),
    (LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2), "LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)"),
])
def test_config_round_trip_and_repr(layer, text):
    import json
    assert repr(layer) == text
    cfg = json.loads(json.dumps(layer.get_config()))
    again = get_layer_class(type(layer).__name__).from_config(cfg)
    assert type(again) is type(layer) and again.get_config() == layer.get_config() and repr(again) == text
    assert {k: v.dtype for k, v in again.state_dict().items()} == {k: v.dtype for k, v in layer.state_dict().items()}
    assert repr(layer_from_config(json.loads(json.dumps(layer_to_config(layer))))) == text
    assert "_BatchNorm" not in LAYER_TYPES  # the shared base is not a layer type


def test_state_dict_has_buffers_and_round_trips():
    rng = np.random.default_rng(10)
    layer = make_bn(BatchNorm2d, 3, rng)
    for _ in range(4):
        layer.forward(rng.standard_normal((2, 3, 2, 2)).astype(np.float32), train=True)
    sd = layer.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    assert int(sd["num_batches_tracked"]) == 4
    snapshot = {k: v.copy() for k, v in sd.items()}
    layer.forward(rng.standard_normal((2, 3, 2, 2)).astype(np.float32), train=True)
    for k in snapshot:  # training replaces the buffers, it does not write into an earlier state_dict
        np.testing.assert_array_equal(sd[k], snapshot[k])
    fresh = BatchNorm2d(3)
    fresh.load_state_dict(snapshot)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)
        assert fresh.state_dict()[k].dtype == v.dtype
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    layer.load_state_dict(snapshot)
    np.testing.assert_array_equal(fresh.forward(x), layer.forward(x))
    with pytest.raises(ShapeError):
        fresh.load_state_dict({k: v for k, v in snapshot.items() if k != "num_batches_tracked"})
    with pytest.raises(ShapeError):
        fresh.load_state_dict({**snapshot, "running_var": np.ones(4, np.float32)})
    assert set(BatchNorm1d(3, affine=False).state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}
    assert BatchNorm2d(64).num_params == 128 and BatchNorm2d(64, affine=False).num_params == 0
    assert LocalResponseNorm(5).state_dict() == {}


def test_dtypes():
    layer = BatchNorm2d(2).to("float64")
    assert layer.buffers["num_batches_tracked"].dtype == np.int64
    assert layer.get_config()["dtype"] == "float64" and layer.buffers["running_var"].dtype == np.float64
    layer = BatchNorm2d(2)
    x = np.random.default_rng(11).standard_normal((3, 2, 2, 2))
    out = layer.forward(x, train=True)  # a float64 input into a float32 layer
    assert out.dtype == np.float64 and layer.backward(out).dtype == np.float64
    assert layer.grads["weight"].dtype == np.float32 and layer.buffers["running_mean"].dtype == np.float32
    assert LocalResponseNorm(3).forward(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("train", [True, False])
def test_nan_input_propagates_without_crash(train):
    x = np.random.default_rng(12).standard_normal((3, 3, 2, 2)).astype(np.float32)
    x[1, 1, 0, 0] = np.nan
    bn = BatchNorm2d(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = bn.forward(x, train=train)
        dx = bn.backward(np.ones_like(out))
    if train:  # the NaN poisons its own channel's statistics only
        assert np.isnan(out[:, 1]).all() and np.isfinite(out[:, [0, 2]]).all()
        assert np.isnan(bn.buffers["running_mean"][1]) and np.isfinite(bn.buffers["running_mean"][[0, 2]]).all()
        assert np.isnan(dx[:, 1]).all()
    else:
        assert np.isnan(out[np.isnan(x)]).all() and np.isfinite(out[~np.isnan(x)]).all()
    lrn = LocalResponseNorm(3, alpha=1.0)
    out = lrn.forward(x)
    dx = lrn.backward(np.ones_like(out))
    assert np.isnan(out[1, :, 0, 0]).all() and np.isfinite(out[0]).all() and np.isfinite(out[1, :, 1]).all()
    assert np.isnan(dx[1, 1, 0, 0]) and np.isfinite(dx[0]).all()
    inf = np.full((2, 2, 1, 1), np.inf, np.float32)
    with np.errstate(all="ignore"):
        assert np.isnan(BatchNorm2d(2).forward(inf, train=True)).all()
