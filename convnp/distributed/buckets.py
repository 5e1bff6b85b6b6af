"""Gradient buckets: flat, per-dtype buffers that gradients are packed into and summed in place.

One allreduce per parameter costs one network latency per parameter; one allreduce of the whole
model cannot start until the whole backward pass is done. Buckets sit in between (PyTorch DDP's
design): the parameters, in the order their gradients become ready (the reverse of the forward
order), are cut into runs of about ``bucket_bytes``; a run of one dtype shares one contiguous
buffer, and as soon as every gradient of a bucket has been copied in, the bucket's in-place
``Iallreduce`` can start while the backward pass goes on with earlier layers.

Buckets are launched strictly in index order, so every rank issues the same collectives in the
same order (MPI's rule for collectives) whatever order its gradients arrive in.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, StateError


class Bucket:
    """One flat buffer: ``names`` live at ``offsets`` (element offsets) with ``shapes``."""

    def __init__(self, index: int, dtype):
        self.index, self.dtype = index, np.dtype(dtype)
        self.names: list[str] = []
        self.offsets: list[int] = []
        self.shapes: list[tuple] = []
        self.numel = 0
        self.buffer = None
        self.ready: set[str] = set()
        self.request = None

    def add_slot(self, name: str, shape: tuple) -> None:
        self.names.append(name)
        self.offsets.append(self.numel)
        self.shapes.append(tuple(shape))
        self.numel += int(np.prod(shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def full(self) -> bool:
        return len(self.ready) == len(self.names)

    def __repr__(self):
        return f"Bucket({self.index}, {self.dtype.name}, {len(self.names)} tensors, {self.nbytes} bytes)"


class GradBuckets:
    """Pack gradients into flat buckets, allreduce them (SUM, in place) and hand back views.

    Args:
        params: name -> parameter array, in the order the gradients become ready in backward.
        comm: a ``Comm`` (or ``SelfComm``).
        bucket_bytes: a bucket is closed once it holds at least this many bytes (a parameter
            larger than that gets a bucket of its own); ``None`` or 0: one bucket per dtype run.
        overlap: start a bucket's allreduce as soon as it is full (during backward); otherwise
            start them all in ``finish``.

    One step: ``reset()``; ``add(name, grad)`` for every parameter (any order); ``finish()``
    returns name -> summed gradient (views into the buffers, valid until the next ``reset``).
    """

    def __init__(self, params: dict, comm, bucket_bytes: int | None = 1 << 20, overlap: bool = True):
        if bucket_bytes is not None and (isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer))
                                         or bucket_bytes < 0):
            raise ConfigError(f"GradBuckets: bucket_bytes must be an int >= 0 or None, got {bucket_bytes!r}")
        self.comm, self.overlap = comm, bool(overlap)
        self.bucket_bytes = int(bucket_bytes or 0)
        self.buckets: list[Bucket] = []
        self.slot: dict[str, tuple[Bucket, int, int, tuple]] = {}
        for name, p in params.items():
            dtype = np.dtype(p.dtype)
            if dtype.kind != "f":
                raise ConfigError(f"GradBuckets: parameter {name!r} has dtype {dtype}; gradients must be floating")
            last = self.buckets[-1] if self.buckets else None
            if last is None or last.dtype != dtype or (self.bucket_bytes and last.nbytes >= self.bucket_bytes):
                last = Bucket(len(self.buckets), dtype)
                self.buckets.append(last)
            last.add_slot(name, p.shape)
        for b in self.buckets:
            b.buffer = np.zeros(b.numel, dtype=b.dtype)
            for name, off, shape in zip(b.names, b.offsets, b.shapes):
                size = int(np.prod(shape, dtype=np.int64))
                self.slot[name] = (b, off, size, shape)
        self._next = 0
        self._in_flight: list = []

    # --- one step -------------------------------------------------------------------------------
    def reset(self) -> None:
        if self._in_flight:
            raise StateError("GradBuckets.reset: allreduces still in flight; call finish() first")
        for b in self.buckets:
            b.ready.clear()
            b.request = None
        self._next = 0

    def add(self, name: str, grad, scale: float | None = None) -> None:
        """Copy ``grad`` (times ``scale``) into its slot; may start the allreduce of full buckets."""
        try:
            b, off, size, shape = self.slot[name]
        except KeyError:
            raise ConfigError(f"GradBuckets: no slot for gradient {name!r}") from None
        if name in b.ready:
            raise StateError(f"GradBuckets: gradient {name!r} added twice in one step")
        grad = np.asarray(grad)
        if grad.shape != shape:
            raise ConfigError(f"GradBuckets: gradient {name!r} has shape {grad.shape}, its parameter {shape}")
        dst = b.buffer[off:off + size]
        if scale is None:
            dst[...] = grad.reshape(-1)
        else:
            np.multiply(grad.reshape(-1), scale, out=dst, casting="unsafe")
        b.ready.add(name)
        if self.overlap and b.full:
            self._launch_ready()

    def _launch_ready(self) -> None:
        while self._next < len(self.buckets) and self.buckets[self._next].full:
            b = self.buckets[self._next]
            b.request = self.comm.iallreduce(b.buffer)
            self._in_flight.append(b.request)
            self._next += 1

    def progress(self) -> None:
        """Let in-flight allreduces advance (MPI progresses only inside MPI calls)."""
        for req in self._in_flight:
            self.comm.test(req)

    def finish(self, what: str = "gradient allreduce") -> dict:
        """Start what is left, wait for every bucket, return name -> summed gradient (views)."""
        missing = [n for b in self.buckets for n in b.names if n not in b.ready]
        if missing:
            raise StateError(f"GradBuckets.finish: no gradient for {missing[:8]}"
                             + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
        self._launch_ready()
        reqs, self._in_flight = self._in_flight, []
        self.comm.waitall(reqs, f"{what} ({len(self.buckets)} buckets, {self.nbytes} bytes)")
        return self.views()

    def views(self) -> dict:
        return {name: b.buffer[off:off + size].reshape(shape) for name, (b, off, size, shape) in self.slot.items()}

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def __repr__(self):
        return (f"GradBuckets({len(self.slot)} tensors in {len(self.buckets)} buckets, {self.nbytes} bytes, "
                f"bucket_bytes={self.bucket_bytes}, overlap={self.overlap})")
