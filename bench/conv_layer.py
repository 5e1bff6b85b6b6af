"""Benchmark: one Conv2d forward+backward in convnp against PyTorch, in one process.

Default size: batch 128, 32x32 input, 32 -> 32 channels, 3x3, padding 1 (a layer of the small
CIFAR net). Both libraries get the same number of threads (default: all cores; convnp's via
``convnp.threads``, which also sets NumPy's BLAS). The two are timed alternately (warm-up, then
turns of a pause and a short block of consecutive steps, ``convnp.app.bench.time_alternating``;
the median of several repeats), and their outputs and gradients are checked to agree before
any timing.

    .venv/bin/python bench/conv_layer.py                 # the comparison
    .venv/bin/python bench/conv_layer.py --alternatives  # also convnp's other algorithms/layouts

"convnp" is the default path: with numba installed ("fast" extra) a 3x3 stride-1 layer of 16+
channels runs as Winograd F(2x2, 3x3); the alternatives, NumPy kernels first, are im2col variants.

convnp's input (and dout) are channels-last in memory by default, which is what a convnp layer
hands the next one (its NCHW outputs are views of NHWC memory); ``--input-layout nchw`` gives
it a plain C-contiguous NCHW array instead. PyTorch gets its default contiguous NCHW tensors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--in-channels", type=int, default=32)
    p.add_argument("--out-channels", type=int, default=32)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--pause", type=float, default=0.3, help="seconds of rest before each timed step")
    p.add_argument("--input-layout", choices=("channels_last", "nchw"), default="channels_last")
    p.add_argument("--no-input-grad", action="store_true",
                   help="skip dx in both (a network's first layer; torch's input without requires_grad)")
    p.add_argument("--alternatives", action="store_true",
                   help="also time dx by col2im, whole-batch (unchunked) and NCHW-input variants")
    return p.parse_args(argv)


args = parse_args()
# BLAS reads its thread count when NumPy loads, so set it before the imports below.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import convnp.ops.conv as conv_ops
from convnp.app.bench import time_alternating
from convnp.ops import kernels
from convnp import threads
from convnp.layers.conv import Conv2d


def rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-30))


def main() -> int:
    try:
        import torch
    except ImportError:
        print("torch is needed for this benchmark (pip install -e '.[test]')")
        return 1
    torch.set_num_threads(args.threads)
    threads.set_num_threads(args.threads)
    n, c, k, s = args.batch, args.in_channels, args.out_channels, args.size
    rng = np.random.default_rng(0)
    layer = Conv2d(c, k, args.kernel, stride=args.stride, padding=args.padding, rounding="floor", rng=0)
    layer.params["bias"][:] = rng.standard_normal(k).astype(np.float32)
    x_nchw = rng.standard_normal((n, c, s, s), dtype=np.float32)
    out_shape = (n, *layer.output_shape((c, s, s)))
    dout_nchw = rng.standard_normal(out_shape, dtype=np.float32)

    def channels_last(a):
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    layouts = {"channels_last": channels_last, "nchw": np.ascontiguousarray}
    x, dout = layouts[args.input_layout](x_nchw), layouts[args.input_layout](dout_nchw)

    tx = torch.tensor(x_nchw, requires_grad=not args.no_input_grad)
    tw = torch.tensor(layer.params["weight"], requires_grad=True)
    tb = torch.tensor(layer.params["bias"], requires_grad=True)
    tdout = torch.tensor(dout_nchw)

    def torch_step():
        tx.grad = tw.grad = tb.grad = None
        out = torch.nn.functional.conv2d(tx, tw, tb, stride=args.stride, padding=args.padding)
        out.backward(tdout)
        return out

    def convnp_step(xin=x, din=dout):
        out = layer.forward(xin, train=True)
        return out, layer.backward(din, input_grad=not args.no_input_grad)

    # --- agreement first ---------------------------------------------------------------------
    out, dx = convnp_step()
    tout = torch_step()
    errors = {"out": rel_error(out, tout.detach().numpy()),
              "dweight": rel_error(layer.grads["weight"], tw.grad.numpy()),
              "dbias": rel_error(layer.grads["bias"], tb.grad.numpy())}
    if not args.no_input_grad:
        errors["dx"] = rel_error(dx, tx.grad.numpy())
    print("agreement with PyTorch (relative error): " + ", ".join(f"{n_} {e:.1e}" for n_, e in errors.items()))
    if max(errors.values()) > 1e-4:
        print("MISMATCH: convnp and PyTorch disagree")
        return 1

    # --- timing, alternating ---------------------------------------------------------------
    steps = {"convnp": convnp_step, "torch": torch_step}
    if args.alternatives:
        nchw_x, nchw_dout = np.ascontiguousarray(x_nchw), np.ascontiguousarray(dout_nchw)

        def with_setting(chunk=None, dx_method="auto", split=True, xin=x, din=dout, kern="numpy"):
            def step():
                saved = conv_ops.CHUNK_BYTES, conv_ops.MIN_PARALLEL_BYTES
                conv_ops.CHUNK_BYTES = chunk or conv_ops.CHUNK_BYTES
                conv_ops.MIN_PARALLEL_BYTES = conv_ops.MIN_PARALLEL_BYTES if split else 1 << 62
                try:
                    with kernels.use(kern):
                        o, cache = conv_ops.conv2d_forward(xin, layer.params["weight"], layer.params["bias"],
                                                           layer.stride, layer.padding, layer.dilation,
                                                           layer.rounding)
                        return o, conv_ops.conv2d_backward(din, cache, dx_method=dx_method,
                                                           input_grad=not args.no_input_grad)
                finally:
                    conv_ops.CHUNK_BYTES, conv_ops.MIN_PARALLEL_BYTES = saved
            return step

        # with numba, a 3x3 stride-1 layer of 16+ channels is Winograd; these variants are im2col
        steps["convnp, NumPy kernels (im2col)"] = with_setting()

        steps["convnp, batch not split (BLAS threads)"] = with_setting(split=False)
        steps["convnp, whole batch (no chunks)"] = with_setting(chunk=1 << 40)
        if layer.stride == (1, 1):  # larger strides always use col2im
            steps["convnp, dx by col2im"] = with_setting(dx_method="col2im")
            steps["convnp, whole batch, dx by col2im"] = with_setting(chunk=1 << 40, dx_method="col2im")
            steps["convnp, not split, dx by col2im"] = with_setting(split=False, dx_method="col2im")
        steps["convnp, NCHW-contiguous input"] = with_setting(xin=nchw_x, din=nchw_dout)
        for mib in (1, 2, 8, 16):
            steps[f"convnp, chunks of {mib} MiB"] = with_setting(chunk=mib << 20)
        tx_cl = tx.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        tdout_cl = tdout.contiguous(memory_format=torch.channels_last)

        def torch_channels_last():
            tx_cl.grad = tw.grad = tb.grad = None
            torch.nn.functional.conv2d(tx_cl, tw, tb, stride=args.stride, padding=args.padding).backward(tdout_cl)

        steps["torch, channels_last"] = torch_channels_last

    # Each turn: a pause (the other library's spinning threads go to sleep), one untimed step to
    # wake the worker threads, then a short block of timed steps (see convnp.app.bench.time_alternating).
    times = time_alternating(steps, args.warmup, args.repeats, args.pause)

    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    print(f"Conv2d({c}, {k}, kernel_size={args.kernel}, stride={args.stride}, padding={args.padding}) "
          f"forward+backward, batch {n}, {s}x{s}, float32, {args.threads} threads, "
          f"convnp input {args.input_layout}; median of {args.repeats} (min in brackets)")
    for name, v in times.items():
        print(f"  {name:40s} {med[name]:8.1f} ms  ({min(v) * 1e3:.1f})")
    ratio = med["convnp"] / med["torch"]
    best = min(times["convnp"]) / min(times["torch"])
    print(f"convnp / torch time: {ratio:.2f}x   (convnp runs at {1 / ratio:.2f} of PyTorch's speed); "
          f"best times: {best:.2f}x ({1 / best:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
