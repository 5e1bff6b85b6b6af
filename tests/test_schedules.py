"""Learning-rate schedules: step-for-step equal to torch.optim.lr_scheduler, attach/state/registry
behaviour, the project's CIFAR warmup recipe, and errors."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, StateError
from convnp.optim.optimizers import SGD, Adagrad, Adam
from convnp.optim.schedules import (ConstantLR, CosineAnnealingLR, ExponentialLR, LinearLR, LRSchedule,
                                    MultiStepLR, OneCycleLR, SequentialLR, StepLR, WarmupLinearLR,
                                    get_schedule, list_schedules)

torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
sched_mod = torch.optim.lr_scheduler

BASE_LR = 0.1
N = 25


def torch_values(make, n=N, base_lr=BASE_LR, opt="sgd", momentum=0.9):
    """lr (and momentum) after construction and after each of n steps of a torch scheduler."""
    p = torch.zeros(1, requires_grad=True)
    if opt == "sgd":
        topt = torch.optim.SGD([p], lr=base_lr, momentum=momentum)
    else:
        topt = torch.optim.Adam([p], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(topt)
        lrs, moms = [sched.get_last_lr()[0]], []
        g = topt.param_groups[0]
        moms.append(g["momentum"] if opt == "sgd" else g["betas"][0])
        for _ in range(n):
            topt.step()
            sched.step()
            lrs.append(sched.get_last_lr()[0])
            moms.append(g["momentum"] if opt == "sgd" else g["betas"][0])
    return np.array(lrs), np.array(moms)


def our_values(sched, n=N, opt=None):
    lrs, opt_lrs, moms = [sched.lr], [], []
    if opt is not None:
        opt_lrs.append(opt.lr)
        moms.append(opt.momentum)
    for _ in range(n):
        lrs.append(sched.step())
        if opt is not None:
            opt_lrs.append(opt.lr)
            moms.append(opt.momentum)
    return np.array(lrs), np.array(opt_lrs), np.array(moms)


T = sched_mod
CASES = [
    ("step", lambda: StepLR(3, gamma=0.5), lambda o: T.StepLR(o, 3, gamma=0.5)),
    ("step-default-gamma", lambda: StepLR(4), lambda o: T.StepLR(o, 4)),
    ("multistep", lambda: MultiStepLR([9, 2, 5, 5], gamma=0.3), lambda o: T.MultiStepLR(o, [9, 2, 5, 5], gamma=0.3)),
    ("exponential", lambda: ExponentialLR(0.9), lambda o: T.ExponentialLR(o, 0.9)),
    ("constant", lambda: ConstantLR(0.25, 4), lambda o: T.ConstantLR(o, 0.25, 4)),
    ("constant-default", lambda: ConstantLR(), lambda o: T.ConstantLR(o)),
    ("linear", lambda: LinearLR(0.2, 0.9, 6), lambda o: T.LinearLR(o, 0.2, 0.9, 6)),
    ("linear-default", lambda: LinearLR(), lambda o: T.LinearLR(o)),
    ("cosine", lambda: CosineAnnealingLR(7, eta_min=0.01), lambda o: T.CosineAnnealingLR(o, 7, eta_min=0.01)),
    ("cosine-no-min", lambda: CosineAnnealingLR(10), lambda o: T.CosineAnnealingLR(o, 10)),
    ("cosine-T1", lambda: CosineAnnealingLR(1, eta_min=0.02), lambda o: T.CosineAnnealingLR(o, 1, eta_min=0.02)),
    ("onecycle", lambda: OneCycleLR(0.5, total_steps=N), lambda o: T.OneCycleLR(o, 0.5, total_steps=N)),
    ("onecycle-linear", lambda: OneCycleLR(0.5, total_steps=N, pct_start=0.25, anneal_strategy="linear",
                                           div_factor=10.0, final_div_factor=100.0),
     lambda o: T.OneCycleLR(o, 0.5, total_steps=N, pct_start=0.25, anneal_strategy="linear",
                            div_factor=10.0, final_div_factor=100.0)),
    ("onecycle-3phase", lambda: OneCycleLR(0.3, epochs=5, steps_per_epoch=5, three_phase=True,
                                           base_momentum=0.8, max_momentum=0.9),
     lambda o: T.OneCycleLR(o, 0.3, epochs=5, steps_per_epoch=5, three_phase=True, base_momentum=0.8,
                            max_momentum=0.9)),
    ("onecycle-no-momentum", lambda: OneCycleLR(0.5, total_steps=N, cycle_momentum=False),
     lambda o: T.OneCycleLR(o, 0.5, total_steps=N, cycle_momentum=False)),
    ("sequential-warmup-cosine",
     lambda: SequentialLR([LinearLR(0.1, 1.0, 3), CosineAnnealingLR(10)], [3]),
     lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.1, 1.0, 3), T.CosineAnnealingLR(o, 10)], [3])),
    ("sequential-three",
     lambda: SequentialLR([ConstantLR(0.5, 2), StepLR(2, 0.5), ExponentialLR(0.9)], [4, 9]),
     lambda o: T.SequentialLR(o, [T.ConstantLR(o, 0.5, 2), T.StepLR(o, 2, 0.5), T.ExponentialLR(o, 0.9)],
                              [4, 9])),
    ("warmup-linear", lambda: WarmupLinearLR(20, 4, start_factor=0.1),
     lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.1, 1.0, 4), T.LinearLR(o, 1.0, 0.0, 16)], [4])),
    ("warmup-linear-end", lambda: WarmupLinearLR(12, 5, start_factor=0.3, end_factor=0.2),
     lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.3, 1.0, 5), T.LinearLR(o, 1.0, 0.2, 7)], [5])),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_lr_matches_torch_step_for_step(name, ours, theirs):
    ref_lr, ref_mom = torch_values(theirs)
    opt = SGD(lr=BASE_LR, momentum=0.9)
    sched = ours()
    sched.attach(opt)
    lrs, opt_lrs, moms = our_values(sched, opt=opt)
    np.testing.assert_allclose(lrs, ref_lr, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(opt_lrs, np.maximum(ref_lr, 0.0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(moms, ref_mom, rtol=1e-12)
    assert len(set(np.round(lrs, 12))) > 1 or name == "constant-default"


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_base_lr_without_optimizer_gives_the_same_values(name, ours, theirs):
    ref_lr, _ = torch_values(theirs, base_lr=0.04)
    sched = ours()
    sched.base_lr = 0.04      # (OneCycleLR ignores it: these cases give max_lr)
    lrs, _, _ = our_values(sched)
    np.testing.assert_allclose(lrs, ref_lr, rtol=1e-12, atol=1e-15)


def test_onecycle_cycles_adam_beta1_like_torch():
    ref_lr, ref_b1 = torch_values(lambda o: sched_mod.OneCycleLR(o, 0.01, total_steps=15), n=15, opt="adam",
                                  base_lr=0.001)
    opt = Adam(lr=0.001, betas=(0.9, 0.99))
    sched = OneCycleLR(0.01, total_steps=15, optimizer=opt)
    lrs, _, b1 = our_values(sched, n=15, opt=opt)
    np.testing.assert_allclose(lrs, ref_lr, rtol=1e-12)
    np.testing.assert_allclose(b1, ref_b1, rtol=1e-12)
    assert opt.defaults["betas"][1] == 0.99


def test_onecycle_max_lr_defaults_to_the_optimizer_lr():
    opt = SGD(lr=0.4, momentum=0.9)
    sched = OneCycleLR(total_steps=10, optimizer=opt)
    assert opt.lr == pytest.approx(0.4 / 25)
    assert max(sched.lr_at(t) for t in range(11)) == pytest.approx(0.4)


def test_onecycle_stepping_past_total_steps_raises_and_keeps_the_counter():
    sched = OneCycleLR(1.0, total_steps=4)
    for _ in range(4):
        sched.step()
    with pytest.raises(StateError, match="total_steps"):
        sched.step()
    assert sched.last_epoch == 4


def test_onecycle_needs_momentum_unless_disabled():
    with pytest.raises(ConfigError, match="momentum"):
        OneCycleLR(0.1, total_steps=10, optimizer=Adagrad(lr=0.01))
    sched = OneCycleLR(0.1, total_steps=10, cycle_momentum=False, optimizer=Adagrad(lr=0.01))
    assert sched.optimizer.lr == pytest.approx(0.004)


# --- the project's CIFAR recipe ----------------------------------------------------------------------
def test_cifar_recipe_warmup_then_linear_decay_to_zero():
    """lr 0.015 -> 0.15 linearly over 2 epochs, then linearly to 0 at the end (stepped per iteration)."""
    steps_per_epoch, epochs = 7, 10
    opt = SGD(lr=0.15, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = get_schedule("warmup_linear", optimizer=opt, total_steps=epochs * steps_per_epoch,
                         warmup_steps=2 * steps_per_epoch, start_factor=0.1)
    lrs = [opt.lr]
    for _ in range(epochs * steps_per_epoch):
        sched.step()
        lrs.append(opt.lr)
    lrs = np.array(lrs)
    w = 2 * steps_per_epoch
    assert lrs[0] == pytest.approx(0.015) and lrs[w] == pytest.approx(0.15) and lrs[-1] == 0.0
    assert np.all(np.diff(lrs[: w + 1]) > 0) and np.all(np.diff(lrs[w:]) < 0)
    np.testing.assert_allclose(np.diff(lrs[: w + 1]), (0.15 - 0.015) / w, rtol=1e-9)   # linear
    np.testing.assert_allclose(np.diff(lrs[w:]), -0.15 / (len(lrs) - 1 - w), rtol=1e-9)
    assert lrs[w + (len(lrs) - 1 - w) // 2] == pytest.approx(0.075)


# --- attach, groups, state --------------------------------------------------------------------------
def test_attach_sets_lr_at_once_and_groups_keep_their_ratio():
    opt = SGD(lr=0.2, momentum=0.9, param_groups=[{"params": ["features"], "lr": 0.02}])
    sched = StepLR(2, gamma=0.5, optimizer=opt)
    assert sched.base_lr == 0.2 and opt.lr == 0.2
    for _ in range(4):
        sched.step()
    assert opt.lr == pytest.approx(0.05) and opt.param_groups[0]["lr"] == pytest.approx(0.005)
    warm = LinearLR(0.5, 1.0, 4, optimizer=SGD(lr=0.1))
    assert warm.optimizer.lr == pytest.approx(0.05)


@pytest.mark.parametrize("make", [
    lambda: StepLR(3, gamma=0.5),
    lambda: MultiStepLR([2, 6], 0.3),
    lambda: CosineAnnealingLR(9, eta_min=0.001),
    lambda: OneCycleLR(0.5, total_steps=20, three_phase=True),
    lambda: WarmupLinearLR(20, 4),
    lambda: SequentialLR([LinearLR(0.1, 1.0, 3), CosineAnnealingLR(10), ConstantLR(0.5, 3)], [3, 12]),
], ids=["step", "multistep", "cosine", "onecycle", "warmup_linear", "sequential"])
def test_state_dict_round_trip_continues_identically(make):
    opt = SGD(lr=0.1, momentum=0.9)
    sched = make()
    sched.attach(opt)
    for _ in range(7):
        sched.step()
    sd = json.loads(json.dumps(sched.state_dict()))
    # into a fresh schedule of the same type built with other settings, on a fresh optimizer
    opt2 = SGD(lr=0.7, momentum=0.5)
    other = make()
    other.attach(opt2)
    other.load_state_dict(sd)
    assert opt2.lr == opt.lr and other.get_config() == sched.get_config()
    # only a momentum-cycling schedule drives the optimizer's momentum
    cycles = sched.momentum is not None
    assert opt2.momentum == (opt.momentum if cycles else 0.5)
    rebuilt = LRSchedule.from_state_dict(sd)
    for _ in range(8):
        a, b, c = sched.step(), other.step(), rebuilt.step()
        assert a == b == c and opt.lr == opt2.lr
        assert sched.momentum == other.momentum == rebuilt.momentum
        assert opt2.momentum == (opt.momentum if cycles else 0.5)


def test_load_state_dict_errors():
    sd = StepLR(3, base_lr=0.1).state_dict()
    for bad in (dict(sd, extra=1), {k: v for k, v in sd.items() if k != "config"}, dict(sd, last_epoch=-1),
                dict(sd, config={"step_size": 0, "gamma": 0.1}), dict(sd, config={"bogus": 1})):
        with pytest.raises(ConfigError):
            StepLR(3, base_lr=0.1).load_state_dict(bad)
    with pytest.raises(ConfigError, match="cannot load a StepLR"):
        CosineAnnealingLR(5, base_lr=0.1).load_state_dict(sd)
    with pytest.raises(ConfigError, match="unknown schedule type"):
        LRSchedule.from_state_dict(dict(sd, type="Nope"))


def test_repr():
    seq = SequentialLR([LinearLR(0.1, 1.0, 3), CosineAnnealingLR(10)], [3])
    assert repr(seq) == ("SequentialLR([LinearLR(start_factor=0.1, end_factor=1.0, total_iters=3), "
                         "CosineAnnealingLR(T_max=10, eta_min=0.0)], milestones=[3])")
    assert repr(StepLR(30)) == "StepLR(step_size=30, gamma=0.1)"


def test_no_base_lr_is_a_state_error():
    sched = StepLR(3)
    with pytest.raises(StateError, match="base lr"):
        sched.lr


# --- registry and errors --------------------------------------------------------------------------
def test_registry():
    assert list_schedules() == ["constant", "step", "multistep", "exponential", "linear", "cosine", "onecycle",
                                "warmup_linear"]
    opt = SGD(lr=0.1, momentum=0.9)
    const = get_schedule("constant", optimizer=opt, total_steps=50)
    assert [const.step() for _ in range(5)] == [0.1] * 5
    cos = get_schedule("cosine", base_lr=1.0, total_steps=10)
    assert isinstance(cos, CosineAnnealingLR) and cos.T_max == 10 and cos.lr_at(10) == pytest.approx(0.0)
    assert get_schedule("cosine", base_lr=1.0, total_steps=10, T_max=4).T_max == 4
    assert get_schedule("onecycle", base_lr=1.0, total_steps=30).total_steps == 30
    assert get_schedule("step", base_lr=1.0, step_size=2, gamma=0.5).lr_at(4) == 0.25
    assert get_schedule("linear", base_lr=1.0, total_steps=8, start_factor=0.5).total_iters == 8
    wl = get_schedule("warmup_linear", base_lr=1.0, total_steps=30, warmup_steps=3)
    assert (wl.total_steps, wl.warmup_steps) == (30, 3)
    with pytest.raises(ConfigError, match="known"):
        get_schedule("triangle")
    with pytest.raises(ConfigError, match="needs"):
        get_schedule("step", base_lr=1.0)
    with pytest.raises(ConfigError, match="needs"):
        get_schedule("warmup_linear", base_lr=1.0, total_steps=30)
    with pytest.raises(ConfigError, match="does not take"):
        get_schedule("cosine", base_lr=1.0, total_steps=10, gamma=0.1)


@pytest.mark.parametrize("make", [
    lambda: StepLR(0),
    lambda: StepLR(2.5),
    lambda: StepLR(2, gamma=-0.1),
    lambda: MultiStepLR(5),
    lambda: MultiStepLR([-1]),
    lambda: ConstantLR(factor=1.5),
    lambda: LinearLR(start_factor=0.0),
    lambda: LinearLR(end_factor=1.2),
    lambda: LinearLR(total_iters=0),
    lambda: CosineAnnealingLR(0),
    lambda: CosineAnnealingLR(5, eta_min=-1),
    lambda: OneCycleLR(0.1),
    lambda: OneCycleLR(0.1, total_steps=10, pct_start=1.5),
    lambda: OneCycleLR(0.1, total_steps=10, anneal_strategy="exp"),
    lambda: OneCycleLR(0.1, total_steps=10, pct_start=0.1),       # a phase of zero length
    lambda: OneCycleLR(-0.1, total_steps=10),
    lambda: WarmupLinearLR(10, 10),
    lambda: WarmupLinearLR(10, -1),
    lambda: WarmupLinearLR(10, 2, start_factor=2.0),
    lambda: SequentialLR([StepLR(2), StepLR(3)], []),
    lambda: SequentialLR([StepLR(2), StepLR(3)], [5, 6]),
    lambda: SequentialLR([StepLR(2), StepLR(3), StepLR(4)], [5, 5]),
    lambda: SequentialLR([], []),
    lambda: SequentialLR([StepLR(2, optimizer=SGD(lr=0.1))], []),
    lambda: StepLR(2, base_lr=-1.0),
])
def test_config_errors(make):
    with pytest.raises(ConfigError):
        make()


# --- property tests ---------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["step", "cosine", "onecycle", "warmup"]), a=st.integers(1, 12),
       b=st.integers(1, 12), x=st.floats(0.05, 0.95), base=st.floats(1e-3, 1.0))
def test_property_matches_torch(kind, a, b, x, base):
    n = a + b + 1
    if kind == "step":
        ours, theirs = StepLR(a, gamma=x), lambda o: sched_mod.StepLR(o, a, gamma=x)
    elif kind == "cosine":
        ours = CosineAnnealingLR(a, eta_min=x * base)
        theirs = lambda o: sched_mod.CosineAnnealingLR(o, a, eta_min=x * base)   # noqa: E731
    elif kind == "onecycle":
        pct = round(x, 2)
        if pct * n - 1 == 0:      # a zero-length first phase: PyTorch divides by zero, we raise ConfigError
            pct = 0.5
        ours = OneCycleLR(base, total_steps=n, pct_start=pct)
        theirs = lambda o: sched_mod.OneCycleLR(o, base, total_steps=n, pct_start=pct)   # noqa: E731
    else:
        ours = WarmupLinearLR(n, a, start_factor=x)
        theirs = lambda o: sched_mod.SequentialLR(   # noqa: E731
            o, [sched_mod.LinearLR(o, x, 1.0, a), sched_mod.LinearLR(o, 1.0, 0.0, n - a)], [a])
    ref, _ = torch_values(theirs, n=n, base_lr=base)
    ours.base_lr = base
    lrs, _, _ = our_values(ours, n=n)
    np.testing.assert_allclose(lrs, ref, rtol=1e-11, atol=1e-15)
