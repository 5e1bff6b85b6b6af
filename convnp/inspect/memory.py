"""Training memory: convnp's peak, the largest batch that fits a budget, and a real measurement.

``estimate_peak(net, input_shape, batch_size, optimizer)`` simulates one training step
(forward, softmax loss, backward, optimizer update) the way convnp runs it and returns the
largest number of bytes alive at once. Its model, per leaf layer (``layer_memory``):

* what the layer's cache keeps for backward: its input (Conv2d, Linear, LRN), its output
  (Tanh, Sigmoid, LRN) or new arrays (ReLU's 1-byte mask, max pooling's 1-byte switches,
  Dropout's mask, BatchNorm's normalised input, a locally connected layer's patches);
* the scratch buffers each forward and backward allocates and frees again: the im2col
  chunk buffers of a convolution (about ``convnp.ops.conv.CHUNK_BYTES`` each), the padded
  copy a pooling makes, the per-tap gradients of max pooling, BatchNorm's temporaries;
* which outputs are views (Flatten of a contiguous array, Concat's backward, Add's backward).

An activation lives until the last layer that keeps it has run backward; a gradient lives
from the backward that makes it until the layer below has used it. Parameters, their
gradients (from the previous step) and the optimizer state are alive throughout (the steady
state of a training loop), as is the input batch. The peak is the largest sum over every
moment of forward, backward and the update. ``measure_peak`` runs the same step for real and
reads the peak from ``tracemalloc`` (NumPy reports its buffers to it); the tests hold the
estimate within 25% of the measurement.
"""

from __future__ import annotations

import gc
import math
import re
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, StateError
from .summary import format_bytes, layer_pair, optimizer_slots, parse_input_shape, trace
from ..threads import num_threads

__all__ = ["LayerMemory", "Measurement", "PeakEstimate", "estimate_peak", "fit_batch_size", "layer_memory",
           "measure_peak", "parse_bytes"]

try:  # the conv kernels' chunk size; the model follows it if it changes
    from ..ops.conv import CHUNK_BYTES
except ImportError:  # pragma: no cover - ops.conv is part of the package
    CHUNK_BYTES = 4 << 20

#: Temporaries the size of the largest parameter tensor each optimizer's update makes.
_STEP_TEMPS = {"sgd": 1, "momentum": 1, "nesterov": 2, "adagrad": 3, "rmsprop": 3, "adam": 3, "adamw": 3}


# --- budgets ----------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value) -> int:
    """``"8GB"`` -> 8,000,000,000, ``"512MiB"`` -> 536,870,912, ``"1.5G"`` -> 1,500,000,000; an int passes.

    KB/MB/GB/TB (and K/M/G/T) are decimal, KiB/MiB/GiB/TiB binary; case does not matter.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"a memory budget must be positive, got {value!r}")
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        return int(value)
    if not isinstance(value, str):
        raise ConfigError(f"a memory budget must be like '8GB' or '512MiB', got {value!r}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", value)
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(f"cannot read the memory budget {value!r}; write e.g. 8GB, 512MiB, 1.5G or 1000000 "
                          "(KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ConfigError(f"a memory budget must be positive, got {value!r}")
    return n


# --- the per-layer model ------------------------------------------------------------------------------
@dataclass
class LayerMemory:
    """What one training forward/backward of a layer allocates (bytes, whole batch)."""

    out_new: bool = True        # the output is a new array (False: a view of input 0)
    out_bytes: int = 0          # size of the output when new
    keeps_input: bool = False   # the cache references input 0 until backward
    keeps_output: bool = False  # the cache references the output until backward
    saved: int = 0              # new arrays the cache keeps until backward
    fwd_work: int = 0           # scratch alive during forward only
    bwd_work: int = 0           # scratch alive during backward only (besides dout, dx, grads)
    dx_new: bool = True         # dx is a new array (False: a view of dout)
    dx_bytes: int | None = None  # size of dx when it is bigger than the input (a padded buffer)
    grad_bytes: int = 0         # the new parameter gradients backward makes
    out_nhwc: bool = False      # the output's memory is channels-last (a conv's), so it is not C-contiguous


def _param_bytes(layer) -> int:
    return sum(int(v.nbytes) for v in (getattr(layer, "params", {}) or {}).values())


def layer_memory(layer, in_shapes, out_shape, n: int, b: int, in_nhwc: bool = False) -> LayerMemory:
    """The memory model of one training step of ``layer`` for a batch of ``n`` (see the module docstring).

    ``in_nhwc``: whether input 0 is a channels-last view (a convolution's output), which
    makes a pooling or Flatten copy it.
    """
    kind = type(layer).__name__
    inp = math.prod(in_shapes[0]) * n if in_shapes else 0
    out = math.prod(out_shape) * n
    ib, ob = inp * b, out * b
    params = _param_bytes(layer)
    m = LayerMemory(out_bytes=ob)

    if kind == "Conv2d":
        k, c, kh, kw = layer.params["weight"].shape
        _, h, w = in_shapes[0]
        _, oh, ow = out_shape
        stride, pad, dil = layer_pair(layer, "stride", 1), layer_pair(layer, "padding", 0), layer_pair(layer, "dilation", 1)
        hp = max(h + 2 * pad[0], (oh - 1) * stride[0] + dil[0] * (kh - 1) + 1)
        wp = max(w + 2 * pad[1], (ow - 1) * stride[1] + dil[1] * (kw - 1) + 1)
        padded = (hp, wp) != (h, w)
        weight = k * c * kh * kw * b
        cols = oh * ow * kh * kw * c * b                       # one image's im2col matrix
        nb = max(1, min(n, CHUNK_BYTES // max(1, cols)))
        m.keeps_input, m.out_nhwc = True, True
        m.fwd_work = weight + nb * cols + (nb * hp * wp * c * b if padded else 0)
        nb2 = max(1, min(n, CHUNK_BYTES // max(1, max(oh * ow, h * w) * kh * kw * max(c, k) * b)))
        work = 3 * weight + nb2 * cols + (nb2 * hp * wp * c * b if padded else 0) + 2 * nb2 * oh * ow * k * b
        if stride == (1, 1):
            span = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1)
            dshape = (h + span[0] - 1, w + span[1] - 1)
            shift = (span[0] - 1 - pad[0], span[1] - 1 - pad[1])
            dbuf = 0 if (shift == (0, 0) and dshape == (oh, ow)) else nb2 * dshape[0] * dshape[1] * k * b
            work += dbuf + nb2 * h * w * kh * kw * k * b + 2 * weight
        else:
            work += nb2 * hp * wp * c * b + 2 * nb2 * cols
        m.bwd_work, m.grad_bytes = work, params
    elif kind == "Linear":
        m.keeps_input, m.grad_bytes = True, params
    elif kind == "Flatten":
        m.out_new = in_nhwc  # reshaping a channels-last view copies it
        m.dx_new = False
    elif kind == "ReLU":
        m.saved, m.fwd_work, m.out_nhwc = out, out, in_nhwc
    elif kind == "LeakyReLU":
        m.saved, m.fwd_work, m.bwd_work, m.out_nhwc = out, ob, ob, in_nhwc
    elif kind == "ELU":
        m.saved, m.fwd_work, m.bwd_work, m.out_nhwc = out + ob, 2 * ob, 2 * ob, in_nhwc
    elif kind == "Tanh":
        m.keeps_output, m.bwd_work, m.out_nhwc = True, 2 * ob, in_nhwc
    elif kind == "Sigmoid":
        m.keeps_output, m.fwd_work, m.bwd_work, m.out_nhwc = True, 4 * ob + out, 2 * ob, in_nhwc
    elif kind in ("Dropout", "Dropout2d"):
        if float(getattr(layer, "p", 0.5)) == 0.0:
            m.out_new, m.dx_new = False, False
        else:
            mask = out // math.prod(out_shape[1:]) if kind == "Dropout2d" and len(out_shape) == 3 else out
            m.saved, m.fwd_work = mask * b, mask * 9
    elif kind in ("MaxPool2d", "AvgPool2d", "LPPool2d"):
        c, h, w = in_shapes[0]
        _, oh, ow = out_shape
        kh, kw = layer_pair(layer, "kernel_size", 1)
        stride = layer_pair(layer, "stride", 1)
        pad = layer_pair(layer, "padding", 0) if kind != "LPPool2d" else (0, 0)
        dil = layer_pair(layer, "dilation", 1) if kind == "MaxPool2d" else (1, 1)
        hp = max(h + 2 * pad[0], (oh - 1) * stride[0] + dil[0] * (kh - 1) + 1)
        wp = max(w + 2 * pad[1], (ow - 1) * stride[1] + dil[1] * (kw - 1) + 1)
        padded_bytes = n * c * hp * wp * b
        copy = padded_bytes if (in_nhwc or (hp, wp) != (h, w)) else 0
        if kind == "MaxPool2d":
            idx = 1 if kh * kw <= 256 else 4
            m.saved = out * idx
            m.fwd_work = copy + 3 * out + out * idx
            m.bwd_work = kh * kw * ob + out
            m.dx_bytes = padded_bytes
        elif kind == "AvgPool2d":
            m.fwd_work, m.bwd_work, m.dx_bytes = copy, ob, padded_bytes
        else:
            m.keeps_input, m.keeps_output = True, True
            m.saved, m.fwd_work, m.bwd_work = ob, ib + ob, 3 * ob + 2 * ib
    elif kind == "GlobalAvgPool2d":
        pass
    elif kind == "AdaptiveAvgPool2d":
        if tuple(in_shapes[0]) != tuple(out_shape):
            c, h, w = in_shapes[0]
            m.fwd_work = n * c * out_shape[1] * w * b
            m.bwd_work = n * c * h * out_shape[2] * b
    elif kind in ("BatchNorm1d", "BatchNorm2d"):
        m.saved, m.fwd_work, m.bwd_work, m.grad_bytes, m.out_nhwc = ob, 2 * ob, 3 * ob, params, in_nhwc
    elif kind == "LocalResponseNorm":
        m.keeps_input, m.keeps_output = True, True
        m.saved, m.fwd_work, m.bwd_work = 2 * ob, 2 * ob, 3 * ob
    elif kind == "LocallyConnected2d":
        oh, ow, k, c, kh, kw = layer.params["weight"].shape
        _, h, w = in_shapes[0]
        pad = layer_pair(layer, "padding", 0)
        patches = n * oh * ow * c * kh * kw * b
        copy = n * c * (h + 2 * pad[0]) * (w + 2 * pad[1]) * b if (in_nhwc or pad != (0, 0)) else 0
        m.saved, m.fwd_work, m.bwd_work, m.grad_bytes = patches, copy + ob, ob + patches, params
        m.dx_bytes = n * c * (h + 2 * pad[0]) * (w + 2 * pad[1]) * b
    elif kind in ("Concat", "Add"):  # backward hands out views of dout (Concat) or dout itself (Add)
        m.dx_new = False
    else:  # unknown: assume it keeps its input and makes a new output and dx
        m.keeps_input, m.grad_bytes = True, params
    return m


# --- the simulation -----------------------------------------------------------------------------------
@dataclass
class PeakEstimate:
    """``total`` bytes at the worst moment ``where``; ``persistent`` is what is alive throughout
    (parameters, their gradients, optimizer state, the input batch), ``activations`` the saved
    forward arrays, ``gradients`` the activation gradients and ``workspace`` the scratch buffers
    alive at that moment."""

    total: int
    where: str
    persistent: int
    activations: int
    gradients: int
    workspace: int
    batch_size: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _check_batch(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _is_frozen(name: str, frozen) -> bool:
    return any(name == p or name.startswith(p.rstrip(".") + ".") for p in frozen)


def estimate_peak_from_nodes(nodes, value_shapes, batch_size, optimizer="momentum", dtype_bytes=4,
                             frozen=()) -> PeakEstimate:
    """The simulation behind ``estimate_peak``, on ``convnp.summary.trace``'s output."""
    n, b = _check_batch(batch_size), int(dtype_bytes)
    slots = optimizer_slots(optimizer)
    key = str(optimizer).lower()

    params = buffers = trainable = biggest = 0
    for node in nodes:
        for k, v in (getattr(node.layer, "params", {}) or {}).items():
            size = int(np.size(v))
            params += size
            biggest = max(biggest, size)
            if not _is_frozen(f"{node.path}.{k}", frozen):
                trainable += size
        buffers += sum(int(np.size(v)) for v in (getattr(node.layer, "buffers", {}) or {}).values()
                       if np.asarray(v).dtype.kind == "f")
    vbytes = {v: math.prod(s) * n * b for v, s in value_shapes.items()}
    out_id = nodes[-1].output if nodes else 0
    classes = math.prod(value_shapes[out_id])
    persistent = (params + buffers + trainable * (1 + slots)) * b + vbytes[0] + n * 8  # + int64 labels

    # --- forward ---------------------------------------------------------------------------------
    models, storage, nhwc = [], {0: 0}, {0: False}
    size_of = {0: vbytes[0]}      # storage id -> bytes (storage 0, the input, is persistent)
    last_read = {}
    for i, node in enumerate(nodes):
        for v in node.inputs:
            last_read[v] = i
    kept_by = {}                  # storage -> indices of nodes whose cache holds it
    live = set()                  # storages alive in forward besides the input
    live_values = {0}
    saved_total = 0
    best = (0, "", 0, 0, 0, 0)

    def consider(total, where, acts, grads, work):
        nonlocal best
        if total > best[0]:
            best = (total, where, acts, grads, work, 0)

    for i, node in enumerate(nodes):
        m = layer_memory(node.layer, node.in_shapes, node.out_shape, n, b, nhwc[node.inputs[0]])
        models.append(m)
        s_in = storage[node.inputs[0]]
        if m.out_new:
            s_out = len(size_of)
            size_of[s_out] = m.out_bytes
        else:
            s_out = s_in
        storage[node.output] = s_out
        nhwc[node.output] = m.out_nhwc
        acts = sum(size_of[s] for s in live) + saved_total
        new_out = size_of[s_out] if (m.out_new and s_out not in live) else 0
        consider(persistent + acts + new_out + m.saved + m.fwd_work, f"forward of {node.path}",
                 acts + new_out + m.saved, 0, m.fwd_work)
        if s_out:
            live.add(s_out)
        live_values.add(node.output)
        saved_total += m.saved
        if m.keeps_input:
            for v in node.inputs:
                kept_by.setdefault(storage[v], []).append(i)
        if m.keeps_output:
            kept_by.setdefault(s_out, []).append(i)
        for v in set(node.inputs):
            if last_read.get(v) == i and v != out_id:
                live_values.discard(v)
        still = {storage[v] for v in live_values}
        live = {s for s in live if s in still or s in kept_by}

    # --- loss -----------------------------------------------------------------------------------
    acts = sum(size_of[s] for s in live) + saved_total
    consider(persistent + acts + 4 * n * classes * b, "loss", acts, n * classes * b, 3 * n * classes * b)

    # --- backward -------------------------------------------------------------------------------
    grads = {out_id: n * classes * b}   # value -> bytes of its gradient (dscores is the caller's)
    pending = {s: list(ix) for s, ix in kept_by.items()}
    out_storage = storage[out_id]
    for i in range(len(nodes) - 1, -1, -1):
        node, m = nodes[i], models[i]
        if node.output not in grads:
            continue
        kept = sum(size_of[s] for s, ix in pending.items() if ix and s not in (0, out_storage))
        acts = kept + size_of.get(out_storage, 0) * (out_storage != 0) + saved_total
        new_dx = 0
        if m.dx_new:
            for k_, v in enumerate(node.inputs):
                new_dx += m.dx_bytes if (m.dx_bytes and k_ == 0) else vbytes[v]
                if v in grads:  # fan-out: the sum is a new array too
                    new_dx += vbytes[v]
        g_live = sum(grads.values())
        consider(persistent + acts + g_live + new_dx + m.bwd_work + m.grad_bytes,
                 f"backward of {node.path}", acts, g_live + new_dx, m.bwd_work + m.grad_bytes)
        # the layer's cache and dout go; dx joins the gradients
        saved_total -= m.saved
        for s in list(pending):
            pending[s] = [j for j in pending[s] if j != i]
        dout = grads.pop(node.output)
        shared = type(node.layer).__name__ == "Add"  # every input gets the same dout array
        for k_, v in enumerate(node.inputs):
            if m.dx_new:
                size = m.dx_bytes if (m.dx_bytes and k_ == 0) else vbytes[v]
            else:
                size = (dout if k_ == 0 else 0) if shared else min(dout, vbytes[v])
            grads[v] = max(grads.get(v, 0), size)

    # --- the update -----------------------------------------------------------------------------
    scores = size_of.get(out_storage, 0) * (out_storage != 0)
    temps = _STEP_TEMPS.get(key, 3) * biggest * b
    consider(persistent + scores + n * classes * b + temps, "optimizer update", scores, n * classes * b, temps)
    total, where, acts, g, work, _ = best
    return PeakEstimate(int(total), where, int(persistent), int(acts), int(g), int(work), n)


def estimate_peak(net, input_shape=None, batch_size: int = 1, optimizer: str = "momentum", dtype_bytes=None,
                  frozen=()) -> PeakEstimate:
    """Estimated peak bytes of one convnp training step of ``net`` (see the module docstring)."""
    from .summary import _dtype_bytes_of  # noqa: PLC0415

    shape = _input_shape(net, input_shape)
    nodes, shapes = trace(net, shape)
    b = _dtype_bytes_of(net) if dtype_bytes is None else int(dtype_bytes)
    return estimate_peak_from_nodes(nodes, shapes, batch_size, optimizer, b, frozen)


def _input_shape(net, input_shape):
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ConfigError("pass input_shape (C, H, W); this net has none recorded")
    return parse_input_shape(input_shape)


def fit_batch_size(net, input_shape=None, budget_bytes="8GB", optimizer: str = "momentum", dtype_bytes=None,
                   estimate: str = "peak", max_batch: int = 1 << 24) -> int:
    """The largest batch whose estimated training memory fits ``budget_bytes`` (``"8GB"``, ``"512MiB"``, an int).

    ``estimate="peak"`` uses convnp's simulated peak (``estimate_peak``), ``"notes"`` the notes'
    bookkeeping (``Summary.total_bytes``: activations and their gradients, parameters x3 with
    momentum). Both grow with the batch, so a binary search finds the answer. Raises ConfigError
    when even a batch of 1 does not fit, naming what it needs.
    """
    from .summary import _dtype_bytes_of, summary  # noqa: PLC0415

    budget = parse_bytes(budget_bytes)
    if estimate not in ("peak", "notes"):
        raise ConfigError(f"fit_batch_size: estimate must be 'peak' or 'notes', got {estimate!r}")
    shape = _input_shape(net, input_shape)
    b = _dtype_bytes_of(net) if dtype_bytes is None else int(dtype_bytes)
    nodes, shapes = trace(net, shape)
    optimizer_slots(optimizer)

    def need(n: int) -> int:
        if estimate == "peak":
            return estimate_peak_from_nodes(nodes, shapes, n, optimizer, b).total
        return summary(net, shape, batch_size=n, optimizer=optimizer, dtype_bytes=b).total_bytes

    one = need(1)
    if one > budget:
        raise ConfigError(f"fit_batch_size: even a batch of 1 needs {format_bytes(one)} ({one:,} bytes) by the "
                          f"{estimate!r} estimate, more than the budget of {format_bytes(budget)} ({budget:,} bytes)")
    lo, hi = 1, 2
    while hi <= max_batch and need(hi) <= budget:
        lo, hi = hi, hi * 2
    if hi > max_batch:
        return lo if need(max_batch) > budget else max_batch
    while hi - lo > 1:  # need(lo) fits, need(hi) does not
        mid = (lo + hi) // 2
        if need(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


# --- measuring ----------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """``peak_bytes`` = ``traced_peak`` (what tracemalloc saw during the measured step: the input,
    gradients, optimizer state and everything the step allocated) + ``param_bytes`` (parameters
    and buffers, allocated before tracing started)."""

    peak_bytes: int
    traced_peak: int
    param_bytes: int
    batch_size: int
    optimizer: str
    seconds: float


def measure_peak(net, input_shape=None, batch_size: int = 32, optimizer: str = "momentum", rng=0) -> Measurement:
    """Run real training steps of ``net`` on random data and measure the peak memory of one.

    Two steps (forward, softmax cross-entropy, backward, ``optimizer`` update) run with the
    learning rate set to 0, so the weights do not change (BatchNorm running statistics are
    restored afterwards). The first step creates the gradients and optimizer state; the second,
    measured, is the steady state of a training loop, which ``estimate_peak`` models.
    tracemalloc must not be running already (it would miscount what was allocated before).
    """
    from ..losses import SoftmaxCrossEntropy  # noqa: PLC0415
    from ..optim import get_optimizer  # noqa: PLC0415

    n = _check_batch(batch_size)
    shape = _input_shape(net, input_shape)
    out_shape = tuple(net.output_shape(shape))
    classes = math.prod(out_shape)
    if tracemalloc.is_tracing():
        raise StateError("measure_peak: tracemalloc is already tracing; stop it first so the count starts clean")
    params = dict(net.params)
    dtype = next(iter(params.values())).dtype if params else np.dtype(np.float32)
    buffers = {k: np.array(v, copy=True) for k, v in net.state_dict().items() if k not in params}
    resident = sum(int(v.nbytes) for v in net.state_dict().values())
    gen = np.random.default_rng(rng)
    opt = get_optimizer(optimizer, lr=0.0)
    loss_fn = SoftmaxCrossEntropy()
    gc.collect()
    # The estimate models the serial step: worker threads would each hold their own scratch buffers.
    with num_threads(1):
        tracemalloc.start()
        try:
            x = gen.standard_normal((n, *shape)).astype(dtype)
            labels = gen.integers(0, classes, size=n)

            def step():
                scores = net.forward(x, train=True).reshape(n, classes)
                _, dscores = loss_fn(scores, labels)
                net.backward(dscores.reshape((n, *out_shape)))
                del scores, dscores
                opt.step(net.params, net.grads)

            step()
            gc.collect()
            tracemalloc.reset_peak()
            t0 = time.perf_counter()
            step()
            seconds = time.perf_counter() - t0
            traced = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            if buffers:
                net.load_state_dict({**{k: np.array(v) for k, v in net.state_dict().items()}, **buffers})
    return Measurement(int(traced + resident), int(traced), int(resident), n, str(optimizer), seconds)
