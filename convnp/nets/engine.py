"""Batch-sharded execution of a Sequential on convnp's worker threads.

Most layers treat every example of a batch on its own (convolution, pooling, activations, fully
connected layers; batch norm and dropout only in evaluation). A run of such layers inside a
``Sequential`` is a *segment*: its batch is cut into shards, and each shard goes through its own
*replica* of the segment's layers, on whichever worker thread is free (``convnp.threads``).
A replica is a shallow copy of a layer: the very same parameter arrays, but its own cache and
gradients, so the shards never share scratch state. Backward runs each shard's replicas in
reverse, then adds the shards' parameter gradients (each worker sums the shards it ran, then the
main thread sums the workers). The results equal the serial ones up to the order of float
additions in those sums.

Layers outside this list (batch norm and dropout in training, layers of other libraries, any
layer whose ``forward``/``backward`` was replaced on the instance, e.g. by DataParallel's
hooks) run serially on the whole batch, between segments. Nothing here changes what a net
computes; ``Sequential`` calls it when ``get_num_threads() > 1`` and the batch is big enough.
"""

from __future__ import annotations

import copy
import threading

from ..errors import ShapeError, StateError
from .container import Container, relocate
from ..ops.backend import array_module
from ..threads import get_num_threads, in_parallel_region, parallel_map

#: Shards per worker thread. More shards balance a busy core better (a worker that gets less of
#: the machine takes fewer shards); fewer shards have less Python overhead and bigger matrices.
SHARDS_PER_THREAD = 2
#: A batch is sharded only when each shard would hold at least this many input numbers.
MIN_SHARD_ELEMENTS = 8192

def shardable(layer, train: bool) -> bool:
    """True when ``layer.forward(x, train)`` on row slices of x gives the row slices of the output
    (the layer's own ``shardable`` fact; never for a layer with instance hooks)."""
    if _patched(layer):
        return False  # instance hooks (DataParallel, user patches) must see the whole batch
    return layer.shardable(train)


def replicate(layer, pairs: list, containers: list):
    """A replica of ``layer`` sharing its parameter arrays; appends (original, replica) leaf pairs."""
    rep = copy.copy(layer)
    rep._cache = None
    if isinstance(layer, Container):  # a shardable container: a chain of shardable layers
        containers.append(layer)
        rep.__dict__["_children"] = {name: replicate(child, pairs, containers)
                                     for name, child in layer.named_children()}
    else:
        rep.grads = {}
        pairs.append((layer, rep))
    return rep


def _patched(layer) -> bool:
    return "forward" in layer.__dict__ or "backward" in layer.__dict__


def fusable(layer, nxt) -> bool:
    """True when ``layer`` can run with the ReLU ``nxt`` fused onto its output (``forward_relu``)."""
    return (getattr(type(layer), "forward_relu", None) is not None and hasattr(type(nxt), "take_mask")
            and not _patched(layer) and not _patched(nxt))


def forward_chain(named: list, x, train: bool):
    """Run the (name, layer) pairs in order; a layer followed by a ReLU that it can fuse
    (``forward_relu(x, train) -> (out, mask)``) applies it while its output is in cache, and the
    ReLU gets the mask for its backward as if it had run. ShapeErrors name the failing child."""
    i, count = 0, len(named)
    while i < count:
        name, layer = named[i]
        try:
            if i + 1 < count and fusable(layer, named[i + 1][1]):
                relu = named[i + 1][1]
                x, mask = layer.forward_relu(x, train=train)
                if mask is None:  # the layer could not fuse this time: run the ReLU itself
                    name = named[i + 1][0]
                    x = relu.forward(x, train=train)
                else:
                    relu.take_mask(mask, x.shape)
                i += 2
                continue
            x = layer.forward(x, train=train)
        except ShapeError as err:
            relocate(err, name)
        i += 1
    return x


def worth_sharding(x) -> bool:
    """Threads to use, a batch to split and enough work per shard (cheap; checked on every forward)."""
    if in_parallel_region():
        return False
    shape = getattr(x, "shape", None)
    if not shape or len(shape) < 2 or shape[0] < 2 or not hasattr(x, "__array_interface__"):
        return False
    n = get_num_threads()
    return n > 1 and x.size >= 2 * MIN_SHARD_ELEMENTS


def shard_bounds(n: int, size: int) -> list:
    """Row ranges of ``n`` rows split into about threads * SHARDS_PER_THREAD nearly equal shards."""
    count = min(n, get_num_threads() * SHARDS_PER_THREAD, max(1, size // MIN_SHARD_ELEMENTS))
    edges = [n * i // count for i in range(count + 1)]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def plan(named_children: list, train: bool):
    """[("serial", [(name, layer)]) | ("shard", [(name, layer), ...])], or None if nothing shards."""
    steps, any_shard = [], False
    for name, layer in named_children:
        step = "shard" if shardable(layer, train) else "serial"
        any_shard |= step == "shard"
        if steps and steps[-1][0] == step == "shard":
            steps[-1][1].append((name, layer))
        else:
            steps.append((step, [(name, layer)]))
    return steps if any_shard else None


class _Segment:
    """One sharded run of layers: its shards' replicas, kept from forward for backward."""

    def __init__(self, named, bounds, out_shape, replicas, pairs, names):
        self.named, self.bounds, self.out_shape = named, bounds, out_shape
        self.replicas, self.pairs, self.names = replicas, pairs, names


def _assemble(parts: dict, lock, key: str, n: int, lo: int, hi: int, part):
    """Copy ``part`` into rows lo:hi of the batch array ``parts[key]`` (allocated by the first shard)."""
    with lock:
        full = parts.get(key)
        if full is None:  # empty_like keeps the memory layout (an NCHW view of NHWC memory stays one)
            full = parts[key] = array_module(part).empty_like(part, shape=(n,) + tuple(part.shape[1:]))
    full[lo:hi] = part


def forward_segment(named: list, x, train: bool) -> tuple:
    """Run the layers ``named`` on shards of ``x``; returns (output, _Segment for backward)."""
    n = x.shape[0]
    bounds = shard_bounds(n, x.size)
    replicas: list = [None] * len(bounds)
    pairs_of: list = [None] * len(bounds)
    containers: list = []
    parts: dict = {}
    lock = threading.Lock()

    def run(i, worker):
        lo, hi = bounds[i]
        pairs, conts = [], []
        reps = [replicate(layer, pairs, conts) for _, layer in named]
        replicas[i], pairs_of[i] = reps, pairs
        if i == 0:
            containers.extend(conts)
        h = forward_chain([(name, rep) for (name, _), rep in zip(named, reps)], x[lo:hi], train)
        _assemble(parts, lock, "out", n, lo, hi, h)
        return None

    try:
        parallel_map(run, len(bounds))
    except Exception as err:
        # Errors must name the whole batch, not a shard: run the segment serially to get them.
        forward_chain(named, x, train)
        raise err
    # The originals hold no state of this step: a later backward must not find an old cache.
    for layer, _ in pairs_of[0]:
        layer._cache = None
    for cont in containers:
        cont._cache = None
    out = parts["out"]
    return out, _Segment(named, bounds, out.shape, replicas, pairs_of, [name for name, _ in named])


def backward_segment(seg: _Segment, dout, start=None):
    """dx of a sharded segment; the segment's layers get the summed gradients of all shards.

    ``start``: index of the segment's first layer with parameters when the input gradient is not
    wanted: layers before it are skipped, it computes only its parameter gradients, and the
    result is None. The shards' gradients are added in shard order (not in the order workers
    finish), so a step gives bit-identical results every time it runs with the same thread count.
    """
    if tuple(dout.shape) != tuple(seg.out_shape):
        relocate(ShapeError(f"dout has shape {tuple(dout.shape)} but forward produced {tuple(seg.out_shape)}"),
                 seg.names[-1])
    if seg.replicas is None:
        raise StateError("backward called twice for one forward")
    n = dout.shape[0]
    parts: dict = {}
    lock = threading.Lock()
    replicas, seg.replicas = seg.replicas, None  # a second backward finds none
    count = len(seg.bounds)
    done = [False] * count
    state = {"next": 0, "folding": False, "sums": None}

    def fold():
        """Add finished shards' gradients into the sums in shard order (one thread at a time), and
        drop them: memory holds the sums plus the shards finished out of order, not every shard's."""
        while True:
            with lock:
                j = state["next"]
                if state["folding"] or j >= count or not done[j]:
                    return
                state["folding"] = True
            try:
                pairs = seg.pairs[j]
                if j == 0:  # shard 0's fresh arrays become the sums
                    state["sums"] = [dict(rep.grads) for _, rep in pairs]
                else:
                    for total, (_, rep) in zip(state["sums"], pairs):
                        for key, g in rep.grads.items():
                            total[key] += g
                for _, rep in pairs:
                    rep.grads = {}
            finally:
                with lock:
                    state["next"] = j + 1
                    state["folding"] = False

    def run(i, worker):
        lo, hi = seg.bounds[i]
        d = dout[lo:hi]
        reps = replicas[i]
        for idx in range(len(reps) - 1, -1 if start is None else start - 1, -1):
            d = call_backward(reps[idx], d, start is None or idx != start)
        if start is None:
            _assemble(parts, lock, "dx", n, lo, hi, d)
        reps.clear()  # the shard's caches are spent
        with lock:
            done[i] = True
        fold()

    parallel_map(run, count)
    fold()
    if state["next"] != count:
        raise StateError(f"internal error: {state['next']} of {count} shard gradients were added")
    for (layer, _), total in zip(seg.pairs[0], state["sums"]):
        if total or layer.params:
            layer.grads = total
    return parts.get("dx")


# --- a Sequential's forward and backward over its plan ----------------------------------------------
def forward_steps(steps: list, x, train: bool) -> tuple:
    """Run a ``plan``: serial children on the whole batch, segments on shards. Returns (out, record)."""
    record = []
    for step, named in steps:
        if step == "shard" and worth_sharding(x):
            x, seg = forward_segment(named, x, train)
            record.append(("shard", seg))
            continue
        x = forward_chain(named, x, train)
        record.append(("serial", named))
    return x, record


def has_params(layer) -> bool:
    return bool(layer.named_parameters() if hasattr(layer, "named_parameters") else layer.params)


def call_backward(layer, dout, input_grad: bool = True):
    """``layer.backward(dout)``, telling layers that can skip it that dx is not wanted."""
    if input_grad or "backward" in layer.__dict__ or not getattr(type(layer), "accepts_input_grad", False):
        return layer.backward(dout)
    return layer.backward(dout, input_grad=False)


def _discard(layer) -> None:
    """Forget what a forward left for a backward that will not come (a skipped layer)."""
    layer._cache = None
    if hasattr(layer, "named_modules"):
        for _, inner in layer.named_modules():
            inner._cache = None


def backward_steps(record: list, dout, input_grad: bool = True):
    """Backward through what ``forward_steps`` recorded (or [("serial", named children)]), last step first.

    Returns dx; with ``input_grad=False`` the layers before the first one with parameters are
    skipped, that one computes only its parameter gradients, and the result is None.
    """
    first = None  # (step, index) of the first layer with parameters
    if not input_grad:
        for si, (step, item) in enumerate(record):
            named = item.named if step == "shard" else item
            li = next((li for li, (_, layer) in enumerate(named) if has_params(layer)), None)
            if li is not None:
                first = (si, li)
                break
        if first is None:  # nothing to learn: nothing to do
            for step, item in record:
                for _, layer in (item.named if step == "shard" else item):
                    _discard(layer)
            return None
    for si in range(len(record) - 1, -1, -1):
        step, item = record[si]
        if first is not None and si < first[0]:
            for _, layer in (item.named if step == "shard" else item):
                _discard(layer)
            continue
        start = first[1] if first is not None and si == first[0] else None
        if step == "shard":
            dout = backward_segment(item, dout, start)
            continue
        for li in range(len(item) - 1, -1, -1):
            name, layer = item[li]
            if start is not None and li < start:
                _discard(layer)
                continue
            try:
                dout = call_backward(layer, dout, start is None or li != start)
            except ShapeError as err:
                relocate(err, name)
    return None if first is not None else dout
