"""Threads: one setting for the BLAS library and for convnp's own worker threads.

    import convnp as cn
    cn.set_num_threads(2)          # or the environment variable CONVNP_NUM_THREADS=2
    cn.get_num_threads()           # default: every core this process may run on
    with cn.num_threads(1): ...    # temporarily

convnp runs a net on ``n`` threads by splitting each batch into shards that ``n`` workers (the
calling thread and ``n - 1`` pool threads) take from a shared queue; NumPy releases the GIL in
its copies and matrix multiplies, so the shards really run side by side. Inside such a parallel
region the BLAS library (NumPy's OpenBLAS, found by ``threadpoolctl``) runs one thread per
worker; outside it, BLAS gets ``n`` threads. Two-threaded OpenBLAS next to a busy core (a data
loader's prefetch thread, another process) measured up to 5x slower than one thread per worker
with dynamically shared shards, which is why convnp does the splitting itself.

``set_num_threads`` sets BLAS's thread count for the whole process (other NumPy code included);
leaving it alone (no call, no environment variable) leaves BLAS as it was, except inside
convnp's parallel regions.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

from .errors import ConfigError

ENV_VAR = "CONVNP_NUM_THREADS"

_lock = threading.Lock()
_local = threading.local()           # .in_region: this thread is running work of a parallel region
_settings = {"n": None, "explicit": False}
_pool = None
_blas = None


def _check_n(n, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where}: the number of threads must be a positive int, got {n!r}")
    return int(n)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _from_env():
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{ENV_VAR}={value!r}: expected a positive int (the number of threads)")
    return n


def get_num_threads() -> int:
    """The thread count convnp uses: ``set_num_threads``'s value, else $CONVNP_NUM_THREADS, else all cores."""
    n = _settings["n"]
    if n is None:
        with _lock:
            if _settings["n"] is None:
                env = _from_env()
                _settings["n"], _settings["explicit"] = (env, True) if env else (available_cores(), False)
                if env:
                    _blas_controller().set(env)
            n = _settings["n"]
    return n


def set_num_threads(n: int) -> None:
    """Use ``n`` threads: ``n`` convnp workers per parallel region, ``n`` BLAS threads elsewhere."""
    n = _check_n(n, "set_num_threads")
    with _lock:
        _settings["n"], _settings["explicit"] = n, True
        _blas_controller().set(n)


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: ``set_num_threads(n)`` inside the block, the previous setting after it."""
    n = _check_n(n, "num_threads")
    before, explicit = get_num_threads(), _settings["explicit"]
    blas_before = _blas_controller().get()
    set_num_threads(n)
    try:
        yield n
    finally:
        with _lock:
            _settings["n"], _settings["explicit"] = before, explicit
            _blas_controller().set(blas_before if not explicit else before)


# --- BLAS -----------------------------------------------------------------------------------------
class _BlasControl:
    """Thread count of the BLAS libraries NumPy loaded, through ``threadpoolctl`` (no-op without it)."""

    def __init__(self):
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - loaded on first use
        except ImportError:  # a core dependency; tolerate its absence rather than fail to import
            self._libs = []
        else:
            import numpy  # noqa: F401, PLC0415 - make sure NumPy's BLAS is loaded before scanning

            self._libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)

    def get(self):
        return [lib.get_num_threads() for lib in self._libs]

    def set(self, n) -> None:
        """``n``: an int for every library, or a list from ``get()``."""
        values = n if isinstance(n, list) else [n] * len(self._libs)
        for lib, v in zip(self._libs, values):
            if v is not None and lib.get_num_threads() != v:
                lib.set_num_threads(v)


def _blas_controller() -> _BlasControl:
    global _blas
    if _blas is None:
        _blas = _BlasControl()
    return _blas


@contextlib.contextmanager
def blas_threads(n: int):
    """BLAS at ``n`` threads inside the block (the previous counts restored after)."""
    ctl = _blas_controller()
    before = ctl.get()
    ctl.set(n)
    try:
        yield
    finally:
        ctl.set(before)


# --- the worker pool ------------------------------------------------------------------------------
def in_parallel_region() -> bool:
    """True inside work that ``parallel_map`` runs (where nested calls run serially)."""
    return getattr(_local, "in_region", False)


class _Job:
    """Items 0..count-1 handed out one at a time to whichever worker asks next."""

    def __init__(self, fn, count: int):
        self.fn, self.count = fn, count
        self.next = 0
        self.lock = threading.Lock()
        self.results = [None] * count
        self.errors: dict[int, BaseException] = {}
        self.cancelled = False
        self.done = threading.Semaphore(0)

    def take(self):
        with self.lock:
            if self.cancelled or self.next >= self.count:
                return None
            i, self.next = self.next, self.next + 1
            return i

    def work(self, worker: int) -> None:
        prior = getattr(_local, "in_region", False)
        _local.in_region = True
        try:
            while (i := self.take()) is not None:
                try:
                    self.results[i] = self.fn(i, worker)
                except BaseException as err:  # noqa: BLE001 - handed to the caller
                    self.errors[i] = err
                    self.cancelled = True
        finally:
            _local.in_region = prior


class WorkerPool:
    """``size - 1`` daemon threads plus the calling thread; ``map`` runs a job on all of them."""

    def __init__(self, size: int):
        self.size = _check_n(size, "WorkerPool")
        self._queues = []
        for w in range(1, self.size):
            q: queue.SimpleQueue = queue.SimpleQueue()
            t = threading.Thread(target=self._serve, args=(q, w), name=f"convnp-worker-{w}", daemon=True)
            t.start()
            self._queues.append(q)

    @staticmethod
    def _serve(q, worker: int) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            try:
                job.work(worker)
            finally:
                job.done.release()

    def map(self, fn, count: int) -> list:
        """[fn(i, worker) for i in range(count)], items shared dynamically over the workers.

        ``worker`` is the index (0 = the calling thread) of the thread running the item, so
        ``fn`` can keep per-worker state. The first error (by item) is re-raised after every
        worker has stopped; the remaining items are then skipped.
        """
        job = _Job(fn, count)
        helpers = self._queues[:max(0, min(count, self.size) - 1)]
        if in_parallel_region():
            helpers = []  # nested: run on this thread only
        for q in helpers:
            q.put(job)
        try:
            job.work(0)
        except BaseException:  # e.g. KeyboardInterrupt between items: stop the helpers too
            job.cancelled = True
            raise
        finally:
            for _ in helpers:
                job.done.acquire()
        if job.errors:
            raise job.errors[min(job.errors)]
        return job.results

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        self._queues = []


def get_pool() -> WorkerPool:
    """The process's pool with ``get_num_threads()`` workers (rebuilt when the setting changes)."""
    global _pool
    n = get_num_threads()
    pool = _pool
    if pool is None or pool.size != n:
        with _lock:
            if _pool is None or _pool.size != n:
                if _pool is not None:
                    _pool.close()
                _pool = WorkerPool(n)
            pool = _pool
    return pool


def parallel_map(fn, count: int, blas: int | None = 1) -> list:
    """Run ``fn(i, worker)`` for i in range(count) on the pool, BLAS at ``blas`` threads meanwhile.

    Serial (on this thread, BLAS untouched) when there is one thread, one item, or when called
    from inside another parallel region.
    """
    pool = get_pool()
    if pool.size == 1 or count <= 1 or in_parallel_region():
        prior = getattr(_local, "in_region", False)
        _local.in_region = True
        try:
            return [fn(i, 0) for i in range(count)]
        finally:
            _local.in_region = prior
    if blas is None:
        return pool.map(fn, count)
    with blas_threads(blas):
        return pool.map(fn, count)


def _after_fork_in_child() -> None:
    # Threads do not survive fork: a child process builds its own pool on first use.
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
