"""Episodes: static-shape N-way K-shot tasks, sampled on the device from a PRNG key.

An episode is a pure function of a key and a class-major dataset, so the same key
gives the same episode on any number of devices, and an evaluation set is simply
the keys `fold_in(PRNGKey(seed), i)` for `i < num_episodes`.

Two sources feed the train and eval steps through one interface (`EpisodeSource`):
  * `DeviceEpisodes` keeps the whole split on every device and samples inside the
    jitted step (Omniglot: no host-to-device copy per step).
  * `HostEpisodes` samples on the host with NumPy from the same keys and copies
    prefetched batches to the devices, for splits larger than device memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import parallel
from fsl_jax.data import errors
from fsl_jax.data.dataset import ClassMajorDataset


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
  """The static shape of an episode.

  Attributes:
    way: classes per episode (N).
    shot: labelled supports per class (K).
    query: queries per class.
    unlabeled_shot: unlabelled supports per class (semi-supervised episodes).
  """

  way: int
  shot: int
  query: int
  unlabeled_shot: int = 0

  @property
  def examples_per_class(self) -> int:
    return self.shot + self.query + self.unlabeled_shot

  def validate(self, num_classes: int, examples_per_class: int, split: str = '',
               prefix: str = '') -> None:
    """Raises `EpisodeError` when a dataset cannot provide this episode.

    Args:
      num_classes, examples_per_class: what the split has (the smallest class).
      split: the split's name, for the message.
      prefix: the config fields' prefix, `''` (training episodes: `way`, ...) or
        `'test_'` (validation and test episodes: `test_way`, ...), so the
        message names the field to change.
    """
    where = f' of the {split} split' if split else ''
    if prefix == 'test_' and split:
      where += ' (validation and test episodes both use the test_* shape)'
    for name in ('way', 'shot', 'query'):
      if getattr(self, name) < 1:
        raise errors.EpisodeError(
          f'{prefix}{name} must be at least 1, got {getattr(self, name)}.')
    if self.unlabeled_shot < 0:
      raise errors.EpisodeError(
        f'{prefix}unlabeled_shot must be >= 0, got {self.unlabeled_shot}.')
    if self.way > num_classes:
      raise errors.EpisodeError(
        f'A {self.way}-way episode ({prefix}way={self.way}) needs {self.way} distinct classes, '
        f'but the {num_classes} classes{where} are fewer; lower {prefix}way.'
      )
    if self.examples_per_class > examples_per_class:
      raise errors.EpisodeError(
        f'{prefix}shot + {prefix}query + {prefix}unlabeled_shot = {self.shot} + {self.query} + '
        f'{self.unlabeled_shot} = {self.examples_per_class} distinct examples per '
        f'class are needed, but the classes{where} have {examples_per_class}; lower one of them.'
      )


@flax.struct.dataclass
class Episode:
  """One episode; a leading batch axis when vmapped or sharded.

  Supports are class-major (`support_labels` = 0,0,..,1,1,..); queries and
  unlabelled supports are shuffled so that their position says nothing about
  their class. Labels are episode-local, 0..way-1, assigned to the sampled
  classes in random order.

  Attributes:
    support_images: `[way * shot, H, W, C]`.
    support_labels: `[way * shot]` int32.
    query_images: `[way * query, H, W, C]`.
    query_labels: `[way * query]` int32; only losses and metrics may read them.
    unlabeled_images: `[way * unlabeled_shot, H, W, C]`.
    unlabeled_labels: `[way * unlabeled_shot]` int32; for analysis only. The
      training loop gives methods -1 in their place, in the loss as well.
  """

  support_images: jax.Array
  support_labels: jax.Array
  query_images: jax.Array
  query_labels: jax.Array
  unlabeled_images: jax.Array
  unlabeled_labels: jax.Array


def sample_episode(key: jax.Array, images: jax.Array, spec: EpisodeSpec) -> Episode:
  """Samples one episode from a class-major dataset; pure and jit-compatible.

  Args:
    key: a PRNG key; the episode is a function of it alone.
    images: `[classes, examples_per_class, H, W, C]` (any dtype).
    spec: the static episode shape.

  Returns:
    An `Episode` with images of the dtype of `images`.
  """
  images = jnp.asarray(images)
  num_classes, num_examples = images.shape[:2]
  class_key, example_key, query_key, unlabeled_key = jax.random.split(key, 4)
  # A random choice without replacement: the position of a class in `classes`
  # is its episode label, so labels are a random permutation of the class ids.
  classes = jax.random.choice(class_key, num_classes, (spec.way,), replace=False)
  example_keys = jax.random.split(example_key, spec.way)
  examples = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(example_keys)
  examples = examples[:, : spec.examples_per_class]
  picked = images[classes[:, None], examples]  # [way, shot + query + unlabeled, ...]
  labels = jnp.broadcast_to(
    jnp.arange(spec.way, dtype=jnp.int32)[:, None], (spec.way, spec.examples_per_class)
  )

  def take(bounds, shuffle_key):
    start, stop = bounds
    x = picked[:, start:stop].reshape((-1,) + images.shape[2:])
    y = labels[:, start:stop].reshape(-1)
    if shuffle_key is not None:
      order = jax.random.permutation(shuffle_key, x.shape[0])
      x, y = x[order], y[order]
    return x, y

  support, query, unlabeled = _part_bounds(spec)
  support_images, support_labels = take(support, None)
  query_images, query_labels = take(query, query_key)
  unlabeled_images, unlabeled_labels = take(unlabeled, unlabeled_key)
  return Episode(
    support_images, support_labels, query_images, query_labels, unlabeled_images,
    unlabeled_labels
  )


def episode_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """The key of each episode `i` in `indices`: `fold_in(key, i)`."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 pixels to float32 `(x / 255 - mean) / std`; `mean`, `std`: scalars or per channel."""
  return _standardize(images.astype(jnp.float32) / 255.0, mean, std)


def _standardize(unit: jax.Array, mean, std) -> jax.Array:
  return (unit - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# Salt of the augmentation keys, folded into each episode's sampling key.
_AUGMENT_SALT = 0x617567


class EpisodeSource(Protocol):
  """How a step gets a batch of episodes.

  The step is called as `step(..., source.step_inputs(), keys)`, where `keys`
  (one per episode, `[per_device_batch]` on each device) is computed inside the
  step; `source.episodes(inputs, keys)` runs inside the step and returns the
  per-device `Episode` batch, normalised to float32.
  """

  spec: EpisodeSpec
  image_shape: tuple[int, ...]
  devices: list | None
  needs_host_keys: bool

  def step_inputs(self, keys: np.ndarray | None = None) -> Any:
    ...

  def episodes(self, inputs: Any, keys: jax.Array) -> Episode:
    ...


@dataclasses.dataclass
class DeviceEpisodes:
  """Samples inside the step from a split replicated on every local device.

  The split is copied to the devices once, at construction.
  """

  dataset: ClassMajorDataset
  spec: EpisodeSpec
  mean: float | tuple[float, ...] = 0.0
  std: float | tuple[float, ...] = 1.0
  split: str = ''
  devices: list | None = None  # The pmap's devices (of every process); default: local.
  # Training sources only: `(key, [n, H, W, C] images in [0, 1]) -> images`.
  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None
  field_prefix: str = ''  # Config fields of this shape, for errors: '' or 'test_'.
  needs_host_keys: bool = dataclasses.field(default=False, init=False)

  def __post_init__(self):
    self.spec.validate(self.dataset.num_classes, self.dataset.examples_per_class, self.split,
                       self.field_prefix)
    self._images = parallel.replicate(self.dataset.images, self.devices)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.dataset.image_shape

  def step_inputs(self, keys=None):
    del keys  # The episodes are sampled from the keys on the device.
    return self._images

  def episodes(self, inputs: jax.Array, keys: jax.Array) -> Episode:
    episodes = jax.vmap(sample_episode, in_axes=(0, None, None))(keys, inputs, self.spec)
    return _normalized(episodes, keys, self.mean, self.std, self.augment)


@dataclasses.dataclass
class HostEpisodes:
  """Samples on the host with NumPy and prefetches device batches.

  For splits too large for device memory. `load_class(c)` returns the uint8
  images `[examples, H, W, C]` of class `c` (e.g. read from disk), so only the
  sampled classes are touched. Episodes are drawn from the same per-episode keys
  as on the device (by seeding NumPy with them), so they are reproducible and
  independent of the number of devices, though not bit-identical to
  `DeviceEpisodes` samples.
  """

  load_class: Callable[[int], np.ndarray]
  num_classes: int
  examples_per_class: int
  spec: EpisodeSpec
  mean: float | tuple[float, ...] = 0.0
  std: float | tuple[float, ...] = 1.0
  split: str = ''
  devices: list | None = None  # The pmap's devices (of every process); default: local.
  prefetch: int = 2  # Steps sampled ahead, in background threads.
  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None  # As `DeviceEpisodes`.
  field_prefix: str = ''  # As `DeviceEpisodes`.
  needs_host_keys: bool = dataclasses.field(default=True, init=False)

  def __post_init__(self):
    self.spec.validate(self.num_classes, self.examples_per_class, self.split, self.field_prefix)
    self.image_shape = tuple(self.load_class(0).shape[1:])
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    self._queue = collections.deque()

  def sample(self, key: np.ndarray) -> Episode:
    """One episode on the host, as NumPy uint8 arrays."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))
    spec = self.spec
    classes = rng.choice(self.num_classes, spec.way, replace=False)
    parts = [[], [], []]
    for label, c in enumerate(classes):
      images = self.load_class(int(c))
      chosen = images[rng.permutation(images.shape[0])[: spec.examples_per_class]]
      for i, (start, stop) in enumerate(_part_bounds(spec)):
        parts[i].append((chosen[start:stop], np.full(stop - start, label, np.int32)))
    arrays = []
    for i, part in enumerate(parts):
      x = np.concatenate([p[0] for p in part])
      y = np.concatenate([p[1] for p in part])
      if i > 0:  # Queries and unlabelled supports: shuffled.
        order = rng.permutation(len(y))
        x, y = x[order], y[order]
      arrays += [x, y]
    return Episode(*arrays)

  def enqueue(self, keys: np.ndarray) -> None:
    """Starts sampling the batch of episodes of `keys` `[devices, per_device]`: of the
    rows of this process's devices only, in a multi-process run."""
    keys = keys[parallel.local_rows(self.devices or jax.local_devices())]
    self._queue.append(self._pool.submit(self._batch, keys))

  def _batch(self, keys):
    episodes = [self.sample(k) for k in keys.reshape(-1, keys.shape[-1])]
    stacked = jax.tree.map(lambda *x: np.stack(x).reshape(keys.shape[:2] + x[0].shape), *episodes)
    return parallel.shard(stacked, self.devices)

  def step_inputs(self, keys=None):
    """The next prefetched batch; `keys` is sampled now if nothing is queued."""
    if not self._queue:
      self.enqueue(keys)
    return self._queue.popleft().result()

  def episodes(self, inputs: Episode, keys: jax.Array) -> Episode:
    # The keys were used on the host to sample; here only to augment.
    return _normalized(inputs, keys, self.mean, self.std, self.augment)


def _part_bounds(spec: EpisodeSpec):
  """[start, stop) of supports, queries and unlabelled supports among a class's picks."""
  s, q = spec.shot, spec.query
  return [(0, s), (s, s + q), (s + q, s + q + spec.unlabeled_shot)]


def _normalized(episodes: Episode, keys: jax.Array, mean, std, augment=None) -> Episode:
  """uint8 episodes `[batch, ...]` to float32: scaled to [0, 1], augmented (each image
  with a key derived from its episode's key), then standardised."""
  names = ('support_images', 'query_images', 'unlabeled_images')
  unit = {n: getattr(episodes, n).astype(jnp.float32) / 255.0 for n in names}
  if augment is not None:
    def one(key, *images):
      part_keys = jax.random.split(jax.random.fold_in(key, _AUGMENT_SALT), len(images))
      return tuple(augment(k, x) for k, x in zip(part_keys, images, strict=True))

    unit = dict(zip(names, jax.vmap(one)(keys, *unit.values()), strict=True))
  return episodes.replace(**{n: _standardize(x, mean, std) for n, x in unit.items()})
