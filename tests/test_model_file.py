"""Saved models: weights + config in one safetensors file, rebuilt without the code that built them.

The format tests use ``_MFSeq``, a minimal container defined only in this test (registered
while this module runs, removed afterwards), around convnp's real layers; the tests at the
end use convnp's real Sequential, including a load in a fresh process that imports only convnp.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import safetensors.numpy as stnp
from convnp.errors import ShapeError
from convnp.io.model_file import load_model, model_info, save_model
from convnp.io.safetensors_file import tensor_digest
from convnp.layers.activation import ReLU
from convnp.layers.base import LAYER_TYPES, Layer, layer_from_config, layer_to_config
from convnp.layers.linear import Flatten, Linear
from convnp.layers.norm import BatchNorm1d
from convnp.layers.pool import MaxPool2d
from convnp.train import checkpoint as ck
from convnp.train.checkpoint import CheckpointError, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def kinds():
    """Test-only layer classes; registered while this module runs, removed afterwards."""

    class _MFSeq(Layer):
        def __init__(self, *layers):
            super().__init__()
            self.layers = list(layers)

        def forward(self, x, train=False):
            for layer in self.layers:
                x = layer.forward(x, train=train)
            return x

        def get_config(self):
            return {"layers": [layer_to_config(layer) for layer in self.layers]}

        @classmethod
        def from_config(cls, cfg):
            return cls(*[layer_from_config(c) for c in cfg["layers"]])

        def state_dict(self):
            return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.state_dict().items()}

        def load_state_dict(self, state):
            own = self.state_dict()
            if set(own) != set(state):
                raise ShapeError(f"{self!r}: missing {sorted(set(own) - set(state))}, "
                                 f"unexpected {sorted(set(state) - set(own))}")
            for i, layer in enumerate(self.layers):
                layer.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})

        def to(self, dtype):
            for layer in self.layers:
                layer.to(dtype)
            return self

        def extra_repr(self):
            return ", ".join(map(repr, self.layers))

    class _MFScale(Layer):
        """y = x * scale; its config does not record the dtype (exercises dtype restoring)."""

        def __init__(self, n):
            super().__init__()
            self.n = n
            self.params["scale"] = np.linspace(0.5, 1.5, n).astype(np.float32)

        def forward(self, x, train=False):
            return x * self.params["scale"]

        def get_config(self):
            return {"n": self.n}

    yield {"Seq": _MFSeq, "Scale": _MFScale}
    LAYER_TYPES.pop("_MFSeq", None)
    LAYER_TYPES.pop("_MFScale", None)


@pytest.fixture
def net(kinds):
    rng = np.random.default_rng(0)
    n = kinds["Seq"](MaxPool2d(2), Flatten(), Linear(12, 5, rng=rng), BatchNorm1d(5), ReLU(), Linear(5, 3, rng=rng))
    n.forward(rng.standard_normal((8, 3, 4, 4)).astype(np.float32), train=True)  # move BN's running stats
    n.forward(rng.standard_normal((8, 3, 4, 4)).astype(np.float32), train=True)
    return n


def _x(dtype=np.float32):
    return np.random.default_rng(1).standard_normal((4, 3, 4, 4)).astype(dtype)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and sa[k].tobytes() == sb[k].tobytes(), k


def test_round_trip_weights_buffers_and_predictions(tmp_path, net):
    path = tmp_path / "model.safetensors"
    extra = {"classes": ["cat", "dog", "ship"], "input_shape": [3, 4, 4], "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3}
    save_model(net, path, extra=extra)
    loaded, got_extra = load_model(path, with_meta=True)
    assert type(loaded) is type(net) and repr(loaded) == repr(net)
    assert got_extra == extra
    _assert_same_state(net, loaded)
    sd = loaded.state_dict()
    assert sd["3.num_batches_tracked"].shape == () and int(sd["3.num_batches_tracked"]) == 2
    assert not np.all(sd["3.running_mean"] == 0)
    np.testing.assert_array_equal(loaded(_x()), net(_x()))
    assert not isinstance(load_model(path), tuple)  # without with_meta: the net alone


def test_float64_net_stays_float64(tmp_path, net, kinds):
    net.to("float64")
    save_model(net, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    _assert_same_state(net, loaded)
    np.testing.assert_array_equal(loaded(_x(np.float64)), net(_x(np.float64)))
    # a layer whose config does not record the dtype still gets its saved float64 weights back
    scale = kinds["Scale"](4).to("float64")
    scale.params["scale"] = scale.params["scale"] + 1e-12  # not representable in float32
    save_model(scale, tmp_path / "s")
    got = load_model(tmp_path / "s")
    assert got.params["scale"].dtype == np.float64
    assert got.params["scale"].tobytes() == scale.params["scale"].tobytes()


def test_single_layer_loads_in_a_fresh_process_with_only_convnp(tmp_path):
    layer = Linear(4, 3, rng=0)
    path = tmp_path / "linear.safetensors"
    save_model(layer, path, extra={"classes": ["a", "b", "c"]})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    script = ("import sys, numpy as np\n"
              "from convnp.io.model_file import load_model\n"
              "net, extra = load_model(sys.argv[1], with_meta=True)\n"
              "x = np.arange(8, dtype=np.float32).reshape(2, 4)\n"
              "sys.stdout.write(repr(net) + '|' + ','.join(extra['classes']) + '|' + net(x).tobytes().hex())\n")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    rep, classes, out = done.stdout.split("|")
    assert rep == repr(layer) and classes == "a,b,c" and out == layer(x).tobytes().hex()


def test_model_info_reads_header_only(tmp_path, net):
    save_model(net, tmp_path / "m", extra={"input_shape": [3, 4, 4]})
    info = model_info(tmp_path / "m")
    assert info["config"] == json.loads(json.dumps(layer_to_config(net)))
    assert info["config"]["type"] == "_MFSeq" and len(info["config"]["config"]["layers"]) == 6
    assert info["extra"] == {"input_shape": [3, 4, 4]} and info["convnp_version"]


def test_overwrite_is_atomic(tmp_path, net, monkeypatch):
    path = tmp_path / "m"
    save_model(net, path)
    other = Linear(2, 2, rng=5)

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError):
        save_model(other, path)
    monkeypatch.undo()
    _assert_same_state(net, load_model(path))
    assert [n for n in os.listdir(tmp_path) if n != "m"] == []


# --- errors -------------------------------------------------------------------------------------
def _expect(path, *needles):
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert os.fspath(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def _rewrite(src, dst, arrays=None, **md_changes):
    """Copy a saved model to ``dst`` with changed arrays and/or header entries (None deletes)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="numpy") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if arrays is not None:  # a consistent file: digests of the new arrays
        tensors = arrays(tensors)
        md["sha256"] = json.dumps({k: tensor_digest(v) for k, v in tensors.items()})
    for k, v in md_changes.items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    stnp.save_file(tensors, str(dst), metadata=md)


def test_missing_and_foreign_files(tmp_path):
    _expect(tmp_path / "nope", "does not exist")
    (tmp_path / "empty").write_bytes(b"")
    _expect(tmp_path / "empty", "is empty")
    stnp.save_file({"w": np.zeros(2)}, str(tmp_path / "hf"))
    _expect(tmp_path / "hf", "without convnp metadata")
    save_checkpoint(tmp_path / "ckpt", {"w": np.zeros(2)}, {"epoch": 1})
    _expect(tmp_path / "ckpt", "training checkpoint", "load_checkpoint")


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "model.pth").write_bytes(pickle.dumps(Payload(), protocol=2))
    _expect(tmp_path / "model.pth", "pickle")
    assert not marker.exists()


def test_missing_or_bad_config(tmp_path, net):
    save_model(net, tmp_path / "m")
    _rewrite(tmp_path / "m", tmp_path / "a", config=None)
    _expect(tmp_path / "a", "no 'config' entry")
    _rewrite(tmp_path / "m", tmp_path / "b", config="{not json")
    _expect(tmp_path / "b", "'config' is not valid JSON")
    _rewrite(tmp_path / "m", tmp_path / "c", config='{"type": "NoSuchLayer", "config": {}}')
    _expect(tmp_path / "c", "cannot rebuild", "NoSuchLayer", "known:")
    _rewrite(tmp_path / "m", tmp_path / "d", config='{"type": "Linear", "config": {"in_features": -1, "out_features": 2}}')
    _expect(tmp_path / "d", "cannot rebuild", "in_features")
    _rewrite(tmp_path / "m", tmp_path / "e", config='{"type": "Linear", "config": {"bogus": 1}}')
    _expect(tmp_path / "e", "cannot rebuild", "bogus")


def test_mismatched_weights(tmp_path, net):
    save_model(net, tmp_path / "m")
    _rewrite(tmp_path / "m", tmp_path / "missing", arrays=lambda t: {k: v for k, v in t.items() if k != "2.bias"})
    _expect(tmp_path / "missing", "weights do not fit", "2.bias")
    _rewrite(tmp_path / "m", tmp_path / "extra", arrays=lambda t: {**t, "9.weight": np.zeros(2, np.float32)})
    _expect(tmp_path / "extra", "weights do not fit", "9.weight")
    _rewrite(tmp_path / "m", tmp_path / "shape", arrays=lambda t: {**t, "5.weight": np.zeros((3, 6), np.float32)})
    _expect(tmp_path / "shape", "weights do not fit", "weight")


def test_layer_from_outside_convnp_is_named(tmp_path, kinds):
    save_model(kinds["Scale"](3), tmp_path / "m")
    cls = LAYER_TYPES.pop("_MFScale")
    try:
        _expect(tmp_path / "m", "_MFScale", f"from module {cls.__module__!r}", "import them before loading")
    finally:
        LAYER_TYPES["_MFScale"] = cls


def test_save_rejects_bad_input(tmp_path, net):
    with pytest.raises(CheckpointError, match="extra"):
        save_model(net, tmp_path / "m", extra={"mean": np.zeros(3)})
    with pytest.raises(CheckpointError, match="extra must be a dict"):
        save_model(net, tmp_path / "m", extra=[1])
    with pytest.raises(CheckpointError, match="expected a convnp Layer"):
        save_model({"w": np.zeros(2)}, tmp_path / "m")
    assert os.listdir(tmp_path) == []


# --- with convnp's real Sequential ------------------------------------------------------------
def _real_net():
    from convnp.layers.dropout import Dropout
    from convnp.layers.norm import BatchNorm2d
    from convnp.nets.sequential import Sequential

    rng = np.random.default_rng(3)
    net = Sequential(BatchNorm2d(3), MaxPool2d(2), Flatten(), Dropout(0.5, rng=rng), Linear(12, 4, rng=rng),
                     input_shape=(3, 4, 4), loss="softmax")
    net.forward(rng.standard_normal((6, 3, 4, 4)).astype(np.float32), train=True)
    return net


def test_real_sequential_loads_in_a_fresh_process(tmp_path):
    net = _real_net()
    path = tmp_path / "seq.safetensors"
    save_model(net, path, extra={"classes": ["a", "b", "c", "d"]})
    _assert_same_state(net, load_model(path))
    x = _x()
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np\n"
              "from convnp.io.model_file import load_model\n"
              "net = load_model(sys.argv[1])\n"
              "x = np.load(sys.argv[2])\n"
              "sys.stdout.write(repr(net) + '|' + net(x).tobytes().hex())\n")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy")], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    rep, out = done.stdout.split("|")
    assert rep == repr(net) and out == net(x).tobytes().hex()


def test_outside_layer_nested_in_sequential_is_named(tmp_path, kinds):
    from convnp.nets.sequential import Sequential

    save_model(Sequential(Flatten(), kinds["Scale"](48)), tmp_path / "m")
    cls = LAYER_TYPES.pop("_MFScale")
    try:
        _expect(tmp_path / "m", "_MFScale", f"from module {cls.__module__!r}")
    finally:
        LAYER_TYPES["_MFScale"] = cls
