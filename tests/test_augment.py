"""Augmentation: each operation against a hand computation, purity in the key, and
that only training episodes are augmented."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import config as config_lib
from fsl_jax.data import augment, episodes
from fsl_jax.data.dataset import ClassMajorDataset

H, W = 6, 8


def ramp(channels=3):
  values = np.arange(H * W * channels, dtype=np.float32) / (H * W * channels)
  return jnp.asarray(values.reshape(H, W, channels))


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image():
  image, pad = ramp(), 2
  offsets = set()
  for seed in range(40):
    key = jax.random.PRNGKey(seed)
    dy, dx = (int(v) for v in jax.random.randint(key, (2,), 0, 2 * pad + 1))
    offsets.add((dy, dx))
    padded = np.zeros((H + 2 * pad, W + 2 * pad, 3), np.float32)
    padded[pad:pad + H, pad:pad + W] = image
    np.testing.assert_array_equal(augment.pad_crop(key, image, pad),
                                  padded[dy:dy + H, dx:dx + W])
  assert len(offsets) > 10  # The offsets do vary with the key.


def test_flip_is_a_horizontal_mirror_about_half_the_time():
  aug = augment.Augmentation(('flip',))
  image = ramp()
  flipped = 0
  for seed in range(200):
    out = np.asarray(aug.one(jax.random.PRNGKey(seed), image))
    if np.array_equal(out, np.asarray(image)[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 70 < flipped < 130


def test_color_jitter_by_hand():
  image = ramp()
  key = jax.random.PRNGKey(3)
  b, c, s = np.asarray(jax.random.uniform(key, (3,), minval=0.6, maxval=1.4))
  x = np.clip(np.asarray(image) * b, 0, 1)
  luma = np.array([0.299, 0.587, 0.114], np.float32)
  mean = (x @ luma).mean()
  x = np.clip((x - mean) * c + mean, 0, 1)
  grey = (x @ luma)[..., None]
  want = np.clip((x - grey) * s + grey, 0, 1)
  np.testing.assert_allclose(augment.color_jitter(key, image, 0.4), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(augment.color_jitter(key, image, 0.0), image, atol=1e-6)


def test_resized_crop_keeps_the_shape_the_range_and_constant_images():
  image = jnp.asarray(np.random.default_rng(0).random((8, 8, 3)), jnp.float32)
  key = jax.random.PRNGKey(0)
  out = augment.resized_crop(key, image, (1.0, 1.0))
  assert out.shape == image.shape
  assert float(out.min()) >= float(image.min()) - 1e-6
  assert float(out.max()) <= float(image.max()) + 1e-6
  constant = jnp.full((8, 8, 3), 0.25)
  np.testing.assert_allclose(augment.resized_crop(key, constant, (0.1, 0.5)), constant, atol=1e-6)


def test_resized_crop_zooms_into_a_window():
  # A crop of a quarter of the area, aspect 1, lands on a 4x4 window of an 8x8
  # image: each output pixel is a bilinear mix of that window only.
  image = jnp.asarray(np.arange(64, dtype=np.float32).reshape(8, 8, 1))
  for seed in range(10):
    out = np.asarray(augment.resized_crop(jax.random.PRNGKey(seed), image, (0.25, 0.25)))
    # The crop is at most 4/sqrt(3/4) ~ 4.6 pixels on a side: the output spans
    # at most that many rows' and columns' worth of values.
    row_span = out[:, 0, 0].max() - out[:, 0, 0].min()
    col_span = out[0, :, 0].max() - out[0, :, 0].min()
    assert row_span <= 8 * 4.62 and col_span <= 4.62
    assert row_span > 8 * 2 and col_span > 2  # ...and more than a 2-pixel crop would.


def test_augmentation_is_a_pure_function_of_the_key():
  aug = augment.Augmentation(('pad_crop', 'flip', 'jitter'), pad=2)
  images = jnp.stack([ramp(), ramp()[::-1]])
  key = jax.random.PRNGKey(5)
  np.testing.assert_array_equal(aug(key, images), aug(key, images))
  assert not np.array_equal(aug(key, images), aug(jax.random.PRNGKey(6), images))
  # Each image its own key: two copies of one image come out differently.
  twins = aug(key, jnp.stack([ramp(), ramp()]))
  assert not np.array_equal(twins[0], twins[1])


def test_bad_settings_are_config_errors():
  config = config_lib.base_config()
  config.augment = 'flip,rotate'
  with pytest.raises(config_lib.ConfigError, match="Unknown augmentation.*rotate"):
    config_lib.validate(config, 1)
  config.augment = 'pad_crop,resized_crop'
  with pytest.raises(config_lib.ConfigError, match='not both'):
    config_lib.validate(config, 1)
  config.augment, config.augment_crop_min = 'resized_crop', 0.0
  with pytest.raises(config_lib.ConfigError, match='crop_scale'):
    config_lib.validate(config, 1)


def test_sources_augment_only_when_given_an_augmentation():
  rng = np.random.default_rng(0)
  dataset = ClassMajorDataset(rng.integers(0, 256, (6, 4, H, W, 3), np.uint8),
                              tuple(str(i) for i in range(6)))
  spec = episodes.EpisodeSpec(way=3, shot=1, query=2)
  keys = episodes.episode_keys(jax.random.PRNGKey(0), jnp.arange(2))
  plain = episodes.DeviceEpisodes(dataset, spec, 0.5, 0.25, devices=jax.local_devices()[:1])
  flip = episodes.DeviceEpisodes(dataset, spec, 0.5, 0.25, devices=jax.local_devices()[:1],
                                 augment=augment.Augmentation(('flip',)))
  raw = jax.vmap(episodes.sample_episode, in_axes=(0, None, None))(keys, dataset.images, spec)
  a = plain.episodes(jnp.asarray(dataset.images), keys)
  b = flip.episodes(jnp.asarray(dataset.images), keys)
  np.testing.assert_allclose(a.query_images, (raw.query_images / 255.0 - 0.5) / 0.25, rtol=1e-6)
  np.testing.assert_array_equal(a.query_labels, b.query_labels)  # Same episodes...
  pairs = list(zip(np.asarray(a.query_images).reshape(-1, H, W, 3),
                   np.asarray(b.query_images).reshape(-1, H, W, 3), strict=True))
  same = [np.array_equal(x, y) for x, y in pairs]
  mirrored = [np.array_equal(x[:, ::-1], y) for x, y in pairs]
  assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored)


def test_only_the_training_source_is_augmented(data_dir):
  from helpers import tiny_config

  from fsl_jax.training import train

  config, _ = train.build(tiny_config(augment='flip', num_devices=1))
  devices = jax.local_devices()[:1]
  (train_source,) = train._make_sources(config, ['train'], False, devices)
  (test_source,) = train._make_sources(config, ['test'], True, devices)
  assert train_source.augment == augment.Augmentation(('flip',), pad=4, crop_scale=(0.08, 1.0),
                                                      jitter=0.4)
  assert test_source.augment is None
