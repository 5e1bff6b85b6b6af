"""Benchmark whole nets against PyTorch (same weights, same threads, one process) and print the README table.

    .venv/bin/python bench/models.py                      # the README's targets, Markdown table at the end
    .venv/bin/python bench/models.py cifar_convnet --profile
    .venv/bin/python bench/models.py --threads 1 --repeats 11

Without model names it runs the performance targets: cifar_convnet (training and inference,
batch 128), lenet5 and cs231n_3layer (training, batch 128), vgg16 (inference, 224x224, batch 8)
and the peak memory of a cifar_convnet training step. Each line of the table is a ratio of
images/s, convnp / PyTorch, measured alternately in this process (see ``convnp/bench.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from convnp.app import bench  # noqa: E402
from convnp.ops import kernels  # noqa: E402
from convnp.threads import get_num_threads  # noqa: E402

#: (model, batch, modes, target ratio per mode)
TARGETS = [
    ("cifar_convnet", 128, ("train", "infer"), {"train": 1.0, "infer": 1.1}),
    ("lenet5", 128, ("train",), {"train": 0.8}),
    ("cs231n_3layer", 128, ("train",), {"train": 0.8}),
    ("vgg16", 8, ("infer",), {"infer": 0.8}),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="zoo names or specs (default: the README's targets)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args(argv)
    threads = args.threads or get_num_threads()
    if args.models:
        jobs = [(m, args.batch, ("train", "infer"), {}) for m in args.models]
    else:
        jobs = TARGETS
    rows = []
    peak = bench.sgemm_peak(threads)
    for model, batch, modes, targets in jobs:
        r = bench.bench_model(model, batch, threads=threads, modes=modes, repeats=args.repeats,
                              warmup=args.warmup, peak=peak)
        print()
        for mode in modes:
            st = r["results"][mode]
            rows.append((model, batch, mode, st, targets.get(mode), r["load"]))
        if args.profile:
            bench.profile_model(model, batch)
            print()
    memory = None
    if not args.models and not args.no_memory:
        memory = bench.peak_memory("cifar_convnet", 128, threads)
    print()
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores; {threads} threads for both libraries; "
          f"float32; PyTorch {__import__('torch').__version__}; convnp kernels: "
          f"{'numba ' + __import__('numba').__version__ if kernels.available() else 'NumPy only'}; "
          f"NumPy SGEMM peak {peak:.0f} GFLOP/s.")
    print()
    cl = "torch channels_last"
    print("| model | batch | step | PyTorch img/s | convnp img/s | convnp / PyTorch | NumPy-only convnp / PyTorch "
          "| convnp / PyTorch channels_last | target | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, batch, mode, st, target, load in rows:
        fallback = st.get("convnp numpy kernels", st["convnp"])["ratio"]
        vs_cl = st["convnp"]["images_per_s"] / st[cl]["images_per_s"] if cl in st else float("nan")
        verdict = "" if target is None else (f"≥ {target:.1f}: " + ("met" if st["convnp"]["ratio"] >= target
                                                                    else "not met"))
        fmt = (lambda v: f"{v:.0f}") if st["torch"]["images_per_s"] >= 100 else (lambda v: f"{v:.2f}")
        print(f"| {model} | {batch} | {mode} | {fmt(st['torch']['images_per_s'])} | {fmt(st['convnp']['images_per_s'])} "
              f"| **{st['convnp']['ratio']:.2f}x** | {fallback:.2f}x | {vs_cl:.2f}x | {verdict} "
              f"| {load.split(' on ')[0].replace('load average ', '')} |")
    if memory:
        c, t = memory["convnp"], memory["torch"]
        ratio = c["peak"] / t["peak"]
        print(f"| cifar_convnet | 128 | peak RSS of a training step | {t['peak'] / 2**20:.0f} MiB "
              f"| {c['peak'] / 2**20:.0f} MiB | **{ratio:.2f}x** | | | ≤ 1.5: {'met' if ratio <= 1.5 else 'not met'} | |")
    print()
    print("Reproduce: `.venv/bin/python bench/models.py` (or `convnp bench MODEL [--profile]` for one net).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
