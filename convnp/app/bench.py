"""Benchmarks against PyTorch: the same net with the same weights, timed alternately in one process.

    convnp bench cifar_convnet                      # training step and inference, images/s, ratio
    convnp bench lenet5 --profile                   # plus a per-layer profile of one training step
    convnp bench vgg16 --batch 8 --mode infer
    python bench/models.py --table                  # the README table (several models)

What is timed. Training: one step of forward, softmax cross-entropy, backward and an SGD update
with momentum 0.9 (``convnp.optim.SGD`` against ``torch.optim.SGD``). Inference: a forward in
evaluation mode (``torch.no_grad()``). Both libraries get the same batch (random NCHW float32
images), the same weights (copied through their common state_dict names) and the same number of
threads (``convnp.set_num_threads`` / ``torch.set_num_threads``). Before any timing the outputs
and every parameter gradient are checked to agree. Then the steps run alternately (convnp, torch,
torch channels_last, convnp, ...) after a warm-up, each turn a short block of consecutive steps
after a pause (``time_alternating``), and the median of the repeats is reported
as images/s, GFLOP/s (forward FLOPs from ``convnp.summary``; a training step counts 3x), the
percentage of the SGEMM peak measured here with NumPy at the same thread count, and each row's
speed relative to PyTorch's default (NCHW) memory format ("x torch"; above 1: faster). With
numba installed, convnp runs twice: with its compiled kernels and with the pure-NumPy fallback. The machine's load average is printed with every
table because the numbers only mean something next to it.

``--profile``: one training step layer by layer, each library on one thread, forward and backward
of every layer timed on its own (median of repeats), so the table shows where the time goes.
``--memory``: peak resident memory of a training step, each library in its own subprocess.

PyTorch is needed (``pip install -e ".[test]"``); convnp itself never imports it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np

from ..errors import ConfigError
from ..ops import kernels
from ..nets.container import Container
from ..nets.engine import call_backward
from ..nets.sequential import Sequential
from ..threads import blas_threads, get_num_threads, set_num_threads

#: Relative errors allowed between the libraries in float32: outputs and loss, and parameter gradients
#: (deep ReLU nets amplify float32 rounding where a unit sits at the kink: VGG-16 shows ~3e-3, while
#: the same comparison in float64 agrees to 1e-14; the exact checks are the tests' float64 ones).
TOLERANCE = {"output": 1e-4, "loss": 1e-5, "gradient": 1e-2}


# --- the same net in PyTorch ------------------------------------------------------------------------
def to_torch(net):
    """A ``torch.nn`` module computing what ``net`` computes, with a copy of its weights.

    Supports Sequential nets (nested too) of the library's layers; a Graph or an unknown layer
    raises a ConfigError. The state_dict names are the same in both libraries.
    """
    import torch  # noqa: PLC0415 - benchmarks only

    module = _torch_module(net, torch.nn)
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in net.state_dict().items()}
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    if floats:
        module = module.to(floats[0])  # before loading: float64 weights must not pass through float32
    module.load_state_dict(state)
    return module


def _torch_module(layer, nn):
    """The layer's PyTorch twin (its ``torch_module`` fact); a Sequential of twins for a Sequential."""
    if isinstance(layer, Sequential):
        return nn.Sequential(OrderedDict((name, _torch_module(child, nn)) for name, child in layer.named_children()))
    if isinstance(layer, Container):
        raise ConfigError(f"bench: no PyTorch equivalent for {type(layer).__name__} (the benchmarks take "
                          "Sequential nets of the library's layers)")
    return layer.torch_module(nn)


def rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-30))


def check_agreement(net, tnet, x, y) -> dict:
    """Relative errors of the outputs, the loss and every parameter gradient (evaluation mode)."""
    import torch  # noqa: PLC0415

    from ..losses import SoftmaxCrossEntropy  # noqa: PLC0415

    tnet.eval()
    for p in tnet.parameters():
        p.grad = None
    tx = torch.from_numpy(np.ascontiguousarray(x))
    tout = tnet(tx)
    tloss = torch.nn.functional.cross_entropy(tout, torch.from_numpy(y))
    tloss.backward()
    out = net.forward(x, train=False)
    loss, dscores = SoftmaxCrossEntropy()(out, y)
    net.backward(dscores)
    errors = {"output": rel_error(out, tout.detach().numpy()), "loss": rel_error(loss, float(tloss.detach()))}
    tgrads = {k: p.grad.numpy() for k, p in tnet.named_parameters()}
    for k, g in net.named_grads().items():
        errors[f"d {k}"] = rel_error(g, tgrads[k])
    return errors


def off_kinks(net, scale: float = 1e-3, seed: int = 0):
    """A copy of ``net`` with every parameter nudged by ``scale`` x its RMS of noise, and its torch twin."""
    import copy  # noqa: PLC0415

    from ..train.sanity import nudge_parameters  # noqa: PLC0415

    nudged = copy.deepcopy(net)
    nudge_parameters(nudged, scale, np.random.default_rng(seed))
    return nudged, to_torch(nudged)


# --- steps --------------------------------------------------------------------------------------------
def convnp_steps(net, x, y, lr: float = 0.01, momentum: float = 0.9) -> dict:
    """{"train": one SGD-momentum step, "infer": one evaluation forward} on convnp."""
    from ..losses import SoftmaxCrossEntropy  # noqa: PLC0415
    from ..optim import SGD  # noqa: PLC0415

    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(lr=lr, momentum=momentum)
    params = net.named_parameters()

    skip_dx = getattr(type(net), "accepts_input_grad", False)  # the input needs no gradient, as in torch

    def train():
        scores = net.forward(x, train=True)
        _, dscores = loss_fn(scores, y)
        if skip_dx:
            net.backward(dscores, input_grad=False)
        else:
            net.backward(dscores)
        opt.step(params, net.named_grads())

    def infer():
        net.forward(x, train=False)

    return {"train": train, "infer": infer}


def torch_steps(tnet, x, y, lr: float = 0.01, momentum: float = 0.9, channels_last: bool = False) -> dict:
    """The same steps in PyTorch (``channels_last``: NHWC memory format for the net and the batch)."""
    import torch  # noqa: PLC0415

    tx = torch.from_numpy(np.ascontiguousarray(x))
    ty = torch.from_numpy(y)
    if channels_last:
        tnet = tnet.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(tnet.parameters(), lr=lr, momentum=momentum)

    def train():
        tnet.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tnet(tx), ty).backward()
        opt.step()

    def infer():
        tnet.eval()
        with torch.no_grad():
            tnet(tx)

    return {"train": train, "infer": infer}


def _with_kernels(step, choice: str):
    def run():
        with kernels.use(choice):
            step()
    return run


def time_alternating(fns: dict, warmup: int = 2, repeats: int = 7, pause: float = 0.2, block: float = 0.1) -> dict:
    """{name: [seconds per call]}: the functions take turns, ``repeats`` rounds after ``warmup`` rounds.

    Each turn is a short block of consecutive calls, as in a training loop: after the pause
    (which lets the other library's spinning threads go to sleep) one untimed call wakes the
    worker threads and caches up, then calls are timed until ``block`` seconds have passed
    (at least one); the turn records their mean. A single call after an idle pause measured up
    to 1.5x slower on this 2-vCPU virtual machine (idle vCPUs are slow to wake), for both libraries.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            time.sleep(pause)
            fn()
            calls, t0 = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= block:
                    break
            times[name].append(elapsed / calls)
    return times


def sgemm_peak(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of NumPy's float32 matrix multiply (size^3) at ``threads`` BLAS threads, best of repeats."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    best = math.inf
    with blas_threads(threads):
        a @ b
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def load_text() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


# --- one model ------------------------------------------------------------------------------------------
def build(model, input_shape=None, rng=0):
    """(net, input shape) from a zoo name (``name:key=value``), a spec string or a net."""
    if isinstance(model, str):
        from ..models import build_model  # noqa: PLC0415

        return build_model(model, input_shape=input_shape, rng=rng)
    shape = tuple(input_shape) if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("bench: pass input_shape for a net without one recorded")
    return model, shape


def bench_model(model, batch: int = 128, input_shape=None, threads: int | None = None, modes=("train", "infer"),
                repeats: int = 7, warmup: int = 2, pause: float = 0.2, channels_last: bool = True,
                peak: float | None = None, label: str | None = None, kernel_choices=None, out=print) -> dict:
    """Time ``model`` in convnp and PyTorch alternately; returns {mode: {library: stats}} and prints a table."""
    import torch  # noqa: PLC0415

    from ..inspect.summary import summary  # noqa: PLC0415

    threads = threads or get_num_threads()
    set_num_threads(threads)
    torch.set_num_threads(threads)
    if kernel_choices is None:
        kernel_choices = ("numba", "numpy") if kernels.available() else ("numpy",)
    net, shape = build(model, input_shape)
    label = label or (model if isinstance(model, str) else type(net).__name__)
    classes = net.output_shape(shape)[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape), dtype=np.float32)
    y = rng.integers(0, classes, batch)
    tnet = to_torch(net)
    check_n = min(batch, 16)
    errors = check_agreement(net, tnet, x[:check_n], y[:check_n])
    note = ""
    if any(v > TOLERANCE["gradient"] for k, v in errors.items() if k.startswith("d ")):
        # An init with exact zeros (e.g. identity filters after a ReLU) puts ReLU inputs exactly on the
        # kink, where rounding decides which side a library lands: compare again off the kinks.
        errors = check_agreement(*off_kinks(net), x[:check_n], y[:check_n])
        note = " (weights nudged off exact ReLU kinks)"
    worst = max(v for k, v in errors.items() if k.startswith("d "))
    out(f"{label}: batch {batch}, input {'x'.join(map(str, shape))}, float32, {threads} threads, "
        f"convnp kernels {'/'.join(kernel_choices)}; agreement with PyTorch (relative error): output "
        f"{errors['output']:.1e}, loss {errors['loss']:.1e}, worst of {len(errors) - 2} gradients {worst:.1e}{note}")
    bad = {k: v for k, v in errors.items() if v > TOLERANCE["gradient" if k.startswith("d ") else k]}
    if bad:
        raise RuntimeError(f"convnp and PyTorch disagree on {label}: {bad}")
    flops = summary(net, shape).flops_per_image
    peak = peak or sgemm_peak(threads)
    results = {}
    for mode in modes:
        fns = {}
        step = convnp_steps(net, x, y)[mode]
        for choice in kernel_choices:
            fns["convnp" if choice == kernel_choices[0] else f"convnp {choice} kernels"] = _with_kernels(step, choice)
        fns["torch"] = torch_steps(tnet, x, y)[mode]
        if channels_last:
            fns["torch channels_last"] = torch_steps(to_torch(net), x, y, channels_last=True)[mode]
        times = time_alternating(fns, warmup, repeats, pause)
        per_step = 3 * flops if mode == "train" else flops
        stats = {}
        for name, v in times.items():
            med = statistics.median(v)
            ips = batch / med
            stats[name] = {"images_per_s": ips, "ms": med * 1e3, "min_ms": min(v) * 1e3,
                           "gflops": ips * per_step / 1e9, "peak_pct": 100 * ips * per_step / 1e9 / peak}
        for name in stats:
            stats[name]["ratio"] = stats[name]["images_per_s"] / stats["torch"]["images_per_s"]
        results[mode] = stats
        out(f"  {mode} ({'forward, loss, backward, SGD momentum' if mode == 'train' else 'forward, eval mode'}); "
            f"median of {repeats}; {load_text()}")
        out(f"    {'':22s} {'images/s':>9s} {'ms/batch':>9s} {'GFLOP/s':>8s} {'% peak':>7s} {'x torch':>8s}")
        for name, s in stats.items():
            ips = f"{s['images_per_s']:9.0f}" if s["images_per_s"] >= 100 else f"{s['images_per_s']:9.2f}"
            out(f"    {name:22s} {ips} {s['ms']:9.1f} {s['gflops']:8.1f} "
                f"{s['peak_pct']:6.0f}% {s['ratio']:7.2f}x")
    out(f"  SGEMM peak (NumPy, {threads} threads): {peak:.0f} GFLOP/s; forward {flops / 1e6:.1f} MFLOP/image")
    return {"model": label, "batch": batch, "threads": threads, "errors": errors, "peak_gflops": peak,
            "flops_per_image": flops, "results": results, "load": load_text()}


# --- per-layer profile -------------------------------------------------------------------------------
def _leaves(net):
    return [(path, layer) for path, layer in net.named_modules() if not isinstance(layer, Container)]


def profile_model(model, batch: int = 128, input_shape=None, repeats: int = 5, out=print) -> list:
    """Forward and backward time of every layer of one training step, both libraries on one thread.

    Each layer runs on the output the layer before produced (the net's real activations), in
    training mode; as in a training step, the first layer with parameters computes no input
    gradient (and the layers before it no backward) in either library. Returns rows (path, layer, convnp fwd/bwd ms, torch fwd/bwd ms).
    """
    import torch  # noqa: PLC0415

    from ..losses import SoftmaxCrossEntropy  # noqa: PLC0415

    net, shape = build(model, input_shape)
    tnet = to_torch(net)
    leaves, tleaves = _leaves(net), [m for _, m in tnet.named_modules() if not list(m.children())]
    if len(leaves) != len(tleaves):
        raise ConfigError("bench --profile: the PyTorch copy has a different number of layers")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape), dtype=np.float32)
    y = rng.integers(0, net.output_shape(shape)[0], batch)
    first = next(i for i, (_, layer) in enumerate(leaves) if layer.params)  # first layer with parameters
    previous = get_num_threads()
    torch_threads = torch.get_num_threads()
    set_num_threads(1)
    torch.set_num_threads(1)
    try:
        rows = {path: {"fwd": [], "bwd": [], "tfwd": [], "tbwd": []} for path, _ in leaves}
        for _ in range(repeats + 1):
            h = x
            for path, layer in leaves:
                t0 = time.perf_counter()
                h = layer.forward(h, train=True)
                rows[path]["fwd"].append(time.perf_counter() - t0)
            _, d = SoftmaxCrossEntropy()(h, y)
            for i in range(len(leaves) - 1, -1, -1):
                path, layer = leaves[i]
                t0 = time.perf_counter()
                if i > first:
                    d = layer.backward(d)
                elif i == first:  # like the training step: the input needs no gradient
                    call_backward(layer, d, input_grad=False)
                else:
                    layer._cache = None
                rows[path]["bwd"].append(time.perf_counter() - t0)
            th = torch.from_numpy(x)
            inputs, outputs = [], []
            for i, ((path, _), m) in enumerate(zip(leaves, tleaves)):
                th = th.detach().requires_grad_(i > first)
                t0 = time.perf_counter()
                o = m(th)
                rows[path]["tfwd"].append(time.perf_counter() - t0)
                inputs.append(th)
                outputs.append(o)
                th = o
            loss = torch.nn.functional.cross_entropy(th, torch.from_numpy(y))
            g = torch.autograd.grad(loss, th)[0]
            for (path, _), i, o in reversed(list(zip(leaves, inputs, outputs))):
                t0 = time.perf_counter()
                if o.requires_grad:
                    o.backward(g)
                rows[path]["tbwd"].append(time.perf_counter() - t0)
                g = i.grad
    finally:
        set_num_threads(previous)
        torch.set_num_threads(torch_threads)
    table = []
    for path, layer in leaves:
        r = {k: statistics.median(v[1:]) * 1e3 for k, v in rows[path].items()}  # the first round warms up
        table.append({"path": path, "layer": repr(layer), **r})
    tot = {k: sum(r[k] for r in table) for k in ("fwd", "bwd", "tfwd", "tbwd")}
    out(f"per-layer profile of one training step, batch {batch}, 1 thread each, median of {repeats} (ms); "
        f"{load_text()}")
    out(f"  {'layer':40s} {'convnp fwd':>10s} {'bwd':>8s} {'torch fwd':>10s} {'bwd':>8s} {'convnp/torch':>12s} {'% of convnp':>11s}")
    total = tot["fwd"] + tot["bwd"]
    for r in table:
        mine, theirs = r["fwd"] + r["bwd"], r["tfwd"] + r["tbwd"]
        name = f"{r['path']} {r['layer']}"
        out(f"  {name[:40]:40s} {r['fwd']:10.2f} {r['bwd']:8.2f} {r['tfwd']:10.2f} {r['tbwd']:8.2f} "
            f"{mine / max(theirs, 1e-9):11.2f}x {100 * mine / total:10.1f}%")
    out(f"  {'total':40s} {tot['fwd']:10.2f} {tot['bwd']:8.2f} {tot['tfwd']:10.2f} {tot['tbwd']:8.2f} "
        f"{total / (tot['tfwd'] + tot['tbwd']):11.2f}x")
    return table


# --- peak memory -------------------------------------------------------------------------------------
def _rss_child(spec: str) -> None:
    """Runs in a subprocess: build both nets, then run only one library's training steps; print RSS."""
    import torch  # noqa: PLC0415, F401 - both children import both libraries

    cfg = json.loads(spec)
    set_num_threads(cfg["threads"])
    torch.set_num_threads(cfg["threads"])
    net, shape = build(cfg["model"])
    tnet = to_torch(net)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cfg["batch"], *shape), dtype=np.float32)
    y = rng.integers(0, net.output_shape(shape)[0], cfg["batch"])
    steps = convnp_steps(net, x, y) if cfg["library"] == "convnp" else torch_steps(tnet, x, y)
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    for _ in range(cfg["steps"]):
        steps["train"]()
    # VmHWM: this process's own high-water mark (ru_maxrss is inherited from the parent across exec)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"before": before, "peak": peak}))


def peak_memory(model, batch: int = 128, threads: int | None = None, steps: int = 3, out=print) -> dict:
    """Peak RSS of training steps, each library in its own subprocess (both import both libraries)."""
    threads = threads or get_num_threads()
    res = {}
    for library in ("convnp", "torch"):
        spec = json.dumps({"model": model, "batch": batch, "threads": threads, "library": library, "steps": steps})
        proc = subprocess.run([sys.executable, "-c", f"import convnp.bench as b; b._rss_child({spec!r})"],
                              capture_output=True, text=True, check=True)
        res[library] = json.loads(proc.stdout.strip().splitlines()[-1])
    c, t = res["convnp"], res["torch"]
    out(f"peak RSS of {steps} training steps of {model}, batch {batch}, {threads} threads: convnp "
        f"{c['peak'] / 2**20:.0f} MiB ({(c['peak'] - c['before']) / 2**20:.0f} MiB above the set-up), "
        f"PyTorch {t['peak'] / 2**20:.0f} MiB ({(t['peak'] - t['before']) / 2**20:.0f} MiB above); "
        f"ratio {c['peak'] / t['peak']:.2f} (of the increases {(c['peak'] - c['before']) / max(1, t['peak'] - t['before']):.2f})")
    return res


# --- command line ------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("model", help="zoo name (with :key=value options) or a spec string")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--input", help="input shape CxHxW (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: all cores)")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each timed step")
    p.add_argument("--no-channels-last", action="store_true", help="skip PyTorch's channels_last variant")
    p.add_argument("--profile", action="store_true", help="also a per-layer profile of one training step")
    p.add_argument("--memory", action="store_true", help="also peak RSS of a training step (subprocesses)")
    p.add_argument("--json", help="write the results to this file")
    return p


def run(args) -> int:
    """The ``convnp bench`` command."""
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        print("convnp bench compares with PyTorch: pip install -e '.[test]' (or torch alone)", file=sys.stderr)
        return 1
    shape = None
    if args.input:
        from ..inspect.summary import parse_input_shape  # noqa: PLC0415

        shape = parse_input_shape(args.input)
    modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    try:
        return _run(args, shape, modes)
    except ConfigError as err:
        print(f"convnp bench: {err}", file=sys.stderr)
        return 2


def _run(args, shape, modes) -> int:
    result = bench_model(args.model, args.batch, shape, args.threads, modes, args.repeats, args.warmup, args.pause,
                         channels_last=not args.no_channels_last)
    if args.profile:
        result["profile"] = profile_model(args.model, args.batch, shape)
    if args.memory:
        result["memory"] = peak_memory(args.model, args.batch, args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="convnp bench", description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
