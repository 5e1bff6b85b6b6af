"""The notes' sanity checks before a long training run.

1. The loss at initialisation is about ln(num_classes) for softmax (every class equally likely).
2. A tiny subset (e.g. 50 examples) can be overfitted to 100% training accuracy.
3. The analytic gradient of the whole net matches a numerical one (float64, relative error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..layers.base import layer_from_config, layer_to_config
from ..losses import SoftmaxCrossEntropy


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {self.detail}"


def clone(net, dtype=None):
    """A deep copy of ``net`` (config + state), optionally cast to ``dtype``."""
    copy = layer_from_config(layer_to_config(net))
    copy.load_state_dict({k: np.array(v) for k, v in net.state_dict().items()})
    return copy.to(dtype) if dtype is not None else copy


def initial_loss_check(net, x, y, num_classes: int, tolerance: float = 0.5) -> CheckResult:
    """Softmax loss at init should be near ln(C); He-initialised nets give scores of order 1."""
    loss, _ = SoftmaxCrossEntropy()(net.forward(x, train=False), y)
    expected = math.log(num_classes)
    ok = abs(loss - expected) < tolerance * expected
    return CheckResult("loss at initialisation", ok, f"{loss:.4f} vs ln({num_classes}) = {expected:.4f}")


def overfit_check(net, x, y, steps: int = 300, lr: float = 1e-3) -> CheckResult:
    """Train a copy on (x, y) alone with Adam and no regularisation until it fits every example."""
    from ..optim import Adam

    model = clone(net)
    params = model.named_parameters()
    opt = Adam(lr=lr)
    loss_fn = SoftmaxCrossEntropy()
    accuracy, loss = 0.0, float("nan")
    for step in range(1, steps + 1):
        scores = model.forward(x, train=True)
        loss, dscores = loss_fn(scores, y)
        model.backward(dscores)
        opt.step(params, model.named_grads())
        accuracy = float(np.mean(model.forward(x, train=False).argmax(1) == y))
        if accuracy == 1.0:
            return CheckResult("overfit a small subset", True,
                               f"{len(y)} examples fitted to 100% in {step} steps (loss {loss:.4f})")
    return CheckResult("overfit a small subset", False,
                       f"{len(y)} examples reached only {accuracy:.0%} in {steps} steps (loss {loss:.4f})")


def gradient_check(net, x, y, samples: int = 5, h: float = 1e-5, tol: float = 1e-5, seed: int = 0) -> CheckResult:
    """Compare analytic and centered-difference gradients at a few coordinates of every parameter.

    Runs in evaluation mode in float64 (BatchNorm uses its running statistics, Dropout is off),
    so the loss is a fixed function of the parameters. Real images have exact zeros and a fresh net
    has zero biases, which puts ReLU inputs exactly on the kink where the numerical gradient is
    meaningless (the notes' "kinks" caveat); a small jitter of the input moves them off it. An
    identity init (``cifar_fast``) copies exact zeros from one ReLU to the next whatever the input,
    so the parameters of the float64 copy are jittered too (by 1e-2 of their RMS).
    """
    model = clone(net, np.float64)
    rng = np.random.default_rng(seed)
    nudge_parameters(model, 1e-2, rng)
    x = np.asarray(x, np.float64)
    x = x + 0.01 * (x.std() or 1.0) * rng.standard_normal(x.shape)
    loss_fn = SoftmaxCrossEntropy()
    loss, dscores = loss_fn(model.forward(x, train=False), y)
    model.backward(dscores)
    grads = {k: v.copy() for k, v in model.named_grads().items()}

    def numeric(flat, i, step):
        old = flat[i]
        flat[i] = old + step
        plus = loss_fn(model.forward(x, train=False), y)[0]
        flat[i] = old - step
        minus = loss_fn(model.forward(x, train=False), y)[0]
        flat[i] = old
        return (plus - minus) / (2 * step)

    def relative(a, b, step):
        # Differences below what a centered difference can resolve (a few roundings of the loss,
        # divided by 2*step) are agreement: a dead unit's 0 against 1 ulp of noise is no error.
        resolution = 4 * np.finfo(np.float64).eps * max(1.0, abs(float(loss))) / (2 * step)
        return 0.0 if abs(a - b) <= resolution else abs(a - b) / max(abs(a), abs(b))

    worst, worst_name = 0.0, ""
    for name, p in model.named_parameters().items():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(samples, flat.size), replace=False):
            analytic = grads[name].reshape(-1)[i]
            # A ReLU input within h of zero makes the difference straddle a kink; a real bug survives
            # smaller steps, a kink does not, so a failing coordinate is retried at h/10 and h/100.
            err = relative(numeric(flat, i, h), analytic, h)
            for step in (h / 10, h / 100):
                if err < tol:
                    break
                err = min(err, relative(numeric(flat, i, step), analytic, step))
            if err > worst:
                worst, worst_name = err, f"{name}[{i}]"
    return CheckResult("gradient check", worst < tol,
                       f"worst relative error {worst:.2e}" + (f" at {worst_name}" if worst_name else "")
                       + f" (tolerance {tol:g}, {samples} coordinates per parameter, float64)")


def nudge_parameters(net, scale: float, rng) -> None:
    """Add N(0, (scale x RMS of the array)^2) noise to every parameter of ``net``, in place."""
    for p in net.named_parameters().values():
        rms = float(np.sqrt(np.mean(np.square(p, dtype=np.float64)))) or 1.0
        p += (scale * rms * rng.standard_normal(p.shape)).astype(p.dtype)


def sanity_checks(net, x, y, num_classes: int, overfit_examples: int = 50, seed: int = 0) -> list[CheckResult]:
    """Run the three checks on a batch ``x, y`` (the first ``overfit_examples`` are overfitted)."""
    n = min(overfit_examples, len(y))
    return [initial_loss_check(net, x[:n], y[:n], num_classes),
            overfit_check(net, x[:n], y[:n]),
            gradient_check(net, x[:2], y[:2], seed=seed)]
