"""Training end to end on the offline digits dataset: learning, exact resume, NaN guard, sanity checks."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from convnp.app.run import RunConfig, train_run
from convnp.train.sanity import sanity_checks
from convnp.train.trainer import TrainingError

pytest.importorskip("sklearn", reason="the digits dataset ships with scikit-learn (test extra)")

# BN and dropout: the run has buffers and a layer RNG, so exact resume must restore both.
SPEC = "INPUT[8x8x1] -> CONV3-16/NB -> BN -> RELU -> POOL2 -> FC-32 -> RELU -> DROPOUT0.2 -> FC-10"


def _cfg(tmp_path, **kw):
    base = dict(data="digits", model=SPEC, epochs=3, batch_size=32, augment=True, prefetch=0,
                out_dir=str(tmp_path))
    base.update(kw)
    return RunConfig(**base)


def _weights(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def test_short_run_learns_far_above_chance(tmp_path):
    result = train_run(_cfg(tmp_path, augment=False), progress=False)
    assert result["test_accuracy"] > 0.85            # chance is 0.10
    hist = result["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    for name in ("model.safetensors", "checkpoint.safetensors", "history.json", "history.csv", "config.json"):
        assert (tmp_path / name).exists(), name


class _Interrupt(Exception):
    pass


def test_resume_after_exception_is_bit_identical(tmp_path, monkeypatch):
    full = train_run(_cfg(tmp_path / "full"), progress=False)
    expected = _weights(full["net"])

    # Interrupt mid-epoch 2, after a step checkpoint, by raising inside the training step.
    from convnp.train import trainer as trainer_mod
    original = trainer_mod.Trainer.train_step
    calls = {"n": 0}

    def failing_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 70:          # 44 batches per epoch of 1437 // 32
            raise _Interrupt
        return original(self, x, y)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", failing_step)
    with pytest.raises(_Interrupt):
        train_run(_cfg(tmp_path / "cut", checkpoint_every=10), progress=False)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    resumed = train_run(_cfg(tmp_path / "cut", checkpoint_every=10), resume=True, progress=False)
    got = _weights(resumed["net"])
    assert got.keys() == expected.keys()
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k
    assert resumed["history"] == [dict(h, time=r["time"]) for h, r in zip(full["history"], resumed["history"])]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = [sys.executable, "-m", "convnp", "train", "--data", "digits", "--model", SPEC, "--epochs", "3",
            "--batch-size", "32", "--no-augment", "--quiet", "--checkpoint-every", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(args + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "checkpoint.safetensors"
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never wrote a checkpoint"
    subprocess.run(args + ["--out", str(tmp_path / "cut"), "--resume"], check=True, env=env, capture_output=True)
    from convnp.io.model_file import load_model
    a, b = load_model(tmp_path / "full" / "model.safetensors"), load_model(tmp_path / "cut" / "model.safetensors")
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k]), k


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    from convnp.losses import SoftmaxCrossEntropy

    original = SoftmaxCrossEntropy.__call__
    calls = {"n": 0}

    def diverging(self, scores, labels):
        calls["n"] += 1
        loss, d = original(self, scores, labels)
        return (float("nan") if calls["n"] >= 12 else loss), d

    monkeypatch.setattr(SoftmaxCrossEntropy, "__call__", diverging)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 12.*last good checkpoint"):
        train_run(_cfg(tmp_path, checkpoint_every=5), progress=False)
    from convnp.train.checkpoint import load_checkpoint
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["trainer"]["global_step"] == 10
    assert all(np.all(np.isfinite(v)) for v in arrays.values())


def test_sanity_checks_pass_on_a_small_net():
    from convnp.data import load_dataset
    import convnp as cn

    data = load_dataset("digits", "train")
    net = cn.parse("INPUT[8x8x1] -> CONV3-8 -> RELU -> POOL2 -> FC-32 -> RELU -> FC-10", rng=0)
    results = sanity_checks(net, data.x[:50], data.y[:50], 10)
    assert [r.passed for r in results] == [True, True, True], [str(r) for r in results]


def test_gradient_check_catches_a_wrong_backward(monkeypatch):
    import convnp as cn
    from convnp.layers.activation import ReLU
    from convnp.train.sanity import gradient_check

    net = cn.parse("INPUT[8x8x1] -> FC-16 -> RELU -> FC-10", rng=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    original = ReLU.backward
    monkeypatch.setattr(ReLU, "backward", lambda self, dout: 2 * original(self, dout))
    assert not gradient_check(net, x, np.array([1, 2])).passed
