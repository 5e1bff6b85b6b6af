"""The training report: its analyses checked against hand-made nets and naive loops, and the
HTML page built from a real (short) training run, parsed, and rendered in headless Chromium."""

from __future__ import annotations

import base64
import html
import shutil
import struct
import sys
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ConvnpError, ShapeError
from convnp.layers.activation import ReLU
from convnp.layers.conv import Conv2d
from convnp.layers.linear import Flatten, Linear
from convnp.layers.pool import MaxPool2d
from convnp.losses import probabilities
from convnp.nets.graph import Add, Graph
from convnp.nets.sequential import Sequential
from convnp.report import (
    SECTIONS,
    MissingDependencyError,
    activation_maps,
    build_report,
    confusion_matrix,
    default_activation_layers,
    filter_grid,
    most_confident_mistakes,
    occlusion_map,
    occlusion_pixel_map,
    per_class_accuracy,
    saliency_map,
    tile_images,
)
from tests.gradcheck import numerical_gradient, rel_error


# --- helpers ----------------------------------------------------------------------------------------
def png_info(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG after checking its signature, every chunk's CRC and that the
    image data inflates to exactly the size its header promises."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert w > 0 and h > 0 and interlace == 0
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == h * (1 + (w * channels * depth + 7) // 8)
    return w, h


class PageParser(HTMLParser):
    """Collects section ids, <img> srcs (with the section they sit in), scripts and external refs."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.scripts, self.refs, self.csp = [], [], 0, [], None
        self.current = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.sections.append(self.current)
        elif tag == "img":
            self.images.append((self.current, a.get("src", ""), a))
        elif tag == "script":
            self.scripts += 1
        elif tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a.get("content")
        for key in ("src", "href"):
            if key in a and not (a[key].startswith("data:") or a[key].startswith("#")):
                self.refs.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


def parse_page(path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


# --- a real (short) run -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")
    from convnp.app.run import RunConfig, train_run

    out = tmp_path_factory.mktemp("report_run")
    train_run(RunConfig(data="digits", epochs=2, out_dir=str(out)), progress=False)
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (the report extra)")
    return build_report(run_dir)


def test_report_has_every_section_and_valid_embedded_pngs(report, run_dir):
    assert report == run_dir / "report.html"
    page = parse_page(report)
    assert page.sections == [sid for sid, _ in SECTIONS]
    assert page.scripts == 0, "the report must not need JavaScript"
    assert page.refs == [], f"the report must be self-contained, found references {page.refs}"
    assert page.csp and "default-src 'none'" in page.csp
    assert len(page.images) > 20
    for section, src, attrs in page.images:
        assert src.startswith("data:image/png;base64,"), (section, src[:40])
        w, h = png_info(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert (int(attrs["width"]), int(attrs["height"])) == (w, h)
    with_images = {section for section, _, _ in page.images}
    assert {"training", "filters", "activations", "confusion", "mistakes", "saliency"} <= with_images


def test_report_numbers_match_the_net(report, run_dir):
    """The accuracy and per-class counts in the page are the saved net's, recomputed here."""
    from convnp.data import load_dataset
    from convnp.data.transforms import Normalize
    from convnp.io.model_file import load_model

    net, extra = load_model(run_dir / "model.safetensors", with_meta=True)
    test = load_dataset("digits", "test")
    pred = net.forward(Normalize(extra["mean"], extra["std"])(test.x)).argmax(1)
    acc = float(np.mean(pred == test.y))
    assert acc == pytest.approx(extra["test_accuracy"])
    text = report.read_text()
    assert f"test accuracy <b>{acc:.4f}</b>" in text
    assert f"Accuracy on {len(test.y):,} test images: <b>{acc:.4f}</b>" in text
    cm = confusion_matrix(test.y, pred, 10)
    for k in range(10):
        assert f"<td>{k}</td><td class=\"num\">{cm[k].sum()}</td><td class=\"num\">{cm[k, k]}</td>" in text
    assert "Conv2d(1, 16, kernel_size=3, padding=1)" in text  # the filters' layer
    assert '<code>"nesterov"</code>' in html.unescape(text)  # config.json's settings


def test_report_browser_renders_without_errors(report, tmp_path):
    """Headless Chromium loads the page (file://): no console errors or failed loads, no
    request leaves file:/data:, every <img> decodes (HTMLImageElement.decode() resolves) with a
    non-zero natural and rendered size, and the screenshot is a real, non-blank picture."""
    from convnp.report.browser import check_page, find_browser

    if find_browser() is None:
        pytest.skip("no Chromium/Chrome installed (apt-get install chromium); the browser check needs one")
    shot = tmp_path / "report.png"
    check = check_page(report, screenshot=shot, width=1280, max_height=4000)
    assert check.errors == []
    assert check.external_requests == []
    assert check.broken_images == []
    assert len(check.images) == len(parse_page(report).images)
    assert check.sections == [sid for sid, _ in SECTIONS]
    assert check.scripts == 0
    w, h = png_info(shot.read_bytes())
    assert w == 1280 and h == min(check.height, 4000) and check.height > 2000
    Image = pytest.importorskip("PIL.Image", reason="pillow decodes the screenshot")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is blank"
    print(f"screenshot: {shot}")


def test_browser_check_catches_a_broken_page(tmp_path):
    """The browser check is not vacuous: a corrupt data-URI PNG, a zero-size image, an outside
    request and a console error are all reported."""
    from convnp.report.browser import check_page, find_browser

    if find_browser() is None:
        pytest.skip("no Chromium/Chrome installed (apt-get install chromium); the browser check needs one")
    good = base64.b64encode(_tiny_png()).decode()
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body>"
        f'<img src="data:image/png;base64,{good}">'
        '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB">'
        f'<img src="data:image/png;base64,{good}" width="0" height="0">'
        '<img src="http://127.0.0.1:9/nothing.png">'
        "<script>console.error('boom')</script></body></html>")
    check = check_page(page)
    assert [im["decoded"] for im in check.images] == [True, False, True, False]
    assert len(check.broken_images) == 3
    assert check.external_requests == ["http://127.0.0.1:9/nothing.png"]
    assert any("boom" in e for e in check.errors)
    assert check.scripts == 1


def _tiny_png() -> bytes:
    """A valid 2x1 grey PNG, written by hand."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = zlib.compress(b"\x00\x00\xff")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_report_rebuilds_from_a_checkpoint_only(run_dir, tmp_path):
    """A run stopped before the end has no model.safetensors; its checkpoint's config rebuilds the net."""
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (the report extra)")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("checkpoint.safetensors", "history.json", "config.json"):
        shutil.copy(run_dir / name, partial / name)
    out = build_report(partial, out=tmp_path / "r.html", num_images=2, eval_limit=50)
    page = parse_page(out)
    assert page.sections == [sid for sid, _ in SECTIONS]
    assert "checkpoint.safetensors" in out.read_text()


def test_report_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(ConfigError, match="neither model.safetensors nor checkpoint"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="num_images"):
        build_report(tmp_path, num_images=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    with pytest.raises(MissingDependencyError, match=r"convnp\[report\]") as info:
        build_report(tmp_path)
    assert isinstance(info.value, ConvnpError) and isinstance(info.value, ImportError)


# --- saliency --------------------------------------------------------------------------------------------
def linear_net(c, h, w, k, seed=0):
    return Sequential(Flatten(), Linear(c * h * w, k, rng=seed, dtype="float64"))


@pytest.mark.parametrize("c,h,w,k", [(1, 4, 4, 3), (3, 5, 6, 4), (2, 3, 3, 2)])
def test_saliency_of_a_linear_net_is_abs_weights(c, h, w, k, rng):
    net = linear_net(c, h, w, k)
    weight = net[1].params["weight"]  # (k, c*h*w), PyTorch's layout
    x = rng.standard_normal((k, c, h, w))
    classes = np.arange(k)[::-1].copy()
    sal = saliency_map(net, x, classes)
    expected = np.abs(weight[classes].reshape(k, c, h, w)).max(axis=1)
    np.testing.assert_allclose(sal, expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(saliency_map(net, x[0], 1), np.abs(weight[1].reshape(c, h, w)).max(0))


@pytest.mark.parametrize("cls", [0, 2])
def test_saliency_equals_numerical_gradient_of_the_class_score(cls, rng):
    net = Sequential(Conv2d(2, 3, 3, padding=1, rng=1, dtype="float64"), ReLU(), MaxPool2d(2), Flatten(),
                     Linear(3 * 3 * 3, 4, rng=2, dtype="float64"))
    x = rng.standard_normal((2, 6, 6))
    numeric = numerical_gradient(lambda: net.forward(x[None])[0, cls], x)
    expected = np.abs(numeric).max(axis=0)
    assert rel_error(saliency_map(net, x, cls), expected) < 1e-7


def test_saliency_errors(rng):
    net = linear_net(1, 2, 2, 3)
    with pytest.raises(ShapeError):
        saliency_map(net, rng.standard_normal((2, 2)), 0)
    with pytest.raises(ShapeError):
        saliency_map(net, np.ones((1, 2, 2), dtype=np.int64), 0)
    with pytest.raises(ConfigError, match="out of range"):
        saliency_map(net, rng.standard_normal((1, 2, 2)), 3)
    with pytest.raises(ConfigError):
        saliency_map(net, rng.standard_normal((2, 1, 2, 2)), [0, 1, 2])


# --- occlusion -------------------------------------------------------------------------------------------
def patch_net(c, h, w, region):
    """Class 0's score is the sum of the pixels in ``region`` (all channels); class 1's is 0."""
    net = linear_net(c, h, w, 2)
    mask = np.zeros((c, h, w))
    mask[:, region[0], region[1]] = 1.0
    net[1].params["weight"][...] = np.stack([mask.ravel(), np.zeros(c * h * w)])
    net[1].params["bias"][...] = 0.0
    return net


def naive_occlusion(net, x, k, patch, stride, fill):
    """Plain loops: zero each clipped window in turn and record the drop of p(k)."""
    _, h, w = x.shape
    base = probabilities(net.forward(x[None]))[0, k]
    rows = []
    top = 0
    while True:
        cols, left = [], 0
        while True:
            occluded = x.copy()
            occluded[:, top:top + patch, left:left + patch] = fill
            cols.append(base - probabilities(net.forward(occluded[None]))[0, k])
            if left + patch >= w:
                break
            left += stride
        rows.append(cols)
        if top + patch >= h:
            break
        top += stride
    return np.array(rows)


@pytest.mark.parametrize("c,h,w,patch,stride", [(1, 12, 12, 4, 4), (3, 10, 13, 3, 2), (2, 9, 9, 4, 3)])
def test_occlusion_finds_the_informative_patch(c, h, w, patch, stride, rng):
    top, left = stride * 1, stride * 1  # the informative region is exactly one patch position
    region = (slice(top, top + patch), slice(left, left + patch))
    net = patch_net(c, h, w, region)
    x = rng.uniform(0.2, 1.0, (c, h, w))
    drops = occlusion_map(net, x, 0, patch, stride, fill=0.0)
    np.testing.assert_allclose(drops, naive_occlusion(net, x, 0, patch, stride, 0.0), atol=1e-12)
    assert np.unravel_index(np.argmax(drops), drops.shape) == (1, 1)
    assert drops[1, 1] > 0
    # patches that miss the region change nothing at all
    for i in range(drops.shape[0]):
        for j in range(drops.shape[1]):
            overlaps = abs(i * stride - top) < patch and abs(j * stride - left) < patch
            if not overlaps:
                assert drops[i, j] == 0.0
    pixels = occlusion_pixel_map(drops, (h, w), patch, stride)
    naive = np.zeros((h, w))
    for r in range(h):
        for q in range(w):
            covering = [drops[i, j] for i in range(drops.shape[0]) for j in range(drops.shape[1])
                        if i * stride <= r < i * stride + patch and j * stride <= q < j * stride + patch]
            naive[r, q] = np.mean(covering)
    np.testing.assert_allclose(pixels, naive, atol=1e-12)
    assert pixels[region].min() > 0
    assert np.unravel_index(np.argmax(pixels), pixels.shape) in {(r, q) for r in range(top, top + patch)
                                                                   for q in range(left, left + patch)}
    np.testing.assert_array_equal(occlusion_map(net, x, 0, patch, stride, batch_size=1), drops)


def test_occlusion_fill_per_channel_and_errors(rng):
    net = patch_net(2, 6, 6, (slice(0, 3), slice(0, 3)))
    x = rng.uniform(size=(2, 6, 6))
    same = occlusion_map(net, x, 0, 3, 3, fill=[0.5, 0.5])
    np.testing.assert_allclose(same, occlusion_map(net, x, 0, 3, 3, fill=0.5))
    np.testing.assert_allclose(same, naive_occlusion(net, x, 0, 3, 3, 0.5), atol=1e-12)
    with pytest.raises(ConfigError, match="larger than"):
        occlusion_map(net, x, 0, 7, 1)
    with pytest.raises(ConfigError, match="fill"):
        occlusion_map(net, x, 0, 3, 3, fill=[0.0, 0.0, 0.0])
    with pytest.raises(ShapeError, match="one image"):
        occlusion_map(net, x[None], 0, 3, 3)
    with pytest.raises(ConfigError):
        occlusion_map(net, x, 5, 3, 3)
    with pytest.raises(ShapeError):
        occlusion_pixel_map(np.zeros((3, 3)), (6, 6), 3, 3)


# --- confusion matrix and mistakes ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), max_size=40))))
def test_confusion_matrix_equals_naive_count(case):
    k, pairs = case
    t = np.array([p[0] for p in pairs], dtype=np.int64)
    p = np.array([p[1] for p in pairs], dtype=np.int64)
    cm = confusion_matrix(t, p, k)
    naive = np.zeros((k, k), dtype=np.int64)
    for a, b in pairs:
        naive[a, b] += 1
    np.testing.assert_array_equal(cm, naive)
    assert cm.dtype == np.int64 and cm.sum() == len(pairs)
    acc = per_class_accuracy(cm)
    for c in range(k):
        n = int(np.sum(t == c))
        if n == 0:
            assert np.isnan(acc[c])
        else:
            assert acc[c] == pytest.approx(np.sum((t == c) & (p == c)) / n)


def test_confusion_matrix_errors():
    with pytest.raises(ConfigError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ConfigError, match="outside"):
        confusion_matrix([0, 1], [0, -1], 3)
    with pytest.raises(ShapeError, match="differ in length"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ShapeError):
        confusion_matrix([0.0, 1.0], [0, 1], 3)
    with pytest.raises(ConfigError):
        confusion_matrix([0], [0], 0)


def test_most_confident_mistakes():
    probs = np.array([[0.9, 0.1, 0.0],    # right
                      [0.2, 0.7, 0.1],    # wrong, p 0.7
                      [0.05, 0.05, 0.9],  # wrong, p 0.9
                      [0.1, 0.7, 0.2],    # wrong, p 0.7 (tie: later index)
                      [0.3, 0.3, 0.4]])   # right
    y = np.array([0, 0, 1, 2, 2])
    got = most_confident_mistakes(probs, y, k=10)
    assert [(m.index, m.true, m.pred) for m in got] == [(2, 1, 2), (1, 0, 1), (3, 2, 1)]
    assert [m.prob for m in got] == pytest.approx([0.9, 0.7, 0.7])
    assert [m.index for m in most_confident_mistakes(probs, y, k=2)] == [2, 1]
    assert most_confident_mistakes(probs[[0, 4]], y[[0, 4]]) == []
    with pytest.raises(ShapeError):
        most_confident_mistakes(probs, y[:3])
    with pytest.raises(ConfigError):
        most_confident_mistakes(probs, y, k=-1)


def test_training_curves_add_accuracy_against_time_when_timed():
    pytest.importorskip("matplotlib", reason="the report's plots need the report extra (matplotlib)")
    from convnp.report.plots import training_curves_png

    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.5 + e / 20, "val_loss": 2.1 / e,
             "val_accuracy": 0.5 + e / 25, "lr": 0.1, "time": 60.0 * e} for e in range(1, 6)]
    timed = png_info(training_curves_png(rows))
    untimed = png_info(training_curves_png([{k: v for k, v in r.items() if k != "time"} for r in rows]))
    no_val = png_info(training_curves_png([{k: v for k, v in r.items() if not k.startswith("val")} for r in rows]))
    assert timed[1] == untimed[1] == no_val[1]
    assert timed[0] == untimed[0] * 4 // 3 and no_val[0] == untimed[0]  # a fourth panel, same size each


# --- filters and activations ---------------------------------------------------------------------------------
def test_filter_grid_rgb_tiles_are_each_filter_scaled_to_unit(rng):
    w = rng.standard_normal((5, 3, 4, 4))
    w[4] = 2.5  # a constant filter
    grid = filter_grid(w, ncols=3, pad=1, pad_value=1.0)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    for k in range(5):
        r, c = divmod(k, 3)
        tile = grid[1 + r * 5:1 + r * 5 + 4, 1 + c * 5:1 + c * 5 + 4]
        f = w[k].transpose(1, 2, 0)
        expected = np.full_like(f, 0.5) if k == 4 else (f - f.min()) / (f.max() - f.min())
        np.testing.assert_allclose(tile, expected, atol=1e-12)
    assert np.all(grid[0] == 1.0) and np.all(grid[:, 0] == 1.0)  # the padding
    assert np.all(grid[6:, 11:] == 1.0)  # the empty sixth slot


def test_filter_grid_grey_shows_every_channel(rng):
    w = rng.standard_normal((4, 1, 3, 3))
    grid = filter_grid(w, pad=0)
    assert grid.shape == (6, 6)  # 2x2 tiles of 3x3
    np.testing.assert_allclose(grid[:3, 3:], (w[1, 0] - w[1].min()) / (w[1].max() - w[1].min()))
    w2 = rng.standard_normal((2, 2, 3, 3))
    grid2 = filter_grid(w2, ncols=2, pad=0)
    assert grid2.shape == (6, 6)
    f = w2[1]
    np.testing.assert_allclose(grid2[3:, 3:], (f[1] - f.min()) / (f.max() - f.min()))  # jointly per filter
    with pytest.raises(ShapeError):
        filter_grid(rng.standard_normal((3, 3, 3)))
    with pytest.raises(ShapeError):
        tile_images(np.zeros((0, 2, 2)))


def lenet_like(seed=0):
    features = Sequential(Conv2d(1, 4, 3, padding=1, rng=seed), ReLU(), MaxPool2d(2),
                          Conv2d(4, 6, 3, padding=1, rng=seed + 1), ReLU(), MaxPool2d(2))
    return Sequential([("features", features), ("flatten", Flatten()),
                       ("classifier", Sequential(Linear(6 * 2 * 2, 10, rng=seed + 2)))])


def test_activation_maps_match_running_the_layers_by_hand(rng):
    net = lenet_like()
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    names = default_activation_layers(net)
    assert names == ["features.0", "features.1", "features.4"]
    maps = activation_maps(net, x, names + ["flatten"])
    assert list(maps) == names + ["flatten"]
    f = net.features
    a0 = f[0].forward(x)
    a1 = f[1].forward(a0)
    a4 = f[4].forward(f[3].forward(f[2].forward(a1)))
    np.testing.assert_array_equal(maps["features.0"], a0)
    np.testing.assert_array_equal(maps["features.1"], a1)
    np.testing.assert_array_equal(maps["features.4"], a4)
    assert maps["flatten"].shape == (3, 24)
    assert all("forward" not in layer.__dict__ for _, layer in net.named_modules())  # nothing left patched


def test_activation_maps_in_a_graph_and_errors(rng):
    conv = Conv2d(2, 2, 3, padding=1, rng=0, dtype="float64")
    net = Graph([("conv", conv, "input"), ("relu", ReLU(), "conv"), ("add", Add(), ["relu", "input"]),
                 ("flat", Flatten(), "add"), ("fc", Linear(2 * 4 * 4, 3, rng=1, dtype="float64"), "flat")])
    x = rng.standard_normal((2, 2, 4, 4))
    maps = activation_maps(net, x, ["add", "relu"])
    relu = np.maximum(conv.forward(x), 0)
    np.testing.assert_allclose(maps["relu"], relu)
    np.testing.assert_allclose(maps["add"], relu + x)
    assert default_activation_layers(net) == ["conv", "relu"]
    with pytest.raises(ConfigError, match="unknown layer"):
        activation_maps(net, x, ["nope"])
    with pytest.raises(ShapeError):
        activation_maps(net, x[:, :1], ["relu"])
    assert all("forward" not in layer.__dict__ for _, layer in net.named_modules())
    assert default_activation_layers(linear_net(1, 2, 2, 2)) == []
