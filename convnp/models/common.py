"""Pieces the zoo shares: adaptive average pooling and small builders.

``AdaptiveAvgPool2d`` is PyTorch's: it averages each input feature map down to a fixed
(OH, OW), whatever the input size. Bin i along an axis of length H covers rows
floor(i*H/OH) to ceil((i+1)*H/OH) - 1, so bins may overlap by one row and every row is
used. torchvision's VGG (7x7), AlexNet (6x6) and GoogLeNet's auxiliary heads (4x4) need it
so that their classifiers accept inputs other than 224x224; at 224 it is the identity for
VGG and AlexNet.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from ..layers.base import Layer
from ..ops.backend import array_module
from ..ops.im2col import pair


def _bin_matrix(size: int, out: int, dtype, xp):
    """(out, size) averaging matrix: row i holds 1/len on PyTorch's adaptive bin i."""
    m = np.zeros((out, size), dtype=np.float64)
    for i in range(out):
        start = (i * size) // out
        stop = -(-((i + 1) * size) // out)  # ceil
        m[i, start:stop] = 1.0 / (stop - start)
    return xp.asarray(m, dtype=dtype)


class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size: (N, C, H, W) -> (N, C, OH, OW).

    Output (i, j) is the mean of rows floor(i*H/OH) .. ceil((i+1)*H/OH)-1 and the
    matching columns (PyTorch's ``nn.AdaptiveAvgPool2d``). The pooling is separable,
    so forward is ``Ph @ x @ Pw.T`` with averaging matrices Ph (OH, H), Pw (OW, W) and
    backward is ``Ph.T @ dout @ Pw``. When (H, W) == (OH, OW) it is the identity.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = pair(output_size, "AdaptiveAvgPool2d output_size")

    def output_shape(self, input_shape: tuple) -> tuple:
        """(C, H, W) -> (C, OH, OW)."""
        c, h, w = self._check_shape(input_shape, 3)
        if h < 1 or w < 1:
            raise ShapeError(f"{self!r}: input {h}x{w} has no positions to average")
        return (c, *self.output_size)

    def forward(self, x, train: bool = False):
        self._check_input(x, 4)
        h, w = x.shape[2:]
        oh, ow = self.output_size
        if h < 1 or w < 1:
            raise ShapeError(f"{self!r}: input {h}x{w} has no positions to average")
        if (h, w) == (oh, ow):
            self._cache = (None, x.shape)
            return x.copy()
        xp = array_module(x)
        ph, pw = _bin_matrix(h, oh, x.dtype, xp), _bin_matrix(w, ow, x.dtype, xp)
        out = ph @ x @ pw.T
        self._cache = ((ph, pw), out.shape)
        return out

    def backward(self, dout):
        """dx = Ph.T @ dout @ Pw: each output's gradient spread evenly over its bin."""
        mats, out_shape = self._cache if self._cache is not None else (None, None)
        self._pop_cache(dout, out_shape)
        if mats is None:
            return dout.copy()
        ph, pw = mats
        return ph.T @ dout @ pw

    def get_config(self) -> dict:
        oh, ow = self.output_size
        return {"output_size": oh if oh == ow else [oh, ow]}

    def extra_repr(self) -> str:
        oh, ow = self.output_size
        return f"output_size={oh if oh == ow else (oh, ow)}"


def check_int(value, name: str, owner: str, minimum: int = 1) -> int:
    """An int option >= minimum, else a ConfigError naming the model."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_prob(value, name: str, owner: str) -> float:
    """A dropout probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{owner}: {name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_bool(value, name: str, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def basic_conv(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bn_eps: float = 1e-5,
               rounding: str = "exact", rng=None, dtype="float32"):
    """Conv (no bias) -> BatchNorm -> ReLU as a Sequential named ``conv``, ``bn``, ``relu``
    (torchvision's BasicConv2d; the ReLU has no parameters, so state names are
    ``conv.weight``, ``bn.weight``, ``bn.running_mean`` ...)."""
    from ..layers.activation import ReLU
    from ..layers.conv import Conv2d
    from ..layers.norm import BatchNorm2d
    from ..nets.sequential import Sequential

    return Sequential([
        ("conv", Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False,
                        rounding=rounding, rng=rng, dtype=dtype)),
        ("bn", BatchNorm2d(out_channels, eps=bn_eps, dtype=dtype)),
        ("relu", ReLU()),
    ])
