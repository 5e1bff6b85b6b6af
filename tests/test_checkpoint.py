"""Checkpoint files: round trips, atomic writes, rejection of foreign/corrupt/malicious files, RNG state."""

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import safetensors.numpy as stnp
from convnp.errors import ConvnpError
from convnp.train import checkpoint as ck
from convnp.train.checkpoint import (
    SUPPORTED_DTYPES,
    CheckpointError,
    flatten_state,
    load_checkpoint,
    load_checkpoint_meta,
    load_state,
    restore_rng,
    rng_state,
    save_checkpoint,
    save_state,
    unflatten_state,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_array(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def _same(a, b):
    """Bitwise equality incl. dtype and shape (NaN-safe)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _leftovers(directory):
    """Temp files: ours (.<name>.<hex>.tmp) and safetensors' own (.tmpXXXXXX, 0.8 renames too)."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp") or n.startswith(".tmp"))


# --- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (5,), (2, 3, 4)])
def test_round_trip_dtypes_and_shapes(tmp_path, dtype, shape):
    rng = np.random.default_rng(hash((dtype, shape)) % 2**32)
    a = _random_array(rng, dtype, shape)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": a}, {})
    arrays, meta = load_checkpoint(path)
    assert list(arrays) == ["a"] and meta == {}
    assert _same(arrays["a"], a), (arrays["a"], a)


def test_zero_d_int64_like_num_batches_tracked(tmp_path):
    sd = {"bn.num_batches_tracked": np.array(7, dtype=np.int64), "bn.running_mean": np.arange(3.0, dtype=np.float32)}
    save_checkpoint(tmp_path / "c", sd)
    arrays, _ = load_checkpoint(tmp_path / "c")
    assert arrays["bn.num_batches_tracked"].shape == () and arrays["bn.num_batches_tracked"].dtype == np.int64
    assert int(arrays["bn.num_batches_tracked"]) == 7


def test_non_contiguous_and_big_endian_arrays_keep_their_values(tmp_path):
    # safetensors.numpy writes raw memory: a transposed view would be stored in the wrong order
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    views = {"t": base.T, "strided": base[:, ::2], "be": np.arange(5, dtype=">f8"), "neg": base[::-1]}
    save_checkpoint(tmp_path / "c", views)
    arrays, _ = load_checkpoint(tmp_path / "c")
    for k, v in views.items():
        np.testing.assert_array_equal(arrays[k], v)
        assert arrays[k].shape == v.shape
    assert arrays["be"].dtype == np.float64 and arrays["be"].dtype.isnative


def test_empty_arrays_and_meta(tmp_path):
    save_checkpoint(tmp_path / "c", {}, {})
    assert load_checkpoint(tmp_path / "c") == ({}, {})
    save_checkpoint(tmp_path / "d", {})  # meta defaults to {}
    assert load_checkpoint(tmp_path / "d") == ({}, {})


def test_unicode_names_and_meta(tmp_path):
    arrays = {"поле.weight": np.ones(2, np.float32), "层/偏置": np.zeros(1), "emoji 🙂": np.array(1, np.uint8)}
    meta = {"naïve": "ünïcödé 🙂", "classes": ["猫", "犬"]}
    save_checkpoint(tmp_path / "ü.safetensors", arrays, meta)
    got, got_meta = load_checkpoint(tmp_path / "ü.safetensors")
    assert got_meta == meta
    assert set(got) == set(arrays)
    for k in arrays:
        assert _same(got[k], arrays[k])


def test_meta_round_trip_exact_values(tmp_path):
    meta = {"epoch": 3, "big": 2**127 + 12345, "neg": -(2**70), "lr": 0.1, "tiny": 5e-324, "flag": True,
            "none": None, "hist": {"loss": [2.3, float("nan"), float("inf"), -float("inf")]},
            "np": {"f32": np.float32(0.1), "i64": np.int64(-5), "b": np.bool_(False)}, "tuple": (1, 2)}
    save_checkpoint(tmp_path / "c", {}, meta)
    got = load_checkpoint(tmp_path / "c")[1]
    assert got["big"] == 2**127 + 12345 and got["neg"] == -(2**70) and got["tiny"] == 5e-324
    assert got["lr"] == 0.1 and got["flag"] is True and got["none"] is None and got["epoch"] == 3
    loss = got["hist"]["loss"]
    assert loss[0] == 2.3 and np.isnan(loss[1]) and loss[2] == np.inf and loss[3] == -np.inf
    assert got["np"] == {"f32": float(np.float32(0.1)), "i64": -5, "b": False}
    assert type(got["np"]["i64"]) is int and type(got["np"]["b"]) is bool
    assert got["tuple"] == [1, 2]
    assert load_checkpoint_meta(tmp_path / "c")["big"] == 2**127 + 12345


def test_loaded_arrays_are_writable_copies(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": np.zeros((2, 2))})
    a = load_checkpoint(tmp_path / "c")[0]["w"]
    a[0, 0] = 5.0  # must not raise (read-only) and must not touch the file
    assert load_checkpoint(tmp_path / "c")[0]["w"][0, 0] == 0.0


def test_overwrite_and_create_parent_dirs(tmp_path):
    path = tmp_path / "runs" / "exp" / "last.safetensors"
    save_checkpoint(path, {"x": np.zeros(3)}, {"step": 1})
    save_checkpoint(path, {"x": np.ones(4)}, {"step": 2})
    arrays, meta = load_checkpoint(path)
    assert meta == {"step": 2} and _same(arrays["x"], np.ones(4))
    assert _leftovers(path.parent) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_file_gets_umask_permissions_not_0600(tmp_path):
    save_checkpoint(tmp_path / "c", {"x": np.zeros(1)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o666 & ~umask


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
    hnp.arrays(st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "float16"]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    max_size=5))
def test_property_round_trip(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("prop") / "c.safetensors"
    save_checkpoint(path, arrays, {"n": len(arrays)})
    got, meta = load_checkpoint(path)
    assert meta == {"n": len(arrays)} and set(got) == set(arrays)
    for k in arrays:
        assert _same(got[k], arrays[k])


# --- refusing bad input on save -------------------------------------------------------------------
@pytest.mark.parametrize("bad, needle", [
    ({"s": np.array(["a", "b"])}, "'s' has dtype"),
    ({"o": np.array([object()], dtype=object)}, "'o' has dtype"),
    ({"c": np.zeros(2, np.complex128)}, "'c' has dtype complex128"),
    ({1: np.zeros(2)}, "names must be strings"),
    ({"__metadata__": np.zeros(2)}, "reserved"),
])
def test_save_rejects_bad_arrays_and_leaves_nothing(tmp_path, bad, needle):
    with pytest.raises(CheckpointError, match=needle):
        save_checkpoint(tmp_path / "c", bad)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("meta, needle", [
    ({"w": np.zeros(3)}, r"meta\['w'\]: is an array"),
    ({"a": {1: "x"}}, "keys must be strings"),
    ({"f": {1, 2}}, "set is not JSON-serialisable"),
    ([1, 2], "meta must be a dict"),
])
def test_save_rejects_bad_meta(tmp_path, meta, needle):
    with pytest.raises(CheckpointError, match=needle):
        save_checkpoint(tmp_path / "c", {}, meta)
    assert os.listdir(tmp_path) == []


# --- atomicity ------------------------------------------------------------------------------------
def _write_original(path):
    save_checkpoint(path, {"w": np.full(1000, 1.0)}, {"version": "original"})


def _assert_original(path):
    arrays, meta = load_checkpoint(path)
    assert meta == {"version": "original"} and _same(arrays["w"], np.full(1000, 1.0))
    assert _leftovers(os.path.dirname(path)) == []


def test_failing_replace_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    _write_original(path)

    def boom(src, dst):
        assert os.path.exists(src)  # the complete temp file was there, next to the target
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"w": np.full(1000, 2.0)}, {"version": "new"})
    monkeypatch.undo()
    _assert_original(path)


def test_serializer_dying_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    _write_original(path)
    real = stnp.save_file

    def half_write(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # leave a truncated file behind, then die
            f.truncate(os.path.getsize(filename) // 2)
        raise RuntimeError("disk full")

    monkeypatch.setattr(stnp, "save_file", half_write)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(path, {"w": np.full(1000, 2.0)}, {"version": "new"})
    monkeypatch.undo()
    _assert_original(path)


def test_keyboard_interrupt_mid_write_cleans_up(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    _write_original(path)

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(stnp, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.zeros(1)}, {})
    monkeypatch.undo()
    _assert_original(path)


_WRITER = """
import sys
import numpy as np
from convnp.train.checkpoint import save_checkpoint
path, i = sys.argv[1], int(sys.argv[2])
big = np.empty(4_000_000, np.float32)  # 16 MB per write
while True:
    big.fill(i)
    save_checkpoint(path, {"big": big, "i": np.array(i)}, {"i": i})
    print(i, flush=True)
    i += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_writes_never_corrupts_target(tmp_path):
    """Kill a writer looping over 16 MB checkpoints at random moments: the target always loads whole."""
    path = str(tmp_path / "ckpt.safetensors")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = np.random.default_rng(0)
    next_i, mid_write_kills, last_seen = 0, 0, -1
    for _ in range(20):
        with subprocess.Popen([sys.executable, "-c", _WRITER, path, str(next_i)], stdout=subprocess.PIPE,
                              env=env, cwd=REPO, text=True) as proc:
            try:
                first = proc.stdout.readline()  # one full write done: now inside the write loop
                assert first.strip() == str(next_i), f"writer failed to start: {first!r}"
                time.sleep(rng.uniform(0.0, 0.04))  # about one write (~30 ms for 16 MB)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        leftovers = _leftovers(tmp_path)
        mid_write_kills += any(n.startswith(".ckpt.safetensors.") for n in leftovers)
        arrays, meta = load_checkpoint(path)
        i = meta["i"]
        assert int(arrays["i"]) == i and arrays["big"].shape == (4_000_000,)
        assert np.all(arrays["big"] == np.float32(i)), "checkpoint mixes two writes"
        assert i >= max(last_seen, next_i)
        last_seen = i
        for name in leftovers:  # a killed writer cannot remove its hidden temp file
            assert name.startswith((".ckpt.safetensors.", ".tmp"))
            os.unlink(tmp_path / name)
        next_i = i + 1000
        if mid_write_kills >= 6:
            break
    assert mid_write_kills >= 1, "no kill landed inside a write; the test did not exercise atomicity"


# --- refusing bad files -----------------------------------------------------------------------------
def _good_bytes(tmp_path):
    p = tmp_path / "good.safetensors"
    save_checkpoint(p, {"w": np.arange(64, dtype=np.float32), "b": np.zeros(3)}, {"epoch": 1})
    return p.read_bytes()


def _expect(path, *needles):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert os.fspath(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    assert isinstance(info.value, ConvnpError)
    return msg


def test_missing_file_and_directory(tmp_path):
    _expect(tmp_path / "nope.safetensors", "does not exist")
    _expect(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    _expect(p, "is empty")


@pytest.mark.parametrize("cut", [1, 7, 8, 20, "header-1", "data-half", "last-byte"])
def test_truncated_file(tmp_path, cut):
    data = _good_bytes(tmp_path)
    header_len = int.from_bytes(data[:8], "little")
    n = {"header-1": 8 + header_len - 1, "data-half": 8 + header_len + (len(data) - 8 - header_len) // 2,
         "last-byte": len(data) - 1}.get(cut, cut)
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:n])
    _expect(p, "not a valid safetensors file")


def test_trailing_garbage(tmp_path):
    p = tmp_path / "long.safetensors"
    p.write_bytes(_good_bytes(tmp_path) + b"\x00junk")
    _expect(p, "not a valid safetensors file")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    p = tmp_path / "random.bin"
    p.write_bytes(np.random.default_rng(seed).integers(0, 256, 1000 + seed, dtype=np.uint8).tobytes())
    _expect(p)


def test_corrupt_header_json(tmp_path):
    data = bytearray(_good_bytes(tmp_path))
    data[10] = ord("\x01")  # inside the JSON header
    p = tmp_path / "bad.safetensors"
    p.write_bytes(bytes(data))
    _expect(p, "not a valid safetensors file")


class _Payload:
    """Unpickling this creates the marker file: proof that a loader executed code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"state_dict": _Payload(str(marker))}, protocol=4)
    probe = tmp_path / "probe"  # the payload is live: a real unpickle would create the marker
    pickle.loads(pickle.dumps(_Payload(str(probe)), protocol=4)).close()
    assert probe.exists()

    raw = tmp_path / "model.pth"
    raw.write_bytes(payload)
    _expect(raw, "pickle", "never unpickles")
    zipped = tmp_path / "model_zip.pth"  # the torch.save layout: a zip with data.pkl inside
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", payload)
    _expect(zipped, "zip archive")
    assert not marker.exists()


def test_numpy_file_is_named(tmp_path):
    p = tmp_path / "w.npy"
    np.save(p, np.zeros(3))
    _expect(p, ".npy")


def test_foreign_safetensors_without_convnp_metadata(tmp_path):
    p = tmp_path / "hf.safetensors"
    stnp.save_file({"w": np.zeros(3, np.float32)}, str(p))
    _expect(p, "without convnp metadata")
    stnp.save_file({"w": np.zeros(3, np.float32)}, str(p), metadata={"format": "pt"})
    _expect(p, "format 'pt'")


def test_model_file_is_not_a_checkpoint(tmp_path):
    p = tmp_path / "m.safetensors"
    stnp.save_file({}, str(p), metadata={"format": "convnp-model", "version": "1", "config": "{}"})
    _expect(p, "saved model", "convnp.load")


@pytest.mark.parametrize("md, needle", [
    ({"format": "convnp-checkpoint", "version": "2", "convnp": "{}"}, "format version 2"),
    ({"format": "convnp-checkpoint", "version": "x", "convnp": "{}"}, "invalid format version"),
    ({"format": "convnp-checkpoint", "version": "1"}, "no 'convnp' entry"),
    ({"format": "convnp-checkpoint", "version": "1", "convnp": "{oops"}, "not valid JSON"),
    ({"format": "convnp-checkpoint", "version": "1", "convnp": "[1]"}, "not a dict"),
])
def test_bad_convnp_header(tmp_path, md, needle):
    p = tmp_path / "c.safetensors"
    stnp.save_file({"w": np.zeros(2)}, str(p), metadata=md)
    _expect(p, needle)


# --- nested state -----------------------------------------------------------------------------------
def _training_state():
    rng = np.random.default_rng(42)
    data_rng = np.random.default_rng(7)
    data_rng.random(10)
    return {
        "model": {"features.0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                  "features.1.num_batches_tracked": np.array(12, np.int64)},
        "optimizer": {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.999], "t": 12,
                      "m": {"features.0.weight": np.full((4, 3, 3, 3), 0.5, np.float32)},
                      "v": {"features.0.weight": np.full((4, 3, 3, 3), 0.25, np.float32)}},
        "schedule": {"type": "StepLR", "last_epoch": 3, "base_lrs": [0.01]},
        "rng": {"data": rng_state(data_rng)},
        "loader": {"epoch": 3, "batch": 17, "order": rng.permutation(50)},
        "history": {"train_loss": [2.3, 1.9, float("nan")], "val_acc": [0.1, 0.4]},
        "net": {"type": "Sequential", "config": {"layers": [{"type": "Conv2d", "config": {"kernel_size": [3, 3]}}]}},
        "odd/key%": {"a/b": np.zeros(2), "a%2Fb": np.ones(2)},
        "empty": {}, "empty_list": [], "list_of_arrays": [np.zeros(1), {"x": np.ones(1)}],
    }


def _assert_tree_equal(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and _same(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_tree_equal(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b and type(a) is type(b)


def test_flatten_unflatten_inverse():
    state = _training_state()
    arrays, skeleton = flatten_state("ckpt", state)
    json.dumps(skeleton)  # the skeleton is JSON-able
    assert "ckpt/optimizer/m/features.0.weight" in arrays  # dotted names stay readable
    assert "ckpt/odd%2Fkey%25/a%2Fb" in arrays and "ckpt/odd%2Fkey%25/a%252Fb" in arrays
    assert len(arrays) == 9
    _assert_tree_equal(state, unflatten_state(arrays, json.loads(json.dumps(skeleton))))


def test_save_state_load_state_restores_everything(tmp_path):
    state = _training_state()
    save_state(tmp_path / "s.safetensors", state)
    got = load_state(tmp_path / "s.safetensors")
    _assert_tree_equal(state, got)
    # the restored data RNG continues the same stream
    original = np.random.default_rng(7)
    original.random(10)
    assert np.array_equal(restore_rng(got["rng"]["data"]).random(5), original.random(5))


def test_flatten_errors():
    with pytest.raises(CheckpointError, match="reserved"):
        flatten_state("", {"a": {"__array__": "x"}})
    with pytest.raises(CheckpointError, match="keys must be strings"):
        flatten_state("", {"state": {0: np.zeros(1)}})
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        flatten_state("", {"a": object()})
    with pytest.raises(CheckpointError, match="missing"):
        unflatten_state({}, {"w": {"__array__": "model/w"}})


def test_load_state_on_plain_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c", {}, {"epoch": 1})
    with pytest.raises(CheckpointError, match="use load_checkpoint"):
        load_state(tmp_path / "c")


# --- RNG state --------------------------------------------------------------------------------------
def _draw(g):
    return np.concatenate([g.random(3), g.standard_normal(3), g.integers(0, 2**62, 3).astype(float),
                           g.integers(0, 2**31, 3, dtype=np.uint32).astype(float)])


@pytest.mark.parametrize("bitgen", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_rng_round_trip_exact(bitgen):
    g = np.random.Generator(getattr(np.random, bitgen)(123))
    _draw(g)
    g.integers(0, 10, dtype=np.uint32)  # leave a buffered uint32 half (has_uint32) in the state
    saved = json.loads(json.dumps(rng_state(g)))  # through JSON text
    expected = np.concatenate([_draw(g) for _ in range(3)])
    restored = restore_rng(saved)
    assert type(restored.bit_generator).__name__ == bitgen
    got = np.concatenate([_draw(restored) for _ in range(3)])
    assert got.tobytes() == expected.tobytes()


def test_pcg64_state_survives_a_checkpoint_exactly(tmp_path):
    g = np.random.default_rng(2**100)
    g.random(1000)
    state = rng_state(g)
    assert state["state"]["state"] > 2**64  # really 128-bit
    save_checkpoint(tmp_path / "c", {}, {"rng": state})
    loaded = load_checkpoint(tmp_path / "c")[1]["rng"]
    assert loaded == state
    assert restore_rng(loaded).integers(0, 2**63, 100).tolist() == g.integers(0, 2**63, 100).tolist()


def test_restore_rng_in_place_keeps_references():
    g = np.random.default_rng(1)
    saved = rng_state(g)
    expected = g.random(4)
    holder = {"rng": g}  # e.g. a Dropout layer holding the generator
    assert restore_rng(saved, into=g) is g
    assert np.array_equal(holder["rng"].random(4), expected)
    with pytest.raises(CheckpointError, match="MT19937"):
        restore_rng(saved, into=np.random.Generator(np.random.MT19937(0)))


def test_rng_errors():
    with pytest.raises(CheckpointError, match="Generator"):
        rng_state(42)
    with pytest.raises(CheckpointError, match="not a saved numpy RNG state"):
        restore_rng({"bit_generator": "os.system"})
    with pytest.raises(CheckpointError, match="invalid saved PCG64"):
        restore_rng({"bit_generator": "PCG64", "state": {"state": "x"}})


def test_real_optimizer_state_resumes_exactly(tmp_path):
    """save_state/load_state with convnp's Adam: the resumed run takes bit-identical steps."""
    from convnp.optim.optimizers import Adam

    rng = np.random.default_rng(0)
    params = {"fc.weight": rng.standard_normal((3, 2)).astype(np.float32), "fc.bias": np.zeros(3, np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
    opt = Adam(lr=0.01, amsgrad=True)
    for g in grads[:2]:
        opt.step(params, g)
    save_state(tmp_path / "s", {"params": params, "optimizer": opt.state_dict()})
    state = load_state(tmp_path / "s")
    opt2, params2 = Adam(), state["params"]
    opt2.load_state_dict(state["optimizer"])
    for g in grads[2:]:
        opt.step(params, g)
        opt2.step(params2, g)
    for k in params:
        assert _same(params[k], params2[k])
