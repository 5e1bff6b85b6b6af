"""DistributedTrainer: the Trainer's loop, data-parallel over MPI ranks, with single-process results.

Every rank runs the same loop over its shard of each global batch (``DataLoader(rank=,
world_size=)``); a step sums the n/N-weighted gradients over the ranks (``DataParallel``) and
applies the same optimizer step everywhere, so the weights stay identical on every rank. The
reported loss and accuracy are those of the global batch. Rank 0 alone shows progress and writes
checkpoints and history; ``resume`` has rank 0 read the checkpoint and broadcast its bytes, so
every rank restores the same state and loader position (no shared filesystem needed).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..optim import clip_grad_norm
from ..train.checkpoint import CheckpointError, load_last_good
from ..train.trainer import Trainer, TrainingError
from .parallel import DataParallel


def collective(err: Exception) -> Exception:
    """Mark ``err`` as raised on every rank at the same point (no need to abort the others)."""
    err.collective = True
    return err


class DistributedTrainer(Trainer):
    """``Trainer`` over ``comm`` (see the module docstring). Extra arguments:

    comm: ``convnp.distributed.init_distributed()`` (a ``Comm``) or a ``SelfComm``.
    sync_bn: batch-norm statistics of the global batch (default: each rank's shard).
    overlap, bucket_bytes: see ``DataParallel``.
    """

    def __init__(self, net, loss, optimizer, train_loader, *, comm, sync_bn: bool = False, overlap: bool = True,
                 bucket_bytes: int = 1 << 20, progress: bool = True, **kwargs):
        self.comm = comm
        self.rank, self.world_size = comm.rank, comm.size
        loader_world = getattr(train_loader, "world_size", 1)
        if loader_world != self.world_size or getattr(train_loader, "rank", 0) != self.rank:
            raise ConfigError(f"DistributedTrainer: the training loader serves shard {getattr(train_loader, 'rank', 0)} "
                              f"of {loader_world} but this is rank {self.rank} of {self.world_size}; build it with "
                              f"DataLoader(..., rank={self.rank}, world_size={self.world_size})")
        super().__init__(net, loss, optimizer, train_loader, progress=progress and self.rank == 0, **kwargs)
        self.sync_bn = bool(sync_bn)
        self.dp = DataParallel(net, comm, sync_bn=sync_bn, overlap=overlap, bucket_bytes=bucket_bytes)
        self.dp.broadcast_state(root=0)  # every rank starts from rank 0's weights
        self._global_count = 0
        if self.out_dir is not None:
            comm.hint = (f"The last checkpoint ({self.checkpoint_path}, if one was written) is intact: rerun the "
                         "same command with --resume to continue.")

    # --- one step ---------------------------------------------------------------------------------
    def _shard(self, n_local: int) -> tuple[int, int]:
        """(offset, global count) of the current step's batch."""
        loader = self.train_loader
        if hasattr(loader, "batch_length") and hasattr(loader, "shard_range"):
            total = loader.batch_length(self.step_in_epoch)
            lo, hi = loader.shard_range(total)
        else:  # equal shards assumed
            total, lo, hi = n_local * self.world_size, n_local * self.rank, n_local * (self.rank + 1)
        if hi - lo != n_local:
            raise ConfigError(f"DistributedTrainer: rank {self.rank} got {n_local} examples, but rows "
                              f"[{lo}, {hi}) of the global batch of {total} are its shard")
        if total < self.world_size:
            raise collective(ConfigError(
                f"DistributedTrainer: a global batch of {total} examples cannot be split over {self.world_size} "
                "ranks (every rank needs at least one example); use a larger batch size or drop_last"))
        return lo, total

    def train_step(self, x, y) -> tuple[float, int]:
        n = len(y)
        lo, total = self._shard(n)
        self.comm.context = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"
        self.dp.set_batch(lo, n, total)
        scores = self.net.forward(x, train=True)
        loss, dscores = self.loss(scores, y)
        # the global loss and accuracy travel while backward runs (no extra latency on the critical path)
        sums = np.array([float(loss) * n, float(np.sum(np.argmax(scores, axis=1) == y)), n], dtype=np.float64)
        sums_request = self.comm.iallreduce(sums)
        dscores = dscores * dscores.dtype.type(n / total)
        self.dp.begin()
        self.net.backward(dscores)
        grads = self.dp.finish()
        self.comm.wait(sums_request, "loss allreduce")
        global_loss = float(sums[0] / sums[2])
        self._global_count = int(round(sums[2]))
        if not math.isfinite(global_loss):
            where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"
            kept = self.out_dir is not None and self.checkpoint_path.exists()
            hint = f"; the last good checkpoint is {self.checkpoint_path}" if kept else ""
            raise collective(TrainingError(f"loss became {global_loss} at {where} (the mean over all "
                                           f"{self.world_size} ranks); lower the learning rate or check the data{hint}"))
        if self.clip_norm:
            clip_grad_norm(grads, self.clip_norm)
        self.optimizer.step(self.params, grads)
        if self.schedule is not None:
            self.schedule.step()
        return global_loss, int(round(sums[1]))

    def batch_examples(self, y) -> int:
        return self._global_count or len(y) * self.world_size

    def evaluate(self, loader) -> dict:
        """Mean loss and accuracy over ``loader`` on all ranks together (each evaluates its shard)."""
        if not self.sync_bn and self.world_size > 1:
            self.dp.sync_buffers()  # with local BN the running statistics evaluated are rank 0's
        sums = np.zeros(3, dtype=np.float64)
        for x, y in loader:
            if len(y) == 0:
                continue
            scores = self.net.forward(x, train=False)
            loss, _ = self.loss(scores, y)
            sums += (float(loss) * len(y), int(np.sum(np.argmax(scores, axis=1) == y)), len(y))
        self.comm.allreduce_(sums, "evaluation allreduce")
        count = max(sums[2], 1.0)
        return {"loss": float(sums[0] / count), "accuracy": float(sums[1] / count)}

    # --- checkpoints: rank 0 writes, rank 0 reads and broadcasts -------------------------------------
    def save_checkpoint(self, path=None) -> Path:
        if not self.sync_bn and self.world_size > 1:
            self.dp.sync_buffers()  # the checkpoint holds rank 0's running statistics: so does every rank
        if self.rank == 0:
            return super().save_checkpoint(path)
        return Path(path) if path is not None else self.checkpoint_path

    def _write_history(self) -> None:
        if self.rank == 0:
            super()._write_history()

    def resume(self, path=None) -> None:
        newest_good = path is None
        path = Path(path) if path is not None else self.checkpoint_path
        data, problem = None, ""
        if self.rank == 0:
            try:
                if newest_good:  # skips a corrupt newer checkpoint, with a message, as Trainer.resume does
                    path = load_last_good(path)[0]
                data = path.read_bytes()
            except CheckpointError as err:
                problem = f": {err}"
            except OSError as err:
                problem = f": {err.strerror or err}"
        data = self.comm.bcast_bytes(data, root=0, what="checkpoint broadcast")
        if data is None:
            raise collective(CheckpointError(f"cannot resume: rank 0 cannot read the checkpoint {str(path)!r}{problem}"))
        try:
            if self.rank == 0:
                super().resume(path)
            else:
                fd, tmp = tempfile.mkstemp(suffix=".safetensors", prefix="convnp-resume-")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    super().resume(tmp)
                finally:
                    os.unlink(tmp)
        except Exception as err:  # every rank parsed the same bytes, so every rank fails alike
            raise collective(err)
