"""The fast paths: thread setting, worker pool, batch-sharded Sequentials, channels-last and compiled kernels.

Every path is checked against PyTorch (float32 and float64) and against the plain serial NumPy
path: 1 and 2 threads, shard counts that do not divide the batch, batch sizes 1 and odd ones,
channels-last and NCHW memory, numba kernels and the NumPy fallback. No timing is asserted.
"""

import threading

import numpy as np
import pytest

from convnp import threads
from convnp.nets import engine
from convnp.app.bench import to_torch
from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.activation import ReLU, Tanh
from convnp.layers.conv import Conv2d
from convnp.layers.dropout import Dropout
from convnp.layers.linear import Flatten, Linear
from convnp.layers.norm import BatchNorm1d, BatchNorm2d
from convnp.layers.pool import AvgPool2d, MaxPool2d
from convnp.nets.sequential import Sequential
from convnp.ops import activation as act_ops
from convnp.ops import kernels, warmup
from convnp.ops import pool as pool_ops
from tests.gradcheck import check_layer_gradients, rel_error

KERNELS = ["numpy"] + (["numba"] if kernels.available() else [])


def _torch():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


def channels_last(a):
    """The same values as NCHW ``a``, held in NHWC memory (what convnp's Conv2d returns)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.fixture(params=KERNELS)
def kernel_mode(request):
    with kernels.use(request.param):
        yield request.param


@pytest.fixture
def sharding(monkeypatch):
    """Shard every batch, however small (the production thresholds skip tiny ones)."""
    monkeypatch.setattr(engine, "MIN_SHARD_ELEMENTS", 1)
    return monkeypatch


# --- the thread setting -------------------------------------------------------------------------------
def test_set_and_get_num_threads():
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        assert threads.get_num_threads() == 1
        with threads.num_threads(2):
            assert threads.get_num_threads() == 2
        assert threads.get_num_threads() == 1
    finally:
        threads.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects(bad):
    with pytest.raises(ConfigError, match="positive int"):
        threads.set_num_threads(bad)


def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setitem(threads._settings, "n", None)
    monkeypatch.setenv(threads.ENV_VAR, "1")
    assert threads.get_num_threads() == 1
    monkeypatch.setitem(threads._settings, "n", None)
    monkeypatch.setenv(threads.ENV_VAR, "zero")
    with pytest.raises(ConfigError, match="CONVNP_NUM_THREADS"):
        threads.get_num_threads()
    monkeypatch.setitem(threads._settings, "n", None)
    monkeypatch.delenv(threads.ENV_VAR)
    assert threads.get_num_threads() == threads.available_cores()


def test_blas_threads_restores():
    ctl = threads._blas_controller()
    before = ctl.get()
    with threads.blas_threads(1):
        assert all(n == 1 for n in ctl.get())
    assert ctl.get() == before


@pytest.mark.parametrize("size", [1, 2, 3])
def test_pool_map_order_errors_and_nesting(size):
    pool = threads.WorkerPool(size)
    try:
        seen = set()

        def square(i, worker):
            seen.add(worker)
            assert threads.in_parallel_region()
            inner = threads.parallel_map(lambda j, w: (j, w), 3)  # nested: runs on this thread
            assert [j for j, _ in inner] == [0, 1, 2] and {w for _, w in inner} == {0}
            return i * i

        assert pool.map(square, 17) == [i * i for i in range(17)]
        assert seen <= set(range(size))
        assert not threads.in_parallel_region()

        def fail(i, worker):
            if i in (5, 9):
                raise ValueError(f"item {i}")
            return i

        with pytest.raises(ValueError, match="item 5"):
            pool.map(fail, 12)
        assert pool.map(lambda i, w: i, 0) == []
    finally:
        pool.close()


def test_parallel_map_uses_the_setting():
    with threads.num_threads(2):
        names = threads.parallel_map(lambda i, w: threading.current_thread().name, 8)
    assert len(names) == 8
    with threads.num_threads(1):
        assert set(threads.parallel_map(lambda i, w: w, 5)) == {0}


# --- batch-sharded Sequentials --------------------------------------------------------------------------
def small_convnet(rng=0, dtype="float32", bn=False, dropout=0.0):
    gen = np.random.default_rng(rng)
    layers = [Conv2d(3, 4, 3, padding=1, rng=gen, dtype=dtype)]
    if bn:
        layers.append(BatchNorm2d(4, dtype=dtype))
    layers += [ReLU(), MaxPool2d(2), Conv2d(4, 6, 3, stride=2, padding=1, rounding="floor", rng=gen, dtype=dtype), Tanh(),
               Sequential(Flatten(), Linear(6 * 2 * 2, 5, rng=gen, dtype=dtype))]
    if dropout:
        layers.append(Dropout(dropout, rng=gen))
    layers.append(Linear(5, 3, rng=gen, dtype=dtype))
    net = Sequential(layers)
    if bn:  # non-trivial statistics and affine parameters
        b = net[1]
        b.buffers["running_mean"][:] = gen.standard_normal(4)
        b.buffers["running_var"][:] = gen.uniform(0.5, 2, 4)
        b.params["weight"][:] = gen.uniform(0.5, 2, 4)
        b.params["bias"][:] = gen.standard_normal(4)
    return net


def run_step(net, x, dout, train):
    out = net.forward(x, train=train)
    net.plan_kinds = None if net._cache is None else [kind for kind, _ in net._cache]
    dx = net.backward(dout)
    return out, dx, {k: v.copy() for k, v in net.named_grads().items()}


def torch_step(net, x, dout, train):
    torch = _torch()
    tnet = to_torch(net).to(torch.float64 if x.dtype == np.float64 else torch.float32)
    tnet.train(train)
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    tout = tnet(tx)
    tout.backward(torch.from_numpy(dout))
    return tout.detach().numpy(), tx.grad.numpy(), {k: p.grad.numpy() for k, p in tnet.named_parameters()}


@pytest.mark.parametrize("batch", [1, 5, 8])
@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("bn,train", [(False, True), (True, False), (True, True)])
def test_sharded_equals_serial_and_torch(batch, shards, bn, train, sharding, kernel_mode):
    sharding.setattr(engine, "SHARDS_PER_THREAD", shards)
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((batch, 3)).astype(np.float32)
    results = {}
    for n in (1, 2):
        net = small_convnet(bn=bn)
        with threads.num_threads(n):
            results[n] = run_step(net, x, dout, train)
        if n == 2 and batch > 1:
            assert "shard" in net.plan_kinds and ("serial" in net.plan_kinds) == (bn and train)
    ref = torch_step(small_convnet(bn=bn), x, dout, train)
    for got in results.values():
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-5)
        assert list(got[2]) == list(ref[2])
        for k in ref[2]:
            np.testing.assert_allclose(got[2][k], ref[2][k], rtol=1e-4, atol=1e-5, err_msg=k)
    for k in results[1][2]:  # 1 and 2 threads differ only in the order of float additions
        np.testing.assert_allclose(results[1][2][k], results[2][2][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_sharded_float64_equals_torch(sharding, kernel_mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, 8, 8))
    dout = rng.standard_normal((7, 3))
    net = small_convnet(dtype="float64")
    with threads.num_threads(2):
        got = run_step(net, x, dout, True)
    ref = torch_step(small_convnet(dtype="float64"), x, dout, True)
    for a, b in zip(got[:2], ref[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for k in ref[2]:
        np.testing.assert_allclose(got[2][k], ref[2][k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_sharded_runs_are_bit_identical(sharding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 3, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((9, 3)).astype(np.float32)
    with threads.num_threads(2):
        first = run_step(small_convnet(), x, dout, True)
        for _ in range(3):
            again = run_step(small_convnet(), x, dout, True)
            np.testing.assert_array_equal(first[0], again[0])
            np.testing.assert_array_equal(first[1], again[1])
            for k in first[2]:
                np.testing.assert_array_equal(first[2][k], again[2][k])


def test_dropout_in_training_runs_serially(sharding):
    net = small_convnet(dropout=0.5)
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    with threads.num_threads(2):
        net.forward(x, train=True)
        assert [k for k, _ in net._cache] == ["shard", "serial", "shard"]
        net.forward(x, train=False)
        assert [k for k, _ in net._cache] == ["shard"]
    assert engine.shardable(Dropout(0.0), train=True)


def test_patched_layers_are_not_sharded():
    relu = ReLU()
    assert engine.shardable(relu, train=True)
    relu.forward = lambda x, train=False: x
    assert not engine.shardable(relu, train=True)
    assert not engine.shardable(Sequential(Linear(2, 2), relu), train=False)


def test_small_batches_and_one_thread_stay_serial():
    net = small_convnet()
    x = np.zeros((2, 3, 8, 8), np.float32)
    with threads.num_threads(2):
        net.forward(x)
        assert net._cache is None  # too little work per shard: the plain loop
    with threads.num_threads(1):
        net.forward(np.zeros((64, 3, 8, 8), np.float32))
        assert net._cache is None


def test_sharded_errors_name_the_whole_batch(sharding):
    net = small_convnet()
    x = np.zeros((6, 2, 8, 8), np.float32)  # two channels, the conv wants three
    with threads.num_threads(2):
        with pytest.raises(ShapeError, match=r"layer '0'.*\(6, 2, 8, 8\)"):
            net.forward(x)
        out = net.forward(np.zeros((6, 3, 8, 8), np.float32), train=True)
        with pytest.raises(ShapeError, match="dout has shape"):
            net.backward(np.zeros((5, 3), np.float32))
        net.forward(np.zeros((6, 3, 8, 8), np.float32), train=True)
        net.backward(np.ones_like(out))
        with pytest.raises(StateError):
            net.backward(np.ones_like(out))


def test_sharded_leaves_no_stale_caches(sharding):
    net = small_convnet()
    with threads.num_threads(1):
        net.forward(np.zeros((4, 3, 8, 8), np.float32), train=True)
    assert net[0]._cache is not None
    with threads.num_threads(2):
        net.forward(np.zeros((4, 3, 8, 8), np.float32), train=True)
    assert all(layer._cache is None for _, layer in net.named_modules()[1:])


def test_zoo_net_sharded_equals_torch(sharding, kernel_mode):
    from convnp.models import get_model

    net = get_model("lenet5", rng=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((5, 10)).astype(np.float32)
    with threads.num_threads(2):
        got = run_step(net, x, dout, True)
    ref = torch_step(net, x, dout, True)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-5)
    for k in ref[2]:
        np.testing.assert_allclose(got[2][k], ref[2][k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("lead", ["conv", "relu_pool", "flatten"])
def test_backward_without_input_grad(n, lead, sharding):
    """input_grad=False: the same parameter gradients, no dx, layers before the first parameter skipped."""
    def build():
        gen = np.random.default_rng(0)
        head = {"conv": [Conv2d(3, 4, 3, padding=1, rng=gen)], "relu_pool": [ReLU(), MaxPool2d(2)],
                "flatten": []}[lead]
        width = 4 * 8 * 8 if lead == "conv" else 3 * 4 * 4 if lead == "relu_pool" else 3 * 8 * 8
        return Sequential(head + [Sequential(Flatten(), Linear(width, 5, rng=gen)), ReLU(),
                                  Linear(5, 3, rng=gen)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((6, 3)).astype(np.float32)
    with threads.num_threads(n):
        full = build()
        full.forward(x, train=True)
        full.backward(dout)
        part = build()
        part.forward(x, train=True)
        assert part.backward(dout, input_grad=False) is None
    for k, g in full.named_grads().items():
        np.testing.assert_allclose(part.named_grads()[k], g, rtol=1e-6, atol=1e-7, err_msg=k)
    assert all(layer._cache is None for _, layer in part.named_modules()[1:])
    with pytest.raises(StateError):
        part.backward(dout)
    free = Sequential(ReLU(), Flatten())
    free.forward(x)
    assert free.backward(np.ones((6, 192), np.float32), input_grad=False) is None


class FusingLinear(Linear):
    """A Linear that applies the following ReLU itself (the protocol Conv2d follows)."""

    calls = 0

    def forward_relu(self, x, train=False):
        out = self.forward(x, train)
        FusingLinear.calls += 1
        if out.shape[0] == 3:  # "cannot fuse this time"
            return out, None
        mask = ~(out <= 0)
        return out * mask, mask


@pytest.mark.parametrize("batch", [3, 4])
def test_fused_relu_protocol(batch):
    gen = np.random.default_rng(0)
    fused = Sequential(FusingLinear(5, 4, rng=0), ReLU(), Linear(4, 2, rng=1))
    plain = Sequential(Linear(5, 4, rng=0), ReLU(), Linear(4, 2, rng=1))
    x = gen.standard_normal((batch, 5)).astype(np.float32)
    dout = gen.standard_normal((batch, 2)).astype(np.float32)
    before = FusingLinear.calls
    got, want = run_step(fused, x, dout, True), run_step(plain, x, dout, True)
    assert FusingLinear.calls == before + 1
    for a, b in zip(got[:2], want[:2]):
        np.testing.assert_array_equal(a, b)
    for k in want[2]:
        np.testing.assert_array_equal(got[2][k], want[2][k])
    patched = Sequential(FusingLinear(5, 4, rng=0), ReLU())
    patched[1].forward = lambda x, train=False: x  # a patched ReLU must run itself
    assert np.array_equal(patched.forward(-np.ones((4, 5), np.float32)), patched[0].forward(-np.ones((4, 5), np.float32)))


# --- max pooling: channels-last memory and the compiled kernel --------------------------------------------
POOLS = [  # kernel, stride, padding, dilation, rounding
    (2, 2, 0, 1, "floor"), (3, 2, 1, 1, "floor"), (3, 1, 1, 1, "floor"), ((2, 2), (2, 2), 0, 1, "floor"), ((2, 3), (1, 2), 0, 1, "floor"),
    (3, 2, 0, 1, "ceil"), (2, 2, 1, 2, "floor"), (3, 3, 1, 1, "ceil"),
]


def torch_pool(x, dout, k, s, p, d, rounding):
    torch = _torch()
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    out = torch.nn.functional.max_pool2d(tx, k, s, p, d, ceil_mode=rounding == "ceil")
    out.backward(torch.from_numpy(np.ascontiguousarray(dout)))
    return out.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("geometry", POOLS)
@pytest.mark.parametrize("hw", [(9, 8), (8, 6)])  # a 2x2/2 pool tiles 8x6 and drops a row of 9x8
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_paths_equal_torch(geometry, hw, layout, dtype, kernel_mode):
    k, s, p, d, rounding = geometry
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, *hw)).astype(dtype)
    x[0, 1, :3, :3] = 0.5  # ties: the first maximum takes the switch, as in PyTorch
    if layout == "channels_last":
        x = channels_last(x)
    layer = MaxPool2d(k, s, p, d, rounding=rounding)
    out = layer.forward(x)
    assert pool_ops.channels_last(out) == (layout == "channels_last")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout if layout == "nchw" else channels_last(dout))
    ref_out, ref_dx = torch_pool(x, dout, k, s, p, d, rounding)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-6, atol=1e-6)
    # dout in the other layout than forward's output gives the same dx
    other = np.ascontiguousarray(dout) if layout == "channels_last" else channels_last(dout)
    layer.forward(x)
    np.testing.assert_allclose(layer.backward(other), ref_dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_maxpool_nan_takes_the_switch(layout, kernel_mode):
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    x[1, 2, 1, 0] = np.nan
    x[1, 2, 0, 1] = np.nan
    x[0, 1, 2, 2] = -np.inf
    if layout == "channels_last":
        x = channels_last(x)
    layer = MaxPool2d(2)
    out = layer.forward(x)
    assert np.isnan(out[1, 2, 0, 0]) and np.isnan(out).sum() == 1
    assert out[0, 1, 1, 1] == x[0, 1, 3, 3]  # -inf never wins over a number
    dx = layer.backward(np.ones(out.shape, np.float32))
    assert dx[1, 2, 0, 1] == 1 and dx[1, 2, :2, :2].sum() == 1  # the first NaN in tap order


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_maxpool_window_of_padding_only(layout, kernel_mode):
    """Taps at columns -1 and +1 of a 1-wide input: only padding, so -inf and no gradient."""
    x = np.full((1, 2, 1, 1), -0.5, np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    layer = MaxPool2d((1, 2), stride=1, padding=(0, 1), dilation=(1, 2))
    out = layer.forward(x)
    assert out.shape == (1, 2, 1, 1) and np.all(out == -np.inf)
    assert np.all(layer.backward(np.ones(out.shape, np.float32)) == 0)


def test_maxpool_channels_last_gradcheck(kernel_mode):
    x = channels_last(np.random.default_rng(0).standard_normal((2, 3, 6, 6)))
    check_layer_gradients(MaxPool2d(3, 2, 1, rounding="floor"), x)
    check_layer_gradients(MaxPool2d(2, 1, dilation=2, rounding="floor"), x)


def test_avgpool_keeps_working_on_channels_last():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    a, b = AvgPool2d(2), AvgPool2d(2)
    np.testing.assert_allclose(a.forward(channels_last(x)), b.forward(x), rtol=1e-6)


# --- BatchNorm: compiled passes over the (M, C) matrix ------------------------------------------------------
@pytest.mark.parametrize("shape, layout", [((6, 5, 7, 3), "channels_last"), ((6, 5, 7, 3), "nchw"),
                                           ((9, 4), "nchw"), ((2, 3, 1, 1), "channels_last")])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_batchnorm_paths_equal_torch(shape, layout, train, affine, dtype, n_threads, monkeypatch, kernel_mode):
    """Both BN paths (numba on channels-last or (N, C) memory, NumPy otherwise), rows split over threads."""
    torch = _torch()
    import convnp.ops.norm as norm_ops

    monkeypatch.setattr(norm_ops, "PARALLEL_BN_SIZE", 1)  # split even these small inputs
    calls = []
    for name in ("_batchnorm_forward_compiled", "_batchnorm_backward_compiled"):
        original = getattr(norm_ops, name)
        monkeypatch.setattr(norm_ops, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    rng = np.random.default_rng(len(shape))
    x = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    if layout == "channels_last":
        x, dout = channels_last(x), channels_last(dout)
    cls, tcls = (BatchNorm2d, torch.nn.BatchNorm2d) if len(shape) == 4 else (BatchNorm1d, torch.nn.BatchNorm1d)
    layer = cls(shape[1], affine=affine, dtype=dtype)
    tlayer = tcls(shape[1], affine=affine).to(torch.float64 if dtype == "float64" else torch.float32)
    if affine:
        layer.params["weight"][:] = rng.standard_normal(shape[1])
        layer.params["bias"][:] = rng.standard_normal(shape[1])
        with torch.no_grad():
            tlayer.weight.copy_(torch.from_numpy(layer.params["weight"]))
            tlayer.bias.copy_(torch.from_numpy(layer.params["bias"]))
    if not train:
        layer.buffers["running_mean"][:] = tlayer.running_mean.numpy()[:] = rng.standard_normal(shape[1])
        layer.buffers["running_var"][:] = tlayer.running_var.numpy()[:] = rng.random(shape[1]) + 0.5
    tlayer.train(train)
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    tout = tlayer(tx)
    tout.backward(torch.from_numpy(np.ascontiguousarray(dout)))
    with threads.num_threads(n_threads):
        out = layer.forward(x, train=train)
        dx = layer.backward(dout)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.buffers["running_mean"], tlayer.running_mean.numpy(), **tol)
    np.testing.assert_allclose(layer.buffers["running_var"], tlayer.running_var.numpy(), **tol)
    if affine:
        np.testing.assert_allclose(layer.grads["weight"], tlayer.weight.grad.numpy(), **tol)
        np.testing.assert_allclose(layer.grads["bias"], tlayer.bias.grad.numpy(), **tol)
    assert out.dtype == dx.dtype == np.dtype(dtype)
    compiled = kernel_mode == "numba" and (layout == "channels_last" or len(shape) == 2)
    assert len(calls) == (2 if compiled else 0), calls
    if layout == "channels_last":  # the layout carries through
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous and dx.transpose(0, 2, 3, 1).flags.c_contiguous


# --- ReLU: one-pass kernel and layouts ----------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dout_layout", ["nchw", "channels_last"])
def test_relu_paths_equal_torch(layout, dout_layout, kernel_mode):
    torch = _torch()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    base[0, 0, 0, :3] = [0.0, np.nan, -0.0]
    x = {"nchw": base, "channels_last": channels_last(base),
         "strided": np.repeat(base, 2, axis=3)[..., ::2]}[layout]  # neither layout: the NumPy path
    dout = rng.standard_normal(x.shape).astype(np.float32)
    layer = ReLU()
    out = layer.forward(x)
    dx = layer.backward(dout if dout_layout == "nchw" else channels_last(dout))
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    tout = torch.relu(tx)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(out, tout.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_relu_kernel_on_1d_and_float64(kernel_mode):
    x = np.array([-1.0, 0.0, 2.0, np.nan, np.inf, -np.inf])
    out, mask = act_ops.relu_forward(x)
    np.testing.assert_array_equal(out, [0.0, 0.0, 2.0, np.nan, np.inf, 0.0])
    np.testing.assert_array_equal(mask, [False, False, True, True, True, False])
    np.testing.assert_array_equal(act_ops.relu_backward(np.ones(6), mask), mask.astype(float))


# --- Winograd F(2x2, 3x3) -----------------------------------------------------------------------------------
needs_numba = pytest.mark.skipif(not kernels.available(), reason="the Winograd kernels need numba (the fast extra)")


@needs_numba
@pytest.mark.parametrize("shape,padding", [((2, 16, 8, 8), 1), ((3, 17, 7, 9), 1), ((2, 16, 6, 5), 0),
                                           ((2, 16, 5, 6), 2), ((1, 20, 3, 3), 1), ((5, 16, 4, 4), (0, 2))])
@pytest.mark.parametrize("tiles", [1, 7, 256])  # chunks of one tile, of a few tiles across images, of whole images
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_winograd_equals_torch(shape, padding, tiles, dtype, n_threads, monkeypatch):
    from convnp.ops import kernels_winograd as wino

    torch = _torch()
    monkeypatch.setattr(wino, "TILES", tiles)
    monkeypatch.setattr(wino, "MIN_SPLIT_WORK", 1)  # split even these small batches over the threads
    monkeypatch.setattr(threads, "_settings", {"n": n_threads, "explicit": True})
    n, c, h, w = shape
    k = 18
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    wt = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(wt).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    tout = torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
    dout = rng.standard_normal(tuple(tout.shape)).astype(dtype)
    tout.backward(torch.from_numpy(dout))
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    out_hw = tuple(tout.shape[2:])
    out, mask = wino.conv3x3_forward(xh, wt, b, pad, out_hw)
    assert mask is None
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), tout.detach().numpy(), **tol)
    relu, mask = wino.conv3x3_forward(xh, wt, b, pad, out_hw, relu=True)
    ref = tout.detach().numpy()
    np.testing.assert_allclose(relu.transpose(0, 3, 1, 2), np.maximum(ref, 0), **tol)
    assert mask.dtype == bool and (mask.transpose(0, 3, 1, 2) == (relu.transpose(0, 3, 1, 2) > 0)).all()
    dh = np.ascontiguousarray(dout.transpose(0, 2, 3, 1))
    dx, dw, db = wino.conv3x3_backward(dh, xh, wt, pad, out_hw, has_bias=True)
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), **tol)
    np.testing.assert_allclose(db, tb.grad.numpy(), **tol)
    none, dw2, db2 = wino.conv3x3_backward(dh, xh, wt, pad, out_hw, has_bias=False, input_grad=False)
    assert none is None and db2 is None
    np.testing.assert_allclose(dw2, dw, **tol)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_layer_fast_paths_equal_torch(padding, layout, dtype, kernel_mode):
    """Conv2d -> ReLU in a Sequential (fused), 3x3 with 16+ channels (Winograd with numba), vs PyTorch."""
    torch = _torch()
    rng = np.random.default_rng(padding)
    x = rng.standard_normal((3, 16, 7, 6)).astype(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    net = Sequential(Conv2d(16, 17, 3, padding=padding, rng=0, dtype=dtype), ReLU())
    net[0].params["bias"][:] = rng.standard_normal(17)
    tnet = to_torch(net)
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    tout = tnet(tx)
    dout = rng.standard_normal(tuple(tout.shape)).astype(dtype)
    tout.backward(torch.from_numpy(dout))
    out = net.forward(x, train=True)
    assert net[1]._cache is not None  # the ReLU got its mask from the fused forward
    dx = net.backward(dout)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    for k, p in tnet.named_parameters():
        np.testing.assert_allclose(net.named_grads()[k], p.grad.numpy(), err_msg=k, **tol)
    # the op with an explicit dx_method differentiates a Winograd forward by im2col
    from convnp.ops.conv import conv2d_backward, conv2d_forward

    conv = net[0]
    _, cache = conv2d_forward(x, conv.params["weight"], conv.params["bias"], 1, padding)
    assert (cache[-1] is not None) == (kernel_mode == "numba")  # Winograd ran exactly when compiled
    d_conv = tnet[0](torch.from_numpy(np.ascontiguousarray(x)))
    for method in ("auto", "flip", "col2im"):
        gdx, gdw, gdb = conv2d_backward(np.ones(tuple(d_conv.shape), dtype), cache, dx_method=method)
        tx2 = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
        tnet[0].zero_grad()
        tnet[0](tx2).sum().backward()
        np.testing.assert_allclose(gdx, tx2.grad.numpy(), **tol)
        np.testing.assert_allclose(gdw, tnet[0].weight.grad.numpy(), **tol)
        np.testing.assert_allclose(gdb, tnet[0].bias.grad.numpy(), **tol)


@pytest.mark.parametrize("c", [1, 3, 6])
@pytest.mark.parametrize("geometry", [  # kernel, stride, padding, dilation, rounding
    (3, 1, 1, 1, "exact"), (5, 2, 2, 1, "floor"), ((3, 2), (2, 1), (0, 1), (1, 2), "floor"), (3, 2, 1, 1, "ceil")])
@pytest.mark.parametrize("chunk", [1, 3000, 1 << 20])  # chunks of one image, of a few, of the whole batch
@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv_small_channel_planes_path(c, geometry, chunk, n_threads, monkeypatch, kernel_mode):
    """Few input channels: forward and dw from (C, N, H, W) planes, dx by col2im_cnhw; vs PyTorch."""
    import convnp.ops.conv as conv_ops

    torch = _torch()
    k_, s_, p_, d_, rounding = geometry
    monkeypatch.setattr(conv_ops, "PLANE_BYTES", chunk)
    monkeypatch.setattr(conv_ops, "MIN_PARALLEL_BYTES", 1)  # split even this small batch over the threads
    layer = Conv2d(c, 5, k_, stride=s_, padding=p_, dilation=d_, rounding=rounding, rng=0)
    layer.params["bias"][:] = np.arange(5)
    x = np.random.default_rng(c).standard_normal((5, c, 11, 9)).astype(np.float32)
    with threads.num_threads(n_threads):
        out = layer.forward(x, train=True)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
        dx = layer.backward(dout)
        grads = dict(layer.grads)
        layer.forward(channels_last(x), train=True)
        assert layer.backward(dout, input_grad=False) is None
        np.testing.assert_allclose(layer.grads["weight"], grads["weight"], rtol=1e-5, atol=1e-5)
    # reference 1: the channels-last im2col path (oracle-tested in test_conv.py), every geometry
    monkeypatch.setattr(conv_ops, "SMALL_CHANNELS", 0)
    ref_out = layer.forward(x, train=True)
    ref_dx = layer.backward(dout)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    for key in grads:
        np.testing.assert_allclose(grads[key], layer.grads[key], rtol=1e-4, atol=1e-4, err_msg=key)
    if rounding == "ceil":  # PyTorch convolutions have no ceil rounding: reference 1 only
        return
    # reference 2: PyTorch
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(layer.params["weight"].copy()).requires_grad_()
    tb = torch.from_numpy(layer.params["bias"].copy()).requires_grad_()
    tout = torch.nn.functional.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["bias"], tb.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_conv_fused_relu_nan_and_ties(kernel_mode):
    x = np.zeros((2, 16, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    net = Sequential(Conv2d(16, 16, 3, padding=1, rng=0), ReLU())
    out = net.forward(x, train=True)
    assert np.isnan(out[0]).any() and np.all(out[1] == 0)  # NaN spreads; exact zeros stay 0 (the bias is 0)
    dx = net.backward(np.ones(out.shape, np.float32))
    assert np.all(dx[1] == 0)  # no gradient through ReLU at exactly 0


@needs_numba
def test_winograd_filter_transforms_are_adjoint():
    from convnp.ops import kernels_winograd as wino

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3))
    du = rng.standard_normal((16, 3, 5))
    u = wino.filter_transform(w, np.float64)
    # <U(w), du> == <w, U*(du)>
    assert np.isclose(np.sum(u * du), np.sum(w * wino.filter_transform_adjoint(np.ascontiguousarray(du))))
    assert wino.applies((1, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1), np.float32)
    assert not wino.applies((1, 3, 8, 8), (16, 3, 3, 3), (1, 1), (1, 1), np.float32)  # too few channels
    assert not wino.applies((1, 16, 8, 8), (16, 16, 3, 3), (2, 2), (1, 1), np.float32)
    assert not wino.applies((1, 16, 8, 8), (16, 16, 5, 5), (1, 1), (1, 1), np.float32)


@needs_numba
def test_kernels_stay_off_under_tracemalloc_until_warmed(monkeypatch):
    """A memory measurement must not count numba's one-time compiler memory (about 20 MB)."""
    import tracemalloc

    monkeypatch.setitem(kernels._warm, "done", False)
    with kernels.use("auto"):
        assert kernels.enabled()
        tracemalloc.start()
        try:
            assert not kernels.enabled()
        finally:
            tracemalloc.stop()
        warmup.warm()
        tracemalloc.start()
        try:
            assert kernels.enabled()
        finally:
            tracemalloc.stop()


def test_memory_measurement_runs_the_serial_step(monkeypatch):
    """measure_peak models one serial step, so it must run with one thread (no per-worker scratch)."""
    import convnp
    from convnp import memory
    from convnp.nets import sequential
    from convnp.threads import get_num_threads, num_threads

    seen = []
    original = engine.worth_sharding
    monkeypatch.setattr(sequential, "worth_sharding", lambda x: seen.append(get_num_threads()) or original(x))
    x = np.zeros((64, 3, 32, 32), np.float32)
    with num_threads(2):
        assert original(x)
        net = convnp.parse("INPUT[32x32x3] -> CONV3-8 -> RELU -> POOL2 -> FC-10", rng=0)
        memory.measure_peak(net, batch_size=64)
    assert seen and set(seen) == {1}


def test_kernel_switch():
    with pytest.raises(ConfigError):
        kernels.set_kernels("fortran")
    with kernels.use("numpy"):
        assert not kernels.enabled() and kernels.name() == "numpy"
    if kernels.available():
        with kernels.use("numba"):
            assert kernels.enabled()
