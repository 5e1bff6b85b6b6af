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
    "mnist": dict(model="lenet5", epochs=3, batch_size=64, optimizer="nesterov", lr=0.05, weight_decay=5e-4,
                  schedule="warmup_linear", warmup_epochs=0.5, augment=False, label_smoothing=0.0),
    "fashion_mnist": dict(model="lenet5", epochs=10, batch_size=64, optimizer="nesterov", lr=0.05,
                          weight_decay=5e-4, schedule="warmup_linear", warmup_epochs=0.5, augment=False,
                          label_smoothing=0.0),
    "digits": dict(model="INPUT[8x8x1] -> CONV3-16 -> RELU -> POOL2 -> FC-64 -> RELU -> FC-10", epochs=10,
                   batch_size=32, optimizer="nesterov", lr=0.05, weight_decay=5e-4, schedule="warmup_linear",
                   warmup_epochs=1, augment=False, label_smoothing=0.0),
    "cifar10": dict(model="cifar_convnet_bn", epochs=50, batch_size=128, optimizer="nesterov", lr=0.15,
                    weight_decay=5e-4, schedule="warmup_linear", warmup_epochs=2, augment=True,
                    label_smoothing=0.1),
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
    prefetch: int = 2
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
    """A zoo model by name, or a net from a spec string (anything containing '->')."""
    if "->" in model:
        from ..spec import parse

        return parse(model, input_shape=input_shape, rng=seed)
    from ..models import get_model

    return get_model(model, num_classes=num_classes, input_shape=input_shape, rng=seed)


def make_loss(name: str, label_smoothing: float):
    from ..losses import MulticlassSVM, SoftmaxCrossEntropy

    if name == "softmax":
        return SoftmaxCrossEntropy(label_smoothing=label_smoothing)
    if name == "svm":
        return MulticlassSVM()
    raise ConfigError(f"unknown loss {name!r}; known: softmax, svm")


def train_run(cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, evaluate on the test split, save model and history under ``cfg.out_dir``; returns results."""
    from ..data import DataLoader, load_dataset
    from ..data import transforms as T
    from ..io.model_file import save_model
    from ..optim import get_optimizer, get_schedule
    from .trainer import Trainer

    cfg = cfg.resolved()
    out = Path(cfg.out_dir)
    train = load_dataset(cfg.data, "train", data_dir=cfg.data_dir)
    test = load_dataset(cfg.data, "test", data_dir=cfg.data_dir)
    normalize = T.Normalize.from_data(train)   # per-channel statistics of the full training split
    if cfg.limit:
        train = train.subset(np.arange(min(cfg.limit, len(train))))
    input_shape = tuple(int(s) for s in train.x.shape[1:])
    steps = [T.RandomCrop(input_shape[1:], padding=4), T.RandomHorizontalFlip()] if cfg.augment else []
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                              transform=T.Compose(steps + [normalize]), seed=cfg.seed, prefetch=cfg.prefetch)
    test_loader = DataLoader(test, batch_size=256, transform=normalize)
    net = build_net(cfg.model, input_shape, train.num_classes, cfg.seed)
    optimizer = get_optimizer(cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_loader)
    sched_args = {}
    if cfg.schedule == "warmup_linear":
        sched_args["warmup_steps"] = min(int(cfg.warmup_epochs * len(train_loader)), total - 1)
    schedule = get_schedule(cfg.schedule, optimizer=optimizer, total_steps=total, **sched_args)
    trainer = Trainer(net, make_loss(cfg.loss, cfg.label_smoothing), optimizer, train_loader,
                      val_loader=test_loader, schedule=schedule, out_dir=out,
                      checkpoint_every=cfg.checkpoint_every, progress=progress, config=asdict(cfg))
    if resume:
        trainer.resume()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    start = time.perf_counter()
    trainer.fit(cfg.epochs)
    final = trainer.evaluate(test_loader)
    extra = {"classes": train.classes, "input_shape": list(input_shape), "mean": np.ravel(normalize.mean).tolist(),
             "std": np.ravel(normalize.std).tolist(), "dataset": cfg.data, "test_accuracy": final["accuracy"]}
    save_model(net, out / "model.safetensors", extra=extra)
    return {"test_accuracy": final["accuracy"], "test_loss": final["loss"], "out_dir": str(out),
            "train_time": trainer.elapsed, "wall_time": time.perf_counter() - start,
            "history": trainer.history, "net": net, "trainer": trainer, "config": cfg}
