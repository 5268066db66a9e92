"""The forms of a few-shot split: class-major uint8 images, or flat and sorted by class."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassMajorDataset:
  """All images of one split, grouped by class.

  Attributes:
    images: uint8 `[classes, examples_per_class, H, W, C]`.
    class_names: one name per class, e.g. `Hebrew/character01/rot090`.
  """

  images: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    if self.images.ndim != 5 or self.images.dtype != np.uint8:
      raise ValueError(
        f'Expected uint8 images [classes, examples, H, W, C], got {self.images.dtype} '
        f'{self.images.shape}.'
      )
    if len(self.class_names) != self.images.shape[0]:
      raise ValueError(f'{len(self.class_names)} class names for {self.images.shape[0]} classes.')

  @property
  def num_classes(self) -> int:
    return self.images.shape[0]

  @property
  def examples_per_class(self) -> int:
    return self.images.shape[1]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[2:])

  def load_class(self, c: int) -> np.ndarray:
    """The images of class `c`, `[examples, H, W, C]` (as `FlatDataset.load_class`)."""
    return self.images[c]


@dataclasses.dataclass(frozen=True)
class FlatDataset:
  """A split whose classes differ in size, stored flat and sorted by class.

  Attributes:
    images: uint8 `[N, H, W, C]` (a read-only memory map for cached splits).
    offsets: int64 `[classes + 1]`; class `c` is rows `offsets[c]:offsets[c + 1]`.
    class_names: one name per class.
  """

  images: np.ndarray
  offsets: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    sizes = np.diff(self.offsets)
    if (self.images.ndim != 4 or self.images.dtype != np.uint8 or self.offsets[0] != 0
        or self.offsets[-1] != len(self.images) or (sizes < 1).any()
        or len(self.class_names) != len(sizes)):
      raise ValueError('Inconsistent FlatDataset: images, offsets and class names disagree.')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def examples_per_class(self) -> int:
    """The smallest class's size: what an episode may ask of every class."""
    return int(np.diff(self.offsets).min())

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def load_class(self, c: int) -> np.ndarray:
    """The images of class `c` (a view: rows are read when indexed)."""
    return self.images[self.offsets[c]:self.offsets[c + 1]]
