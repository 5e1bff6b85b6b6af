"""``cifar_fast``: its identity init, its patch-whitening first layer and the trainer's data init hook.

The net as a whole is covered with the zoo in test_models.py (parameter count, train step) and
test_onnx.py (export); here are its own pieces, each checked against what it claims to do.
"""

import numpy as np
import pytest

from convnp.app.bench import check_agreement, off_kinks, to_torch
from convnp.data.datasets import ArrayDataset
from convnp.data.transforms import Normalize
from convnp.errors import ShapeError
from convnp.layers.conv import Conv2d
from convnp.models import get_model, model_info, patch_whitening_filters, whiten_first_conv
from convnp.models.cifar_fast import dirac_
from convnp.app.run import data_init


def _images(n=64, c=3, size=12, seed=0):
    """Correlated channels and neighbouring pixels, like real images (smoothed noise, mixed colours)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, size + 1, size + 1))
    x = (x[..., 1:, 1:] + x[..., :-1, 1:] + x[..., 1:, :-1] + x[..., :-1, :-1]) / 2
    mix = np.eye(c) + 0.8
    return np.einsum("dc,nchw->ndhw", mix, x)


@pytest.mark.parametrize("shape", [(8, 8, 3, 3), (4, 8, 3, 3), (8, 4, 3, 3), (6, 6, 5, 5)])
def test_dirac_conv_passes_its_first_channels_through(shape):
    k, c, f, _ = shape
    conv = Conv2d(c, k, f, padding=f // 2, bias=False, rng=0, dtype="float64")
    dirac_(conv.params["weight"])
    x = np.random.default_rng(1).standard_normal((2, c, 7, 7))
    out = conv.forward(x)
    n = min(k, c)
    np.testing.assert_array_equal(out[:, :n], x[:, :n])
    assert np.any(conv.params["weight"][n:]) if k > n else True


@pytest.mark.parametrize("size", [1, 2, 3])
def test_whitening_filters_decorrelate_patches(size):
    x = _images()
    filters = patch_whitening_filters(x, size, eps=1e-9)
    c = x.shape[1]
    d = c * size * size
    assert filters.shape == (2 * d, c, size, size)
    np.testing.assert_array_equal(filters[d:], -filters[:d])
    conv = Conv2d(c, 2 * d, size, padding=0, bias=False, dtype="float64")
    conv.params["weight"][...] = filters
    responses = conv.forward(x)[:, :d].transpose(1, 0, 2, 3).reshape(d, -1)
    second_moments = responses @ responses.T / responses.shape[1]
    np.testing.assert_allclose(second_moments, np.eye(d), atol=1e-6)
    # largest-variance direction first: before scaling, filter 0 has the largest response
    raw = np.linalg.norm(filters[:d].reshape(d, -1), axis=1)
    assert raw[0] == raw.min()


def test_whitening_filters_reject_bad_images():
    with pytest.raises(ShapeError, match="patch_whitening_filters"):
        patch_whitening_filters(np.zeros((4, 3, 1, 1)), 2)
    with pytest.raises(ShapeError, match="patch_whitening_filters"):
        patch_whitening_filters(np.zeros((3, 8, 8)), 2)


def test_cifar_fast_shapes_and_identity_init():
    net = get_model("cifar_fast", rng=0)
    assert net.output_shape((3, 32, 32)) == (10,)
    for name, w in net.named_parameters().items():
        if w.ndim == 4 and w.shape[-1] == 3:      # every 3x3 conv starts as identity on its inputs
            c = w.shape[1]
            assert np.all(w[np.arange(c), np.arange(c), 1, 1] == 1), name
    assert get_model("cifar_fast", widths=(8, 16, 16), rng=0).num_params == (
        312 + 24 * 8 * 9 + 8 * 8 * 9 + 8 * 16 * 9 + 3 * 16 * 16 * 9 + 2 * (8 + 8 + 16 + 16 + 16 + 16) + 16 * 10)


def test_data_init_whitens_and_fixes_the_first_layer():
    rng = np.random.default_rng(0)
    train = ArrayDataset(rng.random((40, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, 40),
                         [str(i) for i in range(10)])
    normalize = Normalize.from_data(train)
    net = get_model("cifar_fast", rng=0)
    assert data_init(net, "cifar_fast", train, normalize, count=30) == ["0.weight"]
    expected = patch_whitening_filters(normalize(train.x[:30]), 2)
    np.testing.assert_allclose(net.named_parameters()["0.weight"], expected, rtol=1e-5, atol=1e-6)
    assert model_info("cifar_fast").data_init is whiten_first_conv
    # nets without a data init are left alone
    lenet = get_model("lenet5", rng=0)
    before = {k: v.copy() for k, v in lenet.named_parameters().items()}
    assert data_init(lenet, "lenet5", train, normalize) == []
    assert data_init(lenet, "INPUT[32x32x3] -> CONV3-4 -> FC-10", train, normalize) == []
    assert all(np.array_equal(before[k], v) for k, v in lenet.named_parameters().items())


def test_bench_agreement_check_steps_off_exact_relu_kinks():
    """Identity filters copy exact zeros (ReLU outputs) into the next ReLU's input, where rounding
    decides the subgradient; off the kinks both libraries agree to float32 precision."""
    pytest.importorskip("torch", reason="torch is the oracle of the benchmark's agreement check")
    net = get_model("cifar_fast", widths=(16, 32, 32), rng=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    nudged, tnudged = off_kinks(net)
    errors = check_agreement(nudged, tnudged, x, y)
    assert max(errors.values()) < 1e-4, errors
    # the original is untouched by the nudge
    assert np.array_equal(net.named_parameters()["2.weight"], get_model("cifar_fast", widths=(16, 32, 32),
                                                                        rng=0).named_parameters()["2.weight"])
    assert check_agreement(net, to_torch(net), x, y)["output"] < 1e-5
