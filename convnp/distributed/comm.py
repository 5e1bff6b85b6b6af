"""The collectives data-parallel training needs, over MPI (mpi4py), each guarded by a watchdog.

MPI has no timeouts: a collective waits forever for a rank that died or hangs. ``Comm`` runs
every wait under a deadline kept by one watchdog thread. The main thread enters the wait
(``Wait`` releases the GIL and spins in MPI's progress engine, so nothing is lost in latency),
the watchdog wakes twice a second, and when a wait has lasted ``timeout`` seconds it prints
what was being waited for and where, then calls ``MPI_Abort``, which ends every rank of the job.

``SelfComm`` is the same interface for one process without MPI (tests, ``world_size == 1``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

from ..errors import ConfigError

ABORT_CODE = 3
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def mpi_available() -> bool:
    """Whether mpi4py can be imported (it then initialises MPI)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec/mpirun/srun) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


class _Watchdog:
    """One daemon thread that aborts the job when a guarded wait outlives its deadline."""

    def __init__(self, on_timeout):
        self._on_timeout = on_timeout
        self._lock = threading.Lock()
        self._current = None  # (deadline, what) of the wait in progress
        self._wake = threading.Event()
        self._thread = None

    def _ensure_started(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="convnp-mpi-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def guard(self, what: str, timeout: float):
        self._ensure_started()
        with self._lock:
            outer = self._current
            self._current = (time.monotonic() + timeout, what, timeout)
        try:
            yield
        finally:
            with self._lock:
                self._current = outer

    def _run(self):
        while True:
            self._wake.wait(0.5)
            with self._lock:
                current = self._current
            if current is not None and time.monotonic() > current[0]:
                self._on_timeout(current[1], current[2])
                return


class Comm:
    """In-place SUM allreduce, broadcast and barrier over an mpi4py communicator, with a deadline.

    ``timeout`` (seconds) bounds every wait; past it the job is aborted with a message naming
    the rank, the collective and ``context`` (set by the trainer, e.g. "epoch 2, step 14").
    ``wait_time`` accumulates the seconds spent waiting in collectives (for benchmarks).
    """

    def __init__(self, mpi_comm=None, timeout: float = 300.0):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"Comm: timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.context = ""
        self.hint = ""
        self.wait_time = 0.0
        self._watchdog = _Watchdog(self._timed_out)

    # --- the guard ------------------------------------------------------------------------------
    def _timed_out(self, what: str, timeout: float) -> None:
        where = f" ({self.context})" if self.context else ""
        hint = f" {self.hint}" if self.hint else ""
        print(f"convnp distributed: rank {self.rank} of {self.size} waited {timeout:g} s in {what}{where} "
              f"and the other ranks never joined: a rank died or hangs. Aborting the whole job "
              f"(MPI_Abort, exit code {ABORT_CODE}).{hint}", file=sys.stderr, flush=True)
        self.comm.Abort(ABORT_CODE)

    @contextmanager
    def guard(self, what: str, timeout: float | None = None):
        """Abort the job if the block has not finished ``timeout`` (default self.timeout) s from now."""
        start = time.perf_counter()
        try:
            with self._watchdog.guard(what, self.timeout if timeout is None else float(timeout)):
                yield
        finally:
            self.wait_time += time.perf_counter() - start

    def abort(self, message: str, code: int = ABORT_CODE) -> None:
        print(f"convnp distributed: rank {self.rank} of {self.size}: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(code)

    # --- requests -------------------------------------------------------------------------------
    def iallreduce(self, buf: np.ndarray):
        """Start an in-place SUM allreduce of the contiguous array ``buf``; returns the request."""
        _check_contiguous(buf)
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def wait(self, req, what: str = "a collective") -> None:
        with self.guard(what):
            req.Wait()

    def waitall(self, reqs, what: str = "collectives") -> None:
        if reqs:
            with self.guard(what):
                self.MPI.Request.Waitall(list(reqs))

    @staticmethod
    def test(req) -> bool:
        """Drive progress of ``req`` without blocking; True once complete."""
        return bool(req.Test())

    # --- blocking collectives (all guarded) -------------------------------------------------------
    def allreduce_(self, buf: np.ndarray, what: str = "allreduce") -> np.ndarray:
        """Sum ``buf`` over the ranks, in place; returns it."""
        self.wait(self.iallreduce(buf), what)
        return buf

    def bcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        """Overwrite ``buf`` with root's, in place; returns it."""
        _check_contiguous(buf)
        self.wait(self.comm.Ibcast(buf, root=root), what)
        return buf

    def bcast_bytes(self, data: bytes | None, root: int = 0, what: str = "broadcast") -> bytes | None:
        """Root's ``data`` (bytes, or None) on every rank."""
        size = np.array([-1 if data is None else len(data)], dtype=np.int64)
        self.bcast_(size, root, what)
        if size[0] < 0:
            return None
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(int(size[0]), np.uint8)
        self.bcast_(buf, root, what)
        return buf.tobytes()

    def barrier(self, what: str = "barrier", timeout: float | None = None) -> None:
        with self.guard(what, timeout):
            self.comm.Ibarrier().Wait()


class _DoneRequest:
    def Test(self):
        return True

    def Wait(self):
        return None


class SelfComm:
    """``Comm``'s interface for a single process without MPI: every collective is the identity."""

    rank, size = 0, 1

    def __init__(self, timeout: float = 300.0):
        self.timeout = float(timeout)
        self.context = self.hint = ""
        self.wait_time = 0.0

    @contextmanager
    def guard(self, what: str, timeout: float | None = None):
        yield

    def abort(self, message: str, code: int = ABORT_CODE) -> None:
        print(f"convnp distributed: {message}", file=sys.stderr, flush=True)
        raise SystemExit(code)

    def iallreduce(self, buf):
        _check_contiguous(buf)
        return _DoneRequest()

    def wait(self, req, what: str = "") -> None:
        return None

    def waitall(self, reqs, what: str = "") -> None:
        return None

    @staticmethod
    def test(req) -> bool:
        return True

    def allreduce_(self, buf, what: str = ""):
        return buf

    def bcast_(self, buf, root: int = 0, what: str = ""):
        return buf

    def bcast_bytes(self, data, root: int = 0, what: str = ""):
        return data

    def barrier(self, what: str = "", timeout: float | None = None) -> None:
        return None


def _check_contiguous(buf) -> None:
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise ConfigError(f"collectives work on C-contiguous numpy arrays, got {type(buf).__name__}"
                          + (" (not contiguous)" if isinstance(buf, np.ndarray) else ""))


def init_distributed(timeout: float = 300.0, require_mpi: bool = True):
    """The world communicator: a ``Comm`` over MPI_COMM_WORLD, or ``SelfComm`` without mpi4py.

    With ``require_mpi`` (what ``convnp train --distributed`` uses) a missing mpi4py is a
    ConfigError with the install command; without it a single process gets ``SelfComm``. A
    process started by an MPI launcher never silently falls back to one process.
    """
    if mpi_available():
        return Comm(timeout=timeout)
    if require_mpi or launched_by_mpi():
        raise ConfigError('data-parallel training needs mpi4py and an MPI library: pip install -e ".[mpi]" '
                          "(installs mpi4py and MPICH), then run: mpiexec -n 2 convnp train ... --distributed")
    return SelfComm(timeout=timeout)
