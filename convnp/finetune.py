"""Fine-tuning helpers: find and replace a net's classifier head.

The recipe (the notes' "transfer learning" section: use a pretrained ConvNet as a fixed
feature extractor, or fine-tune it with a smaller learning rate)::

    from convnp.models import load_pretrained
    from convnp.finetune import find_head, replace_head
    from convnp.optim import SGD

    net = load_pretrained("resnet18", "resnet18-f37072fd.pth")   # torchvision's 1000-class weights
    replace_head(net, num_classes=10, rng=0)                       # fc: 512 -> 10, freshly initialised
    # (load_pretrained("resnet18", path, num_classes=10, rng=0) does both steps at once)

    # 1. fixed feature extractor: train the head only
    opt = SGD(lr=0.01, momentum=0.9, frozen=["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"])
    # 2. fine-tune everything, the pretrained part 10x slower than the new head
    opt = SGD(lr=0.01, momentum=0.9, param_groups=[{"params": ["conv1", "bn1", "layer1", "layer2",
                                                               "layer3", "layer4"], "lr": 0.001}])

Freezing is the optimizer's job: a name matching a ``frozen`` prefix (``"features"`` matches
``features.0.weight`` but not ``features2.weight``) is never updated and gets no optimizer
state; ``param_groups`` give prefixes their own learning rate (kept as a ratio to the base rate,
so schedules scale every group). Gradients are still computed for frozen layers (backward
must pass through them anyway). Batch-norm layers in a frozen part still update their running
statistics in ``forward(x, train=True)``, exactly as in PyTorch with ``requires_grad=False``;
keep them fixed with ``layer.momentum = 0.0`` on those layers (training-mode forward then still
normalizes with the batch statistics, as PyTorch's train mode does).

Replace the head before building the optimizer and the Trainer: both look the parameters up
by name, and the new head has new arrays (and perhaps another shape).
"""

from __future__ import annotations

from .errors import ConfigError
from .layers.base import Layer
from ._util import make_rng
from .layers.linear import Linear
from .nets.container import Container
from .nets.graph import Graph


def _aux_head_names(container) -> set:
    """Children of a container that are auxiliary heads (GoogLeNet's AuxSequential), not the trunk."""
    heads = getattr(type(container), "heads", None)
    if isinstance(heads, property):
        return {name for name, _, _ in container.heads}
    return set()


def _forward_leaves(container, prefix: str = ""):
    """(path, layer) of the non-container layers in forward order, auxiliary heads left out.

    A Graph's children are taken in its execution (topological) order.
    """
    named = dict(container.named_children())
    order = list(container.order) if isinstance(container, Graph) else list(named)
    aux = _aux_head_names(container)
    for name in order:
        if name in aux:
            continue
        child = named[name]
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, Container):
            yield from _forward_leaves(child, path)
        else:
            yield path, child


def _last_linear(container, prefix: str, owner: str) -> str:
    leaves = list(_forward_leaves(container, prefix))
    for i in range(len(leaves) - 1, -1, -1):
        path, layer = leaves[i]
        if isinstance(layer, Linear):
            after = [p for p, lay in leaves[i + 1:] if lay.params]
            if after:
                raise ConfigError(f"{owner}: the last Linear {path!r} is followed by {after[0]!r}, which has "
                                  "parameters, so it is not the classifier head; pass head='...' explicitly")
            return path
    raise ConfigError(f"{owner}: {type(container).__name__} has no Linear layer to use as the classifier head")


def find_head(net) -> str:
    """Dotted path of the classifier head: the last Linear on the way to the output.

    ``"fc"`` for ResNets and GoogLeNet, ``"classifier.6"`` for VGG and AlexNet,
    ``"classifier.4"`` for LeNet-5. GoogLeNet's auxiliary heads are not on that way (see
    ``class_heads``). ConfigError when there is no Linear, or when a layer with parameters
    follows the last one (then it is not a plain head).
    """
    if not isinstance(net, Container):
        raise ConfigError(f"find_head: expected a net (Sequential/Graph), got {type(net).__name__}")
    return _last_linear(net, "", "find_head")


def class_heads(net) -> list:
    """[(path, Linear)] of every layer that outputs class scores: the head (``find_head``) and, for a
    net with auxiliary heads (GoogLeNet with ``aux_logits=True``), each auxiliary head's last Linear
    (``aux1.fc2``, ``aux2.fc2``)."""
    paths = [find_head(net)]
    aux = getattr(net, "heads", None) if _aux_head_names(net) else None
    for name, _, head in aux or []:
        if isinstance(head, Container):
            paths.append(_last_linear(head, name, f"class_heads (auxiliary head {name!r})"))
        elif isinstance(head, Linear):
            paths.append(name)
    return [(p, _resolve(net, p)[2]) for p in paths]


def _resolve(net, path: str):
    """(parent container, child name, layer) for a dotted path."""
    parts = path.split(".")
    parent = net
    for depth, part in enumerate(parts):
        children = dict(parent.named_children()) if isinstance(parent, Container) else {}
        if part not in children:
            where = ".".join(parts[:depth]) or type(net).__name__
            raise ConfigError(f"no layer {path!r}: {where!r} has no child {part!r} "
                              f"(children: {', '.join(children) or 'none'})")
        if depth == len(parts) - 1:
            return parent, part, children[part]
        parent = children[part]
    raise ConfigError(f"no layer {path!r}")  # pragma: no cover - an empty path never reaches here


def _replace_child(parent: Container, name: str, layer: Layer) -> None:
    parent._set_children([(n, layer if n == name else child) for n, child in parent.named_children()])


#: standard deviation of a new head's weights: small scores, so the first softmax loss is ln(classes)
HEAD_STD = 0.01


def replace_head(net, num_classes: int, rng=None, head: str | None = None, std: float | None = HEAD_STD) -> Linear:
    """Replace the classifier head(s) of ``net`` with fresh Linear layers of ``num_classes`` outputs.

    ``head``: the dotted path of the Linear to replace; by default every ``class_heads(net)``
    (the last Linear, e.g. ``"fc"`` or ``"classifier.6"``, plus GoogLeNet's auxiliary ones).
    The new layer keeps the old one's in_features, bias and dtype; its weights are drawn from
    N(0, std^2) (0.01, like the zoo's classifiers; ``std=None``: He init) with ``rng`` (Generator,
    int seed or None), its bias is zero. The state_dict names stay the same. Returns the new
    (main) head. Build optimizers and Trainers after this call.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"replace_head: num_classes must be a positive int, got {num_classes!r}")
    if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0):
        raise ConfigError(f"replace_head: std must be a positive number or None, got {std!r}")
    gen = make_rng(rng)
    if head is None:
        targets = [p for p, _ in class_heads(net)]
    else:
        if not isinstance(net, Container):
            raise ConfigError(f"replace_head: expected a net (Sequential/Graph), got {type(net).__name__}")
        targets = [head]
    new_main = None
    for path in targets:
        parent, name, old = _resolve(net, path)
        if not isinstance(old, Linear):
            raise ConfigError(f"replace_head: {path!r} is a {type(old).__name__}, not a Linear")
        new = Linear(old.in_features, num_classes, bias=old.has_bias, rng=gen,
                     dtype=old.params["weight"].dtype.name)
        if std is not None:
            w = new.params["weight"]
            w[...] = std * gen.standard_normal(w.shape)
        _replace_child(parent, name, new)
        new_main = new if new_main is None else new_main
    return new_main


__all__ = ["HEAD_STD", "class_heads", "find_head", "replace_head"]
