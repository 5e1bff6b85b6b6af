"""DataLoader: reproducible, resumable mini-batches with optional background prefetch.

Everything random is a pure function of ``(seed, epoch, step)``:

* the example order of epoch ``e`` is ``default_rng([seed, 0, e]).permutation(N)``;
* the augmentation of batch ``s`` of epoch ``e`` draws from ``default_rng([seed, 1, e, s])``;
  with ``example_rng=True`` instead, the example at position ``p`` of epoch ``e``'s order is
  transformed on its own with ``default_rng([seed, 2, e, p])``, so its augmentation does not
  depend on which batch, or which part of a batch, it is served in.

Data-parallel training (``rank``, ``world_size``): ``batch_size`` stays the GLOBAL batch size
and the order is the single-process order; rank ``r`` of ``W`` serves rows
``[r*n//W, (r+1)*n//W)`` of each global batch of ``n`` examples. With ``example_rng=True`` the
ranks' shards together are exactly the batches (and augmentations) one process serves.

So ``state_dict()`` = ``{"epoch", "step", ...}`` taken between batches and later handed to
``load_state_dict`` makes the next iteration yield exactly the batches (and augmentations)
the original run would have yielded, and a prefetching loader yields exactly the batches of
a non-prefetching one.

Iteration semantics: ``for x, y in loader`` runs the rest of the current epoch, from
``loader.step``; when the epoch is exhausted the loader moves to ``epoch + 1``, step 0. A
loop that stops early (``break``) leaves the position where it stopped, so the next
iteration continues the same epoch. ``len(loader)`` is the number of batches in a full epoch.
"""

from __future__ import annotations

import math
import queue
import threading

import numpy as np

from ..errors import ConfigError

_END = object()


def _nonneg_int(value, name: str, minimum: int = 0) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"DataLoader: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class DataLoader:
    """Yields ``(x, y)`` batches of ``dataset``, optionally shuffled and transformed.

    Args:
        dataset: has ``len()`` and ``dataset[index_array] -> (x_batch, y_batch)`` (an
            ``ArrayDataset``); a dataset that only takes int indices is stacked per batch.
        batch_size: examples per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: a fresh permutation per epoch, derived from ``(seed, epoch)``.
        transform: called as ``transform(x, rng)`` on each batch of images (e.g. a
            ``Compose`` of crops and flips); ``rng`` derives from ``(seed, epoch, step)``.
        seed: non-negative int; fixes every order and augmentation.
        prefetch: number of batches a background thread prepares ahead (0: none).
        example_rng: transform each example alone with a generator derived from
            ``(seed, epoch, position in the epoch)`` instead of the batch with one from
            ``(seed, epoch, step)``; needed for augmentation that does not depend on the split.
        rank, world_size: serve only shard ``rank`` of ``world_size`` of every batch (see the
            module docstring); ``batch_size`` is then the global batch size.
    """

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = False,
                 drop_last: bool = False, transform=None, seed: int = 0, prefetch: int = 0,
                 example_rng: bool = False, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = _nonneg_int(batch_size, "batch_size", 1)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if transform is not None and not callable(transform):
            raise ConfigError(f"DataLoader: transform must be callable, got {transform!r}")
        self.transform = transform
        self.seed = _nonneg_int(seed, "seed")
        self.prefetch = _nonneg_int(prefetch, "prefetch")
        self.example_rng = bool(example_rng)
        self.world_size = _nonneg_int(world_size, "world_size", 1)
        self.rank = _nonneg_int(rank, "rank")
        if self.rank >= self.world_size:
            raise ConfigError(f"DataLoader: rank {self.rank} must be < world_size {self.world_size}")
        if self.world_size > 1 and not self.example_rng and getattr(transform, "random", True) \
                and transform is not None:
            raise ConfigError("DataLoader: a random transform with world_size > 1 needs example_rng=True "
                              "(a batch-level generator would make each shard's augmentation depend on the "
                              "split)")
        self.epoch = 0
        self.step = 0

    # --- sizes and order ----------------------------------------------------------------------

    @property
    def num_examples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = self.num_examples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of ``epoch`` in the order they are served."""
        n = self.num_examples
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, 0, int(epoch)]).permutation(n)

    def batch_rng(self, epoch: int, step: int) -> np.random.Generator:
        """The generator handed to ``transform`` for batch ``step`` of ``epoch``."""
        return np.random.default_rng([self.seed, 1, int(epoch), int(step)])

    def example_rng_at(self, epoch: int, position: int) -> np.random.Generator:
        """The generator for the example at ``position`` of ``epoch``'s order (``example_rng=True``)."""
        return np.random.default_rng([self.seed, 2, int(epoch), int(position)])

    def batch_length(self, step: int) -> int:
        """Examples in global batch ``step`` (all ranks together)."""
        return max(0, min(self.batch_size, self.num_examples - int(step) * self.batch_size))

    def shard_range(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of a global batch of ``n`` examples that ``rank`` (default: ours) serves."""
        r = self.rank if rank is None else int(rank)
        return r * n // self.world_size, (r + 1) * n // self.world_size

    def make_batch(self, epoch: int, step: int, order: np.ndarray | None = None):
        """Batch ``step`` of ``epoch`` (this rank's shard of it): a pure function of (seed, epoch, step)."""
        if order is None:
            order = self.order(epoch)
        start = step * self.batch_size
        idx = order[start:start + self.batch_size]
        lo, hi = self.shard_range(len(idx))
        idx = idx[lo:hi]
        try:
            x, y = self.dataset[idx]
        except (TypeError, IndexError, KeyError):
            items = [self.dataset[int(i)] for i in idx]
            x = np.stack([np.asarray(it[0]) for it in items])
            y = np.asarray([it[1] for it in items])
        if self.transform is not None:
            if self.example_rng:
                pos = start + lo
                x = np.stack([self.transform(x[j:j + 1], self.example_rng_at(epoch, pos + j))[0]
                              for j in range(len(x))]) if len(x) else self.transform(x, None)
            else:
                x = self.transform(x, self.batch_rng(epoch, step))
        return x, y

    # --- resumable position -------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position to resume from: the next batch served is (epoch, step).

        Positions count global batches, so a state saved by any rank resumes every rank.
        """
        state = {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                 "batch_size": self.batch_size, "shuffle": self.shuffle,
                 "drop_last": self.drop_last, "num_examples": self.num_examples}
        if self.example_rng:  # absent means the batch-level generator (the only mode of older states)
            state["example_rng"] = True
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; the settings that fix the order must match this loader."""
        for key in ("seed", "batch_size", "shuffle", "drop_last", "num_examples"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(f"DataLoader.load_state_dict: saved {key}={state[key]!r} but "
                                  f"this loader has {key}={getattr(self, key)!r}; the batches "
                                  f"would not match")
        # a full state (it has the settings) without the key was saved in the batch-generator mode
        if "seed" in state and bool(state.get("example_rng", False)) != self.example_rng:
            raise ConfigError(f"DataLoader.load_state_dict: saved example_rng={bool(state.get('example_rng', False))} "
                              f"but this loader has example_rng={self.example_rng}; the augmentations would "
                              f"not match")
        epoch = _nonneg_int(state.get("epoch"), "epoch")
        step = _nonneg_int(state.get("step"), "step")
        if step > len(self):
            raise ConfigError(f"DataLoader.load_state_dict: step {step} beyond the {len(self)} "
                              f"batches of an epoch")
        self.epoch, self.step = epoch, step

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch``."""
        self.epoch, self.step = _nonneg_int(epoch, "epoch"), 0

    # --- iteration ----------------------------------------------------------------------------

    def __iter__(self):
        if self.step and self.step >= len(self):  # saved at an epoch's end: start the next
            self.epoch, self.step = self.epoch + 1, 0
        epoch, start, nb = self.epoch, self.step, len(self)
        order = self.order(epoch)
        batches = self._prefetched(epoch, start, nb, order) if self.prefetch \
            else (self.make_batch(epoch, s, order) for s in range(start, nb))
        try:
            for s, batch in enumerate(batches, start):
                self.step = s + 1
                yield batch
            self.epoch, self.step = epoch + 1, 0
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _prefetched(self, epoch, start, nb, order):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for s in range(start, nb):
                    if stop.is_set() or not put(("ok", self.make_batch(epoch, s, order))):
                        return
                put(("end", _END))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                put(("err", exc))

        thread = threading.Thread(target=work, name="convnp-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    return
                if kind == "err":
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def __repr__(self):
        return (f"DataLoader(n={self.num_examples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
                f"prefetch={self.prefetch}, epoch={self.epoch}, step={self.step}"
                + (", example_rng=True" if self.example_rng else "")
                + (f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else "") + ")")
