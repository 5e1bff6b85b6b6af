"""Compile every numba kernel now (or load it from numba's disk cache) instead of on first use."""

import numpy as np

from . import activation, conv, kernels, norm, pool


def warm() -> None:
    """Compile (or load from numba's cache) every kernel for float32 and float64 now."""
    if not kernels.available():
        return
    with kernels.use("numba"):
        kernels.mark_warm()
        for dt in (np.float32, np.float64):
            x = np.ones((2, 3, 4, 4), dt)
            for a in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
                for geometry in (((2, 2), (2, 2), (0, 0), (1, 1), (2, 2)), ((3, 3), (2, 2), (1, 1), (1, 1), (2, 2))):
                    out, cache = pool.maxpool2d_forward(a, *geometry)
                    pool.maxpool2d_backward(out, cache)
                out, mask = activation.relu_forward(a)
                activation.relu_backward(out, mask)
            for a in (np.ones((2, 4, 4, 3), dt).transpose(0, 3, 1, 2), np.ones((4, 3), dt)):
                for train in (True, False):  # batch norm's passes (channels-last and (N, C) memory)
                    out, cache = norm.batchnorm_forward(a, np.ones(3, dt), np.ones(3, dt), np.zeros(3, dt),
                                                        np.ones(3, dt), train=train)
                    norm.batchnorm_backward(out, cache)
            for c in (3, 16):  # the planes path (few channels) and Winograd
                w = np.ones((16, c, 3, 3), dt)
                out, cache, _ = conv.conv2d_relu_forward(np.ones((1, c, 4, 4), dt), w, np.ones(16, dt), 1, 1)
                conv.conv2d_backward(out, cache)
