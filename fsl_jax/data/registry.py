"""Datasets by name: how to load a split and how to normalise its pixels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fsl_jax.data import cifar, errors, mini_imagenet, omniglot, tiered_imagenet
from fsl_jax.data.dataset import ClassMajorDataset


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """How to load a dataset.

  Attributes:
    load: `(split, data_dir, cache_dir, download) -> ClassMajorDataset`.
    splits: split names; `train`, `val` and `test` at least.
    mean: pixel mean after scaling to [0, 1]: a scalar for all channels, or one
      per channel.
    std: pixel standard deviation after scaling to [0, 1], likewise.
  """

  load: Callable[..., ClassMajorDataset]
  splits: tuple[str, ...]
  mean: float | tuple[float, ...] = 0.0
  std: float | tuple[float, ...] = 1.0


MINI_IMAGENET_MEAN = (0.470995, 0.450267, 0.405303)
MINI_IMAGENET_STD = (0.271711, 0.264776, 0.278495)
# CIFAR-100's training-set statistics as the CIFAR-FS and FC100 literature uses
# them (e.g. MetaOptNet's loaders: [129.377, 124.106, 112.478] / 255 and
# [68.209, 65.431, 70.459] / 255). Not measured here: this machine has no
# CIFAR-100; `experiments.dataset_stats --dataset=cifar_fs` measures them.
CIFAR_MEAN = (0.507362, 0.486690, 0.441089)
CIFAR_STD = (0.267488, 0.256593, 0.276309)

DATASETS = {
  # Omniglot pixels stay in [0, 1] (stroke 1, background 0), as in Snell et al.
  'omniglot': DatasetInfo(omniglot.load, omniglot.SPLITS),
  # Per-channel statistics of the 38,400 training images, measured here with
  # `python -m experiments.dataset_stats --dataset=mini_imagenet --data_dir=../shared/data`.
  'mini_imagenet': DatasetInfo(mini_imagenet.load, mini_imagenet.SPLITS,
                               mean=MINI_IMAGENET_MEAN, std=MINI_IMAGENET_STD),
  # No tieredImageNet on this machine to measure: miniImageNet's statistics (both
  # are 84x84 ImageNet subsets). Sampled on the host (`episode_sampling='host'`).
  'tiered_imagenet': DatasetInfo(tiered_imagenet.load, tiered_imagenet.SPLITS,
                                 mean=MINI_IMAGENET_MEAN, std=MINI_IMAGENET_STD),
  'cifar_fs': DatasetInfo(cifar.load_cifar_fs, cifar.SPLITS, mean=CIFAR_MEAN, std=CIFAR_STD),
  'fc100': DatasetInfo(cifar.load_fc100, cifar.SPLITS, mean=CIFAR_MEAN, std=CIFAR_STD),
}


def get(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise errors.DataError(f'Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.')
  return DATASETS[name]


def load_dataset(name: str, split: str, data_dir: str | None = None,
                 cache_dir: str | None = None, download: bool = False):
  """Loads one split of a registered dataset: a `ClassMajorDataset`, or for
  tieredImageNet a memory-mapped `tiered_imagenet.FlatDataset`."""
  info = get(name)
  if split not in info.splits:
    raise errors.DataError(f'Dataset {name!r} has no split {split!r}; splits: {info.splits}.')
  return info.load(split, data_dir=data_dir, cache_dir=cache_dir, download=download)
