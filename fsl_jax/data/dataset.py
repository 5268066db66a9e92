"""The in-memory form of a few-shot split: class-major uint8 images."""

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
