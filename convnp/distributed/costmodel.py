"""A cost model of data-parallel steps: ring allreduce time and the resulting scaling.

Ring allreduce (reduce-scatter then allgather, Patarasuk & Yuan 2009) of ``nbytes`` over ``n``
workers sends 2(n-1) messages of nbytes/n each per worker:

    T(n) = 2 (n-1)/n * nbytes / bandwidth + 2 (n-1) * latency

A step then costs compute + T(n) without overlap, and max(compute, T(n)) at best with a perfect
overlap of the allreduce with the backward pass.
"""

from __future__ import annotations

# name -> (bandwidth in bytes/s, one-message latency in s): nominal link rates; latencies are
# typical MPI small-message figures (TCP over Ethernet; RDMA over InfiniBand).
NETWORKS = {
    "10 GbE (TCP)": (10e9 / 8, 30e-6),
    "100 Gb InfiniBand EDR": (100e9 / 8, 2e-6),
}


def ring_allreduce_time(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """Seconds for a ring allreduce of ``nbytes`` over ``n`` workers (0 for one worker)."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes / bandwidth + 2.0 * (n - 1) * latency


def predict_step(per_image_s: float, local_batch: float, nbytes: float, n: int, bandwidth: float,
                 latency: float, overlap: bool = False) -> dict:
    """Predicted step time, throughput (images/s) and efficiency against n independent workers."""
    compute = per_image_s * local_batch
    comm = ring_allreduce_time(nbytes, n, bandwidth, latency)
    step = max(compute, comm) if overlap else compute + comm
    return {"compute_s": compute, "allreduce_s": comm, "step_s": step,
            "images_per_s": n * local_batch / step, "efficiency": compute / step}
