"""Learning-rate schedules with PyTorch's values step for step, as closed forms of the step count.

A schedule maps its counter ``last_epoch`` (0 after construction, +1 per ``step()``) to a rate
``lr``; what a step means (an iteration or an epoch) is up to the caller, as in PyTorch.
``base_lr`` is PyTorch's ``initial_lr``: given explicitly, or read from the optimizer's ``lr``
when the schedule is attached (``optimizer=`` or ``attach``). An attached schedule writes its rate
into ``optimizer.lr`` at attach time and after each ``step()``; groups keep their ``lr_scale``
ratio to it (PyTorch instead schedules each group's own initial lr; the two agree for the
multiplicative schedules and differ only where a schedule adds a constant such as ``eta_min``).

PyTorch computes most schedules recursively from the previous rate; the closed forms here agree
with them to rounding (the tests compare to 1e-12 relative).
"""

from __future__ import annotations

import inspect
import math
import numbers
from bisect import bisect_right

from ..errors import ConfigError, StateError
from .optimizers import _check_lr, _real

SCHEDULE_TYPES: dict[str, type] = {}
_SD_KEYS = ("type", "last_epoch", "base_lr", "config")


def _int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _factor(value, what: str, low_open: bool = False) -> float:
    value = _real(value, what)
    if value > 1.0 or value < 0 or (low_open and value == 0):
        raise ConfigError(f"{what} must be in {'(0' if low_open else '[0'}, 1], got {value}")
    return value


class LRSchedule:
    """Base class: subclasses implement ``lr_at(t)`` (and ``momentum_at(t)``) and ``get_config``."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        SCHEDULE_TYPES[cls.__name__] = cls

    def __init__(self, *, optimizer=None, base_lr=None):
        self.base_lr = None if base_lr is None else _check_lr(base_lr, "base_lr")
        self.last_epoch = 0
        self.optimizer = None
        if optimizer is not None:
            self.attach(optimizer)

    # --- the schedule -----------------------------------------------------------------------
    def lr_at(self, t: int) -> float:
        """The learning rate after ``t`` calls of ``step()``."""
        raise NotImplementedError

    def momentum_at(self, t: int) -> float | None:
        """The momentum (or Adam's beta1) to set after ``t`` steps; None leaves it alone."""
        return None

    def _base(self) -> float:
        if self.base_lr is None:
            raise StateError(f"{self!r} has no base lr: pass base_lr= or attach an optimizer")
        return self.base_lr

    @property
    def lr(self) -> float:
        """The current learning rate (PyTorch's ``get_last_lr()[0]``)."""
        return self.lr_at(self.last_epoch)

    def get_lr(self) -> float:
        return self.lr

    @property
    def momentum(self) -> float | None:
        return self.momentum_at(self.last_epoch)

    def step(self) -> float:
        """Advance one step, update the attached optimizer and return the new rate."""
        lr = self.lr_at(self.last_epoch + 1)   # raises before the counter moves
        self.last_epoch += 1
        self._apply()
        return lr

    # --- the optimizer ------------------------------------------------------------------------
    def attach(self, optimizer):
        """Drive ``optimizer.lr`` (and momentum where the schedule cycles it); takes base_lr from it
        unless given. Sets the rate for the current step at once, like PyTorch's constructor."""
        for attr in ("lr", "momentum"):
            if not hasattr(optimizer, attr):
                raise ConfigError(f"{self!r}: {type(optimizer).__name__} has no '{attr}' attribute")
        self._check_optimizer(optimizer)
        if self.base_lr is None:
            self.base_lr = _check_lr(optimizer.lr, "optimizer lr")
        self.optimizer = optimizer
        self._apply()
        return self

    def _check_optimizer(self, optimizer) -> None:
        pass

    def _apply(self) -> None:
        if self.optimizer is None:
            return
        # PyTorch can extrapolate below 0 at OneCycleLR's very last step (linear annealing); an
        # optimizer's lr cannot be negative, so it receives 0 there.
        self.optimizer.lr = max(self.lr_at(self.last_epoch), 0.0)
        m = self.momentum_at(self.last_epoch)
        if m is not None:
            self.optimizer.momentum = m

    # --- config and state -------------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor arguments besides optimizer and base_lr, as JSON-friendly values."""
        return {}

    @classmethod
    def _from_config(cls, cfg: dict):
        if not isinstance(cfg, dict):
            raise ConfigError(f"{cls.__name__}: config must be a dict, got {cfg!r}")
        try:
            return cls(**cfg)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: bad config {cfg!r}: {e}") from None

    def state_dict(self) -> dict:
        """JSON-friendly: {"type", "last_epoch", "base_lr", "config"}."""
        return {"type": type(self).__name__, "last_epoch": self.last_epoch, "base_lr": self.base_lr,
                "config": self.get_config()}

    @staticmethod
    def _check_state_dict(sd) -> None:
        if not isinstance(sd, dict):
            raise ConfigError(f"a schedule state must be a dict, got {type(sd).__name__}")
        missing = [k for k in _SD_KEYS if k not in sd]
        unknown = [k for k in sd if k not in _SD_KEYS]
        if missing or unknown:
            raise ConfigError(f"schedule state: missing keys {missing}, unknown keys {unknown}")

    @classmethod
    def from_state_dict(cls, sd: dict) -> "LRSchedule":
        """A new, unattached schedule from ``state_dict()`` (any registered type)."""
        LRSchedule._check_state_dict(sd)
        try:
            sub = SCHEDULE_TYPES[sd["type"]]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown schedule type {sd['type']!r}; known: {', '.join(SCHEDULE_TYPES)}") from None
        sched = sub._from_config(sd["config"])
        sched.base_lr = None if sd["base_lr"] is None else _check_lr(sd["base_lr"], "base_lr")
        sched.last_epoch = _int(sd["last_epoch"], "last_epoch", 0)
        return sched

    def load_state_dict(self, sd: dict) -> None:
        """Restore counter, base lr and configuration (like PyTorch); an attached optimizer gets
        the restored rate. The saved type must be this schedule's type."""
        self._check_state_dict(sd)
        if sd["type"] != type(self).__name__:
            raise ConfigError(f"cannot load a {sd['type']} state into {type(self).__name__}")
        fresh = self.from_state_dict(sd)
        opt, base = self.optimizer, self.base_lr
        self.__dict__.update(fresh.__dict__)
        self.optimizer = opt
        if self.base_lr is None:
            self.base_lr = base
        if opt is not None:
            self._check_optimizer(opt)
            self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class ConstantLR(LRSchedule):
    """lr = base_lr * factor for t < total_iters, then base_lr (PyTorch's ConstantLR).
    ``ConstantLR(factor=1.0, total_iters=0)`` keeps the rate: the registry's "constant"."""

    def __init__(self, factor=1.0 / 3, total_iters=5, *, optimizer=None, base_lr=None):
        self.factor = _factor(factor, "ConstantLR factor")
        self.total_iters = _int(total_iters, "ConstantLR total_iters", 0)
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        return self._base() * (self.factor if t < self.total_iters else 1.0)

    def get_config(self):
        return {"factor": self.factor, "total_iters": self.total_iters}


class StepLR(LRSchedule):
    """lr = base_lr * gamma ** (t // step_size)."""

    def __init__(self, step_size, gamma=0.1, *, optimizer=None, base_lr=None):
        self.step_size = _int(step_size, "StepLR step_size", 1)
        self.gamma = _check_lr(gamma, "StepLR gamma")
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        return self._base() * self.gamma ** (t // self.step_size)

    def get_config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepLR(LRSchedule):
    """lr = base_lr * gamma ** (number of milestones <= t); a repeated milestone counts twice."""

    def __init__(self, milestones, gamma=0.1, *, optimizer=None, base_lr=None):
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise ConfigError(f"MultiStepLR milestones must be a list of step counts, got {milestones!r}")
        self.milestones = sorted(_int(m, "MultiStepLR milestone", 0) for m in milestones)
        self.gamma = _check_lr(gamma, "MultiStepLR gamma")
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        return self._base() * self.gamma ** bisect_right(self.milestones, t)

    def get_config(self):
        return {"milestones": list(self.milestones), "gamma": self.gamma}


class ExponentialLR(LRSchedule):
    """lr = base_lr * gamma ** t."""

    def __init__(self, gamma, *, optimizer=None, base_lr=None):
        self.gamma = _check_lr(gamma, "ExponentialLR gamma")
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        return self._base() * self.gamma ** t

    def get_config(self):
        return {"gamma": self.gamma}


class LinearLR(LRSchedule):
    """lr = base_lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters)."""

    def __init__(self, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, *, optimizer=None, base_lr=None):
        self.start_factor = _factor(start_factor, "LinearLR start_factor", low_open=True)
        self.end_factor = _factor(end_factor, "LinearLR end_factor")
        self.total_iters = _int(total_iters, "LinearLR total_iters", 1)
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        frac = min(t, self.total_iters) / self.total_iters
        return self._base() * (self.start_factor + (self.end_factor - self.start_factor) * frac)

    def get_config(self):
        return {"start_factor": self.start_factor, "end_factor": self.end_factor, "total_iters": self.total_iters}


class CosineAnnealingLR(LRSchedule):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2 (SGDR without restarts;
    past T_max it rises again, as in PyTorch)."""

    def __init__(self, T_max, eta_min=0.0, *, optimizer=None, base_lr=None):  # noqa: N803 - PyTorch's name
        self.T_max = _int(T_max, "CosineAnnealingLR T_max", 1)
        self.eta_min = _check_lr(eta_min, "CosineAnnealingLR eta_min")
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        return self.eta_min + (self._base() - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2

    def get_config(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class OneCycleLR(LRSchedule):
    """The 1cycle policy (Smith & Topin), PyTorch's OneCycleLR including its momentum cycling.

    lr goes from max_lr / div_factor up to max_lr over the first pct_start of total_steps, then
    down to max_lr / div_factor / final_div_factor (three_phase: back to the initial rate first);
    momentum (SGD/RMSprop ``momentum``, Adam ``betas[0]``) goes the opposite way between
    max_momentum and base_momentum when cycle_momentum is on. ``max_lr`` defaults to the base lr
    (the optimizer's lr). Stepping past total_steps raises StateError.
    """

    def __init__(self, max_lr=None, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, *, optimizer=None, base_lr=None):
        self.max_lr = None if max_lr is None else _check_lr(max_lr, "OneCycleLR max_lr")
        if total_steps is not None:
            self.total_steps = _int(total_steps, "OneCycleLR total_steps", 1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_int(epochs, "OneCycleLR epochs", 1)
                                * _int(steps_per_epoch, "OneCycleLR steps_per_epoch", 1))
        else:
            raise ConfigError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
        self.pct_start = _factor(pct_start, "OneCycleLR pct_start")
        if anneal_strategy not in ("cos", "linear"):
            raise ConfigError(f"OneCycleLR anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        if not isinstance(cycle_momentum, bool) or not isinstance(three_phase, bool):
            raise ConfigError("OneCycleLR cycle_momentum and three_phase must be True or False")
        self.cycle_momentum, self.three_phase = cycle_momentum, three_phase
        self.base_momentum = _check_lr(base_momentum, "OneCycleLR base_momentum")
        self.max_momentum = _check_lr(max_momentum, "OneCycleLR max_momentum")
        self.div_factor = _real(div_factor, "OneCycleLR div_factor")
        self.final_div_factor = _real(final_div_factor, "OneCycleLR final_div_factor")
        if self.div_factor <= 0 or self.final_div_factor <= 0:
            raise ConfigError("OneCycleLR div_factor and final_div_factor must be > 0")
        n, p = self.total_steps, self.pct_start
        # phases: (end_step, start lr, end lr, start momentum, end momentum), PyTorch's end steps
        if three_phase:
            self._phases = [(p * n - 1, "initial", "max", "max_m", "base_m"),
                            (2 * p * n - 2, "max", "initial", "base_m", "max_m"),
                            (n - 1, "initial", "min", "max_m", "max_m")]
        else:
            self._phases = [(p * n - 1, "initial", "max", "max_m", "base_m"),
                            (n - 1, "max", "min", "base_m", "max_m")]
        start = 0.0
        for end, *_ in self._phases:
            if end == start:
                raise ConfigError(f"OneCycleLR: a phase of zero length (total_steps={n}, pct_start={p}); "
                                  "change pct_start or total_steps")
            start = end
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def _check_optimizer(self, optimizer):
        if self.cycle_momentum and getattr(optimizer, "momentum", None) is None:
            raise ConfigError(f"OneCycleLR with cycle_momentum=True needs an optimizer with momentum or "
                              f"betas; {type(optimizer).__name__} has neither (pass cycle_momentum=False)")

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase(self, t):
        if t > self.total_steps:
            raise StateError(f"OneCycleLR stepped {t} times; total_steps is {self.total_steps}")
        start = 0.0
        for i, (end, *names) in enumerate(self._phases):
            if t <= end or i == len(self._phases) - 1:
                return (t - start) / (end - start), names
            start = end
        raise AssertionError("unreachable")

    def lr_at(self, t):
        peak = self.max_lr if self.max_lr is not None else self._base()
        initial = peak / self.div_factor
        values = {"initial": initial, "max": peak, "min": initial / self.final_div_factor}
        pct, (a, b, _, _) = self._phase(t)
        return self._anneal(values[a], values[b], pct)

    def momentum_at(self, t):
        if not self.cycle_momentum:
            return None
        values = {"base_m": self.base_momentum, "max_m": self.max_momentum}
        pct, (_, _, a, b) = self._phase(t)
        return self._anneal(values[a], values[b], pct)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "anneal_strategy": self.anneal_strategy, "cycle_momentum": self.cycle_momentum,
                "base_momentum": self.base_momentum, "max_momentum": self.max_momentum,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "three_phase": self.three_phase}


class SequentialLR(LRSchedule):
    """Schedule i runs from milestones[i-1] (its own step 0) to milestones[i], like PyTorch's
    SequentialLR. The children must be unattached; the sequence's base lr (given, or from its
    optimizer) replaces theirs, and it forwards the momentum a child sets."""

    def __init__(self, schedules, milestones, *, optimizer=None, base_lr=None):
        if not isinstance(schedules, (list, tuple)) or not schedules:
            raise ConfigError(f"SequentialLR needs a non-empty list of schedules, got {schedules!r}")
        for i, s in enumerate(schedules):
            if not isinstance(s, LRSchedule):
                raise ConfigError(f"SequentialLR schedules[{i}] is not a schedule: {s!r}")
            if s.optimizer is not None:
                raise ConfigError(f"SequentialLR schedules[{i}] is attached to an optimizer; "
                                  "build the children without optimizer= and attach the sequence")
        if not isinstance(milestones, (list, tuple)) or len(milestones) != len(schedules) - 1:
            raise ConfigError(f"SequentialLR needs {len(schedules) - 1} milestones for {len(schedules)} "
                              f"schedules, got {milestones!r}")
        ms = [_int(m, "SequentialLR milestone", 0) for m in milestones]
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ConfigError(f"SequentialLR milestones must increase, got {ms}")
        self.schedules, self.milestones = list(schedules), ms
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def _child(self, t):
        i = bisect_right(self.milestones, t)
        child = self.schedules[i]
        if self.base_lr is not None:
            child.base_lr = self.base_lr
        return child, t - (self.milestones[i - 1] if i > 0 else 0)

    def lr_at(self, t):
        child, tc = self._child(t)
        return child.lr_at(tc)

    def momentum_at(self, t):
        child, tc = self._child(t)
        return child.momentum_at(tc)

    def _check_optimizer(self, optimizer):
        for s in self.schedules:
            s._check_optimizer(optimizer)

    def get_config(self):
        return {"schedules": [s.state_dict() for s in self.schedules], "milestones": list(self.milestones)}

    def __repr__(self):
        return f"SequentialLR([{', '.join(repr(s) for s in self.schedules)}], milestones={self.milestones})"

    @classmethod
    def _from_config(cls, cfg):
        if not isinstance(cfg, dict) or set(cfg) != {"schedules", "milestones"}:
            raise ConfigError(f"SequentialLR config must have 'schedules' and 'milestones', got {cfg!r}")
        children = [LRSchedule.from_state_dict(s) for s in cfg["schedules"]]
        return cls(children, cfg["milestones"])


class WarmupLinearLR(LRSchedule):
    """Linear warmup from base_lr * start_factor to base_lr over warmup_steps, then linear decay to
    base_lr * end_factor at total_steps (held after). Equals PyTorch's
    ``SequentialLR([LinearLR(start_factor, 1, warmup_steps), LinearLR(1, end_factor,
    total_steps - warmup_steps)], [warmup_steps])``. The CIFAR recipe (0.015 -> 0.15 over 2 epochs,
    then to 0 at the end): ``WarmupLinearLR(E * S, 2 * S, start_factor=0.1)`` on an optimizer with
    lr=0.15, stepped once per iteration (S iterations per epoch, E epochs)."""

    def __init__(self, total_steps, warmup_steps, start_factor=0.1, end_factor=0.0, *, optimizer=None,
                 base_lr=None):
        self.total_steps = _int(total_steps, "WarmupLinearLR total_steps", 1)
        self.warmup_steps = _int(warmup_steps, "WarmupLinearLR warmup_steps", 0)
        if self.warmup_steps >= self.total_steps:
            raise ConfigError(f"WarmupLinearLR warmup_steps ({self.warmup_steps}) must be < total_steps "
                              f"({self.total_steps})")
        self.start_factor = _factor(start_factor, "WarmupLinearLR start_factor")
        self.end_factor = _factor(end_factor, "WarmupLinearLR end_factor")
        super().__init__(optimizer=optimizer, base_lr=base_lr)

    def lr_at(self, t):
        w, n = self.warmup_steps, self.total_steps
        if t < w:
            return self._base() * (self.start_factor + (1.0 - self.start_factor) * t / w)
        return self._base() * (1.0 + (self.end_factor - 1.0) * min(t - w, n - w) / (n - w))

    def get_config(self):
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "start_factor": self.start_factor, "end_factor": self.end_factor}


# --- registry -------------------------------------------------------------------------------
# name -> (class, preset, the argument that ``total_steps`` fills)
SCHEDULES: dict[str, tuple[type, dict, str | None]] = {
    "constant": (ConstantLR, {"factor": 1.0, "total_iters": 0}, None),
    "step": (StepLR, {}, None),
    "multistep": (MultiStepLR, {}, None),
    "exponential": (ExponentialLR, {}, None),
    "linear": (LinearLR, {}, "total_iters"),
    "cosine": (CosineAnnealingLR, {}, "T_max"),
    "onecycle": (OneCycleLR, {}, "total_steps"),
    "warmup_linear": (WarmupLinearLR, {}, "total_steps"),
}


def list_schedules() -> list[str]:
    return list(SCHEDULES)


def get_schedule(name: str, *, optimizer=None, base_lr=None, total_steps=None, **kwargs) -> LRSchedule:
    """The schedule registered as ``name`` ("constant", "step", "multistep", "exponential", "linear",
    "cosine", "onecycle", "warmup_linear"). ``total_steps`` fills the length argument where the
    schedule has one (T_max, total_iters, total_steps) unless given explicitly."""
    try:
        cls, preset, length_arg = SCHEDULES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}") from None
    args = {**preset, **kwargs}
    if length_arg is not None and total_steps is not None:
        args.setdefault(length_arg, total_steps)
    params = inspect.signature(cls).parameters
    unknown = [k for k in args if k not in params or k in ("optimizer", "base_lr")]
    if unknown:
        raise ConfigError(f"schedule {name!r} does not take {unknown}; it takes "
                          f"{[k for k in params if k not in ('optimizer', 'base_lr')]}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in args]
    if missing:
        raise ConfigError(f"schedule {name!r} needs {missing}")
    return cls(**args, optimizer=optimizer, base_lr=base_lr)
