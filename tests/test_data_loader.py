"""DataLoader: coverage per epoch, reproducible order, exact resume, prefetch equivalence."""

import threading

import numpy as np
import pytest

from convnp.data import ArrayDataset, DataLoader
from convnp.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
from convnp.errors import ConfigError


def dataset(n=23, hw=6):
    x = np.random.default_rng(0).random((n, 2, hw, hw)).astype(np.float32)
    return ArrayDataset(x, np.arange(n))


def augment():
    return Compose([RandomCrop(4, padding=1), RandomHorizontalFlip()])


def collect(loader, limit=None):
    out = []
    for i, (x, y) in enumerate(loader):
        out.append((x.copy(), y.copy()))
        if limit is not None and i + 1 == limit:
            break
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


@pytest.mark.parametrize("n,bs,drop_last", [(23, 5, False), (23, 5, True), (20, 5, False),
                                            (20, 5, True), (3, 8, False), (3, 8, True),
                                            (1, 1, False)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_once_per_epoch(n, bs, drop_last, shuffle):
    loader = DataLoader(dataset(n), batch_size=bs, shuffle=shuffle, drop_last=drop_last, seed=3)
    expect_batches = n // bs if drop_last else -(-n // bs)
    assert len(loader) == expect_batches
    for epoch in range(2):
        batches = collect(loader)
        assert len(batches) == expect_batches
        sizes = [len(y) for _, y in batches]
        assert all(s == bs for s in sizes[:-1])
        ys = np.concatenate([y for _, y in batches]) if batches else np.array([], int)
        if drop_last:
            assert len(ys) == (n // bs) * bs and len(set(ys.tolist())) == len(ys)
        else:
            assert sorted(ys.tolist()) == list(range(n))
        if not shuffle:
            np.testing.assert_array_equal(ys, np.arange(len(ys)))
        assert loader.epoch == epoch + 1 and loader.step == 0


def test_batches_match_dataset_rows():
    ds = dataset()
    for x, y in DataLoader(ds, batch_size=4, shuffle=True, seed=1):
        np.testing.assert_array_equal(x, ds.x[y])


def test_order_reproducible_from_seed_and_epoch():
    a = DataLoader(dataset(), batch_size=4, shuffle=True, seed=11)
    b = DataLoader(dataset(), batch_size=4, shuffle=True, seed=11)
    c = DataLoader(dataset(), batch_size=4, shuffle=True, seed=12)
    ea0, ea1 = collect(a), collect(a)
    assert_same_batches(ea0, collect(b))
    assert_same_batches(ea1, collect(b))
    order = lambda batches: np.concatenate([y for _, y in batches]).tolist()  # noqa: E731
    assert order(ea0) != order(ea1)  # a new permutation each epoch
    assert order(collect(c)) != order(ea0)
    np.testing.assert_array_equal(a.order(1), np.concatenate([y for _, y in ea1]))


def test_augmentation_reproducible_and_varies():
    ds = dataset()
    a = collect(DataLoader(ds, batch_size=6, transform=augment(), seed=5))
    b = collect(DataLoader(ds, batch_size=6, transform=augment(), seed=5))
    c = collect(DataLoader(ds, batch_size=6, transform=augment(), seed=6))
    assert_same_batches(a, b)
    assert a[0][0].shape == (6, 2, 4, 4)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("stop_at", [0, 1, 3, 5])
def test_resume_gives_identical_remaining_batches(prefetch, stop_at):
    ds = dataset()
    kw = dict(batch_size=4, shuffle=True, transform=augment(), seed=9, prefetch=prefetch)
    ref = DataLoader(ds, **kw)
    collect(ref)  # epoch 0
    first = collect(ref, limit=stop_at) if stop_at else []
    state = ref.state_dict()
    assert state["epoch"] == 1 and state["step"] == stop_at
    rest_ref = collect(ref) + collect(ref)  # rest of epoch 1, then epoch 2
    resumed = DataLoader(ds, **kw)
    resumed.load_state_dict(state)
    assert_same_batches(collect(resumed) + collect(resumed), rest_ref)
    # and the uninterrupted run from scratch agrees too
    full = DataLoader(ds, **kw)
    collect(full)
    assert_same_batches(collect(full) + collect(full), first + rest_ref)


def test_state_saved_after_last_batch_starts_next_epoch():
    kw = dict(batch_size=5, shuffle=True, seed=2)
    a = DataLoader(dataset(10), **kw)
    it = iter(a)
    next(it)
    next(it)
    state = a.state_dict()
    assert state == {"epoch": 0, "step": 2, "seed": 2, "batch_size": 5, "shuffle": True,
                     "drop_last": False, "num_examples": 10}
    b = DataLoader(dataset(10), **kw)
    b.load_state_dict(state)
    c = DataLoader(dataset(10), **kw)
    c.set_epoch(1)
    assert_same_batches(collect(b), collect(c))


def test_break_then_continue_same_epoch():
    loader = DataLoader(dataset(), batch_size=4, shuffle=True, seed=1)
    ref = collect(DataLoader(dataset(), batch_size=4, shuffle=True, seed=1))
    head = collect(loader, limit=2)
    assert loader.state_dict()["step"] == 2
    assert_same_batches(head + collect(loader), ref)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_same_batches_as_no_prefetch(prefetch):
    ds = dataset(37)
    kw = dict(batch_size=5, shuffle=True, transform=augment(), seed=4)
    plain = DataLoader(ds, **kw)
    pre = DataLoader(ds, prefetch=prefetch, **kw)
    for _ in range(3):
        assert_same_batches(collect(pre), collect(plain))


def test_prefetch_thread_stops_on_break():
    before = threading.active_count()
    loader = DataLoader(dataset(40), batch_size=2, prefetch=2)
    for _ in range(5):
        collect(loader, limit=1)
    assert threading.active_count() == before


def test_prefetch_propagates_errors():
    def broken(x, rng):
        raise RuntimeError("augmentation failed")

    loader = DataLoader(dataset(), batch_size=4, transform=broken, prefetch=2)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        collect(loader)


def test_load_state_dict_checks_settings():
    a = DataLoader(dataset(), batch_size=4, shuffle=True, seed=1)
    for other in (dict(batch_size=5, shuffle=True, seed=1), dict(batch_size=4, shuffle=True, seed=2),
                  dict(batch_size=4, shuffle=False, seed=1)):
        with pytest.raises(ConfigError, match="would not match"):
            DataLoader(dataset(), **other).load_state_dict(a.state_dict())
    with pytest.raises(ConfigError, match="beyond"):
        a.load_state_dict({"epoch": 0, "step": 99})
    with pytest.raises(ConfigError, match="num_examples"):
        DataLoader(dataset(22), batch_size=4, shuffle=True, seed=1).load_state_dict(a.state_dict())


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=2.5), dict(seed=-1),
                                dict(prefetch=-1), dict(transform=3)])
def test_config_errors(kw):
    with pytest.raises(ConfigError):
        DataLoader(dataset(), **{"batch_size": 2, **kw})


def test_int_index_only_dataset():
    class Plain:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            if not isinstance(i, int):
                raise TypeError("int only")
            return np.full((1, 2, 2), i, np.float32), i

    batches = collect(DataLoader(Plain(), batch_size=2))
    np.testing.assert_array_equal(batches[2][1], [4])
    assert batches[0][0].shape == (2, 1, 2, 2) and batches[0][0][1, 0, 0, 0] == 1


def test_array_dataset_basics():
    ds = ArrayDataset(np.zeros((6, 1, 2, 2)), np.array([0, 1, 2, 0, 1, 2], np.uint8), ["a", "b", "c"])
    assert len(ds) == 6 and ds.y.dtype == np.int64 and ds.num_classes == 3
    x, y = ds[2]
    assert x.shape == (1, 2, 2) and y == 2
    rest, held = ds.split(2, seed=0)
    assert len(rest) == 4 and len(held) == 2
    assert sorted(np.concatenate([rest.y, held.y]).tolist()) == sorted(ds.y.tolist())
    assert len(ds.split(0.5)[1]) == 3
    for bad in (lambda: ArrayDataset(np.zeros((3, 2)), np.zeros(4, int)),
                lambda: ArrayDataset(np.zeros((3, 2)), np.zeros(3)),
                lambda: ArrayDataset(np.zeros((2, 2)), [0, 5], ["a", "b"]),
                lambda: ds.split(7)):
        with pytest.raises(ConfigError):
            bad()
