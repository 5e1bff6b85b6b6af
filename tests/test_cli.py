"""The convnp command end to end, in subprocesses, on tiny offline settings."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits dataset ships with scikit-learn (test extra)")

SPEC = "INPUT[8x8x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10"


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "convnp", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run("train", "--data", "digits", "--model", SPEC, "--epochs", "2", "--quiet", "--no-report",
               "--out", str(out))
    return out, proc.stdout


def test_train_prints_accuracy_and_writes_outputs(trained):
    out, stdout = trained
    acc = float(stdout.split("test accuracy:")[1].split()[0])
    assert acc > 0.5
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 2


def test_eval_reports_the_same_accuracy(trained):
    out, stdout = trained
    acc = stdout.split("test accuracy:")[1].split()[0]
    assert f"accuracy {acc}" in run("eval", str(out / "model.safetensors")).stdout


def test_predict_on_image_files(trained, tmp_path):
    from PIL import Image

    from convnp.data import load_dataset

    test = load_dataset("digits", "test")
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((test.x[i, 0] * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    lines = run("predict", str(trained[0] / "model.safetensors"), *paths, "--top", "2").stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        assert line.startswith(path) and line.count(",") == 1   # two classes with probabilities


def test_predict_unreadable_image_is_a_clear_error(trained, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    proc = run("predict", str(trained[0] / "model.safetensors"), str(bad), check=False)
    assert proc.returncode == 2 and "cannot read image" in proc.stderr and "bad.png" in proc.stderr


def test_summary_of_zoo_model_and_spec():
    out = run("summary", "vgg11", "--classes", "10", "--input", "3x32x32").stdout
    assert "Total params" in out
    out = run("summary", "INPUT[32x32x3] -> CONV3-32 -> RELU -> POOL2 -> FC-10", "--budget", "1GB").stdout
    assert "32x32x32" in out and "Largest batch within 1GB" in out
    assert "lenet5" in run("summary", "--list").stdout


def test_summary_bad_spec_is_a_clear_error():
    proc = run("summary", "INPUT[32x32x3] -> CONV3-32 -> CONV5-8/S2/P0 -> FC-10", check=False)
    assert proc.returncode == 2 and "not an integer" in proc.stderr


@pytest.mark.parametrize("model", ["lenet5", "cifar_convnet", "cifar_convnet:batch_norm=True", "cifar_fast", "resnet20"])
def test_check_passes_the_notes_sanity_checks(model):
    out = run("check", model, "--examples", "20").stdout
    assert out.count("[PASS]") == 3, out


def test_data_info_digits():
    out = run("data", "info", "digits").stdout
    assert "1437" in out.replace(",", "") or "1,437" in out


def test_every_command_has_help():
    for cmd in ("train", "eval", "predict", "summary", "check", "data", "report", "export", "bench"):
        assert "usage: convnp " + cmd in run(cmd, "--help").stdout


def test_export_onnx_from_a_spec(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx extra")
    out = tmp_path / "net.onnx"
    assert "exported" in run("export", SPEC, "--out", str(out)).stdout
    assert out.stat().st_size > 0


def test_finetune_with_frozen_prefix_keeps_those_weights(trained, tmp_path):
    from convnp.io.model_file import load_model

    out = tmp_path / "ft"
    run("train", "--data", "digits", "--model", SPEC, "--epochs", "1", "--quiet", "--no-report", "--out", str(out),
        "--finetune", str(trained[0] / "model.safetensors"), "--freeze", "0", "--head-lr", "0.01")
    before = load_model(trained[0] / "model.safetensors").state_dict()
    after = load_model(out / "model.safetensors").state_dict()
    assert np.array_equal(before["0.weight"], after["0.weight"])
    assert not np.array_equal(before["4.weight"], after["4.weight"])


def test_bench_runs_against_torch():
    pytest.importorskip("torch", reason="convnp bench compares with PyTorch (test extra)")
    out = run("bench", "INPUT[8x8x1] -> CONV3-4 -> RELU -> FC-10", "--batch", "8", "--repeats", "1", "--warmup", "1",
              "--pause", "0", "--no-channels-last").stdout
    assert "torch" in out and "x" in out
