"""Optimizers over dicts ``name -> array``, with PyTorch's update rules step for step.

``opt.step(params, grads)`` updates every array of ``params`` in place (``p -= ...``; the
arrays the layers hold stay the same objects) from the array of the same name in ``grads``.
A name missing from ``grads`` is skipped, like a PyTorch parameter whose ``.grad`` is None:
the param and its optimizer state stay untouched. Per-name state (momentum buffers, moment
estimates, step counts) lives in ``opt.state[name]`` under PyTorch's state names.

Parameter groups select params by name: a pattern ``"features"`` (or ``"features."``) matches
the name ``features`` itself and every name below it (``features.0.weight``) but not
``features2.weight``. When several groups match, the longest pattern wins; ``frozen``
patterns win over every group and those params are never updated (no state either).

Learning rates: ``opt.lr`` is the base rate (a schedule sets it). A group's rate is
``lr_scale * opt.lr``; a group given as ``{"lr": 1e-4}`` stores ``lr_scale = 1e-4 / lr``
(the ratio at construction), so schedules keep each group's ratio to the base rate. Other
hyperparameters a group names override the optimizer's for that group.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops.backend import array_module

_STATE_DICT_KEYS = ("type", "lr", "defaults", "param_groups", "frozen", "state")


# --- small helpers ---------------------------------------------------------------------------
def _real(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value}")
    return value


def _check_lr(value, what: str = "lr") -> float:
    value = _real(value, what)
    if value < 0:
        raise ConfigError(f"{what} must be >= 0, got {value}")
    return value


def _patterns(value, what: str) -> list[str]:
    """A list of name patterns, normalised without a trailing dot."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what} must be a list of parameter names or prefixes, got {value!r}")
    out = []
    for p in value:
        if not isinstance(p, str) or not p.strip("."):
            raise ConfigError(f"{what}: every entry must be a non-empty name or prefix, got {p!r}")
        out.append(p.rstrip("."))
    return out


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def _lerp_(a, b, weight: float) -> None:
    """``a += weight * (b - a)`` in place, with torch.lerp's two-branch formula."""
    if abs(weight) < 0.5:
        a += weight * (b - a)
    else:
        a[...] = b - (b - a) * (1.0 - weight)


# --- the base class --------------------------------------------------------------------------
class Optimizer:
    """Base class. Subclasses set ``_HYPER`` (defaults besides lr), ``_STATE_KEYS``,
    ``_MOMENTUM`` ("momentum", "beta1" or None) and implement ``_validate`` and ``_update``."""

    _HYPER: dict = {}
    _STATE_KEYS: frozenset = frozenset()
    _MOMENTUM: str | None = None

    def __init__(self, lr, *, param_groups=None, frozen=None, **hyper):
        name = type(self).__name__
        self._lr = _check_lr(lr)
        self.defaults = {k: self._coerce(k, v, name) for k, v in hyper.items()}
        self._validate(dict(self.defaults, lr=self._lr), name)
        self._groups = self._parse_groups(param_groups, self._lr, self.defaults)
        self._frozen = _patterns([] if frozen is None else frozen, "frozen")
        self.state: dict[str, dict] = {}
        self._group_cache: dict[str, int | None] = {}
        self._patterns_checked = False

    # --- configuration ----------------------------------------------------------------------
    def _coerce(self, key: str, value, where: str):
        if key not in self._HYPER:
            known = ", ".join(["lr", *self._HYPER])
            raise ConfigError(f"{where}: unknown hyperparameter {key!r}; {type(self).__name__} takes {known}")
        default = self._HYPER[key]
        if isinstance(default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"{where}: {key} must be True or False, got {value!r}")
            return bool(value)
        if isinstance(default, tuple):
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ConfigError(f"{where}: {key} must be a pair of numbers, got {value!r}")
            return tuple(_real(v, f"{where}: {key}") for v in value)
        return _real(value, f"{where}: {key}")

    def _validate(self, h: dict, where: str) -> None:
        """Raise ConfigError unless the resolved hyperparameters ``h`` (with lr) make sense."""

    def _parse_groups(self, groups, lr: float, defaults: dict) -> list[dict]:
        if groups is None:
            return []
        if not isinstance(groups, (list, tuple)):
            raise ConfigError(f"param_groups must be a list of dicts, got {groups!r}")
        out, seen = [], {}
        for i, g in enumerate(groups):
            where = f"{type(self).__name__} param_groups[{i}]"
            if not isinstance(g, dict) or "params" not in g:
                raise ConfigError(f"{where} must be a dict with a 'params' list, got {g!r}")
            if "lr" in g and "lr_scale" in g:
                raise ConfigError(f"{where}: give 'lr' or 'lr_scale', not both")
            pats = _patterns(g["params"], f"{where}['params']")
            for p in pats:
                if p in seen:
                    raise ConfigError(f"{where}: pattern {p!r} is already in param_groups[{seen[p]}]")
                seen[p] = i
            if "lr" in g:
                glr = _check_lr(g["lr"], f"{where}: lr")
                if lr == 0 and glr != 0:
                    raise ConfigError(f"{where}: lr={glr} cannot be kept as a ratio to a base lr of 0; "
                                      "give 'lr_scale' or a nonzero base lr (or use frozen=[...])")
                scale = 1.0 if lr == 0 else glr / lr
            else:
                scale = _check_lr(g.get("lr_scale", 1.0), f"{where}: lr_scale")
            over = {k: self._coerce(k, v, where) for k, v in g.items() if k not in ("params", "lr", "lr_scale")}
            self._validate(dict(defaults, **over, lr=lr * scale), where)
            out.append({"params": pats, "lr_scale": scale, **over})
        return out

    @property
    def lr(self) -> float:
        """The base learning rate; group ``i`` uses ``param_groups[i]["lr_scale"] * lr``."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _check_lr(value)

    @property
    def momentum(self) -> float | None:
        """SGD/RMSprop ``momentum``, Adam/AdamW ``betas[0]``; None where there is none (Adagrad)."""
        if self._MOMENTUM == "momentum":
            return self.defaults["momentum"]
        if self._MOMENTUM == "beta1":
            return self.defaults["betas"][0]
        return None

    @momentum.setter
    def momentum(self, value) -> None:
        """Set the momentum (or beta1) of the defaults and of every group, like OneCycleLR does."""
        if self._MOMENTUM is None:
            raise ConfigError(f"{type(self).__name__} has no momentum or beta1 to set")
        value = _real(value, "momentum")
        new_defaults = dict(self.defaults)
        new_groups = [dict(g) for g in self._groups]
        if self._MOMENTUM == "momentum":
            new_defaults["momentum"] = value
            for g in new_groups:
                if "momentum" in g:
                    g["momentum"] = value
        else:
            new_defaults["betas"] = (value, new_defaults["betas"][1])
            for g in new_groups:
                if "betas" in g:
                    g["betas"] = (value, g["betas"][1])
        name = type(self).__name__
        self._validate(dict(new_defaults, lr=self._lr), name)
        for i, g in enumerate(new_groups):
            over = {k: v for k, v in g.items() if k not in ("params", "lr_scale")}
            self._validate(dict(new_defaults, **over, lr=self._lr * g["lr_scale"]), f"{name} param_groups[{i}]")
        self.defaults, self._groups = new_defaults, new_groups

    @property
    def param_groups(self) -> list[dict]:
        """The groups as dicts: params (patterns), lr (current), lr_scale and the overrides."""
        return [dict(g, params=list(g["params"]), lr=self._lr * g["lr_scale"]) for g in self._groups]

    @property
    def frozen(self) -> list[str]:
        return list(self._frozen)

    def _group_index(self, name: str) -> int | None:
        """None for a frozen name, -1 for the defaults, else the index of the best group."""
        if name in self._group_cache:
            return self._group_cache[name]
        if any(_matches(name, p) for p in self._frozen):
            idx = None
        else:
            idx, best = -1, -1
            for i, g in enumerate(self._groups):
                for p in g["params"]:
                    if _matches(name, p) and len(p) > best:
                        idx, best = i, len(p)
        self._group_cache[name] = idx
        return idx

    def hyper_for(self, name: str) -> dict | None:
        """The hyperparameters (with lr) that ``step`` uses for ``name``; None when frozen."""
        idx = self._group_index(name)
        if idx is None:
            return None
        if idx < 0:
            return dict(self.defaults, lr=self._lr)
        g = self._groups[idx]
        over = {k: v for k, v in g.items() if k not in ("params", "lr_scale")}
        return dict(self.defaults, **over, lr=self._lr * g["lr_scale"])

    def _check_patterns(self, names) -> None:
        names = list(names)
        example = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
        for where, pats in [("frozen", self._frozen)] + [
                (f"param_groups[{i}]", g["params"]) for i, g in enumerate(self._groups)]:
            for p in pats:
                if not any(_matches(n, p) for n in names):
                    raise ConfigError(f"{type(self).__name__}: {where} pattern {p!r} matches no parameter "
                                      f"(names are like {example})")

    # --- the update ---------------------------------------------------------------------------
    def step(self, params: dict, grads: dict) -> None:
        """Update every ``params[name]`` in place from ``grads[name]`` (names without a grad are skipped)."""
        if not self._patterns_checked:
            self._check_patterns(params)
            self._patterns_checked = True
        extra = [n for n in grads if n not in params]
        if extra:
            raise ConfigError(f"{type(self).__name__}.step: grads for unknown params {extra[:5]}")
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            h = self.hyper_for(name)
            if h is None:
                continue
            if tuple(g.shape) != tuple(p.shape):
                raise ShapeError(f"{type(self).__name__}.step: grad {name!r} has shape {tuple(g.shape)}, "
                                 f"param has {tuple(p.shape)}")
            self._update(name, p, g, self.state.setdefault(name, {}), h)

    def _update(self, name: str, p, g, state: dict, h: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _buffer(name: str, state: dict, key: str, p, fill: float = 0.0):
        """The state array ``key`` of ``name``, created full of ``fill`` like ``p``."""
        buf = state.get(key)
        if buf is None:
            xp = array_module(p)
            buf = state[key] = xp.full(p.shape, fill, dtype=p.dtype)
        elif tuple(buf.shape) != tuple(p.shape):
            raise ShapeError(f"optimizer state {name}.{key} has shape {tuple(buf.shape)}, "
                             f"the param has {tuple(p.shape)}")
        return buf

    # --- state ----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor arguments (JSON-friendly); ``from_config`` rebuilds the optimizer."""
        return {"lr": self._lr, **_jsonable(self.defaults),
                "param_groups": [_jsonable(g) for g in self._groups], "frozen": list(self._frozen)}

    @classmethod
    def from_config(cls, cfg: dict):
        return cls(**cfg)

    def state_dict(self) -> dict:
        """Hyperparameters and per-name state; arrays are copies. ``split_state_dict`` separates
        the arrays (for safetensors) from the rest (JSON)."""
        state = {}
        for name, st in self.state.items():
            state[name] = {k: (v.copy() if hasattr(v, "shape") and not isinstance(v, np.generic) else v)
                           for k, v in st.items()}
        return {"type": type(self).__name__, "lr": self._lr, "defaults": _jsonable(self.defaults),
                "param_groups": [_jsonable(g) for g in self._groups], "frozen": list(self._frozen),
                "state": state}

    def load_state_dict(self, sd: dict) -> None:
        """Restore hyperparameters, groups and state from ``state_dict()`` (like PyTorch, the saved
        hyperparameters replace the constructor's). Unknown or missing keys raise ConfigError."""
        name = type(self).__name__
        if not isinstance(sd, dict):
            raise ConfigError(f"{name}.load_state_dict expects a dict, got {type(sd).__name__}")
        missing = [k for k in _STATE_DICT_KEYS if k not in sd]
        unknown = [k for k in sd if k not in _STATE_DICT_KEYS]
        if missing or unknown:
            raise ConfigError(f"{name}.load_state_dict: missing keys {missing}, unknown keys {unknown}")
        if sd["type"] != name:
            raise ConfigError(f"cannot load a {sd['type']} state into {name}")
        lr = _check_lr(sd["lr"])
        d = sd["defaults"]
        if not isinstance(d, dict) or set(d) != set(self._HYPER):
            raise ConfigError(f"{name}.load_state_dict: defaults must have exactly the keys "
                              f"{sorted(self._HYPER)}, got {sorted(d) if isinstance(d, dict) else d!r}")
        defaults = {k: self._coerce(k, v, name) for k, v in d.items()}
        self._validate(dict(defaults, lr=lr), name)
        for g in sd["param_groups"] if isinstance(sd["param_groups"], (list, tuple)) else []:
            if isinstance(g, dict) and "lr" in g:
                raise ConfigError(f"{name}.load_state_dict: saved groups carry 'lr_scale', not 'lr'")
        groups = self._parse_groups(sd["param_groups"], lr, defaults)
        frozen = _patterns(sd["frozen"], "frozen")
        if not isinstance(sd["state"], dict):
            raise ConfigError(f"{name}.load_state_dict: state must be a dict name -> dict")
        state = {}
        for pname, st in sd["state"].items():
            if not isinstance(st, dict):
                raise ConfigError(f"{name}.load_state_dict: state[{pname!r}] must be a dict, got {st!r}")
            bad = sorted(set(st) - self._STATE_KEYS)
            if bad:
                raise ConfigError(f"{name}.load_state_dict: unknown state keys {bad} for {pname!r}; "
                                  f"{name} keeps {sorted(self._STATE_KEYS)}")
            entry = {}
            for k, v in st.items():
                if k == "step":
                    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, numbers.Real)) or v < 0 \
                            or int(v) != v:
                        raise ConfigError(f"{name}.load_state_dict: {pname}.step must be an integer >= 0, got {v!r}")
                    entry[k] = int(v)
                else:
                    if not hasattr(v, "shape") or isinstance(v, np.generic):
                        raise ConfigError(f"{name}.load_state_dict: {pname}.{k} must be an array, got {v!r}")
                    entry[k] = array_module(v).array(v, copy=True)
            state[pname] = entry
        self._lr, self.defaults, self._groups, self._frozen, self.state = lr, defaults, groups, frozen, state
        self._group_cache = {}
        self._patterns_checked = False

    def __repr__(self) -> str:
        parts = [f"lr={self._lr:g}"]
        for k, v in self.defaults.items():
            if v != self._HYPER[k]:
                parts.append(f"{k}={v!r}")
        if self._groups:
            parts.append(f"param_groups={len(self._groups)}")
        if self._frozen:
            parts.append(f"frozen={self._frozen!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# --- the optimizers -------------------------------------------------------------------------
def _nonneg(h: dict, where: str, *keys) -> None:
    for k in keys:
        if h[k] < 0:
            raise ConfigError(f"{where}: {k} must be >= 0, got {h[k]}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's form.

    g = grad + weight_decay * p;  b = g at the first step, else b = momentum * b + (1 - dampening) * g;
    d = g + momentum * b (nesterov) or b;  p -= lr * d.   (Without momentum, d = g.)
    """

    _HYPER = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
    _STATE_KEYS = frozenset({"momentum_buffer"})
    _MOMENTUM = "momentum"

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 param_groups=None, frozen=None):
        super().__init__(lr, param_groups=param_groups, frozen=frozen, momentum=momentum,
                         dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)

    def _validate(self, h, where):
        _nonneg(h, where, "momentum", "weight_decay")
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ConfigError(f"{where}: nesterov needs momentum > 0 and dampening = 0 "
                              f"(got momentum={h['momentum']}, dampening={h['dampening']})")

    def _update(self, name, p, g, state, h):
        lr, mom, wd = h["lr"], h["momentum"], h["weight_decay"]
        if wd != 0:
            g = g + wd * p
        if mom != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = array_module(p).array(g, dtype=p.dtype, copy=True)
            else:
                buf = self._buffer(name, state, "momentum_buffer", p)
                buf *= mom
                buf += (1.0 - h["dampening"]) * g
            g = g + mom * buf if h["nesterov"] else buf
        p -= lr * g


class Adagrad(Optimizer):
    """Adagrad, PyTorch's form: g = grad + weight_decay * p;  sum += g * g;
    p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)   (sum starts at initial_accumulator_value)."""

    _HYPER = {"lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10}
    _STATE_KEYS = frozenset({"step", "sum"})

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 param_groups=None, frozen=None):
        super().__init__(lr, param_groups=param_groups, frozen=frozen, lr_decay=lr_decay,
                         weight_decay=weight_decay, initial_accumulator_value=initial_accumulator_value, eps=eps)

    def _validate(self, h, where):
        _nonneg(h, where, "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def _update(self, name, p, g, state, h):
        xp = array_module(p)
        step = state["step"] = state.get("step", 0) + 1
        acc = self._buffer(name, state, "sum", p, h["initial_accumulator_value"])
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
        acc += g * g
        std = xp.sqrt(acc)
        std += h["eps"]
        p -= clr * (g / std)


class RMSprop(Optimizer):
    """RMSprop, PyTorch's form: g = grad + weight_decay * p;  v = alpha * v + (1 - alpha) * g^2;
    centered: m = lerp(m, g, 1 - alpha), a = sqrt(v - m^2) + eps; else a = sqrt(v) + eps;
    with momentum: b = momentum * b + g / a, p -= lr * b; else p -= lr * g / a."""

    _HYPER = {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False}
    _STATE_KEYS = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})
    _MOMENTUM = "momentum"

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 param_groups=None, frozen=None):
        super().__init__(lr, param_groups=param_groups, frozen=frozen, alpha=alpha, eps=eps,
                         weight_decay=weight_decay, momentum=momentum, centered=centered)

    def _validate(self, h, where):
        _nonneg(h, where, "alpha", "eps", "weight_decay", "momentum")

    def _update(self, name, p, g, state, h):
        xp = array_module(p)
        state["step"] = state.get("step", 0) + 1
        alpha, eps, mom = h["alpha"], h["eps"], h["momentum"]
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        sq = self._buffer(name, state, "square_avg", p)
        sq *= alpha
        sq += (1.0 - alpha) * g * g
        if h["centered"]:
            ga = self._buffer(name, state, "grad_avg", p)
            _lerp_(ga, g, 1.0 - alpha)
            avg = xp.sqrt(sq - ga * ga)
        else:
            avg = xp.sqrt(sq)
        avg += eps
        if mom > 0:
            buf = self._buffer(name, state, "momentum_buffer", p)
            buf *= mom
            buf += g / avg
            p -= h["lr"] * buf
        else:
            p -= h["lr"] * (g / avg)


class Adam(Optimizer):
    """Adam, PyTorch's form: g = grad + weight_decay * p (L2, coupled);  m = lerp(m, g, 1 - beta1);
    v = beta2 * v + (1 - beta2) * g^2;  (amsgrad: v_max = max(v_max, v), used for v)
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)."""

    _HYPER = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    _STATE_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
    _MOMENTUM = "beta1"
    _DECOUPLED = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 param_groups=None, frozen=None):
        super().__init__(lr, param_groups=param_groups, frozen=frozen, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad)

    def _validate(self, h, where):
        _nonneg(h, where, "eps", "weight_decay")
        for i, b in enumerate(h["betas"]):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{where}: betas[{i}] must be in [0, 1), got {b}")

    def _update(self, name, p, g, state, h):
        xp = array_module(p)
        step = state["step"] = state.get("step", 0) + 1
        lr, (b1, b2), wd = h["lr"], h["betas"], h["weight_decay"]
        if wd != 0:
            if self._DECOUPLED:
                p *= 1.0 - lr * wd
            else:
                g = g + wd * p
        m = self._buffer(name, state, "exp_avg", p)
        v = self._buffer(name, state, "exp_avg_sq", p)
        _lerp_(m, g, 1.0 - b1)
        v *= b2
        v += (1.0 - b2) * g * g
        step_size = lr / (1.0 - b1 ** step)
        bc2_sqrt = (1.0 - b2 ** step) ** 0.5
        if h["amsgrad"]:
            vmax = self._buffer(name, state, "max_exp_avg_sq", p)
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        denom = xp.sqrt(v) / bc2_sqrt
        denom += h["eps"]
        p -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's AdamW): p *= 1 - lr * weight_decay before the
    Adam step, and the decay never enters m or v."""

    _DECOUPLED = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 param_groups=None, frozen=None):
        super().__init__(lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         param_groups=param_groups, frozen=frozen)


# --- registry -------------------------------------------------------------------------------
OPTIMIZERS: dict[str, tuple[type, dict]] = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (Adagrad, {}),
    "rmsprop": (RMSprop, {}),
    "adam": (Adam, {}),
    "adamw": (AdamW, {}),
}


#: Per registered name: (state arrays the size of the parameters it keeps, temporaries the size of the
#: largest parameter one update makes). The notes: momentum, Adagrad and RMSProp keep one cache, Adam two.
#: The memory model and the summary read these.
MEMORY_FACTS: dict[str, tuple[int, int]] = {
    "sgd": (0, 1), "momentum": (1, 1), "nesterov": (1, 2), "adagrad": (1, 3), "rmsprop": (1, 3),
    "adam": (2, 3), "adamw": (2, 3),
}


def optimizer_slots(optimizer: str) -> int:
    """How many arrays the size of the parameters ``optimizer`` keeps (0 for plain SGD)."""
    return _memory_facts(optimizer)[0]


def update_temporaries(optimizer: str) -> int:
    """How many temporaries the size of the largest parameter one update of ``optimizer`` makes."""
    return _memory_facts(optimizer)[1]


def _memory_facts(optimizer: str) -> tuple[int, int]:
    key = str(optimizer).lower()
    if key not in MEMORY_FACTS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    return MEMORY_FACTS[key]


def list_optimizers() -> list[str]:
    return list(OPTIMIZERS)


def get_optimizer(name: str, **kwargs) -> Optimizer:
    """The optimizer registered as ``name`` ("sgd", "momentum", "nesterov", "adagrad", "rmsprop",
    "adam", "adamw"); keyword arguments override the preset (e.g. ``momentum=0.95``)."""
    try:
        cls, preset = OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
    try:
        return cls(**{**preset, **kwargs})
    except TypeError as e:
        raise ConfigError(f"optimizer {name!r}: {e}") from None


# --- checkpoint split -------------------------------------------------------------------------
def split_state_dict(sd: dict) -> tuple[dict, dict]:
    """Split an optimizer ``state_dict()`` into (arrays, meta): arrays maps
    ``"<param name>.<state key>"`` (e.g. ``features.0.weight.exp_avg``) to arrays, for safetensors;
    meta is the rest (hyperparameters, groups, step counts) as JSON-serialisable values."""
    arrays, meta_state = {}, {}
    for pname, st in sd["state"].items():
        meta_state[pname] = {}
        for k, v in st.items():
            if hasattr(v, "shape") and not isinstance(v, np.generic):
                arrays[f"{pname}.{k}"] = v
            else:
                meta_state[pname][k] = v
    meta = {k: v for k, v in sd.items() if k != "state"}
    meta["state"] = meta_state
    return arrays, meta


def join_state_dict(arrays: dict, meta: dict) -> dict:
    """Inverse of ``split_state_dict``: the state key is the part after the last dot."""
    state = {pname: dict(st) for pname, st in meta["state"].items()}
    for key, arr in arrays.items():
        pname, _, k = key.rpartition(".")
        if not pname:
            raise ConfigError(f"optimizer array key {key!r} is not '<param name>.<state key>'")
        state.setdefault(pname, {})[k] = arr
    return dict(meta, state=state)
