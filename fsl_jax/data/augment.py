"""Training-time augmentation on the device, a pure function of the episode's key.

An `Augmentation` maps a key and a batch of float images in [0, 1] `[n, H, W, C]`
to images of the same shape, each image with its own key, so an augmented
episode depends only on its episode key: the same on any number of devices and
exactly the same again after a resume. Only training episodes are augmented
(the sources of validation and test episodes get none).

Operations, applied in this order whichever order they are listed in:
  * `resized_crop`: a random crop of `crop_scale` of the area (uniform) and an
    aspect ratio in [3/4, 4/3] (log-uniform), clipped to the image, resized back
    to H x W bilinearly (torchvision's `RandomResizedCrop`, without its retries);
  * `pad_crop`: zero padding by `pad` pixels on each side, then a random H x W
    crop (torchvision's `RandomCrop(size, padding=pad)`);
  * `flip`: a horizontal flip with probability 1/2;
  * `jitter`: brightness, contrast and saturation each scaled by a factor drawn
    uniformly from [1 - jitter, 1 + jitter], in that fixed order, then clipped to
    [0, 1] (torchvision's `ColorJitter(jitter, jitter, jitter)` draws the order
    at random).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

OPS = ('resized_crop', 'pad_crop', 'flip', 'jitter')
# ITU-R 601 luma, as torchvision's greyscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  ops: tuple[str, ...] = ()
  pad: int = 4
  crop_scale: tuple[float, float] = (0.08, 1.0)
  jitter: float = 0.4

  def __post_init__(self):
    unknown = [op for op in self.ops if op not in OPS]
    if unknown:
      raise ValueError(f'Unknown augmentation {unknown}; known: {list(OPS)}.')
    if 'resized_crop' in self.ops and 'pad_crop' in self.ops:
      raise ValueError('Use one of resized_crop and pad_crop, not both.')
    if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
      raise ValueError(f'crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}.')
    if self.pad < 0 or not 0 <= self.jitter < 1:
      raise ValueError(f'Need pad >= 0 and 0 <= jitter < 1, got {self.pad} and {self.jitter}.')

  def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
    """Augments `[n, H, W, C]` float images in [0, 1], one key per image."""
    if not self.ops or images.shape[0] == 0:
      return images
    return jax.vmap(self.one)(jax.random.split(key, images.shape[0]), images)

  def one(self, key: jax.Array, image: jax.Array) -> jax.Array:
    crop_key, flip_key, jitter_key = jax.random.split(key, 3)
    if 'resized_crop' in self.ops:
      image = resized_crop(crop_key, image, self.crop_scale)
    if 'pad_crop' in self.ops:
      image = pad_crop(crop_key, image, self.pad)
    if 'flip' in self.ops:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    if 'jitter' in self.ops:
      image = color_jitter(jitter_key, image, self.jitter)
    return image


def pad_crop(key: jax.Array, image: jax.Array, pad: int) -> jax.Array:
  """Zero-pads `[H, W, C]` by `pad` and crops a random H x W window."""
  h, w, _ = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)


def resized_crop(key: jax.Array, image: jax.Array, scale: tuple[float, float]) -> jax.Array:
  """A random crop of `scale` of the area, aspect in [3/4, 4/3], resized to `[H, W]`."""
  h, w, _ = image.shape
  area_key, ratio_key, y_key, x_key = jax.random.split(key, 4)
  area = jax.random.uniform(area_key, minval=scale[0], maxval=scale[1]) * h * w
  ratio = jnp.exp(jax.random.uniform(ratio_key, minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3)))
  crop_w = jnp.clip(jnp.sqrt(area * ratio), 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(area / ratio), 1.0, h)
  y0 = jax.random.uniform(y_key) * (h - crop_h)
  x0 = jax.random.uniform(x_key) * (w - crop_w)
  zoom = jnp.stack([h / crop_h, w / crop_w])
  return jax.image.scale_and_translate(
    image, image.shape, spatial_dims=(0, 1), scale=zoom,
    translation=-jnp.stack([y0, x0]) * zoom, method='linear', antialias=False)


def color_jitter(key: jax.Array, image: jax.Array, strength: float) -> jax.Array:
  """Brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
  b, c, s = jax.random.uniform(key, (3,), minval=1 - strength, maxval=1 + strength)
  image = jnp.clip(image * b, 0, 1)
  grey = _grey(image)
  image = jnp.clip((image - grey.mean()) * c + grey.mean(), 0, 1)
  grey = _grey(image)
  return jnp.clip((image - grey) * s + grey, 0, 1)


def _grey(image: jax.Array) -> jax.Array:
  if image.shape[-1] != 3:
    return image
  return jnp.tensordot(image, jnp.asarray(_LUMA, image.dtype), axes=([-1], [0]))[..., None]


def from_config(config) -> Augmentation | None:
  """The training augmentation a config names (`augment`, e.g. 'pad_crop,flip'); None if empty."""
  ops = tuple(op.strip() for op in config.augment.split(',') if op.strip())
  if not ops:
    return None
  return Augmentation(ops, pad=config.augment_pad,
                      crop_scale=(config.augment_crop_min, config.augment_crop_max),
                      jitter=config.augment_jitter)
