"""Sequential: forward/backward, flat named state with PyTorch names, configs, errors."""

import json
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.activation import ReLU, Tanh
from convnp.layers.base import Layer, get_layer_class
from convnp.layers.linear import Flatten, Linear
from convnp.layers.norm import BatchNorm1d
from convnp.nets.sequential import Sequential

from .gradcheck import check_layer_gradients, rel_error
from .torch_twins import check_train_and_eval


class Affine(Layer):
    """y = x * weight + bias along the last axis; a buffer counts forward calls (test helper)."""

    def __init__(self, dim: int, seed: int = 0, dtype="float32"):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.params["weight"] = rng.uniform(0.5, 1.5, dim).astype(dtype)
        self.params["bias"] = rng.standard_normal(dim).astype(dtype)
        self.buffers["calls"] = np.zeros((), dtype=np.int64)

    def forward(self, x, train=False):
        self._check_input(x, x.ndim)
        if x.shape[-1] != self.dim:
            raise ShapeError(f"{self!r}: expected last axis {self.dim}, got shape {x.shape}")
        self.buffers["calls"][...] += 1
        self._cache = (x, x.shape)
        return x * self.params["weight"] + self.params["bias"]

    def backward(self, dout):
        x, shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, shape)
        axes = tuple(range(dout.ndim - 1))
        self.grads = {"weight": (dout * x).sum(axis=axes), "bias": dout.sum(axis=axes)}
        return dout * self.params["weight"]

    def output_shape(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ShapeError(f"{self!r}: expected last axis {self.dim}, got {tuple(input_shape)}")
        return tuple(input_shape)

    def get_config(self):
        return {"dim": self.dim, "dtype": str(self.params["weight"].dtype)}


class TrainSpy(Layer):
    """Identity that records the train flag it was called with (test helper)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, train=False):
        self.seen.append(train)
        self._cache = x.shape
        return x

    def backward(self, dout):
        self._pop_cache(dout)
        return dout


def small_net(seed=0):
    return Sequential(OrderedDict([
        ("features", Sequential(Affine(4, seed), Tanh(), Affine(4, seed + 1))),
        ("flat", Flatten()),
        ("classifier", Sequential(Linear(8, 3, rng=seed), ReLU(), Linear(3, 2, rng=seed + 1))),
    ]))


def test_forward_is_the_composition(rng):
    a, b = Affine(3, 1), Affine(3, 2)
    net = Sequential(a, Tanh(), b)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    expect = np.tanh(x * a.params["weight"] + a.params["bias"]) * b.params["weight"] + b.params["bias"]
    np.testing.assert_allclose(net(x), expect, rtol=1e-6)
    assert net.forward(x).dtype == np.float32


@pytest.mark.parametrize("build", [
    lambda: Sequential(Affine(3, 1), Tanh(), Affine(3, 2)),
    lambda: small_net(3),
    lambda: Sequential([("a", Affine(4, 5)), ("inner", Sequential(Sequential(Tanh(), Affine(4, 6))))]),
])
def test_gradients_match_numerical_float64(build, rng):
    net = build()
    shape = (2, 2, 4) if len(net) == 3 and isinstance(net[0], Sequential) else (3, 4 if len(net) == 2 else 3)
    errors = check_layer_gradients(net, rng.standard_normal(shape))
    assert set(errors) == {"x", *net.named_parameters()}


def test_gradients_are_overwritten_not_accumulated(rng):
    net = Sequential(Affine(3, 1), Tanh(), Affine(3, 2))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    dout = rng.standard_normal((4, 3)).astype(np.float32)
    net(x)
    net.backward(dout)
    first = {k: v.copy() for k, v in net.grads.items()}
    net(x)
    net.backward(dout)
    for k, v in net.grads.items():
        np.testing.assert_array_equal(v, first[k])


def test_train_flag_reaches_every_layer(rng):
    spies = [TrainSpy(), TrainSpy()]
    net = Sequential(spies[0], Sequential(spies[1]))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    net(x, train=True)
    net.forward(x)
    assert spies[0].seen == spies[1].seen == [True, False]


def test_state_dict_names_follow_pytorch():
    net = small_net()
    assert list(net.state_dict()) == [
        "features.0.weight", "features.0.bias", "features.0.calls", "features.2.weight", "features.2.bias",
        "features.2.calls", "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"]
    assert list(net.named_buffers()) == ["features.0.calls", "features.2.calls"]
    assert "features.0.calls" not in net.named_parameters()
    assert net.num_params == 4 * 4 + 8 * 3 + 3 + 3 * 2 + 2
    assert net.parameters()[0] is net["features"][0].params["weight"]


def test_state_dict_names_and_values_equal_torch(rng):
    torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
    net = Sequential(OrderedDict([("fc1", Linear(5, 4, rng=0)), ("bn", BatchNorm1d(4)), ("act", ReLU()),
                                  ("head", Sequential(Linear(4, 3, rng=1)))]))
    tnet = torch.nn.Sequential(OrderedDict([
        ("fc1", torch.nn.Linear(5, 4)), ("bn", torch.nn.BatchNorm1d(4)), ("act", torch.nn.ReLU()),
        ("head", torch.nn.Sequential(torch.nn.Linear(4, 3)))]))
    assert list(net.state_dict()) == list(tnet.state_dict())
    tnet.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()})
    x = rng.standard_normal((6, 5)).astype(np.float32)
    dout = rng.standard_normal((6, 3)).astype(np.float32)
    # train first: the eval pass then uses the running stats both updated
    check_train_and_eval(torch, net, tnet, x, lambda shape: dout, trains=(True, False), rtol=1e-4, atol=1e-5,
                         state_rtol=1e-5, state_atol=1e-6)


def test_named_parameters_are_the_layers_arrays(rng):
    net = small_net()
    x = rng.standard_normal((2, 2, 4)).astype(np.float32)
    before = net(x)
    for p in net.named_parameters().values():
        p *= 0  # an optimizer's in-place update
    assert np.all(net(x) == 0)
    assert not np.allclose(before, 0)


def test_named_grads_before_backward_is_a_state_error():
    with pytest.raises(StateError, match="call forward and backward first"):
        small_net().named_grads()


def test_backward_before_forward_is_a_state_error():
    with pytest.raises(StateError):
        Sequential(Affine(3)).backward(np.ones((1, 3), np.float32))


def test_load_state_dict_round_trip_in_place(rng):
    src, dst = small_net(0), small_net(7)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    src(x)
    weight = dst["classifier"][0].params["weight"]
    assert dst.load_state_dict(src.state_dict()) == ([], [])
    assert dst["classifier"][0].params["weight"] is weight  # copied in place: optimizer references stay valid
    np.testing.assert_array_equal(dst(x), src(x))
    assert dst.state_dict()["features.0.calls"] == 2  # buffers load too (1 from src, then this forward)


def test_load_state_dict_lists_every_problem_and_writes_nothing():
    net = small_net()
    good = {k: v.copy() for k, v in net.state_dict().items()}
    bad = {k: np.zeros_like(v) for k, v in good.items()}
    del bad["features.0.bias"]
    bad["features.9.weight"] = np.zeros(3)
    bad["classifier.0.weight"] = np.zeros((3, 9))
    with pytest.raises(ConfigError) as info:
        net.load_state_dict(bad)
    msg = str(info.value)
    assert "1 missing key(s): 'features.0.bias'" in msg
    assert "1 unexpected key(s): 'features.9.weight'" in msg
    assert "'classifier.0.weight' is (3, 9) in the state, (3, 8) in the net" in msg
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, good[k])
    # only a shape problem: ShapeError
    only_shape = {k: v for k, v in good.items()}
    only_shape["classifier.2.bias"] = np.zeros(5)
    with pytest.raises(ShapeError, match=r"'classifier.2.bias' is \(5,\) in the state, \(2,\) in the net"):
        net.load_state_dict(only_shape)
    # strict=False skips and reports missing/unexpected keys
    partial = {"classifier.2.bias": np.full(2, 3.0), "extra": np.zeros(1)}
    missing, unexpected = net.load_state_dict(partial, strict=False)
    assert unexpected == ["extra"] and "features.0.weight" in missing
    np.testing.assert_array_equal(net["classifier"][2].params["bias"], [3.0, 3.0])


def test_config_round_trip_through_json(rng):
    net = Sequential(OrderedDict([("body", Sequential(Linear(6, 4, rng=0), ReLU())), ("head", Linear(4, 2, rng=1))]),
                     input_shape=(6,), loss="svm")
    cfg = json.loads(json.dumps(net.get_config()))
    assert cfg["layers"][0] == {"name": "body", "type": "Sequential",
                                "config": {"layers": [
                                    {"name": "0", "type": "Linear", "config": {
                                        "in_features": 6, "out_features": 4, "bias": True, "dtype": "float32"}},
                                    {"name": "1", "type": "ReLU", "config": {}}]}}
    copy = Sequential.from_config(cfg)
    assert copy.get_config() == net.get_config()
    assert repr(copy) == repr(net)
    assert copy.input_shape == (6,) and copy.loss == "svm"
    copy.load_state_dict(net.state_dict())
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(copy(x), net(x))
    # the generic registry path rebuilds it too
    assert get_layer_class("Sequential").from_config(cfg).get_config() == net.get_config()


@pytest.mark.parametrize("cfg, match", [
    ({"layers": [{"type": "NoSuchLayer", "config": {}}]}, "unknown layer type 'NoSuchLayer'"),
    ({"layers": [{"type": "Linear", "config": {"in_features": 2}}]}, "cannot build Linear"),
    ({"layers": [{"config": {}}]}, "expected a dict with 'type'"),
    ({"layers": [], "extra": 1}, "unknown keys"),
    ({"nodes": []}, "expected a dict with a 'layers' list"),
])
def test_from_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        Sequential.from_config(cfg)


def test_output_shape_chains_and_names_the_failing_layer():
    net = Sequential(OrderedDict([("flat", Flatten()), ("mlp", Sequential(Linear(12, 5), ReLU(), Linear(5, 2)))]))
    assert net.output_shape((3, 2, 2)) == (2,)
    with pytest.raises(ShapeError) as info:
        net.output_shape((3, 2, 3))
    assert "layer 'mlp.0': Linear(in_features=12" in str(info.value) and "got 18" in str(info.value)
    assert info.value.layer_path == "mlp.0"
    fixed = Sequential(Flatten(), Linear(12, 5), ReLU(), Linear(5, 2), input_shape=(3, 2, 2))
    assert fixed.output_shape() == (2,)
    assert [s for _, _, s in fixed.shapes()] == [(12,), (5,), (5,), (2,)]
    with pytest.raises(ConfigError, match="pass input_shape"):
        Sequential(ReLU()).output_shape()


def test_forward_shape_error_names_the_layer(rng):
    net = Sequential(OrderedDict([("a", Affine(3)), ("b", Sequential(Affine(4)))]))
    with pytest.raises(ShapeError, match=r"layer 'b\.0': Affine\(dim=4"):
        net(rng.standard_normal((2, 3)).astype(np.float32))


def test_list_like_access():
    a, b, c = Affine(2), Tanh(), Affine(2, 1)
    net = Sequential([a, b, c], input_shape=(2,))
    assert len(net) == 3 and list(net) == [a, b, c]
    assert net[0] is a and net[-1] is c and net["1"] is b
    head = net[:2]
    assert isinstance(head, Sequential) and list(head) == [a, b] and head.input_shape == (2,)
    tail = net[1:]
    assert [n for n, _ in tail.named_children()] == ["1", "2"]  # PyTorch keeps the names
    assert tail.input_shape is None
    assert net[5:] .named_children() == []
    with pytest.raises(IndexError):
        net[3]
    with pytest.raises(KeyError, match="no child 'x'"):
        net["x"]
    with pytest.raises(TypeError):
        net[1.0]
    tail.append(Tanh())
    assert [n for n, _ in tail.named_children()] == ["1", "2", "3"]
    named = Sequential([("conv", a), ("act", b)])
    assert named.conv is a and named.act is b
    named.append(Tanh(), name="out")
    assert list(dict(named.named_children())) == ["conv", "act", "out"]
    with pytest.raises(AttributeError, match="no attribute or child 'nope'"):
        named.nope


@pytest.mark.parametrize("args, match", [
    (([("a", Tanh()), ("a", Tanh())],), "duplicate child name 'a'"),
    (([("a.b", Tanh())],), "may not contain '.'"),
    (([("", Tanh())],), "non-empty string"),
    (([("forward", Tanh())],), "clashes with an attribute"),
    (([("loss", Tanh())],), "clashes with an attribute"),
    (([Tanh(), 3],), "must be a convnp Layer, got int"),
    (([("a", Tanh()), Tanh()],), "not a mix"),
])
def test_construction_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        Sequential(*args)


def test_one_layer_object_cannot_sit_twice():
    shared = Affine(2)
    with pytest.raises(ConfigError, match="appears at '0' and '1'"):
        Sequential(shared, shared)
    with pytest.raises(ConfigError, match="appears at '0' and '1.0'"):
        Sequential(shared, Sequential(shared))


@pytest.mark.parametrize("kw, match", [
    ({"input_shape": (3, 0, 2)}, "input_shape"), ({"input_shape": "3x2"}, "input_shape"),
    ({"loss": "hinge"}, "loss must be"),
])
def test_metadata_is_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        Sequential(Tanh(), **kw)


def test_to_casts_every_layer(rng):
    net = small_net()
    x = rng.standard_normal((2, 2, 4))
    assert net.to(np.float64) is net
    assert {v.dtype for v in net.named_parameters().values()} == {np.dtype(np.float64)}
    assert net(x).dtype == np.float64
    with pytest.raises(ConfigError):
        net.to(np.int32)


def test_repr_is_nested_like_pytorch():
    net = Sequential(OrderedDict([("features", Sequential(Tanh(), ReLU())), ("fc", Linear(2, 1))]))
    assert repr(net) == (
        "Sequential(\n"
        "  (features): Sequential(\n"
        "    (0): Tanh()\n"
        "    (1): ReLU()\n"
        "  )\n"
        "  (fc): Linear(in_features=2, out_features=1, bias=True)\n"
        ")")
    assert repr(Sequential()) == "Sequential()"


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 5), min_size=2, max_size=5), batch=st.integers(1, 3), seed=st.integers(0, 99))
def test_mlp_matches_manual_chain(widths, batch, seed):
    """Property: a Sequential of Linear/Tanh equals applying the layers one by one."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [Linear(a, b, rng=seed + i), Tanh()]
    net = Sequential(layers)
    x = rng.standard_normal((batch, widths[0])).astype(np.float32)
    h = x
    for layer in layers:
        h = layer.forward(h)
    dout = rng.standard_normal(h.shape).astype(np.float32)
    g = dout
    for layer in reversed(layers):
        g = layer.backward(g)
    np.testing.assert_array_equal(net(x), h)
    dx = net.backward(dout)
    assert rel_error(dx, g) == 0.0
