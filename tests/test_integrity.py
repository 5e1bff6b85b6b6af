"""Integrity: tensor digests in checkpoints and model files, checkpoint fallback, the dataset cache."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import safetensors.numpy as stnp
from convnp.io.model_file import load_model, model_info, save_model
from convnp.io.safetensors_file import tensor_digest
from convnp.layers import Linear, ReLU
from convnp.nets import Sequential
from convnp.train.checkpoint import CheckpointError, load_checkpoint, load_checkpoint_meta, save_checkpoint


def _tensor_spans(path) -> dict:
    """name -> (first byte, end) of each tensor's data in a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def _flip_bit(path, offset: int, bit: int = 0) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 1 << bit
    open(path, "wb").write(bytes(data))


def _header(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata())


def _rewrite(path, **md_changes) -> None:
    """Rewrite ``path`` with the same tensors and changed header entries (None deletes one)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in md_changes.items():
        if v is None:
            md.pop(k)
        else:
            md[k] = v
    stnp.save_file(tensors, str(path), metadata=md)


def _arrays():
    rng = np.random.default_rng(0)
    return {"model/fc.weight": rng.standard_normal((16, 8)).astype(np.float32),
            "model/fc.bias": np.zeros(16, np.float32),
            "optim/step": np.array(7, np.int64),
            "mask": np.array([True, False, True]),
            "empty": np.zeros((0, 3), np.float64)}


def _net():
    return Sequential(Linear(6, 5, rng=0), ReLU(), Linear(5, 3, rng=1))


# --- digests in the header --------------------------------------------------------------------------
def test_every_tensor_has_its_sha256_in_the_header(tmp_path):
    p = tmp_path / "c.safetensors"
    arrays = _arrays()
    save_checkpoint(p, arrays, {"epoch": 1})
    digests = json.loads(_header(p)["sha256"])
    assert digests == {k: tensor_digest(v) for k, v in arrays.items()}
    big_endian = np.arange(5, dtype=">f8")  # stored little-endian: the digest is of the stored bytes
    save_checkpoint(p, {"w": big_endian}, {})
    assert json.loads(_header(p)["sha256"])["w"] == tensor_digest(np.arange(5, dtype="<f8"))
    save_model(_net(), tmp_path / "m.safetensors")
    assert set(json.loads(_header(tmp_path / "m.safetensors")["sha256"])) == set(_net().state_dict())


@pytest.mark.parametrize("name", [k for k, v in _arrays().items() if v.size])
def test_flipped_bit_in_a_checkpoint_tensor_names_it(tmp_path, name):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, _arrays(), {"epoch": 1})
    lo, hi = _tensor_spans(p)[name]
    _flip_bit(p, (lo + hi) // 2, bit=3)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    assert str(p) in str(err.value) and f"tensor {name!r}" in str(err.value) and "SHA-256" in str(err.value)
    assert load_checkpoint_meta(p) == {"epoch": 1}  # the header alone is still readable


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_bit_in_tensor_data_is_caught(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("flip") / "c.safetensors"
    save_checkpoint(p, _arrays(), {"epoch": 1})
    spans = {k: s for k, s in _tensor_spans(p).items() if s[1] > s[0]}
    name = data.draw(st.sampled_from(sorted(spans)))
    offset = data.draw(st.integers(spans[name][0], spans[name][1] - 1))
    _flip_bit(p, offset, data.draw(st.integers(0, 7)))
    with pytest.raises(CheckpointError, match=f"tensor {name!r}"):
        load_checkpoint(p)


def test_flipped_bit_in_a_model_file_names_the_tensor(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(_net(), p, extra={"classes": ["a", "b", "c"]})
    lo, _ = _tensor_spans(p)["2.bias"]
    _flip_bit(p, lo + 1, bit=6)
    with pytest.raises(CheckpointError) as err:
        load_model(p)
    assert str(p) in str(err.value) and "tensor '2.bias'" in str(err.value)
    assert model_info(p)["extra"] == {"classes": ["a", "b", "c"]}


def test_a_present_but_wrong_digest_entry_never_loads(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, _arrays(), {})
    digests = json.loads(_header(p)["sha256"])
    cases = {
        "tensor 'model/fc.bias' does not match": dict(digests, **{"model/fc.bias": "0" * 64}),
        "tensor 'mask' has no SHA-256": {k: v for k, v in digests.items() if k != "mask"},
        "SHA-256 for tensor 'ghost'": dict(digests, ghost="0" * 64),
        "is not a dict of tensor name": ["not", "a", "dict"],
    }
    for needle, entry in cases.items():
        save_checkpoint(p, _arrays(), {})
        _rewrite(p, sha256=json.dumps(entry))
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(p)
    save_checkpoint(p, _arrays(), {})
    _rewrite(p, sha256="{not json")
    with pytest.raises(CheckpointError, match="'sha256' is not valid JSON"):
        load_checkpoint(p)


def test_files_written_before_digests_still_load(tmp_path):
    old = tmp_path / "old-checkpoint.safetensors"  # exactly what convnp wrote before digests
    arrays = _arrays()
    stnp.save_file(arrays, str(old), metadata={"format": "convnp-checkpoint", "version": "1",
                                               "convnp_version": "0.1.0", "convnp": '{"epoch":3}'})
    loaded, meta = load_checkpoint(old)
    assert meta == {"epoch": 3} and all(np.array_equal(loaded[k], v) for k, v in arrays.items())
    m = tmp_path / "old-model.safetensors"
    net = _net()
    save_model(net, m)
    _rewrite(m, sha256=None)
    assert "sha256" not in _header(m)
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(load_model(m).forward(x), net.forward(x))


# --- keeping checkpoints and falling back to the previous good one ---------------------------------
def _trainer(out, keep=2):
    from convnp.data import ArrayDataset, DataLoader
    from convnp.losses import SoftmaxCrossEntropy
    from convnp.optim import SGD
    from convnp.train.trainer import Trainer

    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.standard_normal((64, 6)).astype(np.float32), rng.integers(0, 3, 64))
    loader = DataLoader(data, batch_size=16, shuffle=True, seed=0)
    return Trainer(_net(), SoftmaxCrossEntropy(), SGD(lr=0.1, momentum=0.9), loader, out_dir=out,
                   progress=False, keep_checkpoints=keep)


def _epoch(path) -> int:
    return load_checkpoint_meta(path)["trainer"]["epoch"]


@pytest.mark.parametrize("keep, kept", [(1, []), (2, [3]), (3, [3, 2])])
def test_the_last_k_checkpoints_are_kept(tmp_path, keep, kept):
    _trainer(tmp_path, keep).fit(4)
    assert _epoch(tmp_path / "checkpoint.safetensors") == 4
    assert [_epoch(tmp_path / f"checkpoint.{i}.safetensors") for i in range(1, len(kept) + 1)] == kept
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint.safetensors", "history.json", "history.csv"]
                                                  + [f"checkpoint.{i}.safetensors" for i in range(1, keep)])


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    full = _trainer(tmp_path / "full")
    full.fit(2)
    out = tmp_path / "cut"
    _trainer(out).fit(2)
    newest, previous = out / "checkpoint.safetensors", out / "checkpoint.1.safetensors"
    lo, hi = _tensor_spans(newest)["model/0.weight"]
    _flip_bit(newest, (lo + hi) // 2)
    capsys.readouterr()
    resumed = _trainer(out)
    resumed.resume()
    err = capsys.readouterr().err
    assert f"{newest}' is corrupt: tensor 'model/0.weight'" in err, err
    assert f"moved it aside to {newest}.corrupt" in err and f"previous good checkpoint {previous}" in err, err
    assert resumed.epoch == 1 and resumed.last_checkpoint == previous  # never the corrupt one
    assert (out / "checkpoint.safetensors.corrupt").exists() and not newest.exists()
    resumed.fit(2)  # epoch 2 again, from epoch 1's exact state: the same weights as the uninterrupted run
    for k, v in full.net.state_dict().items():
        assert np.array_equal(v, resumed.net.state_dict()[k]), k
    assert _epoch(newest) == 2 and _epoch(previous) == 1  # the checkpoint resumed from is kept


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_unreadable_newest_checkpoint_falls_back(tmp_path, capsys, damage):
    _trainer(tmp_path).fit(2)
    newest = tmp_path / "checkpoint.safetensors"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:-100])
    elif damage == "missing":
        newest.unlink()
    else:
        newest.write_bytes(b"\0" * 1000)
    resumed = _trainer(tmp_path)
    resumed.resume()
    assert resumed.epoch == 1
    assert f"previous good checkpoint {tmp_path / 'checkpoint.1.safetensors'}" in capsys.readouterr().err


def test_no_good_checkpoint_names_each_and_moves_nothing(tmp_path):
    _trainer(tmp_path).fit(2)
    for name in ("checkpoint.safetensors", "checkpoint.1.safetensors"):
        lo, _ = _tensor_spans(tmp_path / name)["model/2.bias"]
        _flip_bit(tmp_path / name, lo)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CheckpointError) as err:
        _trainer(tmp_path).resume()
    assert "checkpoint.safetensors' is corrupt" in str(err.value)
    assert "checkpoint.1.safetensors' is corrupt" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(CheckpointError, match="does not exist"):
        _trainer(tmp_path / "empty").resume()


# --- the dataset cache ---------------------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny IDX set of test_data_fetch, fetched from file:// URLs into tmp_path/cache."""
    from convnp.data import sources as dsrc

    from .test_data_fetch import idx_arrays, idx_spec, url_source, write_idx_dir

    arrays = idx_arrays()
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "source", arrays))], arrays)
    monkeypatch.setitem(dsrc.SPECS, "tiny", spec)
    root = tmp_path / "cache"
    dsrc.fetch_spec(spec, root, progress=False)
    return spec, root, arrays


def _flip_npy_byte(path) -> None:
    """Flip one bit of the last data byte in place (the file keeps its size; its mtime moves)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - 1)
        byte = f.read(1)[0]
        f.seek(size - 1)
        f.write(bytes([byte ^ 0x10]))


def _count_hashes(monkeypatch) -> list:
    from convnp.data import sources as dsrc

    hashed, real = [], dsrc._sha256_file
    monkeypatch.setattr(dsrc, "_sha256_file", lambda p: hashed.append(p.name) or real(p))
    return hashed


def test_loads_trust_the_stamp_and_rehash_only_changed_files(tiny, monkeypatch):
    from convnp.data import load_dataset

    spec, root, arrays = tiny
    hashed = _count_hashes(monkeypatch)
    load_dataset("tiny", "train", root)
    assert hashed == []  # stamped at fetch time: size and mtime match
    x = root / "tiny" / "train_x.npy"
    os.utime(x, ns=(x.stat().st_atime_ns, x.stat().st_mtime_ns + 10**9))  # touched, same bytes
    load_dataset("tiny", "train", root)
    load_dataset("tiny", "train", root)
    assert hashed == ["train_x.npy"]  # hashed once, then stamped again
    (root / "tiny" / "verified.json").unlink()  # a cache fetched before stamps existed
    load_dataset("tiny", "test", root)
    assert hashed[1:] == ["test_x.npy", "test_y.npy"]
    assert set(json.loads((root / "tiny" / "verified.json").read_text())) == {"test_x.npy", "test_y.npy"}


def test_flipped_byte_in_the_cache_is_caught_at_load_and_fetched_again(tiny, capsys):
    from convnp.data import info, load_dataset

    spec, root, arrays = tiny
    x = root / "tiny" / "train_x.npy"
    _flip_npy_byte(x)
    ds = load_dataset("tiny", "train", root, dtype="uint8")
    np.testing.assert_array_equal(ds.x, arrays["train_x"])  # the good bytes, fetched again
    err = capsys.readouterr().err
    assert f"{x}: SHA-256" in err and "fetching tiny again" in err, err
    _flip_npy_byte(x)
    text = info("tiny", root)
    checked = [line for line in text.splitlines() if "checked:" in line]
    assert len(checked) == 1 and f"{x}: SHA-256" in checked[0] and "fetched again" in checked[0], text
    text = info("tiny", root)
    assert "checked: 4 array files by size and mtime against their SHA-256 check at" in text, text
    assert "convnp data verify tiny" in text


def test_corrupt_cache_without_a_source_is_refused_naming_the_file(tiny):
    import shutil

    from convnp.data import info, load_dataset
    from convnp.errors import DataError

    spec, root, _ = tiny
    shutil.rmtree(root.parent / "source")  # the only source is gone
    y = root / "tiny" / "test_y.npy"
    _flip_npy_byte(y)
    for load in (lambda: load_dataset("tiny", "test", root), lambda: info("tiny", root)):
        with pytest.raises(DataError) as err:
            load()
        msg = str(err.value)
        assert f"{y}: SHA-256" in msg and "fetching it again failed" in msg, msg
    assert load_dataset("tiny", "train", root).x.shape == (6, 1, 4, 4)  # the other split is intact


def test_data_verify_catches_what_the_cheap_check_cannot(tiny, capsys):
    from convnp.app.cli import main
    from convnp.data import load_dataset

    spec, root, arrays = tiny
    assert main(["data", "verify", "tiny", "--data-dir", str(root)]) == 0
    assert "is intact: checked 4 array files by SHA-256 at" in capsys.readouterr().out
    x = root / "tiny" / "train_x.npy"
    st = x.stat()
    _flip_npy_byte(x)
    os.utime(x, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: the stamp still matches
    assert load_dataset("tiny", "train", root, dtype="uint8").x.tobytes() != arrays["train_x"].tobytes()
    assert main(["data", "verify", "tiny", "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "convnp data: error: tiny: the cache" in err and f"{x}: SHA-256" in err, err
    ds = load_dataset("tiny", "train", root, dtype="uint8", progress=False)  # its stamp is gone now
    np.testing.assert_array_equal(ds.x, arrays["train_x"])
