"""One training run from names: a model (zoo name or spec string) on a dataset, start to finish.

``train_run`` is what ``convnp train`` calls: it loads the data, builds the net, the optimizer
and the schedule from a per-dataset recipe (every value overridable), trains with checkpoints,
evaluates on the test split and saves the model (config + weights + class names + the input
normalisation) so ``convnp.load`` / ``convnp predict`` work without the code that built it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError

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


def train_run(cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, evaluate on the test split, save model and history under ``cfg.out_dir``; returns results."""
    cfg = cfg.resolved()
    if not cfg.distributed:
        used = [f"{k}={getattr(cfg, k)!r}" for k, default in (("sync_bn", False), ("per_rank_batch", False),
                                                              ("lr_scale", "none")) if getattr(cfg, k) != default]
        if used:
            raise ConfigError(f"{', '.join(used)} only apply to data-parallel training: add distributed=True "
                              "(convnp train --distributed)")
        return _train_run(cfg, resume, progress, None)
    from ..distributed import init_distributed, lr_scale_factor

    lr_scale_factor(cfg.lr_scale, 1)  # validates the rule before any rank talks to another

    comm = init_distributed(timeout=cfg.timeout)
    try:
        return _train_run(cfg, resume, progress, comm)
    except BaseException as err:
        if comm.size == 1 or getattr(err, "collective", False):
            raise  # raised on every rank alike: each ends normally
        comm.abort(f"{type(err).__name__}: {err}; ending the whole job")  # the others would wait
        raise


def _train_run(cfg: RunConfig, resume: bool, progress: bool, comm) -> dict:
    from ..data import DataLoader, load_dataset
    from ..data import transforms as T
    from ..io.model_file import save_model
    from ..optim import get_optimizer, get_schedule
    from .trainer import Trainer

    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    out = Path(cfg.out_dir)
    if rank != 0:  # rank 0 fetches (and caches) the data first, the others then read the cache
        comm.barrier("waiting for rank 0 to load the data", timeout=max(cfg.timeout, 3600.0))
    train = load_dataset(cfg.data, "train", data_dir=cfg.data_dir)
    test = load_dataset(cfg.data, "test", data_dir=cfg.data_dir)
    if rank == 0 and comm is not None:
        comm.barrier("waiting for rank 0 to load the data", timeout=max(cfg.timeout, 3600.0))
    normalize = T.Normalize.from_data(train)   # per-channel statistics of the full training split
    if cfg.limit:
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
    net = build_net(cfg.model, input_shape, train.num_classes, cfg.seed)
    fixed = [] if cfg.finetune else data_init(net, cfg.model, train, normalize)
    lr = cfg.lr
    if comm is not None:
        from ..distributed import lr_scale_factor

        lr = cfg.lr * lr_scale_factor(cfg.lr_scale, world)  # for large global batches (README)
    if cfg.finetune:
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
                  keep_checkpoints=cfg.keep_checkpoints, progress=progress, config=asdict(cfg))
    if comm is None:
        trainer = Trainer(net, make_loss(cfg.loss, cfg.label_smoothing), optimizer, train_loader, **common)
    else:
        from ..distributed import DistributedTrainer

        trainer = DistributedTrainer(net, make_loss(cfg.loss, cfg.label_smoothing), optimizer, train_loader,
                                     comm=comm, sync_bn=cfg.sync_bn, **common)
    if resume:
        trainer.resume()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
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
