"""Datasets: in-memory arrays, the named datasets of ``convnp.data.sources``, image folders.

``load_dataset("cifar10", split="train")`` returns an ``ArrayDataset`` whose ``x`` is
float32 NCHW in [0, 1] (``dtype="uint8"`` keeps the raw bytes) and ``y`` int64 labels,
with ``classes`` the class names. The first call fetches and caches the data; later calls
read the cached ``.npy`` files and touch no network, unless a file fails its check
(``sources.check_cache``): then the set is fetched again, never trained on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import sources as _src

SPLITS = ("train", "test")
DIGITS_TRAIN = 1437  # digits has no official split: the first 1,437 images train, 360 test
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                    ".webp")


class ArrayDataset:
    """Examples ``x`` (N, ...) with integer labels ``y`` (N,) and optional class names.

    ``ds[i]`` gives ``(x[i], y[i])``; ``ds[idx]`` with a slice or an index array gives the
    batch ``(x[idx], y[idx])`` (what ``DataLoader`` uses).
    """

    def __init__(self, x, y, classes=None):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim < 1:
            raise ConfigError("ArrayDataset: x must have a leading example axis")
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(f"ArrayDataset: y must be 1-d with one label per example; x has "
                              f"{len(x)} examples, y has shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise ConfigError(f"ArrayDataset: labels must be integers, got {y.dtype}")
        self.x = x
        self.y = y.astype(np.int64, copy=False)
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None and len(self.y) and int(self.y.max()) >= len(self.classes):
            raise ConfigError(f"ArrayDataset: label {int(self.y.max())} but only "
                              f"{len(self.classes)} class names")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return int(self.y.max()) + 1 if len(self.y) else 0

    def subset(self, indices) -> ArrayDataset:
        """A new dataset holding the examples at ``indices`` (copies)."""
        indices = np.asarray(indices)
        return ArrayDataset(self.x[indices], self.y[indices], self.classes)

    def split(self, n_or_fraction, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """A shuffled split into (rest, held_out); ``n_or_fraction`` sizes the held-out part."""
        n = len(self)
        k = int(round(n * n_or_fraction)) if isinstance(n_or_fraction, float) else int(n_or_fraction)
        if not 0 <= k <= n:
            raise ConfigError(f"split: held-out size {n_or_fraction!r} gives {k} of {n} examples")
        order = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(order[k:])), self.subset(np.sort(order[:k]))

    def __repr__(self):
        ncls = "" if self.classes is None else f", classes={len(self.classes)}"
        return f"{type(self).__name__}(n={len(self)}, x={self.x.shape[1:]} {self.x.dtype}{ncls})"


# --- named datasets ---------------------------------------------------------------------------


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, ``fetch`` and ``info``."""
    return sorted(list(_src.SPECS) + ["digits"])


def _canonical_name(name) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    for known in list_datasets():
        if known.replace("_", "") == key:
            return known
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _to_dtype(x_uint8: np.ndarray, dtype, scale: float) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return x_uint8
    if dt.kind != "f":
        raise ConfigError(f"dtype must be a float type or uint8, got {dt}")
    return np.divide(x_uint8, dt.type(scale), dtype=dt)  # like torchvision's ToTensor


def _digits(split: str):
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - optional, only for digits
    except ImportError:
        raise DataError("the digits dataset comes with scikit-learn: pip install scikit-learn") \
            from None
    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]  # values 0..16
    y = d.target.astype(np.uint8)
    sl = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return x[sl], y[sl], [str(c) for c in d.target_names]


def load_dataset(name: str, split: str = "train", data_dir=None, *, dtype="float32",
                 download: bool = True, label_mode: str = "fine",
                 progress: bool = True) -> ArrayDataset:
    """Load a named dataset split as an ``ArrayDataset`` (fetching it on first use).

    Args:
        name: one of ``list_datasets()`` (``mnist``, ``fashion_mnist``, ``cifar10``,
            ``cifar100``, ``digits``); dashes and underscores are optional.
        split: ``"train"`` or ``"test"``.
        data_dir: cache root; default ``$CONVNP_DATA`` or ``~/.cache/convnp``.
        dtype: ``"float32"`` (default) or ``"float64"`` scale pixels to [0, 1];
            ``"uint8"`` returns the raw bytes (digits: 0..16).
        download: fetch when not cached or when a cached file fails its check; with False
            a missing cache raises DataError and a corrupt one CorruptCache (naming the file).
        label_mode: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20).
    """
    name = _canonical_name(name)
    split = _check_split(split)
    if label_mode not in ("fine", "coarse"):
        raise ConfigError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if name == "digits":
        x, y, classes = _digits(split)
        return ArrayDataset(_to_dtype(x, dtype, 16.0), y, classes)
    spec = _src.SPECS[name]
    if not _src.is_cached(spec, data_dir):
        if not download:
            raise DataError(f"{name} is not in the cache {_src.dataset_dir(spec, data_dir)} "
                            f"and download=False; run convnp.data.fetch({name!r})")
        _src.fetch_spec(spec, data_dir, progress=progress)
    try:
        arrays, manifest = _src.load_cached(spec, split, data_dir)
    except _src.CorruptCache as err:
        if not download:
            raise
        _refetch(spec, data_dir, err, progress)
        arrays, manifest = _src.load_cached(spec, split, data_dir)
    if label_mode == "coarse":
        if not spec.num_coarse:
            raise ConfigError(f"{name} has no coarse labels (label_mode='coarse' is for cifar100)")
        y, classes = arrays["y_coarse"], manifest["coarse_classes"]
    else:
        y, classes = arrays["y"], manifest["classes"]
    return ArrayDataset(_to_dtype(arrays["x"], dtype, 255.0), y, classes)


def _refetch(spec, data_dir, err: _src.CorruptCache, progress: bool) -> None:
    """Fetch a corrupt cached set again, saying so; DataError naming the bad files if that fails."""
    corrupt = f"{spec.name}: the cache is corrupt: {'; '.join(err.problems)}"
    print(f"convnp: {corrupt}; fetching {spec.name} again", file=sys.stderr, flush=True)
    try:
        _src.fetch_spec(spec, data_dir, force=True, progress=progress)
    except DataError as fetch_err:
        raise DataError(f"{corrupt}; fetching it again failed: {fetch_err}") from None


def _checked(checked: dict) -> str:
    """What a cache check did, from ``sources.check_cache``'s {file: (how, when)}."""
    hashed = [when for how, when in checked.values() if how == "sha256"]
    stamped = [when for how, when in checked.values() if how == "stamp"]
    parts = [f"{len(hashed)} array files by SHA-256 at {max(hashed)}"] if hashed else []
    if stamped:
        parts.append(f"{len(stamped)} array files by size and mtime against their SHA-256 check at "
                     f"{min(stamped)}")
    return ", ".join(parts)


def verify(name: str, data_dir=None) -> str:
    """Re-hash every cached file of ``name`` against the SHA-256 recorded at fetch time; a report.

    CorruptCache (a DataError) names each file that differs; nothing is fetched.
    """
    name = _canonical_name(name)
    if name == "digits":
        return "digits: nothing to verify (scikit-learn's own data file, not convnp's cache)"
    spec = _src.SPECS[name]
    if not _src.is_cached(spec, data_dir):
        raise DataError(f"{name} is not in the cache {_src.dataset_dir(spec, data_dir)}; run "
                        f"convnp data fetch {name}")
    checked = _src.verify_cache(spec, data_dir)
    return f"{name}: {_src.dataset_dir(spec, data_dir)} is intact: checked {_checked(checked)}"


def fetch(name: str, data_dir=None, *, force: bool = False, progress: bool = True) -> Path:
    """Download, verify and cache a named dataset; return its cache folder.

    ``digits`` needs no download: its scikit-learn data file is returned.
    """
    name = _canonical_name(name)
    if name == "digits":
        try:
            import sklearn.datasets  # noqa: PLC0415
        except ImportError:
            raise DataError("the digits dataset comes with scikit-learn: pip install "
                            "scikit-learn") from None
        return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return _src.fetch_spec(_src.SPECS[name], data_dir, force=force, progress=progress)


def channel_stats(data, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NCHW images (an array or a dataset).

    Accumulated in float64 over chunks; uint8 input is scaled to [0, 1] first, so the
    result can be passed to ``Normalize`` for float data loaded by ``load_dataset``.
    """
    x = data.x if hasattr(data, "x") else np.asarray(data)
    if x.ndim != 4:
        raise ConfigError(f"channel_stats expects NCHW images, got shape {x.shape}")
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    c = x.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch].astype(np.float64) * scale
        s += chunk.sum(axis=(0, 2, 3))
        ss += np.square(chunk).sum(axis=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    if count == 0:
        raise ConfigError("channel_stats of an empty set")
    mean = s / count
    std = np.sqrt(np.maximum(ss / count - mean ** 2, 0.0))
    return mean, std


def info(name: str, data_dir=None, *, download: bool = True, progress: bool = True) -> str:
    """A short report: counts, shapes, label histograms, per-channel mean/std, cache path."""
    name = _canonical_name(name)
    if name == "digits":
        where, source = "scikit-learn (no download)", "sklearn.datasets.load_digits"
        title = "scikit-learn 8x8 digits"
    else:
        spec = _src.SPECS[name]
        if not _src.is_cached(spec, data_dir) and download:
            _src.fetch_spec(spec, data_dir, progress=progress)
        try:
            checked = f"  checked: {_checked(_src.check_cache(spec, data_dir))}"
        except _src.CorruptCache as err:
            if not download:
                raise
            _refetch(spec, data_dir, err, progress)
            again = _checked(_src.check_cache(spec, data_dir))
            checked = f"  checked: found {'; '.join(err.problems)}; fetched again, then checked {again}"
        manifest = _src.read_manifest(spec, data_dir)
        where, title = _src.dataset_dir(spec, data_dir), spec.title
        source = f"{manifest['source']} (fetched {manifest.get('fetched', '?')})"
    lines = [f"{name}: {title}", f"  cache:  {where}", f"  source: {source}"]
    if name != "digits":
        lines.append(checked + f" (a full check: convnp data verify {name})")
    for split in SPLITS:
        ds = load_dataset(name, split, data_dir, dtype="uint8", download=download,
                          progress=progress)
        if split == "train":
            names = ds.classes
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            lines.append(f"  classes ({len(names)}): {shown}")
            if name != "digits" and "coarse_classes" in manifest:
                coarse = manifest["coarse_classes"]
                lines.append(f"  coarse classes ({len(coarse)}, label_mode='coarse'): "
                             + ", ".join(coarse[:8]) + (", ..." if len(coarse) > 8 else ""))
        hist = np.bincount(ds.y, minlength=ds.num_classes)
        c, h, w = ds.x.shape[1:]
        lines.append(f"  {split:5s} {len(ds):>7,} images {c}x{h}x{w} uint8, per class "
                     f"min {hist.min():,} max {hist.max():,}")
        lines.append("        label histogram: " + " ".join(str(int(v)) for v in hist))
        if split == "train":
            x = ds.x.astype(np.float32) / 16.0 if name == "digits" else ds.x
            mean, std = channel_stats(x)
            fmt = lambda v: "(" + ", ".join(f"{t:.4f}" for t in v) + ")"  # noqa: E731
            lines.append(f"        mean {fmt(mean)} std {fmt(std)} (pixels in [0, 1])")
    return "\n".join(lines)


# --- image folders ----------------------------------------------------------------------------


class ImageFolder(ArrayDataset):
    """Images in ``root/<class name>/<image>``: one sub-folder per class, sorted by name.

    Every image is read with Pillow, converted to ``mode`` (``"RGB"`` or grey ``"L"``) and
    resized to ``size`` = (H, W) with bilinear filtering; with ``size=None`` all images must
    already share one size. The whole folder is loaded into memory as NCHW, float32 in [0, 1]
    (``dtype="uint8"`` keeps bytes). ``samples`` lists ``(path, label)`` in order.
    """

    def __init__(self, root, size=(32, 32), mode: str = "RGB", dtype="float32",
                 extensions=IMAGE_EXTENSIONS):
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - pillow only here

        from .._util import pair  # noqa: PLC0415

        if mode not in ("RGB", "L"):
            raise ConfigError(f"ImageFolder: mode must be 'RGB' or 'L', got {mode!r}")
        size = pair(size, "ImageFolder size") if size is not None else None
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"ImageFolder: {root} is not a folder")
        exts = tuple(e.lower() for e in extensions)
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"ImageFolder: {root} has no class sub-folders (expected "
                            f"root/<class>/<image>)")
        samples = []
        for label, d in enumerate(class_dirs):
            files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in exts
                           and not p.name.startswith("."))
            samples.extend((p, label) for p in files)
        if not samples:
            raise DataError(f"ImageFolder: no images with extensions {', '.join(exts)} under "
                            f"{root} ({len(class_dirs)} class folders)")
        channels = 3 if mode == "RGB" else 1
        arrays = []
        for path, _ in samples:
            try:
                with Image.open(path) as im:
                    im = im.convert(mode)
                    if size is not None and im.size != (size[1], size[0]):
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"ImageFolder: cannot read image {path}: {exc}") from None
            a = a.reshape(a.shape[0], a.shape[1], channels).transpose(2, 0, 1)
            if arrays and a.shape != arrays[0].shape:
                raise DataError(f"ImageFolder: {path} is {a.shape[2]}x{a.shape[1]} but "
                                f"{samples[0][0]} is {arrays[0].shape[2]}x{arrays[0].shape[1]}; "
                                f"pass size=(H, W) to resize")
            arrays.append(a)
        x = np.stack(arrays)
        super().__init__(_to_dtype(x, dtype, 255.0), [lbl for _, lbl in samples],
                         [d.name for d in class_dirs])
        self.root = root
        self.samples = [(str(p), lbl) for p, lbl in samples]
