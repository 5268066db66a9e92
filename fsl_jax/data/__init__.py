"""Datasets and episodes."""

from fsl_jax.data.dataset import ClassMajorDataset, FlatDataset
from fsl_jax.data.episodes import (
  DeviceEpisodes,
  Episode,
  EpisodeSource,
  EpisodeSpec,
  HostEpisodes,
  episode_keys,
  normalize,
  sample_episode,
)
from fsl_jax.data.errors import (
  CorruptDatasetError,
  DataError,
  DatasetNotFoundError,
  EpisodeError,
)
from fsl_jax.data.registry import DATASETS, DatasetInfo, load_dataset

__all__ = [
  'ClassMajorDataset', 'CorruptDatasetError', 'DATASETS', 'DataError', 'DatasetInfo',
  'DatasetNotFoundError', 'DeviceEpisodes', 'Episode', 'EpisodeError', 'EpisodeSource',
  'EpisodeSpec', 'FlatDataset', 'HostEpisodes', 'episode_keys', 'load_dataset', 'normalize',
  'sample_episode',
]
