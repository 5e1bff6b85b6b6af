"""Data: named datasets (fetched, verified, cached), image folders, transforms, a loader.

>>> from convnp.data import load_dataset, DataLoader, transforms as T
>>> train = load_dataset("cifar10", "train")            # float32 NCHW in [0, 1], int64 labels
>>> aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
...                  T.Normalize.from_data(train)])
>>> loader = DataLoader(train, batch_size=128, shuffle=True, transform=aug, seed=0, prefetch=2)
"""

from . import transforms
from .datasets import (
    ArrayDataset,
    ImageFolder,
    channel_stats,
    fetch,
    info,
    list_datasets,
    load_dataset,
    verify,
)
from .sources import cache_root
from .loader import DataLoader
from .transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ToFloat,
)

__all__ = [
    "ArrayDataset", "ImageFolder", "DataLoader", "load_dataset", "list_datasets", "fetch", "info", "verify",
    "channel_stats", "cache_root", "transforms", "Compose", "Normalize", "RandomCrop",
    "RandomHorizontalFlip", "CenterCrop", "Resize", "ToFloat",
]
