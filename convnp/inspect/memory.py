"""Training memory: convnp's peak, the largest batch that fits a budget, and a real measurement.

``estimate_peak(net, input_shape, batch_size, optimizer)`` simulates one training step
(forward, softmax loss, backward, optimizer update) the way convnp runs it and returns the
largest number of bytes alive at once. Its model, per leaf layer, is the layer's own ``memory`` fact (a ``convnp.layers.base.LayerMemory``):

* what the layer's cache keeps for backward: its input (Conv2d, Linear, LRN), its output
  (Tanh, Sigmoid, LRN) or new arrays (ReLU's 1-byte mask, max pooling's 1-byte switches,
  Dropout's mask, BatchNorm's normalised input, a locally connected layer's patches);
* the scratch buffers each forward and backward allocates and frees again: the im2col
  chunk buffers of a convolution (``convnp.ops.conv.conv2d_workspace``), the padded
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
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, StateError
from ..optim.optimizers import optimizer_slots, update_temporaries
from ..threads import num_threads
from .trace import dtype_bytes_of, input_shape_of, is_frozen, trace

__all__ = ["Measurement", "PeakEstimate", "estimate_peak", "estimate_peak_from_nodes", "measure_peak"]


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


def estimate_peak_from_nodes(nodes, value_shapes, batch_size, optimizer="momentum", dtype_bytes=4,
                             frozen=()) -> PeakEstimate:
    """The simulation behind ``estimate_peak``, on ``convnp.inspect.trace.trace``'s output."""
    n, b = _check_batch(batch_size), int(dtype_bytes)
    slots = optimizer_slots(optimizer)

    params = buffers = trainable = biggest = 0
    for node in nodes:
        for k, v in (getattr(node.layer, "params", {}) or {}).items():
            size = int(np.size(v))
            params += size
            biggest = max(biggest, size)
            if not is_frozen(f"{node.path}.{k}", frozen):
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
        m = node.layer.memory(node.in_shapes, node.out_shape, n, b, nhwc[node.inputs[0]])
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
        shared = m.dx_shared  # every input gets the same dout array
        for k_, v in enumerate(node.inputs):
            if m.dx_new:
                size = m.dx_bytes if (m.dx_bytes and k_ == 0) else vbytes[v]
            else:
                size = (dout if k_ == 0 else 0) if shared else min(dout, vbytes[v])
            grads[v] = max(grads.get(v, 0), size)

    # --- the update -----------------------------------------------------------------------------
    scores = size_of.get(out_storage, 0) * (out_storage != 0)
    temps = update_temporaries(optimizer) * biggest * b
    consider(persistent + scores + n * classes * b + temps, "optimizer update", scores, n * classes * b, temps)
    total, where, acts, g, work, _ = best
    return PeakEstimate(int(total), where, int(persistent), int(acts), int(g), int(work), n)


def estimate_peak(net, input_shape=None, batch_size: int = 1, optimizer: str = "momentum", dtype_bytes=None,
                  frozen=()) -> PeakEstimate:
    """Estimated peak bytes of one convnp training step of ``net`` (see the module docstring)."""
    shape = input_shape_of(net, input_shape)
    nodes, shapes = trace(net, shape)
    b = dtype_bytes_of(net) if dtype_bytes is None else int(dtype_bytes)
    return estimate_peak_from_nodes(nodes, shapes, batch_size, optimizer, b, frozen)


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
    shape = input_shape_of(net, input_shape)
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
