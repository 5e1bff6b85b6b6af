"""The ``convnp`` command: thin argument parsing over the library.

Arguments are checked before any data is loaded. A user error (a ``ConvnpError``, or an
``OSError`` such as a full disk) prints one line and exits with status 2; ``--debug`` adds the
traceback. Any other exception is a bug: its traceback is printed with a request to report it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ..errors import ConfigError, ConvnpError


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``, refused with the accepted range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _check_model(model, where: str, set_by: dict) -> None:
    """ConfigError naming ``where`` for a zoo name with ``:key=value`` options its builder does not take.

    ``set_by`` maps the builder arguments the command fills itself (num_classes, rng) to what fills them.
    Spec strings (with '->') and saved model files are left to their own parsers.
    """
    if not model or "->" in model or os.path.isfile(model):
        return
    from ..models import model_info, parse_model_name

    try:
        name, options = parse_model_name(model)
        info = model_info(name)
    except ConfigError as err:
        raise ConfigError(f"{where} {model}: {err}") from None
    for key in options:
        if key in set_by:
            raise ConfigError(f"{where} {model}: {key} is set by {set_by[key]}, not as a model option")
    accepted = (*info.options, "dtype")
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(f"{where} {model}: {name} has no option {', '.join(unknown)}; "
                          f"it takes {', '.join(accepted)}")


def _cmd_train(args) -> int:
    from .run import RunConfig, train_run

    _check_model(args.model, "--model", {"num_classes": "the dataset (its class count)", "rng": "--seed"})
    cfg = RunConfig(data=args.data, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                    optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                    augment=args.augment, label_smoothing=args.label_smoothing, loss=args.loss, seed=args.seed,
                    limit=args.limit, out_dir=args.out, data_dir=args.data_dir,
                    checkpoint_every=args.checkpoint_every, warmup_epochs=args.warmup_epochs,
                    warmup_start=args.warmup_start, distributed=args.distributed, sync_bn=args.sync_bn,
                    per_rank_batch=args.per_rank_batch, lr_scale=args.lr_scale, timeout=args.timeout,
                    finetune=args.finetune, freeze=args.freeze, head_lr=args.head_lr,
                    continue_on_nan=args.continue_on_nan)
    result = train_run(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if result.get("rank", 0) != 0:
        return 0
    print(f"test accuracy: {result['test_accuracy']:.4f} ({result['config'].model} on {result['config'].data}, "
          f"{result['train_time']:.0f}s of training)")
    print(f"outputs: {result['out_dir']} (model.safetensors, checkpoint.safetensors, history.json)")
    if not args.no_report:
        from ..report import MissingDependencyError, build_report

        try:
            print(f"report: {build_report(result['out_dir'])}")
        except MissingDependencyError as err:
            print(f"no report: {err}", file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from ..report import build_report

    path = build_report(args.run_dir, out=args.out, dataset=args.data, num_images=args.num_images,
                        layers=args.layers, eval_limit=args.eval_limit)
    print(f"report: {path}")
    return 0


def _load_with_meta(path):
    from ..io.model_file import load_model

    return load_model(path, with_meta=True)


def _cmd_eval(args) -> int:
    import numpy as np

    from ..data import DataLoader, load_dataset
    from ..data.transforms import Normalize
    from ..losses import SoftmaxCrossEntropy

    net, extra = _load_with_meta(args.model)
    data = args.data or extra.get("dataset")
    if not data:
        raise ConfigError(f"{args.model} records no dataset: give one with --data NAME")
    test = load_dataset(data, args.split, data_dir=args.data_dir)
    norm = Normalize(extra["mean"], extra["std"]) if "mean" in extra and "std" in extra else None
    correct = total = 0
    loss_sum = 0.0
    for x, y in DataLoader(test, batch_size=256, transform=norm):
        scores = net.forward(x)
        loss_sum += SoftmaxCrossEntropy()(scores, y)[0] * len(y)
        correct += int(np.sum(scores.argmax(1) == y))
        total += len(y)
    print(f"{data} {args.split}: accuracy {correct / total:.4f}, loss {loss_sum / total:.4f} ({total} images)")
    return 0


def _cmd_predict(args) -> int:
    from .predict import predict_images
    from ..inspect.summary import parse_input_shape

    shape = parse_input_shape(args.input) if args.input else None
    net, extra = _load_with_meta(args.model)
    for path, top in predict_images(net, extra, args.images, k=args.top, input_shape=shape):
        shown = ", ".join(f"{name} {p:.3f}" for name, p in top)
        print(f"{path}: {shown}")
    return 0


def _cmd_data(args) -> int:
    from ..data import fetch, info, verify

    if args.action == "fetch":
        print(f"{args.name}: cached in {fetch(args.name, data_dir=args.data_dir)}")
    elif args.action == "verify":
        print(verify(args.name, data_dir=args.data_dir))
    else:
        print(info(args.name, data_dir=args.data_dir))
    return 0


def _cmd_summary(args) -> int:
    from ..models import build_model, list_models
    from ..inspect.summary import parse_input_shape, summary_text

    if args.list:
        print("\n".join(list_models()))
        return 0
    if not args.model:
        raise ConfigError("give a MODEL (zoo name or spec string) or --list")
    _check_model(args.model, "MODEL", {"num_classes": "--classes", "rng": "convnp summary (seed 0)"})
    shape = parse_input_shape(args.input) if args.input else None
    net, shape = build_model(args.model, input_shape=shape, num_classes=args.classes, rng=0)
    print(summary_text(net, shape, batch_size=args.batch, optimizer=args.optimizer, budget=args.budget))
    return 0


def _cmd_check(args) -> int:
    import numpy as np

    from ..models import build_model
    from ..train.sanity import sanity_checks

    _check_model(args.model, "MODEL", {"num_classes": "--classes", "rng": "--seed"})
    net, shape = build_model(args.model, num_classes=args.classes, rng=args.seed)
    num_classes = net.output_shape(shape)[0]
    if args.data == "random":
        rng = np.random.default_rng(args.seed)
        x = rng.standard_normal((args.examples, *shape)).astype(np.float32)
        y = rng.integers(0, num_classes, args.examples)
        source = "random images and labels"
    else:
        from ..data import load_dataset
        from ..data.transforms import Normalize

        data = load_dataset(args.data, "train", data_dir=args.data_dir)
        norm = Normalize.from_data(data)
        x, y = norm(data.x[:args.examples]), data.y[:args.examples]
        source = f"the first {args.examples} {args.data} training images"
    print(f"sanity checks of {args.model} on {source}:")
    results = sanity_checks(net, x, y, num_classes, overfit_examples=args.examples, seed=args.seed)
    for r in results:
        print(f"  {r}")
    return 0 if all(r.passed for r in results) else 1


def _cmd_export(args) -> int:
    from .export import export_model
    from ..inspect.summary import parse_input_shape

    _check_model(args.model, "MODEL", {"num_classes": "--classes", "rng": "convnp export (seed 0)"})
    shape = parse_input_shape(args.input) if args.input else None
    path = export_model(args.model, args.out, shape, opset=args.opset, num_classes=args.classes,
                        weights=args.weights, batch_size=args.batch, format=args.format)
    print(f"exported {args.model} to {path}")
    return 0


def _cmd_bench(args) -> int:
    from .bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnp", description="ConvNets in NumPy, after the CS231n notes.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    positive = _int_at_least(1)

    def command(name, **kwargs):
        return sub.add_parser(name, parents=[common], **kwargs)

    p = command("train", help="train a model on a dataset (defaults: lenet5 on MNIST)",
                       description="Train a zoo model or a spec string on a dataset; every option left out "
                                   "takes the dataset's recipe.")
    p.add_argument("--model", help="zoo name (convnp summary --list) or a spec string like 'INPUT[28x28x1] -> ...'")
    p.add_argument("--data", default="mnist", help="dataset name (default mnist)")
    p.add_argument("--epochs", type=int, help="epochs to train, >= 1 (with --resume: the run's own)")
    p.add_argument("--batch-size", type=int, help="examples per step, >= 1")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", help="sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", help="constant, step, cosine, onecycle, warmup_linear, ...")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (padding 4) and horizontal flip")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--loss", default="softmax", choices=["softmax", "svm"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="train on the first N >= 1 examples only (at least one batch)")
    p.add_argument("--out", default="runs/latest",
                   help="output directory (default runs/latest); one holding another run is refused")
    p.add_argument("--data-dir", help="dataset cache (default $CONVNP_DATA or ~/.cache/convnp)")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default: each epoch)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors; options left out take the run's values, "
                        "options given must equal them")
    p.add_argument("--overwrite", action="store_true",
                   help="move a run already in OUT aside to OUT.old-<timestamp> (never deleted) and start anew")
    p.add_argument("--continue-on-nan", action="store_true",
                   help="NaN/inf validation metrics only warn (default: they stop the run)")
    p.add_argument("--finetune", metavar="WEIGHTS", help="start from a PyTorch state_dict (.pth or .safetensors); "
                                                           "a head of another class count starts fresh")
    p.add_argument("--freeze", type=lambda s: [p for p in s.split(",") if p], metavar="PREFIX[,PREFIX...]",
                   help="parameter-name prefixes that are never updated, e.g. features or conv1,bn1,layer1")
    p.add_argument("--head-lr", type=float, help="learning rate of the class head (--lr applies to the rest)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    p.add_argument("--warmup-epochs", type=float, help="epochs of linear warm-up (schedule warmup_linear)")
    p.add_argument("--warmup-start", type=float,
                   help="warm-up starts at lr x this (default 0.1); 1/W with --lr-scale linear is Goyal et al.'s")
    g = p.add_argument_group("data-parallel training over MPI (mpiexec -n W convnp train ... --distributed)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over the MPI ranks: each trains on its shard of every global batch, "
                        "with the same results as one process (needs the mpi extra)")
    g.add_argument("--sync-bn", action="store_true",
                   help="batch-norm statistics of the global batch (default: of each rank's shard)")
    g.add_argument("--per-rank-batch", action="store_true",
                   help="--batch-size counts per rank: the global batch is batch size x W (default: global)")
    g.add_argument("--lr-scale", default="none", choices=["none", "linear", "sqrt"],
                   help="multiply the learning rate by W (linear scaling rule) or sqrt(W); for large global batches")
    g.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a rank waits for the others in a collective before the job is aborted (default 300)")
    p.set_defaults(func=_cmd_train)

    p = command("report", help="rebuild the HTML training report of a run directory",
                       description="Write RUN_DIR/report.html. Needs matplotlib (pip install 'convnp[report]').")
    p.add_argument("run_dir", help="a directory written by convnp train (model.safetensors or checkpoint.safetensors)")
    p.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    p.add_argument("--data", help="test dataset (default: the run's)")
    p.add_argument("--num-images", type=positive, default=8, help="examples for the saliency/occlusion maps (default 8)")
    p.add_argument("--layers", nargs="+", help="layers whose activation maps to show, e.g. features.1 features.4")
    p.add_argument("--eval-limit", type=positive, help="evaluate on the first N test images only")
    p.set_defaults(func=_cmd_report)

    p = command("summary", help="layer table: output sizes, params, FLOPs, memory",
                       description="Print a net's layers with output shapes, activations, weights, FLOPs and memory "
                                   "(activations, gradients, optimizer cache), like the notes' VGG table.")
    p.add_argument("model", nargs="?", help="zoo name (e.g. vgg16, cifar_convnet:batch_norm=True) or a spec string")
    p.add_argument("--input", help="C x H x W, e.g. 3x224x224 (default: the model's own)")
    p.add_argument("--classes", type=positive, help="number of classes (default: the model's own)")
    p.add_argument("--batch", type=positive, default=1, help="batch size for the memory totals")
    p.add_argument("--optimizer", default="momentum", help="sgd, momentum, adagrad, rmsprop, adam (optimizer cache)")
    p.add_argument("--budget", help="memory budget such as 8GB: also print the largest batch that fits")
    p.add_argument("--list", action="store_true", help="list the zoo's models")
    p.set_defaults(func=_cmd_summary)

    p = command("check", help="the notes' sanity checks: initial loss, overfit a small subset, gradient check")
    p.add_argument("model", help="zoo name or spec string")
    p.add_argument("--data", default="random", help="a dataset name, or 'random' (default) for random images/labels")
    p.add_argument("--examples", type=positive, default=50, help="examples to overfit (default 50)")
    p.add_argument("--classes", type=positive)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.set_defaults(func=_cmd_check)

    p = command("export", help="export a model to ONNX",
                       description="Export a saved model (model.safetensors), a zoo name or a spec string to ONNX "
                                   "(the evaluation forward pass). Needs: pip install 'convnp[onnx]'.")
    p.add_argument("model", help="a saved model file, a zoo name (with :key=value options) or a spec string")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--input", help="C x H x W (default: the model's own)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--classes", type=positive, help="number of classes of a zoo model")
    p.add_argument("--weights", help="PyTorch state_dict to load into a zoo model first")
    p.add_argument("--batch", type=positive, help="fixed batch size (default: symbolic)")
    p.set_defaults(func=_cmd_export)

    from .bench import add_arguments as add_bench_arguments

    p = command("bench", help="time a model against PyTorch in one process (needs torch)",
                       description="Build the same net in convnp and PyTorch with identical weights, check they "
                                   "agree, time both alternately and print images/s, GFLOP/s and the ratio.")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)

    p = command("eval", help="accuracy of a saved model on a dataset split")
    p.add_argument("model", help="a saved model (model.safetensors)")
    p.add_argument("--data", help="dataset (default: the one it was trained on)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--data-dir")
    p.set_defaults(func=_cmd_eval)

    p = command("predict", help="top-k classes of image files")
    p.add_argument("model", help="a saved model (model.safetensors)")
    p.add_argument("images", nargs="+", help="PNG/JPEG files")
    p.add_argument("--top", type=positive, help="classes shown per image, 1 to the model's class count (default 3)")
    p.add_argument("--input", help="C x H x W to resize to, for a model that records no input shape")
    p.set_defaults(func=_cmd_predict)

    p = command("data", help="fetch a dataset into the cache, describe it, or re-check every file")
    p.add_argument("action", choices=["fetch", "info", "verify"])
    p.add_argument("name", help="mnist, fashion_mnist, cifar10, cifar100, digits")
    p.add_argument("--data-dir")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv=None) -> int:
    """Run one command; 2 after a user error (one line, the traceback with --debug), 1 after a bug."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"convnp {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ConvnpError, OSError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"convnp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug: show everything and ask for a report
        traceback.print_exc()
        from .._util import convnp_version

        print(f"convnp {args.command}: internal error in convnp {convnp_version()}, not a problem with your command: "
              "please report it with the command line and the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
