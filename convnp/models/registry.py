"""The zoo's registry: ``list_models()`` and ``get_model(name, num_classes=None, **options)``.

Each family module registers its builders with ``@register(...)``; importing
``convnp.models`` (which importing this module does first) imports every family, so the
registry is always complete. A builder takes ``num_classes``, ``rng`` (a numpy Generator or an int seed) and
``dtype`` plus its own options, and returns a Layer whose ``input_shape`` is its default
input (C, H, W).
"""

from __future__ import annotations

import ast
import difflib
import inspect
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .._util import make_rng


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model."""

    name: str
    builder: object
    family: str
    input_shape: tuple
    num_classes: int
    description: str
    data_init: object = None   # (net, normalised training images) -> names to keep fixed; see train_run

    @property
    def options(self) -> tuple:
        """The builder's keyword options (besides num_classes, rng, dtype)."""
        params = inspect.signature(self.builder).parameters
        return tuple(p for p in params if p not in ("num_classes", "rng", "dtype"))


_MODELS: dict[str, ModelInfo] = {}

#: list_models() order: small nets first, then roughly by year
FAMILIES = ("lenet", "small", "alexnet", "vgg", "googlenet", "resnet", "resnet_cifar")


def register(name: str, family: str, input_shape: tuple, num_classes: int, description: str, data_init=None):
    """Decorator adding a builder to the zoo under ``name``.

    ``data_init(net, images)``, where given, finishes the initialisation from (normalised) training
    images before training starts and returns the parameter names the optimizer must keep fixed.
    """

    def wrap(fn):
        if family not in FAMILIES:
            raise ConfigError(f"model {name!r}: unknown family {family!r}; add it to FAMILIES")
        if name in _MODELS:
            raise ConfigError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, fn, family, tuple(input_shape), num_classes, description, data_init)
        return fn

    return wrap


def list_models(family: str | None = None) -> list:
    """Names of every model in the zoo, grouped by family (``FAMILIES`` order), small to large
    within a family; ``family`` (e.g. ``"resnet"``) keeps that family only."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"list_models: unknown family {family!r}; families: {', '.join(FAMILIES)}")
    names = sorted(_MODELS, key=lambda n: FAMILIES.index(_MODELS[n].family))  # stable: keeps registration order
    return [n for n in names if family is None or _MODELS[n].family == family]


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name`` (family, default input shape and classes, options)."""
    if not isinstance(name, str) or name not in _MODELS:
        close = difflib.get_close_matches(str(name).lower(), list(_MODELS), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} Known models: {', '.join(_MODELS)}")
    return _MODELS[name]


def get_model(name: str, num_classes: int | None = None, weights=None, **options):
    """Build the zoo model ``name`` with fresh (He-initialised) weights, or load ``weights``.

    ``num_classes`` defaults to the model's own (1000 for the ImageNet nets, 10 for the
    MNIST/CIFAR ones). ``options``: ``rng`` (Generator or int seed), ``dtype`` and the
    model's own keywords (``model_info(name).options``); an unknown one is a ConfigError.
    ``weights``: a PyTorch state_dict file (.pth or .safetensors, e.g. torchvision's); with a
    different ``num_classes`` everything but the class head loads and the head starts fresh.
    """
    info = model_info(name)
    allowed = set(info.options) | {"rng", "dtype"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"get_model({name!r}): unknown option(s) {unknown}; "
                          f"{name} takes {', '.join(sorted(allowed))}")
    if weights is not None:
        return load_pretrained(name, weights, num_classes=num_classes, **options)
    if num_classes is not None:
        options["num_classes"] = num_classes
    rng = make_rng(options.pop("rng", None))
    net = info.builder(rng=rng, **options)
    init_classifier(net, num_classes if num_classes is not None else info.num_classes, rng)
    return net


#: Standard deviation of the class-score layers at initialisation (torchvision's VGG/GoogLeNet value).
CLASSIFIER_STD = 0.01


def init_classifier(net, num_classes: int, rng) -> None:
    """Redraw the weights of every Linear that outputs class scores from N(0, 0.01^2).

    With small scores the softmax loss at initialisation is ln(num_classes), the notes' first
    sanity check; the He init of the layers below keeps the signal alive through the depth.
    """
    from ..layers.linear import Linear  # noqa: PLC0415

    for _, layer in net.named_modules():
        if isinstance(layer, Linear) and layer.out_features == num_classes:
            w = layer.params["weight"]
            w[...] = CLASSIFIER_STD * make_rng(rng).standard_normal(w.shape, dtype=np.float64)


def parse_model_name(model: str) -> tuple[str, dict]:
    """``"cifar_convnet:batch_norm=True,dropout=0.3"`` -> ("cifar_convnet", {"batch_norm": True, "dropout": 0.3})."""
    name, _, opts = model.partition(":")
    options = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"model option {item!r} in {model!r} is not key=value")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name.strip(), options


def build_model(model: str, input_shape=None, num_classes: int | None = None, rng=None):
    """A net from a zoo name (with ``:key=value`` options) or a spec string (anything with '->').

    Returns ``(net, input_shape)``. Without ``input_shape`` the model's default (zoo) or the
    spec's ``INPUT[...]`` is used. Zoo models that take ``in_channels``/``input_size`` are adapted
    to ``input_shape``; a net that still does not fit raises the ShapeError of the failing layer.
    """
    if "->" in model:
        from ..notation.spec import parse  # noqa: PLC0415 - the spec parser imports every layer

        net = parse(model, input_shape=input_shape, rng=rng)
        shape = tuple(input_shape) if input_shape is not None else net.input_shape
    else:
        name, options = parse_model_name(model)
        info = model_info(name)
        shape = tuple(input_shape) if input_shape is not None else info.input_shape
        if "in_channels" in info.options:
            options.setdefault("in_channels", shape[0])
        if "input_size" in info.options and shape[1] == shape[2] and shape[1:] != info.input_shape[1:]:
            options.setdefault("input_size", shape[1])
        net = get_model(name, num_classes=num_classes, rng=rng, **options)
    if shape is None:
        raise ConfigError(f"{model!r}: no input shape; give INPUT[HxWxC] in the spec or an input shape")
    net.output_shape(shape)
    return net, shape


def load_pretrained(name: str, weights, num_classes: int | None = None, strict: bool = True, **options):
    """The zoo model ``name`` with the weights from ``weights`` (a path or a state_dict mapping).

    ``weights`` is typically torchvision's file for that model (``resnet18-f37072fd.pth``, or
    the same converted to ``.safetensors``). The class count comes from the file's classifier
    when ``num_classes`` is None. With a ``num_classes`` that differs from the file's, every
    weight but the classifier head (the last Linear, and GoogLeNet's auxiliary heads' last
    Linear) is loaded and the head stays freshly initialised (from ``rng``): the usual start
    of a fine-tune (``load_backbone``). Other ``options`` go to ``get_model`` (``rng``, ``dtype``,
    the model's own). GoogLeNet files with auxiliary heads load into a net without them.
    """
    from ..finetune import replace_head  # noqa: PLC0415
    from ..io.torch_weights import (drop_aux_heads, heads_of_other_size, load_backbone,  # noqa: PLC0415
                                    read_torch_state_dict)

    state = read_torch_state_dict(weights)
    net = get_model(name, num_classes=num_classes, **options)
    state = drop_aux_heads(net, state)
    if num_classes is None:  # the file decides: rebuild the heads at the file's size
        for path, classes in heads_of_other_size(net, state):
            replace_head(net, classes, rng=options.get("rng"), head=path)
    load_backbone(net, state, strict=strict)
    return net
