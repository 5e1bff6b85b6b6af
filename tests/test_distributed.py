"""Data-parallel training over MPI: same results as one process, resume, faults, and the helpers.

The multi-rank tests launch ``mpiexec -n 2`` on this very file, which then runs as a worker
(``python tests/test_distributed.py <mode> ...``); they are skipped, with the reason, where mpi4py
or mpiexec is missing (``pip install -e ".[mpi]"``). The rest runs in one process.

What "same results" means here:

* sync BN: two ranks equal ONE process training on the whole global batch (the plain Trainer).
* local BN (the default): each rank normalises its own shard, so two ranks equal one process that
  runs each shard through forward/backward separately (batch norm over that shard, "ghost batch
  norm") and sums the n/N-weighted gradients; the running statistics are rank 0's (shard 0's).

Tolerances: in float64 the two computations differ only in the order of additions (a GEMM over B
rows vs two over B/2 rows, summed), so they agree to ~1e-13 after 12 steps; we assert 1e-10. In
float32 the same reordering costs ~sqrt(B) * 6e-8 relative per reduction, carried through 12
momentum steps; we assert rtol 2e-4, atol 2e-5 (measured: about 1e-6).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # when run as an MPI worker
    sys.path.insert(0, str(ROOT))

from convnp.data import DataLoader
from convnp.data import transforms as T
from convnp.data.datasets import ArrayDataset
from convnp.distributed import (
    DistributedTrainer,
    GradBuckets,
    SelfComm,
    lr_scale_factor,
    predict_step,
    ring_allreduce_time,
    sync_batchnorm_stats,
)
from convnp.errors import ConfigError, StateError


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                               reason="needs mpi4py and mpiexec (the mpi extra: pip install -e '.[mpi]')")
SPEC_LOCAL = "INPUT[8x8x1] -> CONV3-8 -> BN -> RELU -> POOL2 -> FC-10"
SPEC_SYNC = "INPUT[8x8x1] -> CONV3-8/NB -> BN -> RELU -> POOL2 -> FC-16/NB -> BN -> RELU -> DROPOUT0.25 -> FC-10"
CLI_SPEC = "INPUT[8x8x1] -> CONV3-8/NB -> BN -> RELU -> POOL2 -> FC-32 -> RELU -> DROPOUT0.2 -> FC-10"
EPOCHS, BATCH = 3, 15  # 60 examples: 4 global batches of 15 per epoch, shards of 7 and 8 rows


def _graph_net(dtype):
    """A Sequential holding a residual Graph (nested containers, a fan-out, an Add, BN in both paths)."""
    from convnp.layers.activation import ReLU
    from convnp.layers.conv import Conv2d
    from convnp.layers.linear import Flatten, Linear
    from convnp.layers.pool import MaxPool2d
    from convnp.nets.blocks import conv_bn_relu, residual_block
    from convnp.nets.sequential import Sequential

    body = [conv_bn_relu(4, 4, 3, padding=1, rng=8, dtype=dtype), ("c2", Conv2d(4, 4, 3, padding=1, rng=9, dtype=dtype))]
    return Sequential([("stem", conv_bn_relu(1, 4, 3, padding=1, rng=7, dtype=dtype)),
                       ("res", residual_block(body, post=ReLU())), ("pool", MaxPool2d(2)), ("flat", Flatten()),
                       ("fc", Linear(64, 10, rng=10, dtype=dtype))])


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _mpirun(n: int, *args, timeout: float = 120, **kw):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


# --- the small problem both sides train -------------------------------------------------------------

def _data(dtype, n=60, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.standard_normal((n, 1, 8, 8)).astype(dtype), rng.integers(0, 10, n))


def _augment():
    return T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip()])


def _parts(spec, dtype):
    from convnp.losses import SoftmaxCrossEntropy
    from convnp.optim import get_optimizer, get_schedule
    from convnp.notation.spec import parse

    net = spec(dtype) if callable(spec) else parse(spec, rng=7, dtype=dtype)
    opt = get_optimizer("nesterov", lr=0.05, weight_decay=1e-3)
    sched = get_schedule("warmup_linear", optimizer=opt, total_steps=EPOCHS * 4, warmup_steps=3)
    return net, SoftmaxCrossEntropy(label_smoothing=0.1), opt, sched


def _loaders(dtype, rank=0, world=1):
    train = DataLoader(_data(dtype), batch_size=BATCH, shuffle=True, drop_last=True, transform=_augment(),
                       seed=3, example_rng=True, rank=rank, world_size=world)
    val = DataLoader(_data(dtype, n=37, seed=1), batch_size=16, rank=rank, world_size=world)  # last batch: 2 + 3
    return train, val


def _state(net):
    return {k: np.array(v, copy=True) for k, v in net.state_dict().items()}


def _ghost_reference(spec, dtype, world):
    """One process, local BN: each shard through forward/backward alone, n/N-weighted gradients summed."""
    from convnp.optim import clip_grad_norm

    net, loss_fn, opt, sched = _parts(spec, dtype)
    train, val = _loaders(dtype)
    params = net.named_parameters()
    for _ in range(EPOCHS):
        for x, y in train:
            total, summed = len(y), None
            for r in range(world):
                lo, hi = r * total // world, (r + 1) * total // world
                keep = {k: np.array(v, copy=True) for k, v in net.named_buffers().items()} if r else None
                scores = net.forward(x[lo:hi], train=True)
                _, dscores = loss_fn(scores, y[lo:hi])
                net.backward(dscores * dscores.dtype.type((hi - lo) / total))
                grads = net.named_grads()
                summed = {k: g.copy() for k, g in grads.items()} if summed is None else \
                    {k: summed[k] + grads[k] for k in summed}
                if keep is not None:  # rank 0's running statistics are the ones kept
                    net.load_state_dict(keep, strict=False)
            clip_grad_norm(summed, 5.0)
            opt.step(params, summed)
            sched.step()
    from convnp.train.trainer import Trainer

    ev = Trainer(net, loss_fn, opt, train, progress=False).evaluate(val)
    return _state(net), ev


def _plain_reference(spec, dtype):
    """One process over the whole global batch: the ordinary Trainer."""
    from convnp.train.trainer import Trainer

    net, loss_fn, opt, sched = _parts(spec, dtype)
    train, val = _loaders(dtype)
    tr = Trainer(net, loss_fn, opt, train, val_loader=val, schedule=sched, clip_norm=5.0, progress=False)
    hist = tr.fit(EPOCHS)
    return _state(net), tr.evaluate(val), hist


def _distributed(comm, spec, dtype, sync_bn, overlap=True, bucket_bytes=256):
    net, loss_fn, opt, sched = _parts(spec, dtype)
    if comm.rank != 0:  # wrong initial weights elsewhere: the trainer must broadcast rank 0's
        for p in net.named_parameters().values():
            p += 1.0
    train, val = _loaders(dtype, comm.rank, comm.size)
    tr = DistributedTrainer(net, loss_fn, opt, train, comm=comm, sync_bn=sync_bn, overlap=overlap,
                            bucket_bytes=bucket_bytes, val_loader=val, schedule=sched, clip_norm=5.0, progress=False)
    hist = tr.fit(EPOCHS)
    ev = tr.evaluate(val)
    return _state(net), ev, hist, tr.dp.max_divergence(), tr


# --- workers (run under mpiexec) -----------------------------------------------------------------------

def _worker_equal(out: str) -> None:
    from convnp.distributed import init_distributed

    comm = init_distributed(timeout=60)
    saved, report = {}, {}
    cases = [("float64", False, False, SPEC_LOCAL), ("float64", True, True, SPEC_SYNC),
             ("float32", False, True, SPEC_LOCAL), ("float32", True, False, SPEC_SYNC),
             ("float64", True, True, _graph_net)]
    for dtype, sync_bn, overlap, spec in cases:
        state, ev, hist, div, _ = _distributed(comm, spec, dtype, sync_bn, overlap)
        tag = f"{dtype}-{'sync' if sync_bn else 'local'}" + ("-graph" if callable(spec) else "")
        if comm.rank == 0:
            if sync_bn:
                ref, ref_ev, ref_hist = _plain_reference(spec, dtype)
                report[tag + "-hist"] = [[h["train_loss"], r["train_loss"], h["val_loss"], r["val_loss"],
                                          h["train_accuracy"], r["train_accuracy"]] for h, r in zip(hist, ref_hist)]
            else:
                ref, ref_ev = _ghost_reference(spec, dtype, comm.size)
            report[tag] = {"divergence": div, "eval": [ev["loss"], ref_ev["loss"], ev["accuracy"], ref_ev["accuracy"]]}
            for k in state:
                saved[f"{tag}/dist/{k}"], saved[f"{tag}/ref/{k}"] = state[k], ref[k]
    if comm.rank == 0:
        np.savez(out + ".npz", **saved)
        Path(out + ".json").write_text(json.dumps(report))


def _worker_collectives() -> None:
    from convnp.distributed import Comm

    comm = Comm(timeout=60)
    r, w = comm.rank, comm.size
    # buckets: odd sizes, two dtypes, a parameter larger than a bucket, scaling, both launch modes
    shapes = {"a": ((3,), "float32"), "b": ((5, 7), "float32"), "c": ((1,), "float64"), "d": ((1001,), "float32"),
              "e": ((2, 3, 3, 3), "float64"), "f": ((13,), "float32")}
    params = {k: np.zeros(s, dt) for k, (s, dt) in shapes.items()}

    def grad(rank, k):
        s, dt = shapes[k]
        return np.random.default_rng([rank, ord(k)]).standard_normal(s).astype(dt)

    for overlap in (True, False):
        for cap in (0, 64, 4096):
            gb = GradBuckets(params, comm, bucket_bytes=cap, overlap=overlap)
            for step in range(2):
                gb.reset()
                for k in reversed(list(params)):  # any order
                    gb.add(k, grad(r, k), scale=0.5 + step)
                    gb.progress()
                got = gb.finish()
                for k in params:
                    want = sum(grad(q, k).astype(np.float64) * (0.5 + step) for q in range(w))
                    tol = 1e-12 if shapes[k][1] == "float64" else 1e-5
                    assert got[k].dtype == np.dtype(shapes[k][1]), k
                    np.testing.assert_allclose(got[k], want, rtol=tol, atol=tol, err_msg=f"{k} cap={cap}")
    # broadcast of bytes and arrays, barrier
    data = comm.bcast_bytes(b"checkpoint bytes \x00\xff" * 1000 if r == 0 else None)
    assert data == b"checkpoint bytes \x00\xff" * 1000
    assert comm.bcast_bytes(None) is None
    arr = np.full(7, float(r))
    comm.bcast_(arr, root=w - 1)
    assert np.all(arr == w - 1)
    comm.barrier()
    # synchronised batch-norm statistics equal those of the concatenated batch (unequal shards)
    rng = np.random.default_rng(5)
    full = (rng.standard_normal((9, 4, 3, 3)) * 3 + 10).astype(np.float32)
    lo, hi = r * 9 // w, (r + 1) * 9 // w
    mean, var, m = sync_batchnorm_stats(full[lo:hi], comm)
    assert m == 9 * 9
    np.testing.assert_allclose(mean, full.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(var, full.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-5)
    if r == 0:
        print("COLLECTIVES OK", flush=True)


def _worker_cli(args: list) -> None:
    """``convnp train`` with each step slowed down (so a test can kill or stop a rank mid-run) and
    each rank's pid written to OUT/rank<r>.pid."""
    slow = float(args.pop(0))
    out = Path(args[args.index("--out") + 1])
    from convnp.distributed import trainer as dt

    original = dt.DistributedTrainer.train_step

    def slowed(self, x, y):
        time.sleep(slow)
        return original(self, x, y)

    dt.DistributedTrainer.train_step = slowed
    from mpi4py import MPI

    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{MPI.COMM_WORLD.Get_rank()}.pid").write_text(str(os.getpid()))
    from convnp.app.cli import main

    sys.exit(main(args))


# --- one process ----------------------------------------------------------------------------------------

def test_loader_shards_are_the_single_process_batches():
    ds = _data(np.float32, n=23)
    kw = dict(batch_size=10, shuffle=True, transform=_augment(), seed=4, example_rng=True)
    whole = [(x, y) for x, y in DataLoader(ds, **kw)]  # batches of 10, 10, 3
    for world in (1, 2, 3):
        shards = [[(x, y) for x, y in DataLoader(ds, rank=r, world_size=world, **kw)] for r in range(world)]
        for b, (x, y) in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([s[b][1] for s in shards]), y)
            np.testing.assert_array_equal(np.concatenate([s[b][0] for s in shards]), x)
            assert [len(s[b][1]) for s in shards] == [(r + 1) * len(y) // world - r * len(y) // world
                                                      for r in range(world)]
    loader = DataLoader(ds, rank=1, world_size=2, **kw)
    assert loader.batch_length(2) == 3 and loader.shard_range(3) == (1, 3) and loader.shard_range(10, 0) == (0, 5)


def test_loader_example_rng_does_not_depend_on_the_batch_size():
    ds = _data(np.float32, n=12)
    a = np.concatenate([x for x, _ in DataLoader(ds, batch_size=3, transform=_augment(), example_rng=True)])
    b = np.concatenate([x for x, _ in DataLoader(ds, batch_size=4, transform=_augment(), example_rng=True)])
    c = np.concatenate([x for x, _ in DataLoader(ds, batch_size=4, transform=_augment())])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)  # the batch-level generator draws differently


def test_loader_distributed_errors_and_state():
    ds = _data(np.float32, n=20)
    with pytest.raises(ConfigError, match="example_rng=True"):
        DataLoader(ds, batch_size=4, transform=_augment(), rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rank 2 must be < world_size 2"):
        DataLoader(ds, batch_size=4, rank=2, world_size=2)
    DataLoader(ds, batch_size=4, transform=T.Normalize(0.0, 1.0), rank=1, world_size=2)  # not random: fine
    a = DataLoader(ds, batch_size=4, shuffle=True, example_rng=True, rank=0, world_size=2)
    state = a.state_dict()
    assert state["example_rng"] is True
    DataLoader(ds, batch_size=4, shuffle=True, example_rng=True, rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(ConfigError, match="example_rng"):
        DataLoader(ds, batch_size=4, shuffle=True).load_state_dict(state)
    with pytest.raises(ConfigError, match="example_rng"):
        a.load_state_dict(DataLoader(ds, batch_size=4, shuffle=True).state_dict())


def test_bucket_layout_odd_sizes_dtypes_and_views():
    params = {"w3": np.zeros((3, 3), np.float32), "b3": np.zeros(3, np.float32), "big": np.zeros(100, np.float32),
              "c": np.zeros(5, np.float64), "d": np.zeros((1,), np.float64), "e": np.zeros(2, np.float32)}
    gb = GradBuckets(params, SelfComm(), bucket_bytes=40)
    # runs of one dtype, closed at >= 40 bytes: [w3] (36 B) + b3 -> 48 B; big alone; [c] 40 B; [d]; [e]
    assert [b.names for b in gb.buckets] == [["w3", "b3"], ["big"], ["c"], ["d"], ["e"]]
    assert [b.dtype.name for b in gb.buckets] == ["float32", "float32", "float64", "float64", "float32"]
    assert gb.nbytes == 4 * (9 + 3 + 100 + 2) + 8 * 6
    one = GradBuckets(params, SelfComm(), bucket_bytes=None)
    assert [len(b.names) for b in one.buckets] == [3, 2, 1]  # one bucket per dtype run
    rng = np.random.default_rng(0)
    grads = {k: rng.standard_normal(p.shape) for k, p in params.items()}  # float64 in: cast to the slot
    for step in range(2):
        gb.reset()
        for k in params:
            gb.add(k, grads[k], scale=0.25)
        out = gb.finish()
        for k, p in params.items():
            assert out[k].shape == p.shape and out[k].dtype == p.dtype
            np.testing.assert_allclose(out[k], grads[k] * 0.25, rtol=1e-6)
            assert np.shares_memory(out[k], gb.slot[k][0].buffer)


def test_bucket_misuse_is_an_error():
    params = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    gb = GradBuckets(params, SelfComm(), bucket_bytes=4)
    gb.reset()
    gb.add("a", np.ones(3))
    with pytest.raises(StateError, match="added twice"):
        gb.add("a", np.ones(3))
    with pytest.raises(ConfigError, match="shape"):
        gb.add("b", np.ones(3))
    with pytest.raises(ConfigError, match="no slot"):
        gb.add("zzz", np.ones(3))
    with pytest.raises(StateError, match="no gradient for \\['b'\\]"):
        gb.finish()
    with pytest.raises(ConfigError, match="floating"):
        GradBuckets({"i": np.zeros(2, np.int64)}, SelfComm())
    with pytest.raises(ConfigError, match="bucket_bytes"):
        GradBuckets(params, SelfComm(), bucket_bytes=-1)


@pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (the mpi extra: pip install -e '.[mpi]')")
def test_comm_of_one_process_is_the_identity():
    from convnp.distributed import Comm

    comm = Comm(timeout=30)
    assert (comm.rank, comm.size) == (0, 1)
    buf = np.arange(7, dtype=np.float32)
    comm.allreduce_(buf)
    np.testing.assert_array_equal(buf, np.arange(7))
    assert comm.bcast_bytes(b"xyz") == b"xyz"
    with pytest.raises(ConfigError, match="contiguous"):
        comm.allreduce_(np.zeros((4, 4))[:, 0])
    with pytest.raises(ConfigError, match="timeout"):
        Comm(timeout=0)


def test_sync_bn_stats_of_one_process():
    x = np.random.default_rng(1).standard_normal((6, 3, 4)).astype(np.float32) * 5 + 100
    mean, var, m = sync_batchnorm_stats(x, SelfComm())
    assert m == 24
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-7)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=(0, 2)), rtol=1e-5)


@pytest.mark.parametrize("sync_bn", [False, True])
def test_one_rank_is_bit_identical_to_the_trainer(sync_bn):
    state, ev, hist, div, _ = _distributed(SelfComm(), SPEC_SYNC, "float32", sync_bn)
    ref, ref_ev, ref_hist = _plain_reference(SPEC_SYNC, "float32")
    for k in ref:
        assert np.array_equal(state[k], ref[k]), k
    assert ev == ref_ev and div == 0.0
    assert [dict(h, time=0) for h in hist] == [dict(h, time=0) for h in ref_hist]


def test_nan_loss_is_raised_on_every_rank(monkeypatch):
    from convnp.losses import SoftmaxCrossEntropy
    from convnp.train.trainer import TrainingError

    monkeypatch.setattr(SoftmaxCrossEntropy, "__call__",
                        lambda self, s, y: (float("nan"), np.zeros_like(s)))
    with pytest.raises(TrainingError, match="mean over all 1 ranks") as info:
        _distributed(SelfComm(), SPEC_LOCAL, "float32", False)
    assert info.value.collective


def test_lr_scaling_cost_model_and_config_checks():
    assert lr_scale_factor("none", 8) == 1.0 and lr_scale_factor("linear", 8) == 8.0
    assert lr_scale_factor("sqrt", 16) == 4.0
    with pytest.raises(ConfigError, match="known: none, linear, sqrt"):
        lr_scale_factor("cubic", 2)
    assert ring_allreduce_time(1e6, 1, 1e9, 1e-6) == 0.0
    # 4 workers: 2*3/4 * 1 MB / 1 GB/s + 6 * 10 us = 1.5 ms + 60 us
    assert ring_allreduce_time(1e6, 4, 1e9, 1e-5) == pytest.approx(1.56e-3)
    p = predict_step(1e-3, 64, 1e6, 4, 1e9, 1e-5)
    assert p["step_s"] == pytest.approx(0.064 + 1.56e-3) and p["efficiency"] == pytest.approx(0.064 / p["step_s"])
    from convnp.app.run import RunConfig, train_run

    with pytest.raises(ConfigError, match="only apply to data-parallel training"):
        train_run(RunConfig(data="digits", sync_bn=True))


def test_distributed_without_mpi4py_says_how_to_install(monkeypatch):
    from convnp.distributed import comm

    monkeypatch.setattr(comm, "mpi_available", lambda: False)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[mpi\]"'):
        comm.init_distributed()
    assert isinstance(comm.init_distributed(require_mpi=False), SelfComm) or comm.launched_by_mpi()


# --- two ranks -------------------------------------------------------------------------------------------

@needs_mpi
def test_collectives_on_two_ranks():
    proc = _check(_mpirun(2, __file__, "collectives", timeout=60))
    assert "COLLECTIVES OK" in proc.stdout


@needs_mpi
def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "equal")
    _check(_mpirun(2, __file__, "equal", out, timeout=90))
    saved = np.load(out + ".npz")
    report = json.loads(Path(out + ".json").read_text())
    tol = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 2e-4, "atol": 2e-5}}
    tags = sorted({k.split("/")[0] for k in saved.files})
    assert tags == ["float32-local", "float32-sync", "float64-local", "float64-sync", "float64-sync-graph"]
    for tag in tags:
        t = tol[tag.split("-")[0]]
        names = [k.split("/", 2)[2] for k in saved.files if k.startswith(tag + "/dist/")]
        assert any("running_mean" in n for n in names) and any("weight" in n for n in names)
        for name in names:
            np.testing.assert_allclose(saved[f"{tag}/dist/{name}"], saved[f"{tag}/ref/{name}"], **t,
                                       err_msg=f"{tag}: {name}")
        assert report[tag]["divergence"] == 0.0, tag  # every rank holds exactly the same weights
        loss, ref_loss, acc, ref_acc = report[tag]["eval"]
        assert loss == pytest.approx(ref_loss, rel=t["rtol"] * 10) and acc == ref_acc, tag
    for tag in ("float32-sync", "float64-sync", "float64-sync-graph"):
        for tl, rtl, vl, rvl, ta, rta in report[tag + "-hist"]:
            assert tl == pytest.approx(rtl, rel=1e-4) and vl == pytest.approx(rvl, rel=1e-4) and ta == rta


def _cli_args(out, *extra):
    # 32 per rank: a global batch of 64 (22 steps per epoch), lr x 2 (the linear rule), warm-up from lr / 2
    return ["-m", "convnp", "train", "--data", "digits", "--model", CLI_SPEC, "--epochs", "2",
            "--batch-size", "32", "--per-rank-batch", "--lr-scale", "linear", "--warmup-start", "0.5",
            "--no-augment", "--quiet", "--no-report", "--checkpoint-every", "5", "--distributed",
            "--out", str(out), *extra]


def _start_slow(out, seconds_per_step, *extra):
    cmd = [MPIEXEC, "-n", "2", sys.executable, __file__, "cli", str(seconds_per_step), *_cli_args(out, *extra)[2:]]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, limit=60.0):
    deadline = time.monotonic() + limit
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not path.exists():
        out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "(still running)")
        raise AssertionError(f"{path} never appeared; exit {proc.returncode}\nstdout:\n{out[-2000:]}\n"
                             f"stderr:\n{err[-3000:]}")


def _weights(path):
    from convnp.io.model_file import load_model

    return load_model(path).state_dict()


@needs_mpi
def test_sigkill_of_a_rank_ends_the_job_and_resume_is_exact(tmp_path):
    full = _check(_mpirun(2, *_cli_args(tmp_path / "full")))
    assert full.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert not list((tmp_path / "full").glob("*.tmp"))

    cut = tmp_path / "cut"
    proc = _start_slow(cut, 0.03)
    try:
        _wait_for(cut / "checkpoint.safetensors", proc)
        _wait_for(cut / "rank1.pid", proc)
        killed_at = time.monotonic()
        os.kill(int((cut / "rank1.pid").read_text()), signal.SIGKILL)
        proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 60
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    from convnp.train.checkpoint import load_checkpoint

    _, meta = load_checkpoint(cut / "checkpoint.safetensors")  # intact
    assert meta["trainer"]["global_step"] % 5 == 0 and meta["trainer"]["global_step"] < 2 * 22
    assert meta["loader"]["example_rng"] is True and meta["loader"]["batch_size"] == 64
    assert meta["schedule"]["base_lr"] == pytest.approx(2 * 0.05)  # the digits recipe's lr, x 2 ranks
    assert meta["schedule"]["config"]["start_factor"] == 0.5
    _check(_mpirun(2, *_cli_args(cut, "--resume")))
    a, b = _weights(tmp_path / "full" / "model.safetensors"), _weights(cut / "model.safetensors")
    for k in a:
        assert np.array_equal(a[k], b[k]), k  # bit-identical to the uninterrupted distributed run


@needs_mpi
def test_a_hung_rank_aborts_the_job_with_a_message(tmp_path):
    out = tmp_path / "hang"
    proc = _start_slow(out, 0.03, "--timeout", "3")
    pid = None
    try:
        _wait_for(out / "checkpoint.safetensors", proc)
        _wait_for(out / "rank1.pid", proc)
        pid = int((out / "rank1.pid").read_text())
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - stopped_at < 60
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "rank 0 of 2 waited 3 s" in err and "a rank died or hangs" in err and "--resume" in err, err
    from convnp.train.checkpoint import load_checkpoint

    load_checkpoint(out / "checkpoint.safetensors")


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "equal":
        _worker_equal(rest[0])
    elif mode == "collectives":
        _worker_collectives()
    elif mode == "cli":
        _worker_cli(rest)
    else:
        raise SystemExit(f"unknown worker mode {mode!r}")
