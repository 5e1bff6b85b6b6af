"""DataLoader throughput: CIFAR-10 training batches of 128 with crop + flip + normalise.

    python bench/loader.py [--batches 200] [--data-dir DIR] [--synthetic] [--compute-ms 0]

Uses the real CIFAR-10 training split when it is already in the cache (it never downloads),
else random data of the same shape (50,000 x 3 x 32 x 32 float32), and says which. Reports
batches/s without prefetch and with a background thread preparing 2 batches ahead; with
``--compute-ms`` each batch is followed by a stand-in for a training step (a sleep of that
duration, which releases the GIL like NumPy's large kernels) so the overlap that prefetch buys
shows up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from convnp.data import ArrayDataset, DataLoader, channel_stats, load_dataset
from convnp.data import sources as dsrc
from convnp.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip


def training_set(data_dir, synthetic: bool):
    if not synthetic and dsrc.is_cached(dsrc.SPECS["cifar10"], data_dir):
        return load_dataset("cifar10", "train", data_dir, download=False), "real CIFAR-10 (cache)"
    rng = np.random.default_rng(0)
    x = rng.random((50000, 3, 32, 32), dtype=np.float32)
    return ArrayDataset(x, rng.integers(0, 10, 50000)), "synthetic data of CIFAR-10's shape"


def fake_step(ms: float):
    """A stand-in for a training step of ``ms`` milliseconds that releases the GIL (0: none)."""
    if ms <= 0:
        return lambda x: None
    return lambda x: time.sleep(ms / 1000.0)


def run(ds, transform, prefetch, batches, step):
    loader = DataLoader(ds, batch_size=128, shuffle=True, drop_last=True, transform=transform,
                        seed=0, prefetch=prefetch)
    it = iter(loader)
    next(it)  # warm-up (thread start, first permutation)
    t = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        step(x)
    it.close()
    return batches / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--synthetic", action="store_true", help="ignore a cached CIFAR-10")
    p.add_argument("--compute-ms", type=float, default=0.0,
                   help="simulated training step per batch, in milliseconds")
    args = p.parse_args(argv)
    ds, what = training_set(args.data_dir, args.synthetic)
    mean, std = channel_stats(ds)
    transform = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize(mean, std)])
    step = fake_step(args.compute_ms)
    print(f"data: {what}; batch 128, {transform!r}".replace("\n", " "))
    for prefetch in (0, 2):
        rate = run(ds, transform, prefetch, args.batches, step)
        print(f"prefetch={prefetch}: {rate:7.1f} batches/s ({rate * 128:8.0f} images/s) "
              f"over {args.batches} batches, simulated step {args.compute_ms:g} ms")


if __name__ == "__main__":
    main()
