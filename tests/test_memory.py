"""convnp.inspect.memory: the peak estimate against tracemalloc; fit_batch_size and parse_bytes (in summary)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, StateError
from convnp.layers.activation import ReLU
from convnp.layers.conv import Conv2d
from convnp.layers.linear import Flatten, Linear
from convnp.layers.pool import GlobalAvgPool2d
from convnp.inspect.memory import estimate_peak, measure_peak
from convnp.inspect.summary import fit_batch_size, parse_bytes
from convnp.nets.graph import Add, Graph
from convnp.nets.sequential import Sequential
from convnp.notation.spec import parse
from convnp.inspect.summary import summary

CS231N_3LAYER = "INPUT[32x32x3] -> CONV7-32 -> RELU -> POOL2 -> FC-100 -> RELU -> FC-10"
CIFAR_SMALL = ("INPUT[32x32x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2 -> FC-256 -> RELU "
               "-> FC-10")
BN_DROPOUT = ("INPUT[32x32x3] -> [CONV3-32/NB -> BN -> RELU]*2 -> POOL2 -> CONV3-64 -> BN -> RELU -> POOL2 -> FC-128 "
              "-> RELU -> DROPOUT -> FC-10")
STRIDED = "INPUT[32x32x3] -> CONV4-16/S2/P1 -> LRELU -> NORM -> AVGPOOL2 -> CONV3-32 -> TANH -> GPOOL -> FC-10"
MLP = "INPUT[3072] -> FC-512 -> RELU -> FC-10"


def residual_net():
    """A small Graph: stem conv, a residual block (two 3x3 convs + identity), global pool, FC."""
    body = [("conv1", Conv2d(16, 16, 3, padding=1, rng=1)), ("relu1", ReLU()),
            ("conv2", Conv2d(16, 16, 3, padding=1, rng=2))]
    nodes = [("stem", Conv2d(3, 16, 3, padding=1, rng=0), "input"), ("stem_relu", ReLU(), "stem")]
    prev = "stem_relu"
    for name, layer in body:
        nodes.append((name, layer, prev))
        prev = name
    nodes += [("add", Add(), [prev, "stem_relu"]), ("relu", ReLU(), "add"), ("pool", GlobalAvgPool2d(), "relu"),
              ("flat", Flatten(), "pool"), ("fc", Linear(16, 10, rng=3), "flat")]
    return Graph(nodes)


# Measured peak / estimate, each case one real training step (the README quotes these ratios).
CASES = [
    ("cs231n_3layer", lambda: parse(CS231N_3LAYER, rng=0), (3, 32, 32), 32, "momentum"),
    ("cifar_small", lambda: parse(CIFAR_SMALL, rng=0), (3, 32, 32), 32, "momentum"),
    ("cifar_small_adam", lambda: parse(CIFAR_SMALL, rng=0), (3, 32, 32), 32, "adam"),
    ("bn_dropout", lambda: parse(BN_DROPOUT, rng=0), (3, 32, 32), 32, "momentum"),
    ("strided_lrn_tanh", lambda: parse(STRIDED, rng=0), (3, 32, 32), 64, "nesterov"),
    ("mlp_adam", lambda: parse(MLP, rng=0), (3072,), 64, "adam"),
    ("residual_graph", residual_net, (3, 16, 16), 32, "momentum"),
]


@pytest.mark.parametrize("name, build, shape, batch, optimizer", CASES, ids=[c[0] for c in CASES])
def test_estimate_within_25_percent_of_measured_peak(name, build, shape, batch, optimizer):
    net = build()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    measured = measure_peak(net, shape, batch_size=batch, optimizer=optimizer)
    est = estimate_peak(net, shape, batch_size=batch, optimizer=optimizer)
    ratio = measured.peak_bytes / est.total
    print(f"{name}: measured {measured.peak_bytes:,} estimated {est.total:,} ratio {ratio:.3f} ({est.where})")
    assert 0.75 <= ratio <= 1.25, (name, measured, est)
    # the estimate's breakdown adds up, and the measurement left the net as it was
    assert est.total == est.persistent + est.activations + est.gradients + est.workspace
    assert measured.peak_bytes == measured.traced_peak + measured.param_bytes
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    # Summary.peak_bytes is the same estimate
    assert summary(net, shape, batch_size=batch, optimizer=optimizer).peak_bytes == est.total


def test_estimate_counts_what_the_notes_leave_out():
    # at batch 1 the im2col workspace of a conv's backward dominates the tiny activations
    net = parse(CS231N_3LAYER, rng=0)
    s = summary(net, batch_size=1)
    est = s.peak
    assert est.persistent >= s.param_bytes + s.param_grad_bytes + s.optimizer_bytes
    assert est.workspace > 0 and est.total > s.total_bytes
    # a large batch: the estimate grows by roughly the stored activations per image
    big = estimate_peak(net, batch_size=256).total
    assert big > estimate_peak(net, batch_size=128).total > est.total


def test_measure_peak_refuses_a_running_tracemalloc():
    net = parse(MLP, rng=0)
    tracemalloc.start()
    try:
        with pytest.raises(StateError, match="tracemalloc"):
            measure_peak(net, batch_size=2)
    finally:
        tracemalloc.stop()


# --- fit_batch_size --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar():
    return parse(CIFAR_SMALL, rng=0)


@pytest.mark.parametrize("budget", ["64MB", "256MiB", "1GB", 10**9 // 3])
@pytest.mark.parametrize("estimate", ["peak", "notes"])
def test_fit_batch_size_fits_and_the_next_does_not(cifar, budget, estimate):
    n = fit_batch_size(cifar, budget_bytes=budget, estimate=estimate)
    limit = parse_bytes(budget)

    def need(b):
        s = summary(cifar, batch_size=b)
        return s.peak_bytes if estimate == "peak" else s.total_bytes

    assert n >= 1 and need(n) <= limit < need(n + 1)


@settings(max_examples=25, deadline=None)
@given(a=st.integers(50_000_000, 2_000_000_000), b=st.integers(50_000_000, 2_000_000_000),
       optimizer=st.sampled_from(["sgd", "momentum", "adam"]))
def test_fit_batch_size_is_monotone_in_the_budget(cifar, a, b, optimizer):
    lo, hi = sorted((a, b))
    assert fit_batch_size(cifar, budget_bytes=lo, optimizer=optimizer) <= fit_batch_size(
        cifar, budget_bytes=hi, optimizer=optimizer)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3000))
def test_estimate_is_monotone_in_the_batch(cifar, n):
    assert estimate_peak(cifar, batch_size=n).total <= estimate_peak(cifar, batch_size=n + 1).total


def test_fit_batch_size_more_optimizer_state_fits_less(cifar):
    sizes = [fit_batch_size(cifar, budget_bytes="200MB", optimizer=o) for o in ("sgd", "momentum", "adam")]
    assert sizes[0] >= sizes[1] >= sizes[2]


def test_fit_batch_size_errors(cifar):
    with pytest.raises(ConfigError, match="even a batch of 1 needs"):
        fit_batch_size(cifar, budget_bytes="1MB")
    with pytest.raises(ConfigError, match="estimate"):
        fit_batch_size(cifar, budget_bytes="1GB", estimate="guess")
    with pytest.raises(ConfigError, match="optimizer"):
        fit_batch_size(cifar, budget_bytes="1GB", optimizer="lbfgs")
    assert fit_batch_size(Sequential(Flatten(), Linear(4, 2, rng=0)), (4,), "1TB", max_batch=1000) == 1000


# --- parse_bytes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("8GB", 8_000_000_000), ("512MiB", 512 * 2**20), ("1.5G", 1_500_000_000), ("100", 100), ("2 kib", 2048),
    ("64mb", 64_000_000), ("1TiB", 2**40), (".5KB", 500), (12345, 12345), (1e6, 1_000_000),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["", "8 parsecs", "GB", "-1GB", 0, -5, True, None, "1e3", "0.0001B"])
def test_parse_bytes_errors(bad):
    with pytest.raises(ConfigError):
        parse_bytes(bad)
