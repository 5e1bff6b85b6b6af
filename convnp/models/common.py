"""Pieces the zoo shares: option checks and small builders."""

from __future__ import annotations

from .._util import check_bool, check_int  # noqa: F401 - the zoo's builders check their options with these
from .._util import check_prob as _check_prob


def check_prob(value, name: str, owner: str) -> float:
    """A dropout probability in [0, 1)."""
    return _check_prob(value, name, owner, upper_open=True)


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
