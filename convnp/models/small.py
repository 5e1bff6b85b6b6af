"""The notes' small nets, written in the notes' own layer-pattern notation (``convnp.spec``).

* ``cs231n_3layer``: the assignment's three-layer ConvNet,
  ``INPUT[32x32x3] -> CONV7-32 -> RELU -> POOL2 -> FC-100 -> RELU -> FC-10``
  (CONV7 pads by 3 so the size is kept: 32x32x32 -> 16x16x32 = 8192 -> 100 -> 10).
* ``cifar_convnet``: the notes' "common pattern" for CIFAR-10,
  ``INPUT[32x32x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2
  -> [CONV3-128 -> RELU]*2 -> POOL2 -> FC-256 -> RELU -> FC-10`` (4x4x128 = 2048 -> 256 -> 10).
  ``batch_norm=True`` is the project's CIFAR recipe: every conv and the FC-256 lose their
  bias and get a BN before the ReLU, and a DROPOUT0.3 precedes the last FC.

Both are flat Sequentials built by ``convnp.spec.parse`` (names ``0.weight``, ``1.weight`` ...);
``net.spec()`` writes the notation back.
"""

from __future__ import annotations

from ..notation.spec import parse
from .common import check_bool, check_int, check_prob
from .registry import register


@register("cs231n_3layer", family="small", input_shape=(3, 32, 32), num_classes=10,
          description="CS231n three-layer ConvNet: CONV7-32 -> RELU -> POOL2 -> FC-100 -> RELU -> FC-10")
def cs231n_3layer(num_classes: int = 10, filters: int = 32, hidden: int = 100, in_channels: int = 3,
                  input_size: int = 32, rng=None, dtype="float32"):
    """The assignment's ``conv - relu - 2x2 max pool - affine - relu - affine`` net."""
    num_classes = check_int(num_classes, "num_classes", "cs231n_3layer")
    filters = check_int(filters, "filters", "cs231n_3layer")
    hidden = check_int(hidden, "hidden", "cs231n_3layer")
    c = check_int(in_channels, "in_channels", "cs231n_3layer")
    s = check_int(input_size, "input_size", "cs231n_3layer", minimum=2)
    spec = f"INPUT[{s}x{s}x{c}] -> CONV7-{filters} -> RELU -> POOL2 -> FC-{hidden} -> RELU -> FC-{num_classes}"
    return parse(spec, rng=rng, dtype=dtype)


@register("cifar_convnet", family="small", input_shape=(3, 32, 32), num_classes=10,
          description="the notes' [CONV3 -> RELU]*2 -> POOL2 pattern, 32-64-128 filters, FC-256; batch_norm option")
def cifar_convnet(num_classes: int = 10, batch_norm: bool = False, dropout: float = 0.3, in_channels: int = 3,
                  rng=None, dtype="float32"):
    """The notes' CIFAR-10 ConvNet (see the module docstring); ``dropout`` is used with batch_norm only."""
    num_classes = check_int(num_classes, "num_classes", "cifar_convnet")
    batch_norm = check_bool(batch_norm, "batch_norm", "cifar_convnet")
    dropout = check_prob(dropout, "dropout", "cifar_convnet")
    c = check_int(in_channels, "in_channels", "cifar_convnet")
    if batch_norm:
        stages = " -> ".join(f"[CONV3-{k}/NB -> BN -> RELU]*2 -> POOL2" for k in (32, 64, 128))
        head = f"FC-256/NB -> BN -> RELU -> DROPOUT{dropout!r} -> FC-{num_classes}"
    else:
        stages = " -> ".join(f"[CONV3-{k} -> RELU]*2 -> POOL2" for k in (32, 64, 128))
        head = f"FC-256 -> RELU -> FC-{num_classes}"
    return parse(f"INPUT[32x32x{c}] -> {stages} -> {head}", rng=rng, dtype=dtype)
