"""ImageFolder on PNG/JPEG files written here, the digits set, info() on a cached tiny set."""

import numpy as np
import pytest

from convnp.data import ImageFolder, info, load_dataset
from convnp.errors import ConfigError, DataError

Image = pytest.importorskip("PIL.Image", reason="ImageFolder reads images with Pillow")


def write(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    write(root / "dog" / "b.png", np.full((8, 8, 3), (10, 20, 30), np.uint8))
    write(root / "dog" / "a.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    write(root / "cat" / "z.png", rng.integers(0, 256, (12, 6), dtype=np.uint8))  # grey, other size
    write(root / "cat" / "sub" / "deep.PNG", rng.integers(0, 256, (5, 9, 4), dtype=np.uint8))  # RGBA
    write(root / "cat" / "photo.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "emu").mkdir()  # a class with no images still gets its label
    return root


def test_image_folder_rgb(folder):
    ds = ImageFolder(folder, size=(8, 8))
    assert ds.classes == ["cat", "dog", "emu"]
    names = [p.split("imgs/")[1] for p, _ in ds.samples]
    assert names == ["cat/photo.jpg", "cat/sub/deep.PNG", "cat/z.png", "dog/a.png", "dog/b.png"]
    assert ds.x.shape == (5, 3, 8, 8) and ds.x.dtype == np.float32
    assert ds.y.tolist() == [0, 0, 0, 1, 1]
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    # an image already 8x8 is not resampled: exact bytes, channel-first
    np.testing.assert_array_equal(ds.x[4, :, 3, 5], np.array([10, 20, 30], np.float32) / 255)
    grey = ds.x[2]  # grey converted to RGB: three equal channels
    np.testing.assert_array_equal(grey[0], grey[1])
    raw = ImageFolder(folder, size=8, dtype="uint8")
    assert raw.x.dtype == np.uint8 and raw.x[4, 2, 0, 0] == 30


def test_image_folder_grey_and_resize_matches_pillow(folder):
    ds = ImageFolder(folder, size=(4, 3), mode="L", dtype="uint8")
    assert ds.x.shape == (5, 1, 4, 3)
    with Image.open(folder / "cat" / "z.png") as im:
        ref = np.asarray(im.convert("L").resize((3, 4), Image.BILINEAR))
    np.testing.assert_array_equal(ds.x[2, 0], ref)


def test_image_folder_same_size_required_without_resize(folder):
    with pytest.raises(DataError, match="pass size=\\(H, W\\)"):
        ImageFolder(folder, size=None)
    only_dogs = folder.parent / "dogs"
    write(only_dogs / "dog" / "1.png", np.zeros((3, 4, 3), np.uint8))
    write(only_dogs / "dog" / "2.png", np.ones((3, 4, 3), np.uint8))
    assert ImageFolder(only_dogs, size=None).x.shape == (2, 3, 3, 4)


def test_image_folder_errors(tmp_path, folder):
    with pytest.raises(DataError, match="is not a folder"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    write(tmp_path / "flat" / "x.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"no images with extensions .png.*1 class folders"):
        ImageFolder(tmp_path / "empty")
    bad = folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="cannot read image .*dog/broken.png"):
        ImageFolder(folder)
    noise = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    whole = write(tmp_path / "t.png", noise).read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        ImageFolder(folder)
    with pytest.raises(ConfigError):
        ImageFolder(folder, mode="CMYK")
    with pytest.raises(ConfigError):
        ImageFolder(folder, size=(0, 4))


def test_digits():
    pytest.importorskip("sklearn", reason="digits ships with scikit-learn")
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.dtype == np.float32 and train.x.max() == 1.0 and train.x.min() == 0.0
    assert load_dataset("digits", dtype="uint8").x.max() == 16
    assert train.classes == [str(d) for d in range(10)]
    assert sorted(set(test.y.tolist())) == list(range(10))
    text = info("digits")
    assert "train   1,437 images 1x8x8" in text and "test      360 images" in text
    with pytest.raises(ConfigError, match="split"):
        load_dataset("digits", "val")
    with pytest.raises(ConfigError, match="dtype"):
        load_dataset("digits", dtype="int32")
    with pytest.raises(ConfigError, match="coarse"):
        load_dataset("digits", label_mode="medium")
