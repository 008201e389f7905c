"""Data sets held whole in memory on the training device: loading by name, batching, augmentation.

>>> import torch
>>> from qfi_cli.data import load_dataset
>>> ds = load_dataset("digits")
>>> xb, yb = next(ds.batches("train", 32, shuffle=True, generator=torch.Generator().manual_seed(0)))
>>> tuple(xb.shape), yb.dtype
((32, 1, 8, 8), torch.int64)
"""

from qfi_cli.data.datasets import DATASETS, DEFAULT_DATASET, list_datasets, load_dataset
from qfi_cli.data.tensors import InMemoryDataset, random_crop_flip
from qfi_cli.data.user import as_dataset, load_user_data

__all__ = ["DATASETS", "DEFAULT_DATASET", "InMemoryDataset", "as_dataset", "list_datasets", "load_dataset",
           "load_user_data", "random_crop_flip"]
