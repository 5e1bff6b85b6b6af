"""Parsers of IDX, CIFAR (pickled and binary) and the tfjs PNG sprites, on files written here."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest

from convnp.data import formats
from convnp.errors import DataError


# --- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,shape", [
    (np.uint8, (5, 4, 3)), (np.uint8, (7,)), (np.int8, (2, 3)), (np.int16, (4, 2)),
    (np.int32, (3,)), (np.float32, (2, 2, 2)), (np.float64, (3, 1)),
])
def test_idx_round_trip(rng, dtype, shape):
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    data = formats.idx_bytes(arr)
    code = {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12, np.float32: 13, np.float64: 14}
    assert data[:4] == bytes([0, 0, code[dtype], len(shape)])
    assert struct.unpack(f">{len(shape)}I", data[4:4 + 4 * len(shape)]) == shape
    out = formats.parse_idx(data, "t")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(formats.parse_idx(gzip.compress(data), "t.gz"), arr)


def test_idx_reads_big_endian_values():
    data = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    np.testing.assert_array_equal(formats.parse_idx(data), [0x0102, -2])


def test_idx_digest_update_matches_file_bytes(rng):
    import hashlib

    arr = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    h = hashlib.sha256()
    formats.idx_digest_update(h, arr)
    assert h.hexdigest() == hashlib.sha256(formats.idx_bytes(arr)).hexdigest()


@pytest.mark.parametrize("data,match", [
    (b"", "too short"),
    (b"\x00\x00\x08", "too short"),
    (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad IDX magic"),
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad IDX magic"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03" + b"\x00" * 5, "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"\x00" * 3, "trailing bytes"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt or truncated gzip"),
])
def test_idx_corrupt(data, match):
    with pytest.raises(DataError, match=match) as err:
        formats.parse_idx(data, "some/file-idx")
    assert "some/file-idx" in str(err.value)


def test_idx_truncated_gzip():
    data = gzip.compress(formats.idx_bytes(np.zeros((10, 4, 4), np.uint8)))
    with pytest.raises(DataError, match="gzip"):
        formats.parse_idx(data[: len(data) // 2], "cut.gz")


def test_idx_wrong_length_message_names_shape():
    arr = np.zeros((3, 2, 2), np.uint8)
    with pytest.raises(DataError, match=r"3x2x2.*needs 28"):
        formats.parse_idx(formats.idx_bytes(arr)[:-1], "f")


# --- CIFAR python batches -------------------------------------------------------------------


def _batch(rng, n, keys=("labels",), protocol=2, numpy_module=None):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch", b"data": data,
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    labels = {}
    for key in keys:
        labels[key] = rng.integers(0, 10, n).tolist()
        batch[key.encode()] = labels[key]
    raw = pickle.dumps(batch, protocol=protocol)
    if numpy_module is not None:  # what a pickle written by another NumPy calls the module
        for mod in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
            raw = raw.replace(mod + b"\n", numpy_module.encode() + b"\n")
    return raw, data, labels


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar_pickle_parses(rng, protocol):
    raw, data, labels = _batch(rng, 4, protocol=protocol)
    x, y = formats.parse_cifar_pickle(raw, "data_batch_1")
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    np.testing.assert_array_equal(x[2, 1, 3, 5], data[2, 1024 + 3 * 32 + 5])
    np.testing.assert_array_equal(x.reshape(4, -1), data)
    np.testing.assert_array_equal(y["labels"], labels["labels"])
    assert y["labels"].dtype == np.uint8


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar_pickle_from_either_numpy_name(rng, module):
    raw, data, _ = _batch(rng, 2, protocol=2, numpy_module=module)
    assert module.encode() in raw
    x, _ = formats.parse_cifar_pickle(raw, "b")
    np.testing.assert_array_equal(x.reshape(2, -1), data)


def test_cifar100_pickle_keys_and_meta(rng):
    raw, _, labels = _batch(rng, 3, keys=("fine_labels", "coarse_labels"))
    _, y = formats.parse_cifar_pickle(raw, "train", ("fine_labels", "coarse_labels"))
    np.testing.assert_array_equal(y["coarse_labels"], labels["coarse_labels"])
    meta = pickle.dumps({b"fine_label_names": [b"apple", b"bear"], b"coarse_label_names": [b"x"]},
                        protocol=2)
    assert formats.parse_cifar_meta(meta, "meta", "fine_label_names") == ["apple", "bear"]
    with pytest.raises(DataError, match="no list of class names"):
        formats.parse_cifar_meta(meta, "meta", "label_names")


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("make", ["os.system", "eval", "exec", "nested"])
def test_malicious_pickle_raises_and_does_not_execute(tmp_path, make):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('x')"
    payload = {
        "os.system": _Evil(os.system, cmd),
        "eval": _Evil(eval, code),
        "exec": _Evil(exec, code),
        "nested": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(os.system, cmd)]},
    }[make]
    raw = pickle.dumps(payload, protocol=2)
    with pytest.raises(DataError, match="refusing to unpickle global"):
        formats.parse_cifar_pickle(raw, "evil_batch")
    assert not marker.exists()


def test_pickle_refuses_other_numpy_callables(tmp_path):
    raw = pickle.dumps(_Evil(np.save, str(tmp_path / "x.npy")), protocol=2)
    with pytest.raises(DataError, match="numpy.*save"):
        formats.safe_unpickle(raw, "p")
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("case,match", [
    ("truncated", "corrupt or truncated pickle"),
    ("garbage", "corrupt or truncated pickle"),
    ("not_dict", "expected a pickled dict"),
    ("no_labels", "no 'labels' entry"),
    ("bad_data_shape", r"shape \(N, 3072\)"),
    ("float_data", "uint8"),
    ("label_count", "must be 4 integer labels"),
    ("label_range", "outside 0..255"),
])
def test_cifar_pickle_corrupt(rng, case, match):
    raw, data, labels = _batch(rng, 4)
    batch = {b"data": data, b"labels": labels["labels"]}
    if case == "truncated":
        raw = raw[: len(raw) // 2]
    elif case == "garbage":
        raw = b"this is not a pickle"
    else:
        if case == "not_dict":
            batch = [1, 2, 3]
        elif case == "no_labels":
            del batch[b"labels"]
        elif case == "bad_data_shape":
            batch[b"data"] = data[:, :100]
        elif case == "float_data":
            batch[b"data"] = data.astype(np.float32)
        elif case == "label_count":
            batch[b"labels"] = labels["labels"][:3]
        elif case == "label_range":
            batch[b"labels"] = [0, 1, 2, 300]
        raw = pickle.dumps(batch, protocol=2)
    with pytest.raises(DataError, match=match):
        formats.parse_cifar_pickle(raw, "data_batch_3")


# --- CIFAR binary batches ---------------------------------------------------------------------


@pytest.mark.parametrize("label_bytes", [1, 2])
def test_cifar_binary_round_trip(rng, label_bytes):
    x = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    labels = [rng.integers(0, 100, 5) for _ in range(label_bytes)]
    data = formats.cifar_binary_bytes(x, *labels)
    assert len(data) == 5 * (label_bytes + 3072)
    # record i: its label byte(s), then the 3072 pixels in CHW order
    rec = 3 * (label_bytes + 3072)
    assert data[rec] == labels[0][3]
    assert data[rec + label_bytes:rec + label_bytes + 3072] == x[3].tobytes()
    x2, y2 = formats.parse_cifar_binary(data, "b", label_bytes)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, np.stack(labels, 1))


@pytest.mark.parametrize("cut", [1, 3072, 3073 * 2 - 5])
def test_cifar_binary_truncated(cut):
    data = bytes(3073 * 2)
    with pytest.raises(DataError, match="whole number of 3073-byte") as err:
        formats.parse_cifar_binary(data[:-cut], "data_batch_2.bin")
    assert "data_batch_2.bin" in str(err.value)


def test_cifar_binary_empty():
    with pytest.raises(DataError, match="whole number"):
        formats.parse_cifar_binary(b"", "e.bin")


# --- tfjs sprites and JSON labels -------------------------------------------------------------


def _png(arr, mode="RGB"):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_png_sprite_rows_are_images(rng):
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # HWC, as the package stores
    sprite = _png(imgs.reshape(3, 1024, 3))
    x = formats.parse_png_sprite(sprite, "s.png")
    np.testing.assert_array_equal(x, imgs.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("case,match", [
    ("width", "1024"), ("grey", "mode L"), ("garbage", "corrupt or truncated PNG"),
    ("truncated", "corrupt or truncated PNG"), ("jpeg", "expected a PNG"),
])
def test_png_sprite_corrupt(rng, case, match):
    from PIL import Image

    good = _png(rng.integers(0, 256, (2, 1024, 3), dtype=np.uint8))
    data = {
        "width": _png(np.zeros((2, 1000, 3), np.uint8)),
        "grey": _png(np.zeros((2, 1024), np.uint8), "L"),
        "garbage": b"not a png at all",
        "truncated": good[: len(good) // 2],
    }.get(case)
    if case == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(np.zeros((2, 1024, 3), np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()
    with pytest.raises(DataError, match=match):
        formats.parse_png_sprite(data, "data_batch_1.png")


def test_json_labels():
    np.testing.assert_array_equal(formats.parse_json_labels(b"[3, 8, 8, 0]"), [3, 8, 8, 0])
    for bad in (b"[3, 8", b'{"a": 1}', b"[1, -1]", b'["x"]', b"\xff\xfe"):
        with pytest.raises(DataError, match="labels"):
            formats.parse_json_labels(bad, "test_lables.json")


def test_codecs_encode_only_latin1():
    import _codecs

    class Enc:
        def __reduce__(self):
            return _codecs.encode, ("abc", "rot13")

    with pytest.raises(DataError, match="refusing _codecs.encode"):
        formats.safe_unpickle(pickle.dumps(Enc(), protocol=2), "p")
    assert formats.safe_unpickle(pickle.dumps(b"\x00\xff", protocol=2)) == b"\x00\xff"
