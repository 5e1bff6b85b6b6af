"""Softmax cross-entropy and multiclass SVM: PyTorch oracle, naive loops, gradient checks, errors."""

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError
from convnp.losses import (LOSS_TYPES, MulticlassSVM, SoftmaxCrossEntropy, get_loss, log_softmax,
                           multiclass_svm, probabilities, softmax_cross_entropy)

from .gradcheck import numerical_gradient, rel_error


def oracle():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


# --- naive references: the notes' definitions, one sample and one class at a time ----------------


def naive_softmax_ce(scores, labels, eps=0.0):
    n, c = scores.shape
    loss = 0.0
    grad = np.zeros((n, c))
    for i in range(n):
        m = max(float(s) for s in scores[i])
        exps = [math.exp(float(s) - m) for s in scores[i]]
        total = sum(exps)
        for j in range(c):
            p = exps[j] / total
            t = (1 - eps) * (1.0 if j == labels[i] else 0.0) + eps / c
            loss -= t * math.log(p)
            grad[i, j] = (p - t) / n
    return loss / n, grad


def naive_svm(scores, labels, margin=1.0):
    """CS231n svm_loss_naive: sum over j != y of max(0, s_j - s_y + margin), mean over samples."""
    n, c = scores.shape
    loss = 0.0
    grad = np.zeros((n, c))
    for i in range(n):
        y = labels[i]
        for j in range(c):
            if j == y:
                continue
            m = float(scores[i, j]) - float(scores[i, y]) + margin
            if m > 0:
                loss += m
                grad[i, j] += 1.0 / n
                grad[i, y] -= 1.0 / n
    return loss / n, grad


def away_from_kinks(rng, n, c, margin):
    """Scores whose SVM margins s_j - s_y + margin all stay at least 0.1 from 0."""
    scores = rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    for i in range(n):
        for j in range(c):
            if j != labels[i]:
                m = scores[i, j] - scores[i, labels[i]] + margin
                if abs(m) < 0.1:
                    scores[i, j] += 0.3
    return scores, labels


CE_CASES = [(1, 2, 0.0), (4, 3, 0.0), (8, 10, 0.0), (5, 7, 0.1), (3, 4, 0.5), (6, 5, 1.0)]
SVM_CASES = [(1, 2, 1.0), (4, 3, 1.0), (8, 10, 1.0), (5, 7, 0.5), (3, 4, 2.0), (4, 5, 0.0)]


# --- (1) PyTorch oracle ---------------------------------------------------------------------------


@pytest.mark.parametrize("n,c,eps", CE_CASES)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_softmax_ce_matches_torch(n, c, eps, dtype, tol, rng):
    torch = oracle()
    scores = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    loss, dscores = SoftmaxCrossEntropy(label_smoothing=eps)(scores, labels)
    st_ = torch.from_numpy(scores.copy()).requires_grad_()
    ref = torch.nn.CrossEntropyLoss(label_smoothing=eps)(st_, torch.from_numpy(labels))
    ref.backward()
    assert isinstance(loss, float) and dscores.dtype == dtype and dscores.shape == (n, c)
    assert loss == pytest.approx(ref.item(), rel=tol, abs=tol)
    np.testing.assert_allclose(dscores, st_.grad.numpy(), rtol=tol, atol=tol / 10)


@pytest.mark.parametrize("n,c,margin", SVM_CASES)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_svm_is_torch_multimargin_times_c(n, c, margin, dtype, tol, rng):
    torch = oracle()
    s64, labels = away_from_kinks(rng, n, c, margin)
    scores = s64.astype(dtype)
    loss, dscores = MulticlassSVM(margin=margin)(scores, labels)
    st_ = torch.from_numpy(scores.copy()).requires_grad_()
    ref = torch.nn.MultiMarginLoss(p=1, margin=margin)(st_, torch.from_numpy(labels)) * c
    ref.backward()
    assert isinstance(loss, float) and dscores.dtype == dtype
    assert loss == pytest.approx(ref.item(), rel=tol, abs=tol)
    np.testing.assert_allclose(dscores, st_.grad.numpy(), rtol=tol, atol=tol / 10)


def test_large_scores_are_stable_like_torch(rng):
    torch = oracle()
    scores = rng.standard_normal((4, 6)) * 1e4
    scores[0, 0] = 1e30
    labels = np.array([1, 2, 3, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in exp
        loss, dscores = SoftmaxCrossEntropy()(scores, labels)
        p = probabilities(scores)
    st_ = torch.from_numpy(scores.copy()).requires_grad_()
    ref = torch.nn.functional.cross_entropy(st_, torch.from_numpy(labels))
    ref.backward()
    assert math.isfinite(loss) and np.all(np.isfinite(dscores)) and np.all(np.isfinite(p))
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dscores, st_.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p, torch.softmax(torch.from_numpy(scores), 1).numpy(), rtol=1e-12, atol=1e-300)


# --- (2) naive loops -------------------------------------------------------------------------------


@pytest.mark.parametrize("n,c,eps", CE_CASES)
def test_softmax_ce_matches_naive(n, c, eps, rng):
    scores = rng.standard_normal((n, c)) * 3
    labels = rng.integers(0, c, n)
    loss, dscores = softmax_cross_entropy(scores, labels, eps)
    ref_loss, ref_grad = naive_softmax_ce(scores, labels, eps)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dscores, ref_grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("n,c,margin", SVM_CASES)
def test_svm_matches_naive(n, c, margin, rng):
    scores = rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    loss, dscores = multiclass_svm(scores, labels, margin)
    ref_loss, ref_grad = naive_svm(scores, labels, margin)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(dscores, ref_grad, rtol=1e-12, atol=1e-15)


# --- (3) numerical gradients in float64 ----------------------------------------------------------


@pytest.mark.parametrize("n,c,eps", CE_CASES)
def test_softmax_ce_gradcheck(n, c, eps, rng):
    scores = rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    _, dscores = softmax_cross_entropy(scores, labels, eps)
    num = numerical_gradient(lambda: softmax_cross_entropy(scores, labels, eps)[0], scores)
    assert rel_error(dscores, num) < 1e-6


@pytest.mark.parametrize("n,c,margin", SVM_CASES)
def test_svm_gradcheck(n, c, margin, rng):
    scores, labels = away_from_kinks(rng, n, c, margin)
    _, dscores = multiclass_svm(scores, labels, margin)
    num = numerical_gradient(lambda: multiclass_svm(scores, labels, margin)[0], scores)
    assert rel_error(dscores, num) < 1e-6


# --- properties ----------------------------------------------------------------------------------

batches = st.tuples(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**16))


def _batch(n, c, seed, scale=5.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c)) * scale, rng.integers(0, c, n)


@settings(max_examples=25, deadline=None)
@given(batch=batches, eps=st.floats(0, 1), shift=st.floats(-100, 100))
def test_property_softmax_ce(batch, eps, shift):
    scores, labels = _batch(*batch)
    loss, dscores = softmax_cross_entropy(scores, labels, eps)
    np.testing.assert_allclose(dscores.sum(axis=1), 0.0, atol=1e-15)  # gradient rows sum to 0
    assert loss >= -1e-12
    shifted = softmax_cross_entropy(scores + shift, labels, eps)  # softmax ignores a constant shift
    assert shifted[0] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(shifted[1], dscores, atol=1e-12)
    ref_loss, ref_grad = naive_softmax_ce(scores, labels, eps)
    assert loss == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(dscores, ref_grad, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(batch=batches, margin=st.floats(0, 3))
def test_property_svm(batch, margin):
    scores, labels = _batch(*batch)
    loss, dscores = multiclass_svm(scores, labels, margin)
    assert loss >= 0
    np.testing.assert_allclose(dscores.sum(axis=1), 0.0, atol=1e-15)
    ref_loss, ref_grad = naive_svm(scores, labels, margin)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(dscores, ref_grad, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(batch=batches)
def test_property_probabilities(batch):
    scores, _ = _batch(*batch, scale=50.0)
    p = probabilities(scores)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, np.exp(log_softmax(scores)), rtol=1e-12, atol=1e-300)
    assert np.array_equal(np.argmax(p, axis=1), np.argmax(scores, axis=1))


# --- the notes' sanity checks ---------------------------------------------------------------------


@pytest.mark.parametrize("n,c", [(1, 1), (3, 10), (7, 6), (12, 1000)])
def test_zero_scores_give_ln_c_and_c_minus_one(n, c):
    labels = np.arange(n) % c
    loss, dscores = SoftmaxCrossEntropy()(np.zeros((n, c)), labels)
    assert loss == math.log(c)  # exactly
    loss32, _ = SoftmaxCrossEntropy()(np.zeros((n, c), np.float32), labels)
    assert loss32 == pytest.approx(math.log(c), rel=1e-6, abs=1e-7)
    assert MulticlassSVM(margin=1.0)(np.zeros((n, c)), labels)[0] == c - 1
    assert MulticlassSVM(margin=0.5)(np.zeros((n, c)), labels)[0] == 0.5 * (c - 1)


def test_small_random_scores_give_about_ln_c(rng):
    scores = rng.standard_normal((50, 10)) * 1e-3
    loss, _ = SoftmaxCrossEntropy()(scores, rng.integers(0, 10, 50))
    assert abs(loss - math.log(10)) < 1e-2


def test_svm_subgradient_at_the_kink_is_zero():
    # s_j - s_y + 1 == 0 exactly: no loss and no gradient from that class.
    loss, dscores = multiclass_svm(np.array([[2.0, 1.0, -5.0]]), np.array([0]))
    assert loss == 0.0
    np.testing.assert_array_equal(dscores, np.zeros((1, 3)))


def test_nan_propagates_without_crash():
    scores = np.array([[np.nan, 1.0, 2.0], [0.0, 1.0, 2.0]])
    labels = np.array([0, 1])
    loss, dscores = SoftmaxCrossEntropy()(scores, labels)
    assert math.isnan(loss) and np.all(np.isnan(dscores[0])) and np.all(np.isfinite(dscores[1]))
    loss, dscores = MulticlassSVM()(scores, labels)
    assert math.isnan(loss) and dscores.shape == scores.shape  # NaN margins count as inactive


def test_accepts_lists_and_integer_dtypes():
    loss, _ = SoftmaxCrossEntropy()([[0.0, 0.0]], [1])
    assert loss == math.log(2)
    for dt in (np.int8, np.uint8, np.int32, np.int64):
        assert MulticlassSVM()(np.zeros((2, 3)), np.array([0, 2], dtype=dt))[0] == 2.0


# --- errors, config ------------------------------------------------------------------------------


@pytest.mark.parametrize("scores,labels,match", [
    (np.zeros((2, 3)), np.array([0, 3]), "label 3 is out of range for 3 classes"),
    (np.zeros((2, 3)), np.array([-1, 0]), "label -1 is out of range"),
    (np.zeros(3), np.array([0]), r"scores of shape \(N, C\)"),
    (np.zeros((2, 3, 1)), np.array([0, 1]), r"scores of shape \(N, C\)"),
    (np.zeros((2, 3)), np.array([[0, 1]]), r"labels of shape \(N,\)"),
    (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer class indices"),
    (np.zeros((2, 3)), np.array([True, False]), "integer class indices"),
    (np.zeros((2, 3)), np.array([0, 1, 2]), "2 rows of scores but 3 labels"),
    (np.zeros((2, 3), np.int64), np.array([0, 1]), "floating-point scores"),
    (np.zeros((0, 3)), np.zeros(0, np.int64), "no samples"),
])
@pytest.mark.parametrize("loss_cls", [SoftmaxCrossEntropy, MulticlassSVM])
def test_input_errors(scores, labels, match, loss_cls):
    with pytest.raises(ShapeError, match=match) as e:
        loss_cls()(scores, labels)
    assert loss_cls.__name__ in str(e.value)


@pytest.mark.parametrize("cls,kwargs", [
    (SoftmaxCrossEntropy, {"label_smoothing": -0.1}), (SoftmaxCrossEntropy, {"label_smoothing": 1.1}),
    (SoftmaxCrossEntropy, {"label_smoothing": float("nan")}), (SoftmaxCrossEntropy, {"label_smoothing": "0.1"}),
    (MulticlassSVM, {"margin": -1.0}), (MulticlassSVM, {"margin": float("inf")}), (MulticlassSVM, {"margin": None}),
])
def test_config_errors(cls, kwargs):
    with pytest.raises(ConfigError, match=cls.__name__):
        cls(**kwargs)


@pytest.mark.parametrize("loss_fn,text", [
    (SoftmaxCrossEntropy(), "SoftmaxCrossEntropy(label_smoothing=0.0)"),
    (SoftmaxCrossEntropy(label_smoothing=0.1), "SoftmaxCrossEntropy(label_smoothing=0.1)"),
    (MulticlassSVM(), "MulticlassSVM(margin=1.0)"), (MulticlassSVM(margin=2), "MulticlassSVM(margin=2.0)"),
])
def test_config_round_trip_and_registry(loss_fn, text, rng):
    assert repr(loss_fn) == text
    cfg = loss_fn.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    name = type(loss_fn).__name__
    twin = LOSS_TYPES[name].from_config(cfg)
    assert repr(twin) == text and get_loss(name, **cfg).get_config() == cfg
    scores, labels = rng.standard_normal((3, 4)), np.array([0, 1, 3])
    assert twin(scores, labels)[0] == loss_fn(scores, labels)[0]


def test_get_loss_aliases_and_unknown():
    assert isinstance(get_loss("softmax"), SoftmaxCrossEntropy)
    assert isinstance(get_loss("cross_entropy", label_smoothing=0.2), SoftmaxCrossEntropy)
    assert isinstance(get_loss("svm", margin=0.5), MulticlassSVM)
    assert isinstance(get_loss("hinge"), MulticlassSVM)
    with pytest.raises(ConfigError, match="unknown loss 'l2'"):
        get_loss("l2")
