"""``build_report``: one self-contained HTML page about a training run.

The page needs nothing but itself: pictures are base64 PNG data URIs, the CSS is inline,
there is no JavaScript, and a Content-Security-Policy forbids every other source, so it
reads the same offline, in a mail attachment or in a CI artifact.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import struct
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import analysis as A
from . import plots as P

__all__ = ["SECTIONS", "build_report", "load_run"]

#: (id, title) of every <section>, in page order.
SECTIONS = (
    ("training", "Training curves"),
    ("filters", "First-layer filters"),
    ("activations", "Activation maps"),
    ("confusion", "Confusion matrix and per-class accuracy"),
    ("mistakes", "Most confident mistakes"),
    ("saliency", "Saliency and occlusion sensitivity"),
    ("summary", "Network summary"),
    ("settings", "Run settings and time"),
)

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 0; background: #f5f6f8; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 20px 32px; }
header h1 { margin: 8px 0 4px; font-size: 26px; }
.facts { color: #4a5468; margin: 0 0 10px; }
nav ol { display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 0; margin: 8px 0 0; list-style: none; }
nav a { color: #2456b3; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; margin: 16px 0; padding: 4px 16px 16px; }
h2 { font-size: 20px; border-bottom: 1px solid #e6e9ef; padding-bottom: 6px; }
h3 { font-size: 16px; margin: 16px 0 6px; }
p.note { color: #5a6478; font-size: 13.5px; margin: 4px 0 10px; }
img { display: block; image-rendering: pixelated; max-width: 100%; height: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 12.5px; color: #3c4558; margin-top: 3px; max-width: 380px; }
.card { border: 1px solid #e3e6ec; border-radius: 6px; padding: 6px; background: #fbfbfd; }
.triple { display: flex; gap: 4px; }
.mistake figcaption { max-width: 150px; }
.row { display: flex; gap: 14px; align-items: flex-start; margin-bottom: 12px; flex-wrap: wrap; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #e6e9ef; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f3f4f7; padding: 10px; border-radius: 6px; font-size: 12.5px; overflow-x: auto; }
.bad { color: #b3261e; } .good { color: #1e7a34; }
footer { color: #6b7487; font-size: 12.5px; text-align: center; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# --- loading a run --------------------------------------------------------------------------------------
def _read_json(path: Path, default):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"report: {path} is not valid JSON: {err}") from None


def load_run(run_dir) -> dict:
    """What a run directory holds: {"net", "extra", "config", "history", "source"}.

    The net comes from ``model.safetensors`` (with its classes and input normalisation);
    a run stopped before the end has only ``checkpoint.safetensors``, whose saved config
    rebuilds the net (the normalisation is then recomputed from the training split).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"report: run directory {str(run_dir)!r} does not exist")
    config = _read_json(run_dir / "config.json", {})
    history = _read_json(run_dir / "history.json", [])
    model_path, ckpt_path = run_dir / "model.safetensors", run_dir / "checkpoint.safetensors"
    if model_path.exists():
        from ..io.model_file import load_model  # noqa: PLC0415

        net, extra = load_model(model_path, with_meta=True)
        source = model_path
    elif ckpt_path.exists():
        net, extra, meta = _net_from_checkpoint(ckpt_path, config)
        config = config or meta.get("config", {})
        history = history or meta.get("history", [])
        source = ckpt_path
    else:
        raise ConfigError(f"report: {run_dir} has neither model.safetensors nor checkpoint.safetensors; "
                          "train first (convnp train --out DIR)")
    return {"net": net, "extra": dict(extra), "config": config, "history": history, "source": source,
            "run_dir": run_dir}


def _net_from_checkpoint(path: Path, config: dict):
    from ..data import load_dataset  # noqa: PLC0415
    from ..data.transforms import Normalize  # noqa: PLC0415
    from ..train.checkpoint import load_checkpoint  # noqa: PLC0415
    from ..app.run import build_net  # noqa: PLC0415

    arrays, meta = load_checkpoint(path)
    cfg = config or meta.get("config") or {}
    if not cfg.get("model") or not cfg.get("data"):
        raise ConfigError(f"report: {path} records no model/dataset in its config; cannot rebuild the net")
    train = load_dataset(cfg["data"], "train", data_dir=cfg.get("data_dir"), progress=False)
    input_shape = tuple(int(s) for s in train.x.shape[1:])
    net = build_net(cfg["model"], input_shape, len(train.classes), cfg.get("seed", 0))
    net.load_state_dict({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
    norm = Normalize.from_data(train)
    extra = {"classes": list(train.classes), "input_shape": list(input_shape), "dataset": cfg["data"],
             "mean": norm.mean.tolist(), "std": norm.std.tolist()}
    return net, extra, meta


def _test_data(dataset, run: dict):
    if dataset is not None and not isinstance(dataset, str):
        if not all(hasattr(dataset, a) for a in ("x", "y")):
            raise ConfigError(f"report: dataset must be a name or have .x, .y (and .classes), got {type(dataset).__name__}")
        return dataset, getattr(dataset, "name", type(dataset).__name__)
    name = dataset or run["extra"].get("dataset") or run["config"].get("data")
    if not name:
        raise ConfigError("report: the run does not record its dataset; pass dataset=NAME")
    from ..data import load_dataset  # noqa: PLC0415

    return load_dataset(name, "test", data_dir=run["config"].get("data_dir"), progress=False), name


# --- HTML helpers ---------------------------------------------------------------------------------------
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def _img(png: bytes, alt: str, scale: float = 1.0) -> str:
    w, h = _png_size(png)
    data = base64.b64encode(png).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}" '
            f'width="{round(w * scale)}" height="{round(h * scale)}">')


def _figure(png: bytes, alt: str, caption: str = "", cls: str = "", scale: float = 1.0) -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    attr = f' class="{cls}"' if cls else ""
    return f"<figure{attr}>{_img(png, alt, scale)}{cap}</figure>"


def _table(header, rows, num_cols=()) -> str:
    """A table; ``header`` None for none. Cells are HTML already (escape text with _e)."""
    def cell(tag, i, v):
        attr = ' class="num"' if i in num_cols else ""
        return f"<{tag}{attr}>{v}</{tag}>"

    head = ("<thead><tr>" + "".join(cell("th", i, _e(h)) for i, h in enumerate(header)) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _image_hwc(x: np.ndarray) -> np.ndarray:
    """A dataset image (C, H, W) in [0, 1] as something imsave shows: (H, W) grey or (H, W, 3)."""
    return x.transpose(1, 2, 0) if x.shape[0] == 3 else x[0]


def _pick_examples(y: np.ndarray, n: int) -> np.ndarray:
    """The first example of each class in turn (class 0, 1, ..., then the second of each ...)."""
    rank = np.zeros(len(y), dtype=np.int64)
    seen: dict = {}
    for i, label in enumerate(y.tolist()):
        rank[i] = seen.get(label, 0)
        seen[label] = rank[i] + 1
    order = np.lexsort((y, rank))
    return order[:n]


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


# --- sections -------------------------------------------------------------------------------------------
def _section_training(history) -> str:
    if not history:
        return _note("No history.json in the run directory: no epoch finished.")
    def num(row, key):
        v = row.get(key)
        return "" if v is None else f"{v:.4f}"

    rows = [[str(r.get("epoch", "")), num(r, "train_loss"), num(r, "train_accuracy"), num(r, "val_loss"),
             num(r, "val_accuracy"), f"{r['lr']:.3g}" if r.get("lr") is not None else "", _fmt_time(r.get("time"))]
            for r in history]
    table = _table(["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "training time so far"], rows,
                   num_cols=range(7))
    return (_figure(P.training_curves_png(history),
                    "training and validation loss, accuracy and learning rate per epoch; accuracy against time")
            + _note("Validation numbers come from the run's validation loader after each epoch (convnp train "
                    "uses the test split); the training numbers are running means over the epoch in training "
                    "mode (dropout and augmentation, if any, on). The learning rate is the value at the end "
                    "of the epoch.") + table)


def _section_filters(net) -> str:
    found = A.first_conv(net)
    if found is None:
        return _note("This net has no Conv2d layer.")
    name, layer = found
    w = np.asarray(layer.params["weight"])
    k, c, kh, kw = w.shape
    grid = A.filter_grid(w, pad=1, pad_value=1.0)
    png = P.array_png(grid, cmap="gray", target=320)
    kind = "RGB" if c == 3 else ("grey" if c == 1 else f"grey, one tile per input channel ({c} per filter)")
    return (_figure(png, f"filters of {name}", f"<code>{_e(name)}</code>: {_e(repr(layer))}, weights "
                    f"{k}x{c}x{kh}x{kw}, {kind}")
            + _note("Each filter is scaled to [0, 1] on its own (min black, max white). Smooth, "
                    "structured filters are a sign of a well-trained net; noisy ones of too short "
                    "training or too little regularisation (the notes, 'Visualizing the weights')."))


def _maps_tile(a: np.ndarray, max_channels: int) -> np.ndarray:
    """(C, H, W) activations of one image -> grey tile grid in [0, 1], one tile per channel."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(1, 1, -1)
    elif a.ndim == 2:
        a = a[None]
    a = a[:max_channels]
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0:
        scaled = a / hi if hi > 0 else a
    else:
        scaled = (a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5)
    return A.tile_images(scaled, pad=1, pad_value=1.0)


def _section_activations(net, x_norm, x_raw, examples, names, max_channels=32) -> str:
    if not names:
        return _note("No conv layers to show (and no layers were named).")
    modules = dict(net.named_modules())
    maps = A.activation_maps(net, x_norm[examples], names)
    out = [_note("The outputs of " + ", ".join(f"<code>{_e(n)}</code> ({_e(type(modules[n]).__name__)})"
                                              for n in names)
                 + " for a few test images, one tile per channel, scaled together per layer and image "
                   "(black = 0 for ReLU outputs). All-black tiles on many inputs are dead filters.")]
    for row, idx in enumerate(examples):
        figs = [_figure(P.array_png(_image_hwc(x_raw[idx]), target=112), f"test image {idx}",
                        f"test image #{idx}")]
        for name in names:
            a = maps[name][row]
            shown = min(len(a), max_channels) if a.ndim == 3 else 1
            total = a.shape[0] if a.ndim == 3 else 1
            more = f", first {shown} of {total} channels" if shown < total else f", {total} channels"
            shape = "x".join(str(s) for s in (a.shape[1:] + a.shape[:1] if a.ndim == 3 else a.shape))
            figs.append(_figure(P.array_png(_maps_tile(a, max_channels), target=300), f"{name} on image {idx}",
                                f"<code>{_e(name)}</code> {_e(type(modules[name]).__name__)}: {shape}{more}"))
        out.append(f'<div class="row">{"".join(figs)}</div>')
    return "".join(out)


def _section_confusion(cm, classes) -> str:
    acc = A.per_class_accuracy(cm)
    total = int(cm.sum())
    overall = float(np.trace(cm)) / max(total, 1)
    worst = int(np.nanargmin(acc)) if np.any(np.isfinite(acc)) else None
    rows = []
    for k, name in enumerate(classes):
        n = int(cm[k].sum())
        confused = [(int(j), int(cm[k, j])) for j in np.argsort(-cm[k]) if j != k and cm[k, j]][:2]
        conf_text = ", ".join(f"{_e(classes[j])} ({c})" for j, c in confused)
        a = acc[k]
        rows.append([_e(name), str(n), str(int(cm[k, k])), "n/a" if np.isnan(a) else f"{a:.4f}", conf_text])
    text = (f"Accuracy on {total:,} test images: <b>{overall:.4f}</b> ({int(np.trace(cm)):,} correct)."
            + (f" Weakest class: <b>{_e(classes[worst])}</b> ({acc[worst]:.4f})." if worst is not None else ""))
    return (_note(text) + '<div class="row">'
            + _figure(P.confusion_png(cm, classes), "confusion matrix",
                      "Rows: true class; columns: predicted class; numbers are counts, colour the fraction of the row.")
            + "<div>" + _table(["class", "images", "correct", "accuracy", "most often taken for"], rows,
                               num_cols=(1, 2, 3)) + "</div></div>")


def _section_mistakes(mistakes, x_raw, classes) -> str:
    if not mistakes:
        return _note("No mistakes on the evaluated test images.")
    cards = []
    for m in mistakes:
        cards.append(_figure(P.array_png(_image_hwc(x_raw[m.index]), target=96), f"test image {m.index}",
                             f'#{m.index}: true <b class="good">{_e(classes[m.true])}</b>, predicted '
                             f'<b class="bad">{_e(classes[m.pred])}</b> (p = {m.prob:.3f})', cls="card mistake"))
    return (_note(f"The {len(mistakes)} wrong predictions the net was most sure of, most confident first. "
                  "Some are mislabeled or ambiguous images; the rest show what the net has not learned.")
            + f'<div class="grid">{"".join(cards)}</div>')


def _section_saliency(net, x_norm, x_raw, y, pred, probs, examples, classes, patch, stride) -> str:
    sal = A.saliency_map(net, x_norm[examples], y[examples])
    cards = []
    for row, idx in enumerate(examples):
        drops = A.occlusion_map(net, x_norm[idx], int(y[idx]), patch, stride, fill=0.0)
        pix = A.occlusion_pixel_map(drops, x_norm.shape[2:], patch, stride)
        lim = max(float(np.abs(pix).max()), 0.05)  # a flat map stays pale instead of amplified noise
        s = sal[row]
        images = "".join([
            _figure(P.array_png(_image_hwc(x_raw[idx]), target=112), f"test image {idx}", "image"),
            _figure(P.array_png(s, cmap="hot", vmin=0.0, vmax=float(s.max()) or 1.0, target=112),
                    f"saliency of image {idx}", "saliency"),
            _figure(P.array_png(pix, cmap="RdBu_r", vmin=-lim, vmax=lim, target=112),
                    f"occlusion map of image {idx}", f"occlusion, scale &plusmn;{lim:.2f}"),
        ])
        verdict = "good" if pred[idx] == y[idx] else "bad"
        caption = (f"#{idx}: true <b>{_e(classes[int(y[idx])])}</b>, predicted "
                   f'<b class="{verdict}">{_e(classes[int(pred[idx])])}</b>, '
                   f"p(true) = {probs[idx, int(y[idx])]:.3f}")
        cards.append(f'<figure class="card"><div class="triple">{images}</div><figcaption>{caption}</figcaption></figure>')
    ph, pw = patch if isinstance(patch, tuple) else (patch, patch)
    return (_note("<b>Saliency</b> (Simonyan et al. 2014): the gradient of the true class's score with respect "
                  "to the (normalised) input pixels, max of |gradient| over channels; bright pixels change the "
                  "score most. <b>Occlusion</b> (Zeiler &amp; Fergus 2014): a "
                  f"{ph}x{pw} patch set to the dataset's mean (0 after normalisation) slides with stride "
                  f"{stride}; each pixel shows the mean drop of p(true class) over the patches covering it: "
                  "red where hiding it hurts the class, blue where hiding it helps.")
            + f'<div class="grid">{"".join(cards)}</div>')


def _section_summary(net, input_shape, optimizer, batch_size) -> str:
    try:
        from ..inspect.summary import format_bytes, summary  # noqa: PLC0415
        from ..optim import MEMORY_FACTS  # noqa: PLC0415
    except ImportError:
        return _note("convnp.summary is not available in this version.") + f"<pre>{_e(repr(net))}</pre>"
    opt = optimizer if str(optimizer).lower() in MEMORY_FACTS else "sgd"
    s = summary(net, input_shape, batch_size=int(batch_size or 1), optimizer=opt)
    rows = [[_e(r.name), _e(r.type), _e(r.volume), f"{r.params:,}", f"{r.macs:,}", f"{r.flops:,}",
             f"{r.activations:,}", format_bytes(r.activations * s.dtype_bytes)] for r in s.rows]
    table = _table(["layer", "type", "output (HxWxC)", "params", "MACs", "FLOPs", "activations", "memory"],
                   rows, num_cols=(3, 4, 5, 6, 7))
    return (_note(f"Per image; the memory column counts activations the notes' way (ReLU, dropout and "
                  f"flatten in place); totals for a batch of {s.batch_size} with {_e(opt)}.")
            + table + f"<pre>{_e(s.totals_text())}</pre>"
            + f"<details><summary>the net</summary><pre>{_e(repr(net))}</pre></details>")


def _section_settings(run, wall_estimate, test_acc, eval_n, build_seconds) -> str:
    history, config, extra = run["history"], run["config"], run["extra"]
    train_time = history[-1].get("time") if history else None
    facts = [
        ["run directory", _e(run["run_dir"])],
        ["weights from", _e(run["source"].name)],
        ["epochs finished", str(len(history))],
        ["training time (sum of the epochs' training loops)", _fmt_time(train_time)],
        ["wall time (config.json written to the weights' last write)", _fmt_time(wall_estimate)],
        ["test accuracy", f"{test_acc:.4f} on {eval_n:,} images"],
    ]
    if "test_accuracy" in extra:
        facts.append(["test accuracy recorded at the end of training", f"{extra['test_accuracy']:.4f}"])
    facts.append(["this report built in", _fmt_time(build_seconds)])
    cfg_rows = [[_e(k), f"<code>{_e(json.dumps(v))}</code>"] for k, v in config.items()]
    return (_table(None, facts)
            + ("<h3>config.json</h3>" + _table(["setting", "value"], cfg_rows) if cfg_rows
               else _note("No config.json in the run directory.")))


# --- the page ------------------------------------------------------------------------------------------
def _evaluate(net, x_norm, batch_size=256):
    from ..losses import probabilities  # noqa: PLC0415

    out = [probabilities(net.forward(x_norm[i:i + batch_size], train=False)) for i in range(0, len(x_norm), batch_size)]
    return np.concatenate(out).astype(np.float64)


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"report: {name} must be a positive int, got {value!r}")


def build_report(run_dir, out=None, dataset=None, num_images: int = 8, *, layers=None, eval_limit=None,
                 occlusion_patch=None, occlusion_stride=None) -> Path:
    """Write RUN_DIR/report.html (or ``out``) about a finished or stopped run; returns its path.

    ``dataset``: the test data (a name, or an ArrayDataset); default the run's dataset.
    ``num_images``: examples for the saliency/occlusion maps (the first of each class in turn);
    the activation maps use the first 2 of them, the mistakes grid up to 2 * num_images.
    ``layers``: names (``net.named_modules()`` paths) of the activation maps; default the first conv,
    its ReLU and the next conv layers' ReLUs. ``eval_limit``: evaluate on the first N test images
    only (default all). ``occlusion_patch``/``occlusion_stride``: default a quarter of the image
    side and half the patch. Needs matplotlib (``pip install 'convnp[report]'``).
    """
    start = time.perf_counter()
    P.require_matplotlib()
    _check_positive(num_images, "num_images")
    if eval_limit is not None:
        _check_positive(eval_limit, "eval_limit")
    run = load_run(run_dir)
    net, extra, config = run["net"], run["extra"], run["config"]
    data, data_name = _test_data(dataset, run)
    x_raw, y = np.asarray(data.x), np.asarray(data.y).astype(np.int64)
    if eval_limit:
        x_raw, y = x_raw[:eval_limit], y[:eval_limit]
    classes = [str(c) for c in (getattr(data, "classes", None) or extra.get("classes") or range(int(y.max()) + 1))]
    if "mean" in extra and "std" in extra:
        from ..data.transforms import Normalize  # noqa: PLC0415

        x_norm = Normalize(extra["mean"], extra["std"])(x_raw)
    else:
        x_norm = x_raw
    params = list(net.params.values())
    dtype = params[0].dtype if params else np.float32
    x_norm = np.ascontiguousarray(x_norm, dtype=dtype)

    probs = _evaluate(net, x_norm)
    pred = probs.argmax(axis=1)
    cm = A.confusion_matrix(y, pred, len(classes))
    examples = _pick_examples(y, num_images)
    h, w = x_raw.shape[2:]
    patch = occlusion_patch or max(1, round(min(h, w) / 4))
    stride = occlusion_stride or max(1, (patch if isinstance(patch, int) else min(patch)) // 2)
    names = list(layers) if layers is not None else A.default_activation_layers(net)
    input_shape = tuple(extra.get("input_shape") or x_raw.shape[1:])

    bodies = {
        "training": _section_training(run["history"]),
        "filters": _section_filters(net),
        "activations": _section_activations(net, x_norm, x_raw, examples[:2], names),
        "confusion": _section_confusion(cm, classes),
        "mistakes": _section_mistakes(A.most_confident_mistakes(probs, y, k=2 * num_images), x_raw, classes),
        "saliency": _section_saliency(net, x_norm, x_raw, y, pred, probs, examples, classes, patch, stride),
        "summary": _section_summary(net, input_shape, config.get("optimizer", "momentum"),
                                    config.get("batch_size", 1)),
    }
    model_path = run["source"]
    cfg_path = run["run_dir"] / "config.json"
    wall = model_path.stat().st_mtime - cfg_path.stat().st_mtime if cfg_path.exists() else None
    test_acc = float(np.trace(cm)) / max(len(y), 1)
    bodies["settings"] = _section_settings(run, wall, test_acc, len(y), time.perf_counter() - start)

    model_name = str(config.get("model") or type(net).__name__)
    is_spec = "->" in model_name
    title = f"Training report: {'a ' + type(net).__name__ if is_spec else model_name} on {data_name}"
    facts = (f"test accuracy <b>{test_acc:.4f}</b> &middot; {len(run['history'])} epoch(s) &middot; "
             f"{net.num_params:,} parameters &middot; run directory <code>{_e(run['run_dir'])}</code>"
             + (f"<br>model <code>{_e(model_name)}</code>" if is_spec else ""))
    nav = "".join(f'<li><a href="#{sid}">{_e(t)}</a></li>' for sid, t in SECTIONS)
    sections = "\n".join(f'<section id="{sid}"><h2>{_e(t)}</h2>{bodies[sid]}</section>' for sid, t in SECTIONS)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<header><h1>{_e(title)}</h1><p class=\"facts\">{facts}</p><nav><ol>{nav}</ol></nav></header>\n"
            f"{sections}\n<footer>made by convnp.report.build_report on {stamp}; self-contained, "
            f"no scripts</footer></main></body></html>\n")
    target = Path(out) if out is not None else run["run_dir"] / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target
