"""The training loop: minibatch SGD over a loader, with evaluation, checkpoints and exact resume.

One step is the notes' recipe: scores = net.forward(x, train=True); loss, dscores = loss_fn(scores, y);
net.backward(dscores); optimizer.step(params, grads); schedule.step().
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ConvnpError
from ..optim import clip_grad_norm, join_state_dict, split_state_dict
from .checkpoint import (CheckpointError, atomic_write_bytes, keep_previous, load_checkpoint, load_last_good,
                         restore_rng, rng_state, save_checkpoint)

#: Entries of a checkpoint's meta that ``Trainer.resume`` restores, and those of its "trainer" entry.
RESUME_ENTRIES = ("trainer", "optimizer", "layer_rngs", "loader", "history")
TRAINER_ENTRIES = ("epoch", "step_in_epoch", "global_step", "elapsed", "sums")


class TrainingError(ConvnpError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


def check_resume_meta(path, meta: dict) -> None:
    """CheckpointError naming ``path`` and every entry ``Trainer.resume`` needs that ``meta`` lacks."""
    missing = [k for k in RESUME_ENTRIES if k not in meta]
    if isinstance(meta.get("trainer"), dict):
        missing += [f"trainer.{k}" for k in TRAINER_ENTRIES if k not in meta["trainer"]]
    elif "trainer" in meta:
        missing.append("trainer (a dict)")
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be resumed: its metadata has no "
                              f"{', '.join(missing)} entry (damaged, or not written by Trainer.save_checkpoint)")


def iter_layers(layer):
    """Yield ``layer`` and every layer nested inside it (Sequential/Graph children), depth first."""
    yield layer
    for child in getattr(layer, "children", lambda: [])():
        yield from iter_layers(child)


def layer_generators(net) -> list:
    """The numpy Generators owned by layers (e.g. Dropout's), in a stable order, for exact resume."""
    return [layer.rng for layer in iter_layers(net) if isinstance(getattr(layer, "rng", None), np.random.Generator)]


class EarlyStopping:
    """Stop when ``monitor`` (e.g. "val_loss") has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = "min" if "loss" in monitor else "max"
        self.best, self.bad_epochs = None, 0

    def on_epoch_end(self, trainer, logs: dict) -> None:
        value = logs.get(self.monitor)
        if value is None:
            return
        better = (self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                        else value > self.best + self.min_delta))
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.stop_reason = f"early stopping: {self.monitor} did not improve for {self.patience} epochs"
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class Trainer:
    """Fits ``net`` with ``loss`` and ``optimizer`` over ``train_loader``; see ``fit``."""

    def __init__(self, net, loss, optimizer, train_loader, val_loader=None, schedule=None,
                 callbacks=(), out_dir=None, checkpoint_every: int | None = None, clip_norm=None,
                 progress: bool = True, config: dict | None = None, continue_on_nan: bool = False,
                 keep_checkpoints: int = 2):
        self.net, self.loss, self.optimizer, self.schedule = net, loss, optimizer, schedule
        self.train_loader, self.val_loader = train_loader, val_loader
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every  # steps; None: at the end of each epoch only
        if isinstance(keep_checkpoints, bool) or not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
            raise ConfigError(f"Trainer: keep_checkpoints must be an integer >= 1, got {keep_checkpoints!r}")
        self.keep_checkpoints = keep_checkpoints  # the newest and keep_checkpoints - 1 previous ones
        self.last_checkpoint = None  # the checkpoint last written or resumed from
        self.clip_norm, self.progress = clip_norm, progress
        self.continue_on_nan = continue_on_nan  # NaN/inf validation metrics: warn and go on instead of stopping
        self.config = dict(config or {})
        self.history: list[dict] = []
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.elapsed = 0.0
        self.should_stop, self.stop_reason = False, ""
        self.params = net.named_parameters()
        self._epoch_sums = {"loss": 0.0, "correct": 0, "count": 0}  # running sums of the current epoch

    # --- one step ---------------------------------------------------------------------------------
    def train_step(self, x, y) -> tuple[float, int]:
        scores = self.net.forward(x, train=True)
        loss, dscores = self.loss(scores, y)
        if not math.isfinite(loss):
            where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"
            hint = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingError(f"loss became {loss} at {where}; lower the learning rate or check the data{hint}")
        self.net.backward(dscores)
        grads = self.net.named_grads()
        if self.clip_norm:
            clip_grad_norm(grads, self.clip_norm)
        self.optimizer.step(self.params, grads)
        if self.schedule is not None:
            self.schedule.step()
        return float(loss), int(np.sum(np.argmax(scores, axis=1) == y))

    def batch_examples(self, y) -> int:
        """Examples the last step trained on: ``len(y)`` here; the global batch in data-parallel training."""
        return len(y)

    def evaluate(self, loader) -> dict:
        """Mean loss and accuracy of the net in evaluation mode over ``loader``."""
        total_loss, correct, count = 0.0, 0, 0
        for x, y in loader:
            scores = self.net.forward(x, train=False)
            loss, _ = self.loss(scores, y)
            total_loss += float(loss) * len(y)
            correct += int(np.sum(np.argmax(scores, axis=1) == y))
            count += len(y)
        return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self, epochs: int) -> list[dict]:
        """Train until ``epochs`` epochs are done (counting epochs restored by ``resume``)."""
        self.should_stop = False
        while self.epoch < epochs and not self.should_stop:
            logs = self._run_epoch(epochs)
            self.history.append(logs)
            for cb in self.callbacks:
                cb.on_epoch_end(self, logs)
            self.epoch += 1
            self.step_in_epoch = 0
            if self.out_dir is not None:
                self.save_checkpoint()
                self._write_history()
            self._check_finite_validation(logs)
        return self.history

    def _check_finite_validation(self, logs: dict) -> None:
        """Stop with a TrainingError on NaN/inf validation metrics, or warn on stderr with ``continue_on_nan``."""
        bad = ", ".join(f"{k} {v}" for k, v in logs.items() if k.startswith("val_") and not math.isfinite(v))
        if not bad:
            return
        problem = f"{bad} after epoch {logs['epoch']}: the validation data or the net's outputs are not finite"
        if not self.continue_on_nan:
            raise TrainingError(f"{problem}; stopped (checkpoint and history hold this epoch; "
                                "continue_on_nan=True, convnp train --continue-on-nan, trains on regardless)")
        print(f"WARNING: {problem}; training goes on (continue_on_nan)", file=sys.stderr, flush=True)

    def _run_epoch(self, epochs: int) -> dict:
        from tqdm.auto import tqdm

        self.train_loader.load_state_dict({"epoch": self.epoch, "step": self.step_in_epoch})
        n_batches = len(self.train_loader)
        sums = self._epoch_sums
        bar = tqdm(total=n_batches, initial=self.step_in_epoch, disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True, leave=True)
        start = time.perf_counter()
        seen_here = 0
        for x, y in self.train_loader:
            loss, correct = self.train_step(x, y)
            n = self.batch_examples(y)
            sums["loss"] += loss * n
            sums["correct"] += correct
            sums["count"] += n
            seen_here += n
            self.step_in_epoch += 1
            self.global_step += 1
            now = time.perf_counter()
            bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.4f}",
                            acc=f"{sums['correct'] / sums['count']:.4f}",
                            img_s=f"{seen_here / max(now - start, 1e-9):.0f}", refresh=False)
            bar.update(1)
            if self.out_dir is not None and self.checkpoint_every and self.global_step % self.checkpoint_every == 0 \
                    and self.step_in_epoch < n_batches:
                self.elapsed += now - start
                start = now
                self.save_checkpoint()
        bar.close()
        self.elapsed += time.perf_counter() - start
        logs = {"epoch": self.epoch + 1,
                "train_loss": sums["loss"] / max(sums["count"], 1),
                "train_accuracy": sums["correct"] / max(sums["count"], 1),
                "lr": float(self.optimizer.lr)}
        self._epoch_sums = {"loss": 0.0, "correct": 0, "count": 0}
        if self.val_loader is not None:
            val = self.evaluate(self.val_loader)
            logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        logs["time"] = self.elapsed
        if self.progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if k not in ("epoch", "time"))
            print(f"epoch {logs['epoch']}: {shown}, {self.elapsed:.0f}s", flush=True)
        return logs

    # --- checkpoints -----------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.safetensors"

    def save_checkpoint(self, path=None) -> Path:
        """Everything needed to continue bit-exactly, in one atomically written safetensors file.

        The default path keeps the previous ``keep_checkpoints - 1`` checkpoints beside it
        (``checkpoint.1.safetensors`` the newest of them), for ``resume`` to fall back on.
        """
        if path is None:
            path = self.checkpoint_path
            keep_previous(path, self.keep_checkpoints)
        path = Path(path)
        arrays = {f"model/{k}": v for k, v in self.net.state_dict().items()}
        opt_arrays, opt_meta = split_state_dict(self.optimizer.state_dict())
        arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        meta = {
            "trainer": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                        "global_step": self.global_step, "elapsed": self.elapsed,
                        "sums": self._epoch_sums},
            "optimizer": opt_meta,
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks],
            "layer_rngs": [rng_state(g) for g in layer_generators(self.net)],
            "loader": dict(self.train_loader.state_dict(), epoch=self.epoch, step=self.step_in_epoch),
            "history": self.history,
            "config": self.config,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, arrays, meta)
        self.last_checkpoint = path
        return path

    def resume(self, path=None) -> None:
        """Restore weights, optimizer, schedule, RNGs, loader position and history from a checkpoint.

        Without ``path``: from the newest checkpoint in ``out_dir`` that loads, falling back to the
        kept previous ones, with a message, when a newer one is corrupt (``load_last_good``).
        """
        if path is None:
            path, arrays, meta = load_last_good(self.checkpoint_path)
        else:
            path = Path(path)
            arrays, meta = load_checkpoint(path)
        check_resume_meta(path, meta)
        model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
        self.net.load_state_dict(model)
        self.params = self.net.named_parameters()
        optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
        self.optimizer.load_state_dict(join_state_dict(optim, meta["optimizer"]))
        if self.schedule is not None and meta.get("schedule") is not None:
            self.schedule.load_state_dict(meta["schedule"])
        saved_callbacks = meta.get("callbacks", [])
        gens = layer_generators(self.net)
        if len(saved_callbacks) != len(self.callbacks) or len(gens) != len(meta["layer_rngs"]):
            raise CheckpointError(
                f"{path}: the checkpoint has {len(saved_callbacks)} callbacks and {len(meta['layer_rngs'])} layer "
                f"RNGs, this trainer {len(self.callbacks)} and {len(gens)}: resume with the same net and callbacks")
        for cb, state in zip(self.callbacks, saved_callbacks, strict=True):
            if state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state)
        for gen, state in zip(gens, meta["layer_rngs"], strict=True):
            restore_rng(state, into=gen)
        self.train_loader.load_state_dict(meta["loader"])  # also checks seed, batch size and data size match
        t = meta["trainer"]
        self.epoch, self.step_in_epoch, self.global_step = t["epoch"], t["step_in_epoch"], t["global_step"]
        self.elapsed = t["elapsed"]
        self._epoch_sums = dict(t["sums"])
        self.history = list(meta["history"])
        self.last_checkpoint = path

    def _write_history(self) -> None:
        atomic_write_bytes(self.out_dir / "history.json", json.dumps(self.history, indent=1).encode())
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "epoch", k))
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_bytes(self.out_dir / "history.csv", table.getvalue().encode())
