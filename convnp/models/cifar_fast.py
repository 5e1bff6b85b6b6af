"""``cifar_fast``: a CIFAR-10 net shaped to reach 90%+ test accuracy within minutes on a CPU.

The design follows Page (2018, "How to train your ResNet") and Jordan (2024, "94% on CIFAR-10
in 3.29 seconds on a single GPU"), in plain convnp layers::

    INPUT[32x32x3] -> CONV2-24/P0 (patch whitening) -> RELU                      31x31x24
    -> CONV3-w1 -> POOL2 -> BN -> RELU -> CONV3-w1 -> BN -> RELU                 15x15x64
    -> CONV3-w2 -> POOL2 -> BN -> RELU -> CONV3-w2 -> BN -> RELU                  7x7x128
    -> CONV3-w3 -> POOL2 -> BN -> RELU -> CONV3-w3 -> BN -> RELU                  3x3x128
    -> POOL3 -> FC-10 (no bias)

with widths (w1, w2, w3) = (64, 128, 128) by default (about 108 MFLOP per image forward).

* Pooling comes straight after the first conv of each block (before BN and ReLU), so BN and
  ReLU run on a quarter of the pixels; the 2x2 pools floor odd sizes (31 -> 15 -> 7 -> 3).
* The first layer is a 2x2 convolution whose filters whiten image patches (the PCA whitening of
  the notes' data-preprocessing section, applied to 2x2x3 patches): ``whiten_first_conv`` sets
  them from training images as the eigenvectors of the patch covariance scaled by
  1/sqrt(eigenvalue + eps), and their negatives, so the ReLU after it keeps both signs. The
  trainer leaves those filters fixed (its bias trains).
* Every 3x3 conv starts as identity on its first ``in_channels`` filters ("dirac" init: filter i
  passes channel i through), the rest He-initialised, so the untrained net already passes the
  whitened image forward.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ShapeError
from ..layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from ..nets.sequential import Sequential
from .common import check_int
from .registry import register


def dirac_(weight: np.ndarray) -> np.ndarray:
    """Make filter i of a (K, C, F, F) conv weight the identity on channel i, for i < min(K, C)."""
    k, c, fh, fw = weight.shape
    n = min(k, c)
    weight[:n] = 0
    weight[np.arange(n), np.arange(n), fh // 2, fw // 2] = 1
    return weight


def patch_whitening_filters(images: np.ndarray, size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """Whitening filters of ``size`` x ``size`` patches of (N, C, H, W) images: (2*C*size^2, C, size, size).

    The patch covariance (second moments of the normalised images) is Sigma = V diag(lam) V^T;
    filter j is the j-th eigenvector (largest eigenvalue first) divided by sqrt(lam_j + eps), so
    the filter responses have (about) unit variance and are uncorrelated. The second half of
    the filters is the first half negated.
    """
    if images.ndim != 4 or images.shape[2] < size or images.shape[3] < size:
        raise ShapeError(f"patch_whitening_filters: need (N, C, H, W) images with H, W >= {size}, "
                         f"got shape {images.shape}")
    c = images.shape[1]
    patches = sliding_window_view(images, (size, size), axis=(2, 3))           # (N, C, H', W', s, s)
    patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size).astype(np.float64)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)                      # ascending
    order = eigenvalues.argsort()[::-1]
    filters = (eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)).T.reshape(-1, c, size, size)
    return np.concatenate([filters, -filters])


def whiten_first_conv(net, images: np.ndarray, eps: float = 5e-4) -> list[str]:
    """Set ``cifar_fast``'s first conv to the patch-whitening filters of ``images`` (normalised, N x C x H x W).

    Returns the parameter names a trainer should keep fixed (``["0.weight"]``).
    """
    conv = net[0]
    conv.params["weight"][...] = patch_whitening_filters(np.asarray(images), conv.kernel_size[0], eps)
    return ["0.weight"]


@register("cifar_fast", family="small", input_shape=(3, 32, 32), num_classes=10,
          description="patch-whitened 2x2 conv, three conv-pool-BN blocks (64-128-128); CIFAR-10 90%+ in minutes",
          data_init=whiten_first_conv)
def cifar_fast(num_classes: int = 10, widths: tuple = (64, 128, 128), in_channels: int = 3,
               rng=None, dtype="float32"):
    """The fast CIFAR-10 net of the module docstring; ``widths`` are the three blocks' filter counts."""
    num_classes = check_int(num_classes, "num_classes", "cifar_fast")
    c = check_int(in_channels, "in_channels", "cifar_fast")
    widths = tuple(check_int(w, "widths", "cifar_fast") for w in widths)
    whiten = 2 * c * 4
    layers = [Conv2d(c, whiten, 2, padding=0, rng=rng, dtype=dtype), ReLU()]
    prev = whiten
    for width in widths:
        first = Conv2d(prev, width, 3, padding=1, bias=False, rng=rng, dtype=dtype)
        second = Conv2d(width, width, 3, padding=1, bias=False, rng=rng, dtype=dtype)
        dirac_(first.params["weight"])
        dirac_(second.params["weight"])
        layers += [first, MaxPool2d(2, rounding="floor"), BatchNorm2d(width, dtype=dtype), ReLU(),
                   second, BatchNorm2d(width, dtype=dtype), ReLU()]
        prev = width
    layers += [MaxPool2d(3, rounding="floor"), Flatten(), Linear(prev, num_classes, bias=False, rng=rng, dtype=dtype)]
    return Sequential(layers, input_shape=(c, 32, 32))
