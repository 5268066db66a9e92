"""Datasets by name: how to load a split and how to normalise its pixels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fsl_jax.data import errors, omniglot
from fsl_jax.data.dataset import ClassMajorDataset


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """How to load a dataset.

  Attributes:
    load: `(split, data_dir, cache_dir, download) -> ClassMajorDataset`.
    splits: split names; `train`, `val` and `test` at least.
    mean: pixel mean after scaling to [0, 1] (scalar: all channels).
    std: pixel standard deviation after scaling to [0, 1].
  """

  load: Callable[..., ClassMajorDataset]
  splits: tuple[str, ...]
  mean: float = 0.0
  std: float = 1.0


DATASETS = {
  # Omniglot pixels stay in [0, 1] (stroke 1, background 0), as in Snell et al.
  'omniglot': DatasetInfo(omniglot.load, omniglot.SPLITS),
}


def get(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise errors.DataError(f'Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.')
  return DATASETS[name]


def load_dataset(name: str, split: str, data_dir: str | None = None,
                 cache_dir: str | None = None, download: bool = False) -> ClassMajorDataset:
  """Loads one split of a registered dataset."""
  info = get(name)
  if split not in info.splits:
    raise errors.DataError(f'Dataset {name!r} has no split {split!r}; splits: {info.splits}.')
  return info.load(split, data_dir=data_dir, cache_dir=cache_dir, download=download)
