"""One training run from names: a model (zoo name or spec string) on a dataset, start to finish.

``train_run`` is what ``convnp train`` calls: it checks the options and the output folder, loads
the data, builds the net, the optimizer and the schedule from a per-dataset recipe (every value
overridable), trains with checkpoints, evaluates on the test split and saves the model (config +
weights + class names + the input normalisation) so ``convnp.load`` / ``convnp predict`` work
without the code that built it. Error messages name an option by its ``convnp train`` flag
(``RunConfig.batch_size`` is ``--batch-size``).

Run folders: a new run refuses a folder that holds another run's files (``RUN_FILES``) unless it
resumes it or ``overwrite`` moves it aside to ``<name>.old-<timestamp>``; every file is written
atomically, and temporary files of killed writes are removed at the next start.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..train.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint_meta

# Per-dataset defaults, chosen by measurement on the 2-core machine (see the README).
RECIPES = {
    "mnist": dict(model="lenet5", epochs=6, batch_size=64, optimizer="nesterov", lr=0.05, weight_decay=5e-4,
                  schedule="warmup_linear", warmup_epochs=0.5, augment=False, label_smoothing=0.0),
    "fashion_mnist": dict(model="lenet5", epochs=10, batch_size=64, optimizer="nesterov", lr=0.05,
                          weight_decay=5e-4, schedule="warmup_linear", warmup_epochs=0.5, augment=False,
                          label_smoothing=0.0),
    "digits": dict(model="INPUT[8x8x1] -> CONV3-16 -> RELU -> POOL2 -> FC-64 -> RELU -> FC-10", epochs=10,
                   batch_size=32, optimizer="nesterov", lr=0.05, weight_decay=5e-4, schedule="warmup_linear",
                   warmup_epochs=1, augment=False, label_smoothing=0.0),
    "cifar10": dict(model="cifar_fast", epochs=18, batch_size=512, optimizer="nesterov", lr=0.4,
                    weight_decay=5e-4, schedule="warmup_linear", warmup_epochs=4, augment=True,
                    label_smoothing=0.2),
    "cifar100": dict(model="resnet20", epochs=50, batch_size=128, optimizer="nesterov", lr=0.1,
                     weight_decay=5e-4, schedule="warmup_linear", warmup_epochs=2, augment=True,
                     label_smoothing=0.1),
}


@dataclass
class RunConfig:
    """Everything a run depends on; saved with every checkpoint. ``None`` takes the dataset's recipe."""

    data: str = "mnist"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    augment: bool | None = None
    label_smoothing: float | None = None
    loss: str = "softmax"
    seed: int = 0
    limit: int | None = None          # train on the first N examples only (quick runs)
    out_dir: str = "runs/latest"
    data_dir: str | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2         # the newest checkpoint and the previous ones kept for --resume to fall back on
    prefetch: int = 2
    # data-parallel training over MPI (``mpiexec -n W convnp train ... --distributed``)
    distributed: bool = False
    sync_bn: bool = False             # batch-norm statistics of the global batch, not of each rank's shard
    per_rank_batch: bool = False      # batch_size counts per rank (global batch = batch_size x W)
    lr_scale: str = "none"            # "linear": lr x W, "sqrt": lr x sqrt(W)
    warmup_start: float | None = None  # warmup_linear's start factor (default 0.1)
    timeout: float = 300.0            # seconds a collective may wait before the job is aborted
    finetune: str | None = None       # start from these weights (a PyTorch state_dict file)
    freeze: list | None = None        # parameter-name prefixes that are never updated
    head_lr: float | None = None      # learning rate of the class head (the rest uses lr)
    continue_on_nan: bool = False     # NaN/inf validation metrics: warn and train on instead of stopping
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "RunConfig":
        try:
            recipe = RECIPES[self.data]
        except KeyError:
            raise ConfigError(f"no training recipe for dataset {self.data!r}; known: {', '.join(RECIPES)}") from None
        values = asdict(self)
        for key, default in recipe.items():
            if values.get(key) is None:
                values[key] = default
        return RunConfig(**values)


#: Files of a run folder: a folder holding any of them holds a run.
RUN_FILES = ("config.json", "checkpoint.safetensors", "model.safetensors", "history.json", "history.csv",
             "report.html")
CHECKPOINT = "checkpoint.safetensors"
#: Temporary files of killed writes: atomic_path's ``.<name>.<12 hex>.tmp``, safetensors' ``.tmpXXXXXX``,
#: and ``<run file>.tmp`` (the report's).
STRAY_TEMP = re.compile(r"\..+\.[0-9a-f]{12}\.tmp|\.tmp[A-Za-z0-9]{6}|(?:"
                        + "|".join(map(re.escape, RUN_FILES)) + r")\.tmp")
#: Options ``--resume`` may change: where files are and how the run reacts, not what it computes.
RESUME_MAY_CHANGE = ("out_dir", "data_dir", "prefetch", "timeout", "checkpoint_every", "continue_on_nan", "extra")


def flag(name: str) -> str:
    """The ``convnp train`` flag of a RunConfig field: ``batch_size`` -> ``--batch-size``."""
    return "--out" if name == "out_dir" else "--" + name.replace("_", "-")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_config(cfg: RunConfig) -> None:
    """ConfigError naming the flag and the accepted range of the first bad value of a resolved config."""
    from ..optim import OPTIMIZERS, SCHEDULES

    checks = [
        ("epochs", _is_int(cfg.epochs) and cfg.epochs >= 1, "an integer >= 1"),
        ("batch_size", _is_int(cfg.batch_size) and cfg.batch_size >= 1, "an integer >= 1"),
        ("limit", cfg.limit is None or _is_int(cfg.limit) and cfg.limit >= 1,
         "an integer >= 1 (the number of training examples to keep)"),
        ("lr", _is_number(cfg.lr) and cfg.lr > 0, "a finite number > 0"),
        ("head_lr", cfg.head_lr is None or _is_number(cfg.head_lr) and cfg.head_lr > 0, "a finite number > 0"),
        ("weight_decay", _is_number(cfg.weight_decay) and cfg.weight_decay >= 0, "a finite number >= 0"),
        ("label_smoothing", _is_number(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1, "a number in [0, 1)"),
        ("warmup_epochs", _is_number(cfg.warmup_epochs) and cfg.warmup_epochs >= 0, "a finite number >= 0"),
        ("warmup_start", cfg.warmup_start is None or _is_number(cfg.warmup_start) and 0 <= cfg.warmup_start <= 1,
         "a number in [0, 1]"),
        ("seed", _is_int(cfg.seed) and cfg.seed >= 0, "an integer >= 0"),
        ("checkpoint_every", cfg.checkpoint_every is None or _is_int(cfg.checkpoint_every)
         and cfg.checkpoint_every >= 1, "an integer >= 1 (steps)"),
        ("timeout", _is_number(cfg.timeout) and cfg.timeout > 0, "a finite number of seconds > 0"),
        ("optimizer", cfg.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        ("schedule", cfg.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        ("loss", cfg.loss in ("softmax", "svm"), "softmax or svm"),
    ]
    for name, ok, accepted in checks:
        if not ok:
            raise ConfigError(f"{flag(name)} must be {accepted}, got {getattr(cfg, name)!r}")
    if cfg.limit is not None and cfg.limit < cfg.batch_size:
        raise ConfigError(f"--limit {cfg.limit} is smaller than one batch (--batch-size {cfg.batch_size}): training "
                          f"drops an incomplete last batch, so no step would run; give --limit >= {cfg.batch_size} "
                          "or a smaller --batch-size")


def run_files(folder: Path) -> list:
    """The names of ``RUN_FILES`` present in ``folder``."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any data is loaded, an output folder this run cannot use (ConfigError naming --out)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite moves it aside: give one of them")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write into {existing} (read-only or no permission)")
    held = run_files(out) if out.is_dir() else []
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: {out} has no {CHECKPOINT} to continue from")
    elif held and not overwrite:
        raise ConfigError(f"--out {out} holds another run ({', '.join(held)}): add --resume to continue it, "
                          f"--overwrite to move it aside to {out.name}.old-<timestamp>, or choose another --out")
    elif held and not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--overwrite: cannot move {out} aside, {out.parent} is not writable")


def resumed_config(cfg: RunConfig, checkpoint: Path) -> RunConfig:
    """``cfg`` with the options left out (None) taken from the run in ``checkpoint``.

    An option given with another value than the run's is a ConfigError: the schedule, the data
    order and the optimizer state were laid out for the run's values (a larger ``--epochs`` would
    train the added epochs at the schedule's final rate, 0 for warmup_linear).
    """
    meta = load_checkpoint_meta(checkpoint)
    from ..train.trainer import check_resume_meta

    check_resume_meta(checkpoint, meta)
    saved = meta.get("config")
    if not isinstance(saved, dict) or "epochs" not in saved:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} has no config.epochs entry in its metadata "
                              "(damaged, or not written by convnp train): --resume cannot tell the run's schedule")
    given = {k: v for k, v in asdict(cfg).items() if k in saved and k not in RESUME_MAY_CHANGE}
    changed = [f"{flag(k)} {v!r} (the run's: {saved[k]!r})" for k, v in given.items()
               if v is not None and json.loads(json.dumps(v)) != saved[k]]
    if changed:
        raise ConfigError(f"--resume continues the run in {checkpoint.parent} as it was set up, but "
                          f"{', '.join(changed)}: leave these out or give the run's values; to train on with other "
                          f"options, start a new run from its weights (--finetune {checkpoint.parent}/model.safetensors "
                          "--out NEW)")
    return replace(cfg, **{k: saved[k] for k, v in given.items() if v is None})


def stray_temp_files(folder: Path) -> list:
    """Temporary files that killed writes left in ``folder`` (``STRAY_TEMP``)."""
    return sorted(p for p in folder.iterdir() if STRAY_TEMP.fullmatch(p.name) and p.is_file())


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready to write: move another run aside (``overwrite``), create it, remove stray temp files."""
    if overwrite and out.is_dir() and run_files(out):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = out.with_name(f"{out.name}.old-{stamp}"), 1
        while aside.exists():
            aside, n = out.with_name(f"{out.name}.old-{stamp}-{n}"), n + 1
        os.rename(out, aside)
        print(f"--overwrite: moved the previous run in {out} to {aside}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    strays = stray_temp_files(out)
    if strays:
        size = sum(p.stat().st_size for p in strays)
        for p in strays:
            p.unlink(missing_ok=True)
        print(f"removed {len(strays)} temporary file(s) of interrupted writes ({size / 1e6:.1f} MB) from {out}",
              file=sys.stderr)


def build_net(model: str, input_shape: tuple, num_classes: int, seed: int):
    """A zoo model by name (with ``:key=value`` options), or a net from a spec string (containing '->')."""
    from ..models import build_model

    return build_model(model, input_shape=input_shape, num_classes=num_classes, rng=seed)[0]


def data_init(net, model: str, train, normalize, count: int = 5000) -> list:
    """Run a zoo model's data-dependent initialisation (e.g. ``cifar_fast``'s patch whitening) on the
    first ``count`` normalised training images; returns the parameter names to keep fixed."""
    from ..models import model_info, parse_model_name

    if "->" in model:
        return []
    init = model_info(parse_model_name(model)[0]).data_init
    if init is None:
        return []
    images = normalize(np.asarray(train.x[:count], dtype=np.float32))
    return list(init(net, images))


def make_loss(name: str, label_smoothing: float):
    from ..losses import MulticlassSVM, SoftmaxCrossEntropy

    if name == "softmax":
        return SoftmaxCrossEntropy(label_smoothing=label_smoothing)
    if name == "svm":
        return MulticlassSVM()
    raise ConfigError(f"unknown loss {name!r}; known: softmax, svm")


def train_run(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train, evaluate on the test split, save model and history under ``cfg.out_dir``; returns results.

    ``resume`` continues the run in ``cfg.out_dir`` (options left out take its values, see
    ``resumed_config``); ``overwrite`` moves a run already there aside instead of refusing.
    """
    check_out_dir(Path(cfg.out_dir), resume, overwrite)
    if resume:
        cfg = resumed_config(cfg, Path(cfg.out_dir) / CHECKPOINT)
    out = Path(os.path.abspath(cfg.out_dir))  # absolute: moving a run aside must not move the cwd under us
    cfg = cfg.resolved()
    check_config(cfg)
    if not cfg.distributed:
        used = [f"{k}={getattr(cfg, k)!r}" for k, default in (("sync_bn", False), ("per_rank_batch", False),
                                                              ("lr_scale", "none")) if getattr(cfg, k) != default]
        if used:
            raise ConfigError(f"{', '.join(used)} only apply to data-parallel training: add distributed=True "
                              "(convnp train --distributed)")
        return _train_run(cfg, out, resume, overwrite, progress, None)
    from ..distributed import init_distributed, lr_scale_factor

    lr_scale_factor(cfg.lr_scale, 1)  # validates the rule before any rank talks to another

    comm = init_distributed(timeout=cfg.timeout)
    try:
        return _train_run(cfg, out, resume, overwrite, progress, comm)
    except BaseException as err:
        if comm.size == 1 or getattr(err, "collective", False):
            raise  # raised on every rank alike: each ends normally
        comm.abort(f"{type(err).__name__}: {err}; ending the whole job")  # the others would wait
        raise


def _train_run(cfg: RunConfig, out: Path, resume: bool, overwrite: bool, progress: bool, comm) -> dict:
    from ..data import DataLoader, load_dataset
    from ..data import transforms as T
    from ..io.model_file import save_model
    from ..optim import get_optimizer, get_schedule
    from ..train.trainer import Trainer

    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    if rank != 0:  # rank 0 fetches (and caches) the data first, the others then read the cache
        comm.barrier("waiting for rank 0 to load the data", timeout=max(cfg.timeout, 3600.0))
    train = load_dataset(cfg.data, "train", data_dir=cfg.data_dir)
    test = load_dataset(cfg.data, "test", data_dir=cfg.data_dir)
    if rank == 0 and comm is not None:
        comm.barrier("waiting for rank 0 to load the data", timeout=max(cfg.timeout, 3600.0))
    normalize = T.Normalize.from_data(train)   # per-channel statistics of the full training split
    if cfg.limit is not None:
        train = train.subset(np.arange(min(cfg.limit, len(train))))
    input_shape = tuple(int(s) for s in train.x.shape[1:])
    steps = [T.RandomCrop(input_shape[1:], padding=4), T.RandomHorizontalFlip()] if cfg.augment else []
    # Distributed: batch_size is the GLOBAL batch (unless per_rank_batch), each rank serves its shard,
    # and augmentation is drawn per example so it does not depend on the split.
    global_batch = cfg.batch_size * (world if cfg.per_rank_batch else 1)
    shard = dict(rank=rank, world_size=world) if comm is not None else {}
    train_loader = DataLoader(train, batch_size=global_batch, shuffle=True, drop_last=True,
                              transform=T.Compose(steps + [normalize]), seed=cfg.seed, prefetch=cfg.prefetch,
                              example_rng=comm is not None, **shard)
    test_loader = DataLoader(test, batch_size=256, transform=normalize, **shard)
    if len(train_loader) == 0:
        per_rank = f" x {world} ranks (--per-rank-batch)" if global_batch != cfg.batch_size else ""
        kept = " kept by --limit" if cfg.limit is not None else ""
        raise ConfigError(f"one batch (--batch-size {cfg.batch_size}{per_rank}) is more than the {len(train)} "
                          f"training examples{kept} of {cfg.data}: no step would run; give a smaller --batch-size")
    net = build_net(cfg.model, input_shape, train.num_classes, cfg.seed)
    fixed = [] if cfg.finetune else data_init(net, cfg.model, train, normalize)
    lr = cfg.lr
    if comm is not None:
        from ..distributed import lr_scale_factor

        lr = cfg.lr * lr_scale_factor(cfg.lr_scale, world)  # for large global batches (README)
    if cfg.finetune and not resume:  # resuming restores the weights from the checkpoint
        from ..io.torch_weights import load_backbone

        load_backbone(net, cfg.finetune)
    from ..finetune import class_heads

    groups = [{"params": [p for p, _ in class_heads(net)], "lr": cfg.head_lr}] if cfg.head_lr else None
    frozen = list(cfg.freeze or []) + [name for name in fixed if name not in (cfg.freeze or [])]
    optimizer = get_optimizer(cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, frozen=frozen or None,
                              param_groups=groups)
    total = cfg.epochs * len(train_loader)
    sched_args = {}
    if cfg.schedule == "warmup_linear":
        sched_args["warmup_steps"] = min(int(cfg.warmup_epochs * len(train_loader)), total - 1)
        if cfg.warmup_start is not None:
            sched_args["start_factor"] = cfg.warmup_start
    schedule = get_schedule(cfg.schedule, optimizer=optimizer, total_steps=total, **sched_args)
    common = dict(val_loader=test_loader, schedule=schedule, out_dir=out, checkpoint_every=cfg.checkpoint_every,
                  keep_checkpoints=cfg.keep_checkpoints, progress=progress, config=asdict(cfg),
                  continue_on_nan=cfg.continue_on_nan)
    if comm is None:
        trainer = Trainer(net, make_loss(cfg.loss, cfg.label_smoothing), optimizer, train_loader, **common)
    else:
        from ..distributed import DistributedTrainer

        trainer = DistributedTrainer(net, make_loss(cfg.loss, cfg.label_smoothing), optimizer, train_loader,
                                     comm=comm, sync_bn=cfg.sync_bn, **common)
    if resume:
        trainer.resume()
    if rank == 0:
        prepare_out_dir(out, overwrite)
        atomic_write_bytes(out / "config.json", json.dumps(asdict(cfg), indent=1).encode())
    start = time.perf_counter()
    trainer.fit(cfg.epochs)
    final = trainer.evaluate(test_loader)
    extra = {"classes": train.classes, "input_shape": list(input_shape), "mean": np.ravel(normalize.mean).tolist(),
             "std": np.ravel(normalize.std).tolist(), "dataset": cfg.data, "test_accuracy": final["accuracy"]}
    if rank == 0:
        save_model(net, out / "model.safetensors", extra=extra)
    return {"test_accuracy": final["accuracy"], "test_loss": final["loss"], "out_dir": str(out),
            "train_time": trainer.elapsed, "wall_time": time.perf_counter() - start,
            "history": trainer.history, "net": net, "trainer": trainer, "config": cfg,
            "rank": rank, "world_size": world}
