"""The convnp command end to end, in subprocesses and through main(argv), on tiny offline settings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convnp.app.cli import main

pytest.importorskip("sklearn", reason="the digits dataset ships with scikit-learn (test extra)")

SPEC = "INPUT[8x8x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10"
TRAIN = ["train", "--data", "digits", "--model", SPEC, "--quiet", "--no-report"]


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "convnp", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``convnp ARGV`` run in this process; argparse errors included."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def user_error(capsys, *argv) -> str:
    """stderr of a command that must fail as a user error: status 2, one message, no traceback."""
    rc, _, err = cli(capsys, *argv)
    assert rc == 2, err
    assert "Traceback" not in err, err
    return err


@pytest.fixture
def no_data(monkeypatch):
    """Loading any dataset fails the test: the arguments must be refused before."""
    import convnp.data

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was loaded before the arguments were checked")

    monkeypatch.setattr(convnp.data, "load_dataset", refuse)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nobody may write into; for root, whom permissions do not stop, os.access says so too."""
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and (
            Path(path) != folder or not mode & os.W_OK))
    yield folder
    folder.chmod(0o755)


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


# --- arguments checked at the boundary: the flag named, the accepted range, no traceback, no data loaded ----
@pytest.mark.parametrize("extra, expected", [
    (["--limit", "0"], "--limit must be an integer >= 1"),
    (["--limit", "-5"], "--limit must be an integer >= 1"),
    (["--limit", "5"], "--limit 5 is smaller than one batch (--batch-size 32)"),
    (["--limit", "20", "--batch-size", "64"], "--limit 20 is smaller than one batch (--batch-size 64)"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be a number in [0, 1)"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1"),
    (["--optimizer", "sgdd"], "--optimizer must be one of sgd, momentum"),
    (["--schedule", "cosin"], "--schedule must be one of constant"),
    (["--resume", "--overwrite"], "give one of them"),
])
def test_train_refuses_bad_arguments_before_loading_data(capsys, no_data, tmp_path, extra, expected):
    err = user_error(capsys, *TRAIN, "--out", tmp_path / "run", *extra)
    assert expected in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, expected", [
    ("lenet5:num_classes=3", "--model lenet5:num_classes=3: num_classes is set by the dataset"),
    ("lenet5:rng=3", "rng is set by --seed"),
    ("lenet5:foo=1", "lenet5 has no option foo; it takes in_channels, input_size, dtype"),
    ("lenet6", "--model lenet6: unknown model 'lenet6'"),
])
def test_train_checks_model_options_against_the_builder(capsys, no_data, tmp_path, model, expected):
    assert expected in user_error(capsys, "train", "--data", "digits", "--model", model, "--out", tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["summary", "lenet5:num_classes=3"], "num_classes is set by --classes"),
    (["summary", "cifar_convnet:batchnorm=True"], "cifar_convnet has no option batchnorm; it takes"),
    (["check", "lenet5:rng=1"], "rng is set by --seed"),
    (["summary", "lenet5", "--batch", "0"], "argument --batch: must be an integer >= 1, got 0"),
    (["summary", "lenet5", "--classes", "-2"], "argument --classes: must be an integer >= 1"),
    (["check", "lenet5", "--examples", "0"], "argument --examples: must be an integer >= 1"),
])
def test_other_commands_check_their_arguments(capsys, argv, expected):
    assert expected in user_error(capsys, *argv)


def test_a_batch_larger_than_the_training_set_names_batch_size(capsys, tmp_path):
    err = user_error(capsys, *TRAIN, "--batch-size", "5000", "--out", tmp_path)
    assert "--batch-size 5000" in err and "1437 training examples" in err


def test_train_out_naming_a_file_or_below_a_file(capsys, no_data, tmp_path):
    (tmp_path / "file").write_text("x")
    err = user_error(capsys, *TRAIN, "--out", tmp_path / "file")
    assert f"--out {tmp_path / 'file'} is a file, not a folder" in err
    err = user_error(capsys, *TRAIN, "--out", tmp_path / "file" / "run")
    assert f"{tmp_path / 'file'} is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == "x"


def _digit_png(tmp_path) -> str:
    from PIL import Image

    from convnp.data import load_dataset

    path = tmp_path / "digit.png"
    Image.fromarray((load_dataset("digits", "test").x[0, 0] * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("top, expected", [
    ("-1", "argument --top: must be an integer >= 1, got -1"),
    ("0", "argument --top: must be an integer >= 1, got 0"),
    ("11", "--top) must be 1 to the model's 10 classes, got 11"),
])
def test_predict_top_out_of_range(capsys, trained, tmp_path, top, expected):
    assert expected in user_error(capsys, "predict", trained[0] / "model.safetensors", _digit_png(tmp_path), "--top", top)


def test_predict_top_equal_to_the_class_count_shows_every_class(capsys, trained, tmp_path):
    rc, out, err = cli(capsys, "predict", trained[0] / "model.safetensors", _digit_png(tmp_path), "--top", "10")
    assert rc == 0, err
    assert out.count(",") == 9


def _save_bare_model(path):
    """A model file with neither a recorded input shape nor a dataset (``save_model`` without extra)."""
    from convnp.io.model_file import save_model
    from convnp.layers.activation import ReLU
    from convnp.layers.conv import Conv2d
    from convnp.layers.linear import Flatten, Linear
    from convnp.nets.sequential import Sequential

    save_model(Sequential(Conv2d(1, 4, 3, padding=1, rng=0), ReLU(), Flatten(), Linear(256, 10, rng=0)), path)


def test_predict_with_a_model_saved_without_input_shape(capsys, tmp_path):
    _save_bare_model(tmp_path / "bare.safetensors")
    image = _digit_png(tmp_path)
    err = user_error(capsys, "predict", tmp_path / "bare.safetensors", image)
    assert "records no input shape" in err and "--input CxHxW" in err
    rc, out, err = cli(capsys, "predict", tmp_path / "bare.safetensors", image, "--input", "1x8x8", "--top", "2")
    assert rc == 0 and out.startswith(image) and out.count(",") == 1, err


def test_eval_of_a_model_without_dataset_asks_for_data(capsys, tmp_path):
    _save_bare_model(tmp_path / "bare.safetensors")
    assert "give one with --data NAME" in user_error(capsys, "eval", tmp_path / "bare.safetensors")


def test_export_out_a_folder_or_a_missing_folder(capsys, tmp_path):
    err = user_error(capsys, "export", SPEC, "--out", tmp_path)
    assert f"--out {tmp_path} is a folder" in err
    err = user_error(capsys, "export", SPEC, "--out", tmp_path / "no" / "such" / "net.onnx")
    assert "--out" in err and f"folder {tmp_path / 'no' / 'such'} does not exist" in err


def test_export_out_in_a_read_only_folder(capsys, read_only):
    err = user_error(capsys, "export", SPEC, "--out", read_only / "net.onnx")
    assert f"--out {read_only / 'net.onnx'}: cannot write into {read_only}" in err
    assert not list(read_only.iterdir())


def _resume_with(capsys, trained, tmp_path, edit):
    """stderr of --resume from a copy of the trained run whose checkpoint meta ``edit`` changed."""
    from convnp.train.checkpoint import load_checkpoint, save_checkpoint

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    arrays, meta = load_checkpoint(run_dir / "checkpoint.safetensors")
    edit(meta)
    save_checkpoint(run_dir / "checkpoint.safetensors", arrays, meta)
    return user_error(capsys, *TRAIN, "--out", run_dir, "--resume"), run_dir


def test_resume_from_a_checkpoint_lacking_an_entry(capsys, no_data, trained, tmp_path):
    err, run_dir = _resume_with(capsys, trained, tmp_path, lambda meta: meta.pop("loader"))
    assert str(run_dir / "checkpoint.safetensors") in err and "has no loader entry" in err
    err, _ = _resume_with(capsys, trained, tmp_path / "b", lambda meta: meta["trainer"].pop("epoch"))
    assert "has no trainer.epoch entry" in err
    err, _ = _resume_with(capsys, trained, tmp_path / "c", lambda meta: meta["config"].pop("epochs"))
    assert "has no config.epochs entry" in err


def test_debug_shows_the_traceback(capsys, no_data, tmp_path):
    rc, _, err = cli(capsys, *TRAIN, "--out", tmp_path, "--epochs", "0", "--debug")
    assert rc == 2 and "Traceback" in err and err.rstrip().endswith("--epochs must be an integer >= 1, got 0")


def test_an_os_error_is_one_line(capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys.modules["convnp.inspect.summary"], "summary_text", full)
    assert "No space left on device" in user_error(capsys, "summary", "lenet5")


def test_a_bug_shows_the_traceback_and_asks_for_a_report(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(sys.modules["convnp.inspect.summary"], "summary_text", broken)
    rc, _, err = cli(capsys, "summary", "lenet5")
    assert rc == 1
    assert "Traceback" in err and "IndexError: list index out of range" in err and "please report it" in err
