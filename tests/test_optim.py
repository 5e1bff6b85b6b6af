"""Optimizers and gradient clipping: PyTorch as the oracle, the notes' update rules as naive loops,
state round trips, parameter groups, frozen params and errors."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ConvnpError, ShapeError
from convnp.optim.clip import NonFiniteError, clip_grad_norm, clip_grad_value
from convnp.optim.optimizers import (SGD, Adagrad, Adam, AdamW, RMSprop, get_optimizer, join_state_dict,
                                     list_optimizers, split_state_dict)

torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")

SHAPES = {"features.0.weight": (3, 2, 2), "features.0.bias": (3,), "features2.weight": (2, 3), "fc.weight": (4, 3)}
N_STEPS = 5
MISSING = (2, "fc.weight")     # at step 2 this param has no gradient (PyTorch: p.grad is None)

TORCH = {"SGD": "SGD", "Adagrad": "Adagrad", "RMSprop": "RMSprop", "Adam": "Adam", "AdamW": "AdamW"}
CLASSES = {"SGD": SGD, "Adagrad": Adagrad, "RMSprop": RMSprop, "Adam": Adam, "AdamW": AdamW}

# (optimizer, hyperparameters): momentum on/off, dampening, nesterov, weight decay, amsgrad, centered,
# and values that take torch.lerp's second branch (weight >= 0.5).
CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.1, "momentum": 0.8, "nesterov": True, "weight_decay": 5e-2}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.2}),
    ("Adagrad", {"lr": 0.1, "weight_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-3}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.1, "alpha": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True, "alpha": 0.3, "eps": 1e-4}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "betas": (0.3, 0.5), "eps": 1e-3}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.9)}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True}),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]


def make_problem(dtype=np.float64, seed=0, shapes=SHAPES, n_steps=N_STEPS):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = []
    for t in range(n_steps):
        g = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        if t == MISSING[0] and MISSING[1] in g:
            del g[MISSING[1]]
        grads.append(g)
    return params, grads


def run_convnp(opt, params, grads):
    params = {k: v.copy() for k, v in params.items()}
    for g in grads:
        opt.step(params, g)
    return params


def run_torch(name, kwargs, params, grads, groups=None, frozen=()):
    """groups: list of (names, overrides) in PyTorch's form; the names not listed form the last group."""
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    trainable = [k for k in tp if k not in frozen]
    if groups:
        listed = {n for names, _ in groups for n in names}
        spec = [{"params": [tp[n] for n in names], **over} for names, over in groups]
        rest = [tp[n] for n in trainable if n not in listed]
        if rest:
            spec.append({"params": rest})
    else:
        spec = [tp[n] for n in trainable]
    opt = getattr(torch.optim, TORCH[name])(spec, **kwargs)
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k]) if k in g else None
        opt.step()
    return {k: v.detach().numpy() for k, v in tp.items()}


def assert_params_close(a, b, rtol, atol=0.0):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# --- PyTorch oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_matches_torch_float64(name, kwargs):
    params, grads = make_problem(np.float64)
    ours = run_convnp(CLASSES[name](**kwargs), params, grads)
    ref = run_torch(name, kwargs, params, grads)
    assert_params_close(ours, ref, rtol=1e-10, atol=1e-13)
    moved = [k for k in params if not np.allclose(ours[k], params[k])]
    assert moved == list(params)   # every param was updated (the test is not vacuous)


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_matches_torch_float32(name, kwargs):
    params, grads = make_problem(np.float32)
    opt = CLASSES[name](**kwargs)
    ours = run_convnp(opt, params, grads)
    ref = run_torch(name, kwargs, params, grads)
    assert_params_close(ours, ref, rtol=1e-5, atol=1e-6)
    for k, v in ours.items():
        assert v.dtype == np.float32
        for s in opt.state[k].values():
            assert not hasattr(s, "dtype") or s.dtype == np.float32


def test_missing_grad_skips_param_and_its_state():
    params, grads = make_problem()
    opt = Adam(lr=0.01)
    p = {k: v.copy() for k, v in params.items()}
    opt.step(p, grads[0])
    before = p["fc.weight"].copy()
    opt.step(p, {k: v for k, v in grads[1].items() if k != "fc.weight"})
    assert np.array_equal(p["fc.weight"], before)
    assert opt.state["fc.weight"]["step"] == 1 and opt.state["features.0.bias"]["step"] == 2


def test_updates_in_place_and_leaves_grads_alone():
    params, grads = make_problem()
    ids = {k: id(v) for k, v in params.items()}
    before = {k: v.copy() for k, v in params.items()}
    g0 = {k: v.copy() for k, v in grads[0].items()}
    SGD(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True).step(params, grads[0])
    assert {k: id(v) for k, v in params.items()} == ids
    assert all(not np.array_equal(params[k], before[k]) for k in params)
    assert all(np.array_equal(grads[0][k], g0[k]) for k in g0)


# --- the notes' update rules as slow per-element loops -----------------------------------------
def naive(rule, x0, grads, lr, mu=0.9, decay=0.99, eps=1e-8, b1=0.9, b2=0.999):
    """The CS231n notes' formulas, one scalar at a time (constant lr, no weight decay)."""
    x = [float(v) for v in x0.ravel()]
    v = [0.0] * len(x)
    m = [0.0] * len(x)
    cache = [0.0] * len(x)
    for t, g in enumerate(grads, start=1):
        dx = [float(d) for d in g.ravel()]
        for i in range(len(x)):
            if rule == "momentum":
                v[i] = mu * v[i] - lr * dx[i]
                x[i] += v[i]
            elif rule == "nesterov":
                v_prev = v[i]
                v[i] = mu * v[i] - lr * dx[i]
                x[i] += -mu * v_prev + (1 + mu) * v[i]
            elif rule == "adagrad":
                cache[i] += dx[i] ** 2
                x[i] += -lr * dx[i] / (cache[i] ** 0.5 + eps)
            elif rule == "rmsprop":
                cache[i] = decay * cache[i] + (1 - decay) * dx[i] ** 2
                x[i] += -lr * dx[i] / (cache[i] ** 0.5 + eps)
            elif rule == "adam":
                m[i] = b1 * m[i] + (1 - b1) * dx[i]
                mt = m[i] / (1 - b1 ** t)
                v[i] = b2 * v[i] + (1 - b2) * dx[i] ** 2
                vt = v[i] / (1 - b2 ** t)
                x[i] += -lr * mt / (vt ** 0.5 + eps)
    return np.array(x).reshape(x0.shape)


NAIVE = [
    ("momentum", lambda: SGD(lr=0.1, momentum=0.9), {}),
    ("nesterov", lambda: SGD(lr=0.1, momentum=0.9, nesterov=True), {}),
    ("adagrad", lambda: Adagrad(lr=0.1, eps=1e-8), {}),
    ("rmsprop", lambda: RMSprop(lr=0.01, alpha=0.9), {"decay": 0.9}),
    ("adam", lambda: Adam(lr=0.01, betas=(0.8, 0.95)), {"b1": 0.8, "b2": 0.95}),
]


@pytest.mark.parametrize("rule,make,kw", NAIVE, ids=[r for r, _, _ in NAIVE])
def test_matches_the_notes_naive_loops(rule, make, kw):
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, 3))
    grads = [rng.standard_normal((2, 3)) for _ in range(N_STEPS)]
    p = {"w": x0.copy()}
    opt = make()
    for g in grads:
        opt.step(p, {"w": g})
    ref = naive(rule, x0, grads, lr=opt.lr, **kw)
    np.testing.assert_allclose(p["w"], ref, rtol=1e-10, atol=1e-13)


# --- state dict round trip ----------------------------------------------------------------------
def _through_checkpoint(sd):
    """state_dict -> safetensors bytes + JSON text -> state_dict, as a checkpoint would store it."""
    st_numpy = pytest.importorskip("safetensors.numpy")
    arrays, meta = split_state_dict(sd)
    blob = st_numpy.save(arrays) if arrays else None
    text = json.dumps(meta)
    return join_state_dict(st_numpy.load(blob) if blob else {}, json.loads(text))


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_continues_identically(name, kwargs):
    params, grads = make_problem()
    opt = CLASSES[name](**kwargs, param_groups=[{"params": ["features"], "lr_scale": 0.5}])
    p = run_convnp(opt, params, grads[:2])
    sd = opt.state_dict()
    saved = _through_checkpoint(sd)
    fresh = CLASSES[name](lr=0.5)            # other hyperparameters: load must restore them
    fresh.load_state_dict(saved)
    assert fresh.param_groups == opt.param_groups and fresh.defaults == opt.defaults
    a = run_convnp(opt, p, grads[2:])
    b = run_convnp(fresh, p, grads[2:])
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # the saved state is a copy: later steps did not change it
    for pname, st in sd["state"].items():
        for key, v in st.items():
            if hasattr(v, "shape"):
                assert not np.shares_memory(v, opt.state[pname][key])


def test_split_state_dict_names_and_json_meta():
    params, grads = make_problem()
    opt = Adam(lr=0.01, amsgrad=True)
    run_convnp(opt, params, grads[:1])
    arrays, meta = split_state_dict(opt.state_dict())
    assert "features.0.weight.exp_avg" in arrays and "fc.weight.max_exp_avg_sq" in arrays
    assert meta["state"]["fc.weight"] == {"step": 1}
    assert json.loads(json.dumps(meta)) == meta
    with pytest.raises(ConfigError):
        join_state_dict({"nodot": np.zeros(1)}, meta)


def test_load_state_dict_errors():
    params, grads = make_problem()
    opt = SGD(lr=0.1, momentum=0.9)
    run_convnp(opt, params, grads[:1])
    good = opt.state_dict()
    bad_cases = [
        dict(good, extra=1),
        {k: v for k, v in good.items() if k != "frozen"},
        dict(good, type="Adam"),
        dict(good, defaults={**good["defaults"], "betas": [0.9, 0.9]}),
        dict(good, defaults={k: v for k, v in good["defaults"].items() if k != "dampening"}),
        dict(good, state={"fc.weight": {"exp_avg": np.zeros((4, 3))}}),
        dict(good, state={"fc.weight": [1, 2]}),
        dict(good, lr=-1.0),
        dict(good, defaults={**good["defaults"], "nesterov": True, "momentum": 0.0}),
    ]
    for bad in bad_cases:
        with pytest.raises(ConfigError):
            SGD(lr=0.1).load_state_dict(bad)
    adam = Adam()
    with pytest.raises(ConfigError):
        sd = adam.state_dict()
        sd["state"] = {"w": {"step": -1}}
        adam.load_state_dict(sd)
    # a failed load leaves the optimizer as it was
    target = SGD(lr=0.3)
    with pytest.raises(ConfigError):
        target.load_state_dict(dict(good, state={"fc.weight": {"bogus": np.zeros(1)}}))
    assert target.lr == 0.3 and target.state == {}
    # state of the wrong shape is caught at the next step
    sd = dict(good, state={"fc.weight": {"momentum_buffer": np.zeros((2, 2))}})
    target.load_state_dict(sd)
    with pytest.raises(ShapeError, match="fc.weight.momentum_buffer"):
        target.step({"fc.weight": np.zeros((4, 3))}, {"fc.weight": np.ones((4, 3))})


# --- groups, frozen, lr -------------------------------------------------------------------------
GROUP_CASES = [
    ("SGD", {"lr": 0.1, "momentum": 0.9},
     [{"params": ["features."], "lr": 0.01, "nesterov": True}],
     [(["features.0.weight", "features.0.bias"], {"lr": 0.01, "nesterov": True})]),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1},
     [{"params": ["features"], "weight_decay": 0.0}, {"params": ["features.0.bias"], "lr": 0.1, "amsgrad": True}],
     [(["features.0.weight"], {"weight_decay": 0.0}), (["features.0.bias"], {"lr": 0.1, "amsgrad": True})]),
    ("RMSprop", {"lr": 0.01},
     [{"params": ["fc.weight"], "centered": True, "lr_scale": 2.0}],
     [(["fc.weight"], {"centered": True, "lr": 0.02})]),
    ("AdamW", {"lr": 0.01},
     [{"params": ["features2", "fc"], "weight_decay": 0.5, "betas": (0.5, 0.9)}],
     [(["features2.weight", "fc.weight"], {"weight_decay": 0.5, "betas": (0.5, 0.9)})]),
]


@pytest.mark.parametrize("name,kwargs,groups,torch_groups", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_param_groups_match_torch(name, kwargs, groups, torch_groups):
    params, grads = make_problem()
    ours = run_convnp(CLASSES[name](**kwargs, param_groups=groups), params, grads)
    ref = run_torch(name, kwargs, params, grads, groups=torch_groups)
    assert_params_close(ours, ref, rtol=1e-10, atol=1e-13)


def test_prefix_matching_is_by_name_component_and_longest_wins():
    opt = SGD(lr=1.0, param_groups=[{"params": ["features"], "lr": 0.1},
                                    {"params": ["features.0.bias"], "lr": 0.01}],
              frozen=["fc"])
    assert opt.hyper_for("features.0.weight")["lr"] == pytest.approx(0.1)
    assert opt.hyper_for("features.0.bias")["lr"] == pytest.approx(0.01)
    assert opt.hyper_for("features")["lr"] == pytest.approx(0.1)
    assert opt.hyper_for("features2.weight")["lr"] == 1.0      # "features" is not a string prefix match
    assert opt.hyper_for("fc.weight") is None and opt.hyper_for("fc2.weight")["lr"] == 1.0
    # the order of the groups does not matter: the most specific pattern wins
    rev = SGD(lr=1.0, param_groups=[{"params": ["features.0.bias"], "lr": 0.01},
                                    {"params": ["features"], "lr": 0.1}])
    assert rev.hyper_for("features.0.bias")["lr"] == pytest.approx(0.01)
    assert rev.hyper_for("features.0.weight")["lr"] == pytest.approx(0.1)


def test_frozen_params_never_change_and_match_torch_without_them():
    params, grads = make_problem()
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.1, frozen=["features.0"])
    ours = run_convnp(opt, params, grads)
    for k in ("features.0.weight", "features.0.bias"):
        assert np.array_equal(ours[k], params[k]) and k not in opt.state
    ref = run_torch("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}, params, grads,
                    frozen=("features.0.weight", "features.0.bias"))
    assert_params_close(ours, ref, rtol=1e-10, atol=1e-13)


def test_setting_lr_keeps_group_ratios_like_scheduling_each_group():
    params, grads = make_problem()
    opt = SGD(lr=0.1, momentum=0.9, param_groups=[{"params": ["fc"], "lr": 0.02}])
    p = {k: v.copy() for k, v in params.items()}
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.SGD([{"params": [v for k, v in tp.items() if k != "fc.weight"]},
                            {"params": [tp["fc.weight"]], "lr": 0.02}], lr=0.1, momentum=0.9)
    for t, g in enumerate(grads):
        factor = 0.5 ** t
        opt.lr = 0.1 * factor
        for grp, base in zip(topt.param_groups, (0.1, 0.02)):
            grp["lr"] = base * factor
        opt.step(p, g)
        for k, v in tp.items():
            v.grad = torch.tensor(g[k]) if k in g else None
        topt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5 ** (N_STEPS - 1))
    assert_params_close(p, {k: v.detach().numpy() for k, v in tp.items()}, rtol=1e-10, atol=1e-13)


def test_unused_patterns_and_bad_grads_are_errors():
    params, grads = make_problem()
    for opt in (SGD(lr=0.1, param_groups=[{"params": ["featurs"], "lr": 0.1}]), SGD(lr=0.1, frozen=["fc.w"])):
        with pytest.raises(ConfigError, match="matches no parameter"):
            opt.step(params, grads[0])
    opt = SGD(lr=0.1)
    with pytest.raises(ConfigError, match="unknown params"):
        opt.step(params, {**grads[0], "nope": np.zeros(1)})
    with pytest.raises(ShapeError, match="fc.weight"):
        opt.step(params, {"fc.weight": np.zeros((3, 4))})


# --- errors, momentum property, config, registry ------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: SGD(lr=-0.1),
    lambda: SGD(lr=float("nan")),
    lambda: SGD(lr="0.1"),
    lambda: SGD(lr=0.1, nesterov=True),
    lambda: SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    lambda: SGD(lr=0.1, momentum=-0.9),
    lambda: SGD(lr=0.1, weight_decay=-1),
    lambda: SGD(lr=0.1, nesterov=1),
    lambda: Adam(betas=(1.0, 0.999)),
    lambda: Adam(betas=(0.9, -0.1)),
    lambda: Adam(betas=(0.9,)),
    lambda: Adam(eps=-1e-8),
    lambda: AdamW(weight_decay=-0.01),
    lambda: Adagrad(initial_accumulator_value=-1),
    lambda: Adagrad(lr_decay=-1),
    lambda: RMSprop(alpha=-0.5),
    lambda: RMSprop(momentum=-0.1),
    lambda: SGD(lr=0.1, param_groups=[{"params": ["a"], "foo": 1}]),
    lambda: SGD(lr=0.1, param_groups=[{"params": ["a"], "lr": 0.1, "lr_scale": 1.0}]),
    lambda: SGD(lr=0.1, param_groups=[{"params": "a"}]),
    lambda: SGD(lr=0.1, param_groups=[{"params": [""]}]),
    lambda: SGD(lr=0.1, param_groups=[{"lr": 0.1}]),
    lambda: SGD(lr=0.1, param_groups=[{"params": ["a"]}, {"params": ["a."]}]),
    lambda: SGD(lr=0.1, param_groups=[{"params": ["a"], "nesterov": True}]),
    lambda: SGD(lr=0.0, param_groups=[{"params": ["a"], "lr": 0.1}]),
    lambda: Adam(param_groups=[{"params": ["a"], "betas": (0.9, 1.5)}]),
    lambda: SGD(lr=0.1, frozen="fc"),
])
def test_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_errors_are_valueerrors_and_convnp_errors():
    with pytest.raises(ValueError):
        SGD(lr=-1)
    with pytest.raises(ConvnpError):
        SGD(lr=-1)


def test_lr_and_momentum_properties():
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True, param_groups=[{"params": ["a"], "momentum": 0.5}])
    with pytest.raises(ConfigError):
        opt.lr = -1
    opt.momentum = 0.8
    assert opt.momentum == 0.8 and opt.hyper_for("a")["momentum"] == 0.8
    with pytest.raises(ConfigError, match="nesterov"):
        opt.momentum = 0.0
    assert opt.momentum == 0.8
    adam = Adam(betas=(0.9, 0.99), param_groups=[{"params": ["a"], "betas": (0.5, 0.9)}])
    adam.momentum = 0.85
    assert adam.defaults["betas"] == (0.85, 0.99) and adam.hyper_for("a")["betas"] == (0.85, 0.9)
    with pytest.raises(ConfigError):
        adam.momentum = 1.0
    ada = Adagrad()
    assert ada.momentum is None
    with pytest.raises(ConfigError):
        ada.momentum = 0.9


def test_get_config_round_trip_and_repr():
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
              param_groups=[{"params": ["features."], "lr": 1e-2}], frozen=["fc"])
    cfg = opt.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    again = SGD.from_config(cfg)
    assert again.get_config() == cfg and again.param_groups == opt.param_groups
    assert repr(opt).startswith("SGD(lr=0.1, momentum=0.9, weight_decay=0.0005, nesterov=True")
    assert repr(Adam()) == "Adam(lr=0.001)"


def test_registry():
    assert list_optimizers() == ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
    assert type(get_optimizer("sgd")) is SGD and get_optimizer("sgd").momentum == 0.0
    m = get_optimizer("momentum", lr=0.05)
    assert m.momentum == 0.9 and m.lr == 0.05 and not m.defaults["nesterov"]
    assert get_optimizer("nesterov").defaults["nesterov"] is True
    assert get_optimizer("momentum", momentum=0.95).momentum == 0.95
    assert type(get_optimizer("adamw")) is AdamW and get_optimizer("adamw").defaults["weight_decay"] == 0.01
    assert type(get_optimizer("adagrad")) is Adagrad and type(get_optimizer("rmsprop")) is RMSprop
    assert type(get_optimizer("adam")) is Adam
    with pytest.raises(ConfigError, match="known"):
        get_optimizer("lbfgs")
    with pytest.raises(ConfigError):
        get_optimizer("adam", momentum=0.9)


# --- property tests -------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(lr=st.floats(1e-4, 1.0), momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
       dampening=st.sampled_from([0.0, 0.1]), nesterov=st.booleans(), wd=st.sampled_from([0.0, 1e-4, 0.1]),
       seed=st.integers(0, 2**16))
def test_sgd_property_matches_torch(lr, momentum, dampening, nesterov, wd, seed):
    nesterov = nesterov and momentum > 0 and dampening == 0
    kw = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd)
    params, grads = make_problem(seed=seed, n_steps=4)
    assert_params_close(run_convnp(SGD(**kw), params, grads), run_torch("SGD", kw, params, grads),
                        rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["Adam", "AdamW"]), lr=st.floats(1e-4, 0.1), b1=st.floats(0.0, 0.99),
       b2=st.floats(0.0, 0.9999), eps=st.sampled_from([1e-8, 1e-3]), wd=st.sampled_from([0.0, 0.01, 0.5]),
       amsgrad=st.booleans(), seed=st.integers(0, 2**16))
def test_adam_property_matches_torch(name, lr, b1, b2, eps, wd, amsgrad, seed):
    kw = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, amsgrad=amsgrad)
    params, grads = make_problem(seed=seed, n_steps=4)
    assert_params_close(run_convnp(CLASSES[name](**kw), params, grads), run_torch(name, kw, params, grads),
                        rtol=1e-9, atol=1e-12)


# --- gradient clipping ------------------------------------------------------------------------------
def _grads(dtype, scale, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(dtype, norm_type, max_norm):
    grads = _grads(dtype, 1.0)
    ids = {k: id(v) for k, v in grads.items()}
    tg = [torch.tensor(v.copy()) for v in grads.values()]
    tparams = [torch.zeros(g.shape, dtype=g.dtype, requires_grad=True) for g in tg]
    for p, g in zip(tparams, tg):
        p.grad = g
    ref_total = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type))
    before = {k: v.copy() for k, v in grads.items()}
    total = clip_grad_norm(grads, max_norm, norm_type=norm_type)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert total == pytest.approx(ref_total, rel=tol)
    assert {k: id(v) for k, v in grads.items()} == ids
    for (k, v), p in zip(grads.items(), tparams):
        assert v.dtype == dtype
        np.testing.assert_allclose(v, p.grad.numpy(), rtol=10 * tol, atol=1e-7 if dtype == np.float32 else 0.0)
    changed = any(not np.array_equal(grads[k], before[k]) for k in grads)
    assert changed == (max_norm < total)
    if max_norm < total and norm_type == 2.0:
        assert np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in grads.values())) \
            == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_nonfinite_and_edge_cases():
    grads = _grads(np.float64, 1.0)
    grads["fc.weight"][0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    with pytest.raises(FloatingPointError):
        clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    assert np.isnan(clip_grad_norm(grads, 1.0))
    assert all(np.isnan(v).all() for v in grads.values())       # as in PyTorch
    assert clip_grad_norm({}, 1.0) == 0.0
    at = {"w": np.array([3.0, 4.0])}                              # norm exactly max_norm: PyTorch's 1e-6
    assert clip_grad_norm(at, 5.0) == 5.0                         # still scales by 5 / (5 + 1e-6)
    np.testing.assert_array_equal(at["w"], np.array([3.0, 4.0]) * (5.0 / (5.0 + 1e-6)))
    lst = [np.full(4, 3.0)]                                       # a list works too
    assert clip_grad_norm(lst, 1.0) == pytest.approx(6.0)
    np.testing.assert_allclose(lst[0], np.full(4, 3.0 / (6.0 + 1e-6)))
    with pytest.raises(ConfigError):
        clip_grad_norm(lst, -1.0)
    with pytest.raises(ConfigError):
        clip_grad_norm(lst, 1.0, norm_type=0)


def test_clip_grad_value_matches_torch():
    grads = _grads(np.float32, 2.0)
    tparams = [torch.zeros(v.shape, requires_grad=True) for v in grads.values()]
    for p, v in zip(tparams, grads.values()):
        p.grad = torch.tensor(v.copy())
    torch.nn.utils.clip_grad_value_(tparams, 0.7)
    clip_grad_value(grads, 0.7)
    for v, p in zip(grads.values(), tparams):
        np.testing.assert_array_equal(v, p.grad.numpy())
    assert max(float(np.abs(v).max()) for v in grads.values()) == pytest.approx(0.7)
    with pytest.raises(ConfigError):
        clip_grad_value(grads, -1)

