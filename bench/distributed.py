"""Benchmark: data-parallel training of cifar_convnet, 1 rank x 2 threads against 2 ranks x 1 thread.

Synthetic CIFAR-sized data (the global batch is the same in both), the full training step
(forward, loss, backward, gradient allreduce, Nesterov SGD). Reports images/s, the share of the
step spent in allreduce (with and without overlapping it with the backward pass), a measured
allreduce of the gradient buffer alone, and the ring-allreduce cost model's prediction for 8, 64
and 256 workers on 10 GbE and 100 Gb InfiniBand.

    .venv/bin/python bench/distributed.py              # needs mpi4py + mpiexec (the mpi extra)
    .venv/bin/python bench/distributed.py --batch 128 --steps 8

The machine is shared: timings are the median of the measured steps and still noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ("INPUT[32x32x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2 -> "
        "[CONV3-128 -> RELU]*2 -> POOL2 -> FC-256 -> RELU -> FC-10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--steps", type=int, default=6, help="measured steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model", default="cifar_convnet")
    p.add_argument("--worker", choices=["single", "dist"], help=argparse.SUPPRESS)
    p.add_argument("--overlap", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _net(name):
    sys.path.insert(0, str(ROOT))
    try:
        from convnp.models import get_model

        return get_model(name, rng=0)
    except (ImportError, KeyError, ValueError):  # no zoo (or not this model): the same net from its spec
        from convnp.notation.spec import parse

        return parse(SPEC, rng=0)


def _problem(args, rank=0, world=1):
    import numpy as np

    from convnp.data import DataLoader
    from convnp.data.datasets import ArrayDataset
    from convnp.losses import SoftmaxCrossEntropy
    from convnp.optim import get_optimizer

    rng = np.random.default_rng(0)
    n = args.batch * (args.warmup + args.steps)
    data = ArrayDataset(rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n))
    loader = DataLoader(data, batch_size=args.batch, rank=rank, world_size=world, drop_last=True)
    net = _net(args.model)
    return net, SoftmaxCrossEntropy(), get_optimizer("nesterov", lr=0.01, weight_decay=5e-4), loader


def _time_steps(trainer, loader, args, comm=None):
    times, waits = [], []
    for step, (x, y) in enumerate(loader):
        if comm is not None:
            comm.barrier()
            w0 = comm.wait_time
        trainer.step_in_epoch = step
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
            if comm is not None:
                waits.append(comm.wait_time - w0)
    return times, waits


def worker_single(args):
    from convnp.train.trainer import Trainer

    net, loss, opt, loader = _problem(args)
    trainer = Trainer(net, loss, opt, loader, progress=False)
    times, _ = _time_steps(trainer, loader, args)
    nparams = sum(p.size for p in net.named_parameters().values())
    print(json.dumps({"step_s": statistics.median(times), "params": int(nparams)}))


def worker_dist(args):
    import numpy as np

    from convnp.distributed import DistributedTrainer, init_distributed

    comm = init_distributed(timeout=600)
    net, loss, opt, loader = _problem(args, comm.rank, comm.size)
    trainer = DistributedTrainer(net, loss, opt, loader, comm=comm, overlap=bool(args.overlap), progress=False)
    times, waits = _time_steps(trainer, loader, args, comm)
    # the allreduce alone: the gradient buffers, after a barrier (no waiting for a slower rank)
    bufs = [b.buffer for b in trainer.dp.buckets.buckets]
    alone = []
    for _ in range(20):
        comm.barrier()
        t0 = time.perf_counter()
        for b in bufs:
            comm.allreduce_(b)
        alone.append(time.perf_counter() - t0)
    small = np.zeros(1, np.float32)
    lat = []
    for _ in range(200):
        t0 = time.perf_counter()
        comm.allreduce_(small)
        lat.append(time.perf_counter() - t0)
    # every rank's medians; rank 0 reports the slowest rank's
    mine = np.array([statistics.median(times), statistics.median(waits), statistics.median(alone),
                     statistics.median(lat)])
    gathered = np.zeros((comm.size, 4))
    gathered[comm.rank] = mine
    comm.allreduce_(gathered)
    if comm.rank == 0:
        print(json.dumps({"step_s": float(gathered[:, 0].max()), "wait_s": float(gathered[:, 1].max()),
                          "allreduce_alone_s": float(gathered[:, 2].max()), "latency_s": float(gathered[:, 3].max()),
                          "grad_bytes": int(trainer.dp.buckets.nbytes), "buckets": len(bufs)}))


def _env(threads):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _run(cmd, threads):
    proc = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "single":
        return worker_single(args)
    if args.worker == "dist":
        return worker_dist(args)
    sys.path.insert(0, str(ROOT))
    from convnp.distributed.costmodel import NETWORKS, predict_step

    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    if not Path(mpiexec).exists():
        mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit('needs mpiexec: pip install -e ".[mpi]"')
    base = [sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--model", args.model]
    load = os.getloadavg()[0]
    single = _run(base + ["--worker", "single"], threads=2)
    one = _run(base + ["--worker", "single"], threads=1)
    dist = _run([mpiexec, "-n", "2"] + base + ["--worker", "dist", "--overlap", "1"], threads=1)
    plain = _run([mpiexec, "-n", "2"] + base + ["--worker", "dist", "--overlap", "0"], threads=1)
    b = args.batch
    print(f"cifar_convnet ({single['params']:,} parameters, {dist['grad_bytes'] / 1e6:.2f} MB of float32 gradients "
          f"in {dist['buckets']} buckets), global batch {b}, synthetic data; median of {args.steps} steps; "
          f"{os.cpu_count()} cores, load average {load:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| configuration | step (s) | images/s | in allreduce (s) | share of step |")
    print("|---|---|---|---|---|")
    print(f"| 1 rank x 2 threads | {single['step_s']:.3f} | {b / single['step_s']:.0f} | - | - |")
    print(f"| 1 rank x 1 thread (reference) | {one['step_s']:.3f} | {b / one['step_s']:.0f} | - | - |")
    for name, r in (("2 ranks x 1 thread, overlap", dist), ("2 ranks x 1 thread, no overlap", plain)):
        print(f"| {name} | {r['step_s']:.3f} | {b / r['step_s']:.0f} | {r['wait_s']:.4f} | "
              f"{100 * r['wait_s'] / r['step_s']:.1f}% |")
    print(f"\nallreduce of the gradient buffers alone (after a barrier): {plain['allreduce_alone_s'] * 1e3:.2f} ms "
          f"({plain['grad_bytes'] / plain['allreduce_alone_s'] / 1e9:.2f} GB/s); 4-byte allreduce "
          f"{plain['latency_s'] * 1e6:.1f} us (shared memory, 2 ranks)")
    # The cost model: a worker is one core computing like the 1-rank x 1-thread run.
    per_image = one["step_s"] / b
    nbytes = plain["grad_bytes"]
    print(f"\nRing-allreduce model: T(n) = 2(n-1)/n * {nbytes / 1e6:.2f} MB / bandwidth + 2(n-1) * latency; "
          f"compute {per_image * 1e3:.2f} ms/image per worker (the 1 rank x 1 thread step above); no overlap.")
    for title, local in (("weak scaling: 32 images per worker", lambda n: 32),
                         ("strong scaling: global batch 1024", lambda n: 1024 / n)):
        print(f"\n{title}\n")
        print("| network | workers | images/worker | compute (ms) | allreduce (ms) | images/s | efficiency |")
        print("|---|---|---|---|---|---|---|")
        for net_name, (bw, lat) in NETWORKS.items():
            for n in (8, 64, 256):
                p = predict_step(per_image, local(n), nbytes, n, bw, lat)
                print(f"| {net_name} | {n} | {local(n):g} | {p['compute_s'] * 1e3:.1f} | {p['allreduce_s'] * 1e3:.2f} | "
                      f"{p['images_per_s']:.0f} | {100 * p['efficiency']:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
