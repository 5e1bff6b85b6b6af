"""Small helpers every part of convnp shares: the RNG rule, (h, w) pairs, argument checks,
state-mismatch messages. Nothing here knows about layers or nets."""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError


def make_rng(rng) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise ConfigError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def pair(value, name: str = "value", minimum: int = 1) -> tuple[int, int]:
    """Normalise an int or a (h, w) pair to a tuple of two ints >= ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise ConfigError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return out


# --- argument checks: each returns the clean value or raises a ConfigError naming owner and argument ---
def check_int(value, name: str, owner: str, minimum: int | None = 1) -> int:
    """An int (bools refused) >= ``minimum`` (None: any int)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{owner}: {name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(value, name: str, owner: str, minimum: float | None = None, strict: bool = False,
               maximum: float | None = None) -> float:
    """A finite real number (bools refused) within the bounds (``strict``: minimum excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be a finite real number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"{owner}: {name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{owner}: {name} must be <= {maximum}, got {value!r}")
    return value


def check_prob(value, name: str, owner: str, upper_open: bool = False) -> float:
    """A probability in [0, 1] ([0, 1) with ``upper_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and 0.0 <= float(value) and (float(value) < 1.0 if upper_open else float(value) <= 1.0)
    if not ok:
        raise ConfigError(f"{owner}: {name} must be a probability in [0, 1{')' if upper_open else ']'}, "
                          f"got {value!r}")
    return float(value)


def check_bool(value, name: str, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


# --- loading state ---------------------------------------------------------------------------------
def listed(keys: list, limit: int = 12) -> str:
    """``'a', 'b', ... and 3 more``: a key list short enough for an error message."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def state_mismatch(expected: dict, state: dict) -> tuple[list, list, list]:
    """(missing, unexpected, wrong-shape) keys of ``state`` against ``expected`` (name -> array)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(np.shape(state[k])) != tuple(np.shape(expected[k]))]
    return missing, unexpected, wrong


def mismatch_problems(expected: dict, state: dict, strict: bool = True, limit: int = 12, source: str = "the state"):
    """(problems, missing, unexpected, wrong): one sentence per kind of mismatch, every key named
    (up to ``limit`` of each kind); ``strict=False`` ignores missing and unexpected keys; ``source``
    names where ``state`` came from ("the file")."""
    missing, unexpected, wrong = state_mismatch(expected, state)
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): {listed(missing, limit)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected, limit)}")
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape: " + ", ".join(
            f"{k!r} is {tuple(np.shape(state[k]))} in {source}, {tuple(np.shape(expected[k]))} in the net"
            for k in wrong[:limit]) + (f", ... and {len(wrong) - limit} more" if len(wrong) > limit else ""))
    return problems, missing, unexpected, wrong


def convnp_version() -> str:
    """The installed distribution's version ("unknown" when run from a bare checkout)."""
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("convnp")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"
