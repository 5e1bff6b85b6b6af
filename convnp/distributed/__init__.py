"""Data-parallel training over MPI (mpi4py): same global batch, same order, same results as one process.

>>> from convnp.distributed import init_distributed, DistributedTrainer
>>> comm = init_distributed()                     # a Comm over MPI_COMM_WORLD (needs mpi4py)
>>> loader = DataLoader(train, batch_size=128, shuffle=True, example_rng=True,
...                     rank=comm.rank, world_size=comm.size)   # 128 = the GLOBAL batch
>>> DistributedTrainer(net, loss, opt, loader, comm=comm, sync_bn=True).fit(10)

Run with ``mpiexec -n 4 python script.py``, or ``mpiexec -n 4 convnp train ... --distributed``.
"""

from .buckets import Bucket, GradBuckets
from .comm import Comm, SelfComm, init_distributed, launched_by_mpi, mpi_available
from .costmodel import NETWORKS, predict_step, ring_allreduce_time
from .parallel import DataParallel, sync_batchnorm_stats
from .trainer import DistributedTrainer

__all__ = [
    "NETWORKS",
    "Bucket",
    "Comm",
    "DataParallel",
    "DistributedTrainer",
    "GradBuckets",
    "SelfComm",
    "init_distributed",
    "launched_by_mpi",
    "lr_scale_factor",
    "mpi_available",
    "predict_step",
    "ring_allreduce_time",
    "sync_batchnorm_stats",
]


def lr_scale_factor(rule: str, world_size: int) -> float:
    """The learning-rate multiplier of ``rule``: "none" 1, "linear" world_size (Goyal et al. 2017),
    "sqrt" sqrt(world_size) (Krizhevsky 2014)."""
    import math

    from ..errors import ConfigError

    rules = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}
    if rule not in rules:
        raise ConfigError(f"unknown learning-rate scaling {rule!r}; known: {', '.join(rules)}")
    return rules[rule]
