"""Errors for bad data or impossible episodes: each message says what to fix."""


class DataError(ValueError):
  """A dataset or an episode specification cannot be used as given."""


class DatasetNotFoundError(DataError, FileNotFoundError):
  """The files of a dataset are not where the configuration says."""


class CorruptDatasetError(DataError):
  """A dataset file exists but cannot be decoded or is incomplete."""


class EpisodeError(DataError):
  """An episode specification that the dataset cannot satisfy."""
