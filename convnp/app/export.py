"""What ``convnp export`` runs: a saved model, a zoo name or a spec string to an ONNX file."""

from __future__ import annotations

import os

from ..errors import ConfigError
from ..inspect.trace import parse_input_shape
from ..io.onnx_export import DEFAULT_OPSET, export_onnx


def export_model(model, out, input_shape=None, opset: int = DEFAULT_OPSET, num_classes: int | None = None,
                 weights=None, batch_size: int | None = None, format: str = "onnx"):
    """What ``convnp export MODEL --format onnx --out PATH --input 3x224x224`` runs; returns (net, input_shape).

    ``model``: a saved model file (``convnp train``'s ``model.safetensors``: its recorded input
    shape, classes and mean/std go into the ONNX metadata), a zoo name with optional
    ``:key=value`` options (``resnet20:shortcut='B'``) or a spec string (``INPUT[28x28x1] -> ...``).
    ``input_shape``: (C, H, W) or ``"3x224x224"``; default the model's own. ``weights``: for a zoo
    name or spec, a state_dict file loaded into it (``load_backbone``: a head of another class
    count stays fresh); a zoo name without weights exports its random initialisation.
    ``num_classes`` applies to zoo names. The exported graph takes what ``net.forward`` takes:
    for a saved model, inputs normalised with the recorded mean/std.
    """
    if format != "onnx":
        raise ConfigError(f"export: format must be 'onnx' (the only export format), got {format!r}")
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError(f"export: --out {out} is a folder; give a file name, e.g. {os.path.join(out, 'model.onnx')}")
    if not os.path.isdir(folder):
        raise ConfigError(f"export: --out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"export: --out {out}: cannot write into {folder} (read-only or no permission)")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    meta = {}
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        from ..io.model_file import load_model

        if weights is not None or num_classes is not None:
            raise ConfigError("export: weights/num_classes apply to zoo names and specs, not to a saved model file")
        net, extra = load_model(model, with_meta=True)
        meta = {k: extra[k] for k in ("classes", "mean", "std", "input_shape", "dataset") if k in extra}
        if shape is None:
            recorded = extra.get("input_shape") or getattr(net, "input_shape", None)
            shape = tuple(recorded) if recorded is not None else None
    else:
        from ..models import build_model

        net, shape = build_model(os.fspath(model), input_shape=shape, num_classes=num_classes, rng=0)
        if weights is not None:
            from ..io.torch_weights import load_backbone

            load_backbone(net, weights)
    if shape is None:
        raise ConfigError(f"export: {model!r} records no input shape; pass one, e.g. --input 3x32x32")
    export_onnx(net, out, shape, opset=opset, batch_size=batch_size, metadata=meta or None)
    return net, tuple(shape)
