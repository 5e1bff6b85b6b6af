"""Batch transforms: shapes, exact crop/flip/resize results, determinism under a seed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.data import channel_stats
from convnp.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ToFloat,
)
from convnp.errors import ConfigError, ShapeError


def unique_batch(n=4, c=2, h=5, w=6, dtype=np.float32):
    """Every value distinct, so a crop can be located in its source."""
    return np.arange(n * c * h * w, dtype=dtype).reshape(n, c, h, w) + 1


def locate(window, img):
    """All (top, left) where ``window`` (C, h, w) occurs in ``img`` (C, H, W)."""
    _, h, w = window.shape
    return [(i, j) for i in range(img.shape[1] - h + 1) for j in range(img.shape[2] - w + 1)
            if np.array_equal(img[:, i:i + h, j:j + w], window)]


# --- RandomCrop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size,padding", [(3, 0), ((4, 2), 0), (5, 1), ((6, 7), (1, 2)),
                                          (4, (0, 1, 2, 3))])
def test_random_crop_windows_come_from_padded_image(size, padding):
    x = unique_batch(n=16)
    t = RandomCrop(size, padding=padding)
    out = t(x, np.random.default_rng(0))
    h, w = (size, size) if isinstance(size, int) else size
    assert out.shape == (16, 2, h, w) and out.dtype == x.dtype
    p = (padding,) * 4 if isinstance(padding, int) else (
        padding * 2 if len(padding) == 2 else padding)
    left, top, right, bottom = p
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    offsets = set()
    for i in range(16):
        found = locate(out[i], padded[i])
        assert len(found) == 1, i
        offsets.add(found[0])
    assert len(offsets) > 1  # offsets vary per image


def test_random_crop_reaches_every_offset():
    x = unique_batch(n=400, c=1, h=4, w=4)
    out = RandomCrop(3, padding=1)(x, np.random.default_rng(1))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    seen = {locate(out[i], padded[i])[0] for i in range(len(x))}
    assert seen == {(i, j) for i in range(4) for j in range(4)}


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_random_crop_padding_modes(mode):
    x = unique_batch(n=1, c=1, h=4, w=4)
    t = RandomCrop(8, padding=2, padding_mode=mode, fill=-5.0)
    out = t(x, np.random.default_rng(0))  # only one window fits: the whole padded image
    kw = {"constant_values": -5.0} if mode == "constant" else {}
    np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode=mode, **kw))


def test_random_crop_determinism_and_no_mutation():
    x = unique_batch(n=32)
    before = x.copy()
    t = RandomCrop(3, padding=2)
    a = t(x, np.random.default_rng(7))
    b = t(x, np.random.default_rng(7))
    c = t(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, before)
    # the constructor's generator when none is passed
    np.testing.assert_array_equal(RandomCrop(3, padding=2, rng=7)(x), a)


def test_random_crop_single_image_and_errors():
    x = unique_batch(n=1)[0]
    assert RandomCrop(2)(x, np.random.default_rng(0)).shape == (2, 2, 2)
    with pytest.raises(ShapeError, match=r"crop 9x9 larger than the padded input 7x8"):
        RandomCrop(9, padding=1)(unique_batch(), np.random.default_rng(0))
    with pytest.raises(ShapeError, match="NCHW"):
        RandomCrop(2)(np.zeros((2, 3)), np.random.default_rng(0))
    for bad in (dict(size=0), dict(size=2, padding=-1), dict(size=2, padding=(1, 2, 3)),
                dict(size=2, padding_mode="wrap")):
        with pytest.raises(ConfigError):
            RandomCrop(**bad)


# --- RandomHorizontalFlip -----------------------------------------------------------------------


def test_flip_each_image_whole_or_not():
    x = unique_batch(n=200, c=2, h=3, w=4)
    out = RandomHorizontalFlip(0.5)(x, np.random.default_rng(3))
    flipped = np.array([np.array_equal(out[i], x[i, :, :, ::-1]) for i in range(200)])
    same = np.array([np.array_equal(out[i], x[i]) for i in range(200)])
    assert np.all(flipped ^ same)
    assert 70 < flipped.sum() < 130


@pytest.mark.parametrize("p,expect", [(0.0, "same"), (1.0, "flipped")])
def test_flip_extremes(p, expect):
    x = unique_batch()
    out = RandomHorizontalFlip(p)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x if expect == "same" else x[..., ::-1])
    assert out.base is None or out.base is not x


def test_flip_tiny_exact():
    x = np.array([[[[1, 2, 3]]], [[[4, 5, 6]]]], np.float32)
    out = RandomHorizontalFlip(1.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, [[[[3, 2, 1]]], [[[6, 5, 4]]]])
    with pytest.raises(ConfigError):
        RandomHorizontalFlip(1.5)


# --- CenterCrop, Resize, Normalize, ToFloat, Compose -------------------------------------------


@pytest.mark.parametrize("hw,size,top_left", [((5, 5), 3, (1, 1)), ((5, 6), (2, 3), (2, 2)),
                                              ((4, 4), 4, (0, 0)), ((7, 4), (2, 1), (2, 2))])
def test_center_crop(hw, size, top_left):
    x = unique_batch(n=2, h=hw[0], w=hw[1])
    out = CenterCrop(size)(x)
    h, w = (size, size) if isinstance(size, int) else size
    t, left = top_left  # torchvision: int(round((H - h) / 2)), Python's round-half-to-even
    np.testing.assert_array_equal(out, x[:, :, t:t + h, left:left + w])
    with pytest.raises(ShapeError, match="larger than the input"):
        CenterCrop(hw[0] + 1)(x)


@pytest.mark.parametrize("src,dst", [((8, 8), (4, 4)), ((5, 7), (3, 2)), ((4, 4), (8, 8)),
                                     ((3, 5), (7, 4)), ((6, 6), (6, 6)), ((9, 4), (4, 9))])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matches_torch(src, dst, antialias):
    torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
    x = np.random.default_rng(0).random((2, 3) + src).astype(np.float32)
    out = Resize(dst, antialias=antialias)(x)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear",
                                          align_corners=False, antialias=antialias).numpy()
    assert out.shape == (2, 3) + dst and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_resize_naive_upsample_and_constant():
    # 2 -> 4 pixels: output centres at input coordinates -0.25, 0.25, 0.75, 1.25 (clamped)
    x = np.array([[[[0.0, 1.0]]]], np.float64)
    out = Resize((1, 4))(x)
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.25, 0.75, 1.0])
    const = np.full((1, 1, 5, 7), 0.3)
    np.testing.assert_allclose(Resize((3, 11))(const), 0.3)
    with pytest.raises(ShapeError, match="float"):
        Resize(2)(np.zeros((1, 1, 4, 4), np.uint8))


def test_normalize_values_and_errors():
    x = np.random.default_rng(0).random((3, 2, 4, 4)).astype(np.float32)
    out = Normalize([0.5, 0.25], [2.0, 0.5])(x)
    np.testing.assert_allclose(out[:, 0], (x[:, 0] - 0.5) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], (x[:, 1] - 0.25) / 0.5, rtol=1e-6)
    assert out.dtype == np.float32
    assert Normalize(0.5, 0.5)(x.astype(np.float64)).dtype == np.float64
    with pytest.raises(ShapeError, match="3 channel statistics for 2-channel"):
        Normalize([0, 0, 0], [1, 1, 1])(x)
    with pytest.raises(ShapeError, match="ToFloat"):
        Normalize(0, 1)(np.zeros((1, 1, 2, 2), np.uint8))
    for mean, std in (([0, 0], [1]), (0, 0), (0, -1)):
        with pytest.raises(ConfigError):
            Normalize(mean, std)


def test_channel_stats_and_from_data():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 3, 4, 5), dtype=np.uint8)
    mean, std = channel_stats(x, batch=7)
    xf = x / 255.0
    np.testing.assert_allclose(mean, xf.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, xf.std(axis=(0, 2, 3)), rtol=1e-8)
    t = Normalize.from_data(xf.astype(np.float32))
    z = t(xf.astype(np.float32))
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_to_float():
    x = np.array([[[[0, 51, 255]]]], np.uint8)
    out = ToFloat()(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0, 51, 255], np.float32)[None, None, None] / 255)
    f = np.ones((1, 1, 1, 1), np.float64)
    assert ToFloat()(f) is f


def test_compose_pipeline_and_determinism():
    x = np.random.default_rng(0).integers(0, 256, (8, 3, 10, 10), dtype=np.uint8)
    t = Compose([ToFloat(), RandomCrop(8, padding=2), RandomHorizontalFlip(),
                 Normalize([0.5] * 3, [0.25] * 3)])
    a, b = t(x, np.random.default_rng(4)), t(x, np.random.default_rng(4))
    assert a.shape == (8, 3, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, t(x, np.random.default_rng(5)))
    assert t.random and not Compose([CenterCrop(2), Normalize(0, 1)]).random
    assert "RandomCrop(size=(8, 8), padding=(2, 2, 2, 2), fill=0.0)" in repr(t)
    with pytest.raises(ConfigError):
        Compose([1])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       pad=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_random_crop_property(n, c, h, w, pad, seed):
    x = unique_batch(n, c, h, w)
    ch = np.random.default_rng(seed).integers(1, h + 2 * pad + 1)
    cw = np.random.default_rng(seed + 1).integers(1, w + 2 * pad + 1)
    out = RandomCrop((int(ch), int(cw)), padding=pad)(x, np.random.default_rng(seed))
    assert out.shape == (n, c, ch, cw)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(n):
        assert locate(out[i], padded[i])
