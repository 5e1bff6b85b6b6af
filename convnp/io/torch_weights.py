"""PyTorch state_dicts in and out: torchvision weights into the zoo, convnp weights back to PyTorch.

convnp's parameter names are PyTorch's dotted state_dict names (``features.0.weight``,
``layer1.0.bn1.running_mean``) and its layouts are PyTorch's (conv weight (K, C, KH, KW),
linear weight (out, in), batch-norm buffers ``running_mean``/``running_var`` and the int64
0-d ``num_batches_tracked``), so importing is a checked copy, key for key:

    from convnp.io.torch_weights import load_pretrained, load_torch_state_dict
    net = load_pretrained("resnet18", "resnet18-f37072fd.pth")            # torchvision's file
    net = load_pretrained("resnet18", "resnet18.pth", num_classes=10)      # fresh 10-class head
    load_torch_state_dict(net, "weights.safetensors")                      # any convnp net

Files: ``.safetensors`` is read with ``safetensors.numpy`` (no PyTorch needed);
``.pth``/``.pt``/``.bin`` need PyTorch and are read with ``torch.load(..., weights_only=True)``:
tensors and plain containers only, never arbitrary unpickling. The format is sniffed from the
first bytes, so a misnamed file still loads. A mapping of names to numpy arrays or torch
tensors is accepted in place of a path.

Every mismatch is reported before anything is written: missing and unexpected keys raise a
``ConfigError``, keys of the wrong shape a ``ShapeError``; the message lists up to
``MAX_LISTED`` keys of each kind and says how many more there are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError, ShapeError
from .._util import listed, mismatch_problems

#: at most this many keys of each kind (missing, unexpected, wrong shape) are named in an error
MAX_LISTED = 10

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


# --- reading -------------------------------------------------------------------------------------
def _sniff(path: str) -> str:
    """"torch" or "safetensors" from the file's first bytes, else from its suffix."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":  # torch.save's zip container
        return "torch"
    if head[:1] == b"\x80":  # a legacy (pre-1.6) pickle-based torch file
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    raise ConfigError(f"cannot read weights from {path!r}: neither a safetensors file nor a PyTorch "
                      f"(torch.save) file (first bytes {head[:8]!r})")


def _tensor_to_numpy(key: str, value):
    """A numpy array from a numpy array, a torch tensor or a number; ConfigError otherwise."""
    if isinstance(value, np.ndarray):
        arr = value
    elif hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor (duck-typed: no import)
        t = value.detach().cpu()
        if str(getattr(t, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            t = t.float()  # numpy has no bfloat16; float16 is widened so every float loads alike
        arr = t.numpy()
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        arr = np.asarray(value)
    else:
        raise ConfigError(f"state_dict entry {key!r} is a {type(value).__name__}, not an array or tensor")
    if arr.dtype.kind not in "fiub":
        raise ConfigError(f"state_dict entry {key!r} has dtype {arr.dtype}; expected numbers")
    return arr


def _unwrap(obj, where: str) -> dict:
    """The name -> tensor mapping inside what torch.load returned.

    Accepts a plain state_dict, or a training checkpoint holding one under "state_dict" or
    "model" (a common convention); strips DataParallel's "module." prefix when every key has it.
    """
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: expected a state_dict (a mapping of names to tensors), "
                          f"got {type(obj).__name__}")
    if obj and not any(hasattr(v, "shape") for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], f"{where}[{key!r}]")
        raise ConfigError(f"{where}: holds no tensors (top-level keys: {listed(list(obj))}); "
                          "expected a state_dict such as model.state_dict()")
    keys = list(obj)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: state_dict keys must be strings, got {k!r}")
        out[k] = _tensor_to_numpy(k, v)
    return out


def read_torch_state_dict(path_or_dict) -> dict:
    """Name -> numpy array from a ``.pth``/``.pt`` file (needs PyTorch), a ``.safetensors``
    file (no PyTorch) or a mapping of names to arrays/tensors.

    ``.pth`` files are read with ``torch.load(path, map_location="cpu", weights_only=True)``,
    which refuses anything but tensors and plain containers. A checkpoint that wraps the
    state_dict under "state_dict" or "model" is unwrapped; a "module." prefix on every key
    (``nn.DataParallel``) is dropped. bfloat16/float16 tensors become float32.
    """
    if isinstance(path_or_dict, Mapping):
        return _unwrap(path_or_dict, "the given state_dict")
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise ConfigError(f"expected a path or a state_dict mapping, got {type(path_or_dict).__name__}")
    path = os.fspath(path_or_dict)
    if not os.path.isfile(path):
        raise ConfigError(f"weights file {path!r} does not exist")
    kind = _sniff(path)
    if kind == "safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ConfigError(f"reading {path!r} needs the safetensors package: "
                              "pip install safetensors (or convnp[train])") from None
        try:
            arrays = load_file(path)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
            raise ConfigError(f"cannot read weights file {path!r}: not a valid safetensors file "
                              f"(truncated or corrupt?): {err}") from None
        return _unwrap(arrays, f"weights file {path!r}")
    try:
        import torch
    except ImportError:
        raise ConfigError(f"reading the PyTorch file {path!r} needs PyTorch (pip install torch); "
                          "without it, convert the file to .safetensors where PyTorch is installed "
                          "(safetensors.torch.save_file(torch.load(path), 'weights.safetensors'))") from None
    try:  # from a file object: torch.load would hand a path ending in .safetensors to safetensors
        with open(path, "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ConfigError(f"cannot read weights file {path!r} with torch.load(weights_only=True) "
                          f"(truncated or corrupt, or it holds more than tensors): {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return _unwrap(obj, f"weights file {path!r}")


# --- loading into a net -----------------------------------------------------------------------------
def _matches(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _net_name(net) -> str:
    return type(net).__name__


def load_torch_state_dict(net, path_or_dict, strict: bool = True, exclude=()) -> tuple[list, list]:
    """Copy a PyTorch state_dict into ``net``'s arrays in place; returns (missing, unexpected).

    ``path_or_dict``: a ``.pth``/``.pt`` file (read with PyTorch, ``weights_only=True``), a
    ``.safetensors`` file, or a mapping of names to numpy arrays / torch tensors. Names and
    layouts are PyTorch's, so nothing is transposed; values are cast to the net's dtypes.
    ``exclude``: name prefixes (e.g. ``["fc"]``) that are neither loaded nor required.

    With ``strict`` (default) a missing or unexpected key is a ConfigError; with
    ``strict=False`` they are skipped and returned. A key whose shape differs is always a
    ShapeError. Everything is checked before anything is written, so a failed load leaves
    the net unchanged. A missing ``num_batches_tracked`` (files from PyTorch < 0.4.1) is
    filled with 0, as PyTorch does.
    """
    state = read_torch_state_dict(path_or_dict)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    if not all(isinstance(p, str) and p for p in exclude):
        raise ConfigError(f"exclude must be a list of name prefixes, got {exclude!r}")
    exclude = [p.rstrip(".") for p in exclude]
    own = net.state_dict()
    if not own:
        raise ConfigError(f"{_net_name(net)} has no parameters or buffers to load")
    source = path_or_dict if isinstance(path_or_dict, (str, os.PathLike)) else "the given state_dict"
    state = {k: v for k, v in state.items() if not _matches(k, exclude)}
    wanted = {k: v for k, v in own.items() if not _matches(k, exclude)}
    for k in wanted:  # PyTorch < 0.4.1 saved batch norm without the counter
        if k not in state and k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] + ".running_mean" in state:
            state[k] = np.array(0, dtype=np.int64)
    problems, missing, unexpected, wrong = mismatch_problems(wanted, state, strict, MAX_LISTED, "the file")
    if problems:
        matched = sum(1 for k in wanted if k in state)
        hints = []
        if matched < len(wanted) / 2 and (missing or unexpected):
            hints.append(f"only {matched} of the net's {len(wanted)} keys are in the file: the weights "
                         "are probably for another architecture (or another variant, e.g. vgg11 vs vgg11_bn)")
        if wrong and all(k.rsplit(".", 1)[0] == wrong[0].rsplit(".", 1)[0] for k in wrong) \
                and own[wrong[0]].ndim <= 2 and not (missing or unexpected):
            head = wrong[0].rsplit(".", 1)[0]
            hints.append(f"only {head!r} differs, as when the number of classes differs: to keep the net's "
                         f"fresh {head!r}, use load_backbone(net, weights) or exclude=[{head!r}]; or build the "
                         "net with the file's num_classes and call convnp.finetune.replace_head")
        text = f"cannot load {source} into {_net_name(net)}: " + "; ".join(problems)
        if hints:
            text += " (" + "; ".join(hints) + ")"
        raise (ConfigError if (strict and (missing or unexpected)) else ShapeError)(text)
    for k, arr in wanted.items():
        if k in state:
            arr[...] = np.asarray(state[k]).astype(arr.dtype, copy=False)
    return missing, unexpected


# --- writing -------------------------------------------------------------------------------------------
def save_torch_state_dict(net, path, format: str | None = None) -> str:
    """Write ``net.state_dict()`` (PyTorch names, layouts and dtypes) for PyTorch to load.

    ``format``: "torch" (``torch.save`` of an ordered dict of tensors: needs PyTorch) or
    "safetensors" (needs only the safetensors package); by default from the suffix
    (``.safetensors`` -> safetensors, anything else -> torch). The file is written to a
    temporary name and renamed, so a crash never leaves half a file. Returns the path.
    In PyTorch: ``model.load_state_dict(torch.load(path, weights_only=True))`` or
    ``safetensors.torch.load_file(path)``.
    """
    path = os.fspath(path)
    if format is None:
        format = "safetensors" if path.lower().endswith(SAFETENSORS_SUFFIXES) else "torch"
    if format not in ("torch", "safetensors"):
        raise ConfigError(f"save_torch_state_dict: format must be 'torch' or 'safetensors', got {format!r}")
    # np.require keeps 0-d arrays 0-d (num_batches_tracked); ascontiguousarray would make them 1-d
    state = {k: np.require(v, requirements="C") for k, v in net.state_dict().items()}
    if not state:
        raise ConfigError(f"save_torch_state_dict: {_net_name(net)} has no parameters or buffers")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"save_torch_state_dict: directory {directory!r} does not exist")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if format == "safetensors":
            try:
                from safetensors.numpy import save_file
            except ImportError:
                raise ConfigError("writing .safetensors needs the safetensors package: "
                                  "pip install safetensors (or convnp[train])") from None
            save_file(state, tmp, metadata={"format": "pt"})
        else:
            try:
                import torch
            except ImportError:
                raise ConfigError(f"writing the PyTorch file {path!r} needs PyTorch (pip install torch); "
                                  "save to a .safetensors path instead (no PyTorch needed)") from None
            from collections import OrderedDict

            torch.save(OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state.items()), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --- the zoo with pretrained weights ----------------------------------------------------------------
def drop_aux_heads(net, state: dict) -> dict:
    """torchvision's GoogLeNet files keep the auxiliary heads ``aux1``/``aux2``; drop them for a net built
    without (torchvision itself deletes them after loading when aux_logits=False)."""
    own = net.state_dict()
    if any(k.startswith(("aux1.", "aux2.")) for k in own) or "inception4a.branch1.conv.weight" not in own:
        return state
    return {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}


def heads_of_other_size(net, state: dict) -> list:
    """[(path, classes in the file)] for the class-score layers whose output count differs from the file's
    (same input features: the same backbone trained for another number of classes)."""
    from ..finetune import class_heads

    out = []
    for path, layer in class_heads(net):
        w = state.get(f"{path}.weight")
        if w is not None and w.ndim == 2 and w.shape[1] == layer.in_features and w.shape[0] != layer.out_features:
            out.append((path, int(w.shape[0])))
    return out


def load_backbone(net, weights, strict: bool = True) -> list:
    """Load ``weights`` into ``net`` except class-score layers sized for another number of classes.

    The start of a fine-tune: ``net`` was built for the new task (e.g. 10 classes), ``weights``
    come from another (torchvision's 1000). Every key loads as in ``load_torch_state_dict``
    except the heads (``convnp.finetune.class_heads``: the last Linear, and GoogLeNet's auxiliary
    ones) whose output count differs from the file's: those keep the net's fresh initialisation.
    Auxiliary-head weights in the file are dropped when the net has none (GoogLeNet). Returns the
    paths of the heads left fresh.
    """
    state = drop_aux_heads(net, read_torch_state_dict(weights))
    fresh = [path for path, _ in heads_of_other_size(net, state)]
    load_torch_state_dict(net, state, strict=strict, exclude=fresh)
    return fresh


# --- the zoo with pretrained weights ----------------------------------------------------------------
__all__ = ["MAX_LISTED", "drop_aux_heads", "heads_of_other_size", "load_backbone", "load_torch_state_dict", "read_torch_state_dict",
           "save_torch_state_dict"]
