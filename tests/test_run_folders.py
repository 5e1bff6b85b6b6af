"""Run folders of convnp train: no run overwritten unasked, atomic files, stray temp files cleaned,
resume with the run's own options, NaN validation metrics stop the run. On the offline digits set."""

import os

import numpy as np
import pytest

from convnp.app.run import RUN_FILES

from .test_cli import SPEC, TRAIN, cli, no_data, read_only, user_error  # noqa: F401 - fixtures used by name

pytest.importorskip("sklearn", reason="the digits dataset ships with scikit-learn (test extra)")

FAST = [*TRAIN, "--epochs", "2", "--batch-size", "64", "--no-augment"]


def _train(capsys, out, *extra):
    rc, stdout, err = cli(capsys, *FAST, "--out", out, *extra)
    assert rc == 0, err
    return stdout, err


def _snapshot(folder):
    """Every file of ``folder`` (recursively) with its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run, copied fresh for each test by ``run_dir``."""
    from convnp.app.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*FAST, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_a_new_run_refuses_a_folder_holding_another_run(capsys, no_data, run_dir):
    before = _snapshot(run_dir)
    err = user_error(capsys, *FAST, "--out", run_dir)
    assert f"--out {run_dir} holds another run (config.json, checkpoint.safetensors" in err
    assert "--resume" in err and "--overwrite" in err
    assert _snapshot(run_dir) == before  # config.json included: a refused re-run replaces nothing


def test_overwrite_moves_the_old_run_aside(capsys, run_dir):
    before = _snapshot(run_dir)
    _, err = _train(capsys, run_dir, "--overwrite", "--epochs", "1")
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and f"moved the previous run in {run_dir} to {aside[0]}" in err
    assert _snapshot(aside[0]) == before
    assert set(RUN_FILES) - {"report.html"} <= {p.name for p in run_dir.iterdir()}
    assert '"epochs": 1' in (run_dir / "config.json").read_text()


def test_overwrite_twice_within_a_second_keeps_both_old_runs(capsys, run_dir, monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20240101-000000")
    _train(capsys, run_dir, "--overwrite", "--epochs", "1")
    _train(capsys, run_dir, "--overwrite", "--epochs", "1")
    names = sorted(p.name for p in run_dir.parent.iterdir())
    assert names == ["run", "run.old-20240101-000000", "run.old-20240101-000000-1"]


def test_stray_temporary_files_are_removed_at_the_next_start(capsys, run_dir):
    strays = [".checkpoint.safetensors.0123456789ab.tmp", ".tmpAb3dE9", "report.html.tmp",
              ".history.json.ffffffffffff.tmp"]
    kept = ["notes.tmp", ".tmp", "tmp123456", "mine.txt"]
    for name in strays + kept:
        (run_dir / name).write_bytes(b"x" * 1000)
    _, err = _train(capsys, run_dir, "--resume")
    assert f"removed 4 temporary file(s) of interrupted writes (0.0 MB) from {run_dir}" in err
    names = {p.name for p in run_dir.iterdir()}
    assert not names & set(strays) and set(kept) <= names


def test_every_file_of_a_run_is_written_by_an_atomic_rename(capsys, tmp_path, monkeypatch):
    renamed = []
    replace = os.replace

    def recording(src, dst, **kwargs):
        renamed.append(os.path.basename(dst))
        return replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", recording)
    _train(capsys, tmp_path / "run", "--epochs", "1")
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert written == set(RUN_FILES) - {"report.html"}
    assert written <= set(renamed), written - set(renamed)


def test_resume_with_more_epochs_is_refused(capsys, no_data, run_dir):
    before = _snapshot(run_dir)
    err = user_error(capsys, *FAST, "--out", run_dir, "--resume", "--epochs", "3")
    assert "--epochs 3 (the run's: 2)" in err and "--finetune" in err
    err = user_error(capsys, *FAST, "--out", run_dir, "--resume", "--lr", "0.2")
    assert "--lr 0.2 (the run's: 0.05)" in err
    assert _snapshot(run_dir) == before


def test_resume_takes_the_options_left_out_from_the_run(capsys, tmp_path, monkeypatch):
    """A run cut in epoch 2 and resumed with only --data/--out/--resume ends as the uninterrupted one:
    the spec, the 2 epochs and the batch of 64 (none of them the digits recipe's) come from the checkpoint."""
    from convnp.io.model_file import load_model
    from convnp.train import trainer as trainer_mod

    _train(capsys, tmp_path / "full")
    original, calls = trainer_mod.Trainer.train_step, {"n": 0}

    def cut(self, x, y):
        calls["n"] += 1
        if calls["n"] == 30:  # 22 steps an epoch (1437 // 64), checkpoints every 5
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", cut)
    rc, _, _ = cli(capsys, *FAST, "--out", tmp_path / "cut", "--checkpoint-every", "5")
    assert rc == 130
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    rc, _, err = cli(capsys, "train", "--data", "digits", "--out", tmp_path / "cut", "--resume", "--quiet",
                     "--no-report")
    assert rc == 0, err
    full = load_model(tmp_path / "full" / "model.safetensors").state_dict()
    resumed = load_model(tmp_path / "cut" / "model.safetensors").state_dict()
    for k, v in full.items():
        assert np.array_equal(v, resumed[k]), k


def test_train_out_in_a_read_only_folder(capsys, no_data, read_only):
    err = user_error(capsys, *FAST, "--out", read_only / "run")
    assert f"--out {read_only / 'run'}: cannot write into {read_only}" in err


@pytest.fixture
def nan_in_test_split(monkeypatch):
    """The digits test split with a NaN pixel: validation loss NaN, training unaffected."""
    import convnp.data

    load = convnp.data.load_dataset

    def poisoned(name, split="train", **kwargs):
        data = load(name, split, **kwargs)
        if split == "test":
            x = np.array(data.x)
            x[0, 0, 0, 0] = np.nan
            data = convnp.data.ArrayDataset(x, data.y, data.classes)
        return data

    monkeypatch.setattr(convnp.data, "load_dataset", poisoned)


def test_nan_validation_loss_stops_the_run(capsys, tmp_path, nan_in_test_split):
    from convnp.train.checkpoint import load_checkpoint_meta

    err = user_error(capsys, *FAST, "--out", tmp_path / "run")
    assert "val_loss nan after epoch 1" in err and "--continue-on-nan" in err
    assert load_checkpoint_meta(tmp_path / "run" / "checkpoint.safetensors")["trainer"]["epoch"] == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_continue_on_nan_warns_every_epoch_and_finishes(capsys, tmp_path, nan_in_test_split):
    _, err = _train(capsys, tmp_path / "run", "--continue-on-nan")
    assert err.count("WARNING: val_loss nan after epoch") == 2
    assert (tmp_path / "run" / "model.safetensors").exists()
