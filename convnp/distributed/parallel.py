"""DataParallel: one net, one shard of every global batch per rank, gradients summed over the ranks.

``DataParallel(net, comm)`` changes nothing in the net's classes or configs; it attaches, on the
layer instances only (``remove()`` detaches them):

* a hook after each parameter-owning layer's ``backward`` that copies its gradients into the
  flat buckets (``GradBuckets``), whose allreduces start as soon as a bucket is complete;
* with ``sync_bn=True``, a batch-norm forward/backward whose statistics are those of the global
  batch (one allreduce of per-channel sums in forward, one of the two per-channel reductions in
  backward), so training equals single-process batch norm over the global batch;
* for Dropout, a forward that draws the mask of the whole global batch from the layer's
  generator (identical on every rank) and keeps its own rows, so the masks, and the generator's
  state, are exactly those of a single process.

Weighting: a rank's loss is the mean over its ``n`` examples of a global batch of ``N``; its
``dscores`` are scaled by ``n / N`` before backward, so the summed gradients are the gradient of
the global mean loss even when shards differ in size (and sync BN's backward sums are exact).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError, StateError
from ..layers.dropout import Dropout
from ..layers.norm import _BatchNorm
from ..nets.container import Container
from ..ops.dropout import dropout_mask
from ..ops.norm import batchnorm_backward, batchnorm_running_update
from .buckets import GradBuckets


def _leaves(net) -> list:
    if not isinstance(net, Container):
        raise ConfigError(f"DataParallel: expected a Sequential or Graph, got {type(net).__name__}")
    return [(path, layer) for path, layer in net.named_modules() if not isinstance(layer, Container)]


def _axes(x) -> tuple:
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    return np.asarray(v, dtype=x.dtype).reshape((1, -1) + (1,) * (x.ndim - 2))


# --- synchronised batch norm ----------------------------------------------------------------------

def sync_batchnorm_stats(x, comm, what: str = "sync batch norm"):
    """Mean and biased variance per channel of ``x`` (N, C, *) over ALL ranks' batches, and the count.

    Each rank sends its count n, per-channel sum s and centred sum of squares q = sum (x - s/n)^2
    (a two-pass local variance, as accurate as single-process float32 batch norm) plus s^2/n;
    one float64 allreduce of 3C+1 numbers gives M = sum n, mean = sum s / M and
    var = (sum q + sum s^2/n - M mean^2) / M (Chan et al.'s pairwise combination).
    Returns (mean, var) in float64 and M.
    """
    c = x.shape[1]
    axes = _axes(x)
    n = x.size // c
    buf = np.zeros(3 * c + 1, dtype=np.float64)
    if n:
        s = x.sum(axis=axes, dtype=np.float64)
        xc = x - _per_channel(s / n, x)
        buf[:c] = s
        buf[c:2 * c] = (xc * xc).sum(axis=axes, dtype=np.float64)
        buf[2 * c:3 * c] = s * s / n
    buf[3 * c] = n
    comm.allreduce_(buf, what)
    m = buf[3 * c]
    mean = buf[:c] / max(m, 1.0)
    var = np.maximum((buf[c:2 * c] + buf[2 * c:3 * c] - m * mean * mean) / max(m, 1.0), 0.0)
    return mean, var, int(round(m))


def _sync_bn_forward(layer, comm, path):
    cls_forward = type(layer).forward

    def forward(x, train: bool = False):
        if not train:
            return cls_forward(layer, x, train=False)
        layer._check(x)
        mean64, var64, m = sync_batchnorm_stats(x, comm, f"sync batch norm statistics of {path!r}")
        if m <= 1:
            raise ShapeError(f"{layer!r}: expected more than 1 value per channel over all ranks when "
                             f"training, got {m} (local input shape {tuple(x.shape)})")
        mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)
        inv_std = (1.0 / np.sqrt(var64 + layer.eps)).astype(x.dtype)
        xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)
        weight, bias = layer.params.get("weight"), layer.params.get("bias")
        out = xhat
        if weight is not None:
            out = out * _per_channel(weight, x)
        if bias is not None:
            out = out + _per_channel(bias, x)
        b = layer.buffers
        b["num_batches_tracked"] = np.array(int(b["num_batches_tracked"]) + 1, dtype=np.int64)
        factor = layer.momentum if layer.momentum is not None else 1.0 / int(b["num_batches_tracked"])
        b["running_mean"], b["running_var"] = batchnorm_running_update(
            b["running_mean"], b["running_var"], mean, var, m, factor)
        layer._cache = {"xhat": xhat, "inv_std": inv_std, "weight": weight, "has_bias": bias is not None,
                        "train": True, "mean": mean, "var": var, "count": m, "sync": True}
        layer._out_shape = out.shape
        return out

    return forward


def _sync_bn_backward(layer, comm, path):
    def backward(dout):
        cache = layer._pop_cache(dout, layer._out_shape)
        if not cache.get("sync"):
            dx, dweight, dbias = batchnorm_backward(dout, cache)
        else:
            # dx = inv_std / M * (M g - sum(g) - xhat sum(g xhat)), g = dout * weight, sums over ALL ranks
            xhat, inv_std, weight, m = cache["xhat"], cache["inv_std"], cache["weight"], cache["count"]
            axes = _axes(dout)
            c = dout.shape[1]
            dbias = dout.sum(axis=axes)
            dweight = (dout * xhat).sum(axis=axes)
            red = np.empty(2 * c, dtype=np.float64)
            red[:c], red[c:] = dbias, dweight
            comm.allreduce_(red, f"sync batch norm backward of {path!r}")
            sum_g, sum_gx = red[:c], red[c:]
            g = dout
            if weight is not None:
                w64 = np.asarray(weight, dtype=np.float64)
                sum_g, sum_gx = sum_g * w64, sum_gx * w64
                g = dout * _per_channel(weight, dout)
            dx = _per_channel(inv_std / dout.dtype.type(m), dout) * (
                dout.dtype.type(m) * g - _per_channel(sum_g, dout) - xhat * _per_channel(sum_gx, dout))
            if weight is None:
                dweight = None
            if not cache["has_bias"]:
                dbias = None
        layer.store_grads(dweight, dbias)
        return dx

    return backward


# --- dropout over a shard ---------------------------------------------------------------------------

def _shard_dropout_forward(layer, dp):
    cls_forward = type(layer).forward

    def forward(x, train: bool = False):
        if not train or layer.p == 0:
            return cls_forward(layer, x, train=train)
        layer._check(x)
        lo, n, total = dp.batch
        if x.shape[0] != n:
            raise StateError(f"{layer!r}: got {x.shape[0]} examples but DataParallel.set_batch said {n}; "
                             "call set_batch(offset, count, global_count) before each training forward")
        tail = x.shape[1:2] + (1,) * (x.ndim - 2) if layer._channelwise else x.shape[1:]
        mask = dropout_mask((total,) + tuple(tail), layer.p, layer.rng, x.dtype)[lo:lo + n]
        out = x * mask
        layer._cache = (mask, out.shape)
        return out

    return forward


# --- the wrapper -----------------------------------------------------------------------------------

class DataParallel:
    """Data-parallel training hooks on ``net`` (see the module docstring).

    Args:
        net: a Sequential or Graph.
        comm: a ``Comm`` (or ``SelfComm``).
        sync_bn: global batch statistics in batch norm (else each rank normalises its shard).
        overlap: start bucket allreduces during backward (else all after it).
        bucket_bytes: bucket size (see ``GradBuckets``).

    A step: ``set_batch(offset, n, N)``; ``forward``; scale dscores by n/N; ``begin()``;
    ``net.backward(dscores)``; ``grads = finish()`` (summed; dotted names as ``named_parameters``).
    """

    def __init__(self, net, comm, *, sync_bn: bool = False, overlap: bool = True, bucket_bytes: int = 1 << 20):
        self.net, self.comm = net, comm
        self.sync_bn, self.overlap = bool(sync_bn), bool(overlap)
        leaves = _leaves(net)
        params = net.named_parameters()
        self.buckets = GradBuckets({k: params[k] for k in reversed(list(params))}, comm, bucket_bytes, overlap)
        self._order = list(params)
        self.batch = (0, 0, 0)
        self._active = False
        self._patched: list = []
        distributed = comm.size > 1
        for path, layer in leaves:
            if isinstance(layer, _BatchNorm) and self.sync_bn and distributed:
                self._patch(layer, "forward", _sync_bn_forward(layer, comm, path))
                self._patch(layer, "backward", _sync_bn_backward(layer, comm, path))
            elif isinstance(layer, Dropout):
                if distributed:
                    self._patch(layer, "forward", _shard_dropout_forward(layer, self))
            elif isinstance(getattr(layer, "rng", None), np.random.Generator):
                raise ConfigError(f"DataParallel: layer {path!r} ({type(layer).__name__}) draws random numbers "
                                  "in forward; only Dropout's draws are split over the ranks")
            if layer.params:
                self._patch(layer, "backward", self._grad_hook(layer, path))

    def _patch(self, layer, attr: str, fn) -> None:
        had = attr in layer.__dict__
        self._patched.append((layer, attr, layer.__dict__.get(attr), had))
        setattr(layer, attr, fn)

    def _grad_hook(self, layer, path):
        inner = layer.backward  # the class method, or the sync-BN override installed just before
        prefix = f"{path}." if path else ""

        def backward(dout):
            dx = inner(dout)
            if self._active:
                for key, g in layer.grads.items():
                    self.buckets.add(prefix + key, g)
                self.buckets.progress()
            return dx

        return backward

    def remove(self) -> None:
        """Detach every hook (the layers behave exactly as before)."""
        for layer, attr, old, had in reversed(self._patched):
            if had:
                setattr(layer, attr, old)
            else:
                layer.__dict__.pop(attr, None)
        self._patched = []

    # --- a step -------------------------------------------------------------------------------------
    def set_batch(self, offset: int, count: int, global_count: int) -> None:
        """This rank holds rows [offset, offset + count) of a global batch of ``global_count``."""
        self.batch = (int(offset), int(count), int(global_count))

    def begin(self) -> None:
        """Call before ``net.backward``: gradients then flow into the buckets."""
        self.buckets.reset()
        self._active = True

    def finish(self) -> dict:
        """Wait for the summed gradients; name -> array in ``named_parameters`` order."""
        self._active = False
        grads = self.buckets.finish()
        return {k: grads[k] for k in self._order}

    # --- state --------------------------------------------------------------------------------------
    def _bcast_arrays(self, arrays: dict, root: int, what: str) -> None:
        by_dtype: dict = {}
        for name, arr in arrays.items():
            by_dtype.setdefault(np.dtype(arr.dtype), []).append(name)
        for dtype, names in by_dtype.items():
            flat = np.concatenate([np.ravel(arrays[n]) for n in names]).astype(dtype, copy=False) \
                if names else np.empty(0, dtype)
            flat = np.ascontiguousarray(flat)
            self.comm.bcast_(flat, root, what)
            off = 0
            for n in names:
                a = arrays[n]
                a[...] = flat[off:off + a.size].reshape(a.shape)
                off += a.size

    def broadcast_state(self, root: int = 0) -> None:
        """Every rank takes root's parameters and buffers (in place)."""
        self._bcast_arrays(self.net.state_dict(), root, "broadcast of the initial weights")

    def sync_buffers(self, root: int = 0) -> None:
        """Every rank takes root's buffers (batch-norm running statistics kept per rank with local BN)."""
        self._bcast_arrays(self.net.named_buffers(), root, "broadcast of batch-norm buffers")

    def max_divergence(self) -> float:
        """Largest |p_rank - mean over ranks| of any parameter (0.0 when every rank holds the same weights)."""
        params = self.net.named_parameters()
        if not params:
            return 0.0
        flat = np.concatenate([np.ravel(p).astype(np.float64) for p in params.values()])
        mean = flat.copy()
        self.comm.allreduce_(mean, "parameter check")
        mean /= self.comm.size
        dev = np.array([np.max(np.abs(flat - mean))])
        self.comm.allreduce_(dev, "parameter check")
        return float(dev[0])

    def __repr__(self):
        return (f"DataParallel(rank {self.comm.rank} of {self.comm.size}, sync_bn={self.sync_bn}, "
                f"overlap={self.overlap}, {self.buckets!r})")
