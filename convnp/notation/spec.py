"""The notes' layer-pattern notation: a spec string <-> a Sequential.

    INPUT[32x32x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2 -> FC-256 -> RELU -> FC-10

Items are separated by ``->``; ``[ ... ]*N`` repeats a group N times (groups nest).
Case and whitespace do not matter. The items:

=====================  ============================================================================
``INPUT[HxWxC]``       the input volume, height x width x channels as in the notes (optional, first);
                       ``INPUT[D]`` for a flat input of D features. Without it pass
                       ``input_shape=(C, H, W)`` to ``parse``.
``CONV<F>-<K>``        Conv2d with K filters of F x F. Options: ``/S<s>`` stride (default 1),
                       ``/P<p>`` zero padding (default (F-1)/2, which keeps the size at stride 1; an
                       even F needs an explicit /P), ``/NB`` no bias.
``POOL<F>``            MaxPool2d F x F, stride F unless ``/S<s>``; ``/P<p>`` padding.
``AVGPOOL<F>``         AvgPool2d, same options. ``L2POOL<F>``: LPPool2d(2, F) (``/S`` only).
``GPOOL``              global average pooling, (C, H, W) -> (C, 1, 1).
``RELU`` ``TANH``      activations; ``LRELU`` (slope 0.01, or ``LRELU0.2``), ``ELU`` (alpha 1,
``SIGMOID``            or ``ELU0.5``).
``NORM``               LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2), AlexNet's constants.
``BN``                 BatchNorm2d on a volume, BatchNorm1d on a vector.
``DROPOUT<p>``         Dropout(p), e.g. ``DROPOUT0.5`` (plain ``DROPOUT`` is p=0.5).
``FC-<n>``             Linear to n outputs (``/NB`` no bias); a Flatten is inserted first when
                       the input is still a volume. ``FLATTEN`` inserts one explicitly.
``SOFTMAX`` ``SVM``    last item only: records the loss (``net.loss``). The net itself always
                       outputs raw class scores; train it with ``losses.SoftmaxCrossEntropy`` or
                       ``losses.MulticlassSVM``.
=====================  ============================================================================

``parse`` builds the layers in order, tracking the volume size, so in_channels and
in_features come from the input shape and a size that does not work raises the layer's
ShapeError, located in the spec. A syntax error raises ``SpecError`` with the column,
what was expected and a caret under the spot. ``to_spec(net)`` (or ``net.spec()``) writes
a Sequential back in this notation, folding repeats into ``[...]*N``; parsing that text
gives the same layers with the same configs (dtype aside: pass ``dtype=`` to ``parse``).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from .._util import make_rng
from ..errors import ConfigError, ShapeError
from ..layers import LAYER_TYPES
from ..nets.container import Container
from ..nets.sequential import Sequential

__all__ = ["SpecError", "TOKENS", "parse", "to_spec"]

LOSS_TOKENS = {"SOFTMAX": "softmax", "SVM": "svm"}


def _layer_tokens() -> dict:
    """keyword -> (SpecToken, the layer class that parses it), from every registered layer type's own
    ``spec_tokens`` (a subclass does not inherit its parent's items)."""
    out = {}
    for cls in LAYER_TYPES.values():
        for tok in cls.__dict__.get("spec_tokens", ()):
            if tok.keyword in out or tok.keyword in ("INPUT", *LOSS_TOKENS):
                raise ConfigError(f"spec item {tok.keyword} is claimed twice ({out[tok.keyword][1].__name__ if tok.keyword in out else 'the notation'} and {cls.__name__})")
            out[tok.keyword] = (tok, cls)
    return out


#: The notation's layer items: keyword -> (SpecToken, layer class).
TOKENS = _layer_tokens()
# Longest first, so that LRELU wins over RELU-like prefixes and AVGPOOL over POOL.
KEYWORDS = sorted(["INPUT", *LOSS_TOKENS, *TOKENS], key=lambda k: (-len(k), k))

_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)(E[-+]?\d+)?")
_INT = re.compile(r"\d+")


def _pointer(spec: str, index: int) -> tuple[str, str]:
    """("column 12" or "line 2, column 5", the spec line with a caret under ``index``)."""
    line_start = spec.rfind("\n", 0, index) + 1
    line_end = spec.find("\n", index)
    line_end = len(spec) if line_end == -1 else line_end
    column = index - line_start + 1
    where = f"line {spec.count(chr(10), 0, index) + 1}, column {column}" if "\n" in spec else f"column {column}"
    text = spec[line_start:line_end].replace("\t", " ")
    return where, f"    {text}\n    {' ' * (column - 1)}^"


class SpecError(ConfigError):
    """A syntax error in a layer-pattern spec; ``column`` is 1-based in the original text."""

    def __init__(self, reason: str, spec: str, index: int):
        self.reason, self.spec, self.index = reason, spec, index
        self.line = spec.count("\n", 0, index) + 1
        self.column = index - (spec.rfind("\n", 0, index) + 1) + 1
        where, picture = _pointer(spec, index)
        super().__init__(f"spec error at {where}: {reason}\n{picture}")


class _Item:
    """One layer item: keyword, arguments, options and where it sits in the spec."""

    __slots__ = ("kind", "args", "opts", "start", "end")

    def __init__(self, kind, args, opts, start, end):
        self.kind, self.args, self.opts, self.start, self.end = kind, args, opts, start, end


class _Repeat:
    __slots__ = ("items", "count", "start")

    def __init__(self, items, count, start):
        self.items, self.count, self.start = items, count, start


class _Parser:
    """Recursive descent over the spec with whitespace removed; positions map back to columns."""

    def __init__(self, spec: str):
        self.spec = spec
        chars, index = [], []
        for i, c in enumerate(spec):
            if c.isspace():
                continue
            up = "->" if c == "\u2192" else (c.upper() if len(c.upper()) == 1 else c)
            chars.append(up)
            index.extend([i] * len(up))
        self.text = "".join(chars)
        self.index = index + [len(spec.rstrip())]  # one past the end: just after the last character
        self.pos = 0

    # --- low level ----------------------------------------------------------------------------
    def error(self, reason: str, pos: int | None = None):
        pos = self.pos if pos is None else pos
        raise SpecError(reason, self.spec, self.index[min(pos, len(self.index) - 1)])

    def here(self) -> str:
        """What sits at the current position, as written in the spec."""
        if self.pos >= len(self.text):
            return "the end of the spec"
        m = re.match(r"[A-Z0-9]+|->|.", self.text[self.pos:])
        lo, hi = self.index[self.pos], self.index[self.pos + len(m.group(0)) - 1] + 1
        return repr(" ".join(self.spec[lo:hi].split()))

    def accept(self, s: str) -> bool:
        if self.text.startswith(s, self.pos):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str, what: str):
        if not self.accept(s):
            self.error(f"expected {what}, found {self.here()}")

    def dash(self, what: str):
        """A '-' inside an item (as in CONV3-32), which must not be the start of a '->'."""
        if self.text.startswith("->", self.pos) or not self.accept("-"):
            self.error(f"expected {what}, found {self.here()}")

    def integer(self, what: str) -> int:
        m = _INT.match(self.text, self.pos)
        if not m:
            self.error(f"expected {what}, found {self.here()}")
        self.pos = m.end()
        return int(m.group(0))

    def number(self) -> float | None:
        m = _NUMBER.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return float(m.group(0))

    # --- grammar ----------------------------------------------------------------------------------
    def parse(self) -> list:
        if not self.text:
            self.error("the spec is empty; expected a layer such as CONV3-16 or FC-10")
        items = self.sequence()
        if self.pos < len(self.text):
            if self.text.startswith("]", self.pos):
                self.error("unmatched ']'")
            self.error(f"expected '->' or the end of the spec, found {self.here()}")
        return items

    def sequence(self) -> list:
        items = [self.element()]
        while self.accept("->"):
            items.append(self.element())
        return items

    def element(self):
        start = self.pos
        if self.accept("["):
            items = self.sequence()
            if not self.accept("]"):
                self.error(f"expected '->' or ']' to close the '[' at column "
                           f"{self.index[start] + 1}, found {self.here()}")
            self.expect("*", "'*N' after ']' (a repeated group is written [ ... ]*N)")
            count_pos = self.pos
            count = self.integer("a repeat count after '*'")
            if count < 1:
                self.error("the repeat count must be at least 1", count_pos)
            return _Repeat(items, count, start)
        return self.layer()

    def layer(self) -> _Item:
        start = self.pos
        kind = next((k for k in KEYWORDS if self.text.startswith(k, self.pos)), None)
        if kind is None:
            if self.pos >= len(self.text):
                self.error("expected a layer after '->', found the end of the spec")
            word = re.match(r"[A-Z0-9]*", self.text[self.pos:]).group(0) or self.text[self.pos]
            self.error(f"unknown layer {word!r}; expected one of {', '.join(sorted(KEYWORDS))} or '['")
        self.pos += len(kind)
        args: tuple = ()
        token = TOKENS[kind][0] if kind in TOKENS else None
        grammar = token.args if token else ""
        names = (token.arg_names if token else ()) + ("the number", "the number")
        if kind == "INPUT":
            if self.accept("["):
                dims = [self.integer("a size in INPUT[HxWxC]")]
                while self.accept("X"):
                    dims.append(self.integer("a size after 'x' in INPUT[HxWxC]"))
                if len(dims) not in (1, 3):
                    self.error(f"INPUT takes [HxWxC] (or [D] for a flat input), got {len(dims)} sizes")
                if min(dims) < 1:
                    self.error("INPUT sizes must be positive", start)
                self.expect("]", "'x' or ']' in INPUT[HxWxC]")
                args = tuple(dims)
        elif grammar == "F-K":
            f = self.integer(f"{names[0]} after {kind} (as in {kind}3-32)")
            self.dash(f"'-' and {names[1]} after {kind}{f} (as in {kind}{f}-32)")
            k = self.integer(f"{names[1]} after {kind}{f}- (as in {kind}{f}-32)")
            args = (f, k)
        elif grammar == "F":
            args = (self.integer(f"{names[0]} after {kind} (as in {kind}2)"),)
        elif grammar == "-N":
            self.dash(f"'-' and {names[0]} after {kind} (as in {kind}-10)")
            args = (self.integer(f"{names[0]} after {kind}- (as in {kind}-10)"),)
        elif grammar == "X?":
            value = self.number()
            args = () if value is None else (value,)
        opts = self.options(kind)
        item = _Item(kind, args, opts, start, self.pos)
        for name, value in (("F", args[0] if grammar in ("F", "F-K") else 1),
                            ("K", args[1] if grammar == "F-K" else 1), ("S", opts.get("S", 1))):
            if value < 1:
                self.error(f"{name} must be at least 1 in {self.source(item)}", start)
        return item

    def options(self, kind: str) -> dict:
        opts: dict = {}
        allowed = TOKENS[kind][0].options if kind in TOKENS else ()
        while self.text.startswith("/", self.pos):
            if not allowed:
                self.error(f"{kind} takes no /options")
            self.pos += 1
            pos = self.pos
            name = next((o for o in sorted(allowed, key=len, reverse=True) if self.text.startswith(o, pos)), None)
            if name is None:
                self.error(f"expected an option of {kind}: {', '.join('/' + o for o in allowed)}; "
                           f"found {self.here()}")
            if name in opts:
                self.error(f"option /{name} given twice", pos)
            self.pos += len(name)
            opts[name] = True if name == "NB" else self.integer(
                f"a number after /{name} (as in /{name}{'1' if name == 'P' else '2'})")
        return opts

    def source(self, item: _Item) -> str:
        """The item as written (whitespace and case as in the spec)."""
        lo = self.index[item.start]
        hi = self.index[item.end - 1] + 1 if item.end > item.start else lo
        return " ".join(self.spec[lo:hi].split())


def _expand(items: list) -> list:
    out = []
    for it in items:
        if isinstance(it, _Repeat):
            inner = _expand(it.items)
            out.extend(inner * it.count)
        else:
            out.append(it)
    return out


def _check_shape_arg(input_shape):
    if input_shape is None:
        return None
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (1, 3)
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape)):
        raise ConfigError(f"parse: input_shape must be (C, H, W) or (D,) of positive ints, got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


def parse(spec: str, rng=None, *, input_shape=None, dtype="float32"):
    """Build a Sequential from a layer-pattern spec (see the module docstring).

    ``input_shape`` = (C, H, W) (or (D,)) when the spec has no ``INPUT[HxWxC]``; ``rng``
    seeds the weight init and dropout masks; ``dtype`` is the parameters' dtype.
    Raises SpecError (syntax, with column and caret), ConfigError (no input shape,
    bad values) or ShapeError (sizes that do not work, naming the layer and the item).
    """
    if not isinstance(spec, str):
        raise ConfigError(f"parse: spec must be a string, got {type(spec).__name__}")
    parser = _Parser(spec)
    items = parser.parse()
    # INPUT first, SOFTMAX/SVM last, nowhere else (checked on the top level and inside groups)
    loss = None
    if isinstance(items[-1], _Item) and items[-1].kind in LOSS_TOKENS:
        loss = LOSS_TOKENS[items.pop().kind]
        if not items:
            parser.error("a spec needs at least one layer before " + loss.upper(), 0)
    spec_shape = None
    if isinstance(items[0], _Item) and items[0].kind == "INPUT":
        first = items.pop(0)
        if first.args:
            spec_shape = (first.args[2], first.args[0], first.args[1]) if len(first.args) == 3 else first.args
    for it in _expand(items):
        if it.kind == "INPUT":
            parser.error("INPUT can only be the first item", it.start)
        if it.kind in LOSS_TOKENS:
            parser.error(f"{it.kind} marks the loss and can only be the last item", it.start)
    if not _expand(items):
        raise ConfigError("parse: the spec has no layers after INPUT")
    shape_arg = _check_shape_arg(input_shape)
    if spec_shape is not None and shape_arg is not None and spec_shape != shape_arg:
        raise ConfigError(f"parse: the spec's INPUT gives (C, H, W) = {spec_shape} but input_shape={shape_arg}")
    shape = spec_shape or shape_arg
    if shape is None:
        raise ConfigError("parse: the input shape is unknown; start the spec with INPUT[HxWxC] "
                          "(e.g. INPUT[32x32x3]) or pass input_shape=(C, H, W)")
    gen = make_rng(rng)
    layers, start_shape = [], shape
    for it in _expand(items):
        try:
            built = _build(it, shape, parser, gen, dtype)
        except SpecError:
            raise
        except ConfigError as err:  # a value the layer refuses, e.g. DROPOUT1.5
            raise SpecError(f"{parser.source(it)}: {err}", spec, parser.index[it.start]) from None
        for layer in built:
            try:
                shape = tuple(layer.output_shape(shape))
            except ShapeError as err:
                msg = err.args[0] if err.args else str(err)
                where, picture = _pointer(spec, parser.index[it.start])
                err.args = (f"{parser.source(it)} (layer {len(layers)}, {where}) does not fit: {msg}\n{picture}",)
                raise
            layers.append(layer)
    return Sequential(layers, input_shape=start_shape, loss=loss)


def _build(it: _Item, shape: tuple, parser: _Parser, rng, dtype) -> list:
    """The layers one item stands for, given the current volume shape (the layer class's ``from_spec``)."""
    token, cls = TOKENS[it.kind]
    if token.volume and len(shape) != 3:
        where, picture = _pointer(parser.spec, parser.index[it.start])
        raise ShapeError(f"{parser.source(it)} ({where}) needs a (C, H, W) volume, but the input "
                         f"here has shape {shape} (a vector, e.g. after an FC)\n{picture}")
    return cls.from_spec(it.kind, it.args, it.opts, shape, rng, dtype)


# --- writing a net back -----------------------------------------------------------------------------
def _fold(tokens: list) -> list:
    """Fold consecutive repeats into '[a -> b]*N', choosing the folds that leave the fewest items.

    Among equally short writings the one that folds later wins, so a pool closes its group
    ("[[CONV3-8 -> RELU]*2 -> POOL2]*2") instead of opening the next one.
    """
    return list(_fold_cached(tuple(tokens))[1])


@functools.lru_cache(maxsize=256)
def _fold_cached(tokens: tuple) -> tuple:
    n = len(tokens)
    best = [(0, ())] * (n + 1)  # best[i]: (items written, the items) for tokens[i:]
    for i in range(n - 1, -1, -1):
        cost, items = best[i + 1]
        choice = (cost + 1, (tokens[i], *items))
        for size in range(1, (n - i) // 2 + 1):
            block = tokens[i: i + size]
            count = 1
            while tokens[i + count * size: i + (count + 1) * size] == block:
                count += 1
            if count > 1:
                inner_cost, inner = _fold_cached(block)
                rest_cost, rest = best[i + size * count]
                if inner_cost + 1 + rest_cost < choice[0]:
                    choice = (inner_cost + 1 + rest_cost, (f"[{' -> '.join(inner)}]*{count}", *rest))
        best[i] = choice
    return best[0]


def to_spec(net, input_shape=None) -> str:
    """Write a Sequential (nested Sequentials are flattened) in the layer-pattern notation.

    Starts with ``INPUT[HxWxC]`` when the input shape is known (``input_shape`` or the
    net's own), and ends with SOFTMAX/SVM when ``net.loss`` is set. A layer the notation
    cannot express (a Graph, a dilated conv, non-default BatchNorm ...) raises ConfigError.
    """
    if not isinstance(net, Sequential):
        raise ConfigError(f"to_spec: expected a Sequential, got {type(net).__name__}")
    leaves = []
    for path, layer in net.named_modules():
        if isinstance(layer, Container) and not isinstance(layer, Sequential):
            raise ConfigError(f"to_spec: {path!r} is a {type(layer).__name__}; only chains of layers "
                              "have a spelling in the notation")
        if not isinstance(layer, Container):
            leaves.append(layer)
    shape = input_shape if input_shape is not None else net.input_shape
    shape = _check_shape_arg(tuple(shape)) if shape is not None else None
    tokens, here = [], shape
    for i, layer in enumerate(leaves):
        tok = layer.to_spec(leaves[i + 1] if i + 1 < len(leaves) else None, here)
        if tok is not None:
            tokens.append(tok)
        here = tuple(layer.output_shape(here)) if here is not None else None
    head = []
    if shape is not None:
        head = [f"INPUT[{shape[1]}x{shape[2]}x{shape[0]}]" if len(shape) == 3 else f"INPUT[{shape[0]}]"]
    tail = [net.loss.upper()] if net.loss else []
    return " -> ".join(head + _fold(tokens) + tail)
