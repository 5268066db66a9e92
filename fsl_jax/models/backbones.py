"""Embedding networks shared by the methods."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), as in the
# reference implementations of every method in this library.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class ConvBlock(nn.Module):
  """3x3 conv, BatchNorm, ReLU, 2x2 max-pool.

  The conv has no bias: BatchNorm removes it, so its true gradient is zero and
  Adam would only turn float noise in that gradient into full-size steps.
  """

  features: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False)(x)
    x = BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class Conv4(nn.Module):
  """The Conv-4 of Vinyals et al. 2016 and Snell et al. 2017.

  Four `ConvBlock`s of `features` channels, flattened: 28x28 Omniglot gives a
  64-d embedding (28 -> 14 -> 7 -> 3 -> 1), 84x84 gives 1600-d.

  BatchNorm sees, in training, the statistics of the images passed in one call:
  the methods embed one episode (supports and queries together) per call and
  vmap over episodes, so each episode is normalised by its own statistics and the
  running averages are the mean over the meta-batch. In evaluation it uses the
  running averages only, so an image's embedding never depends on another image.
  """

  features: int = 64
  num_blocks: int = 4

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps `[batch, H, W, C]` images to `[batch, D]` embeddings."""
    x = images
    for _ in range(self.num_blocks):
      x = ConvBlock(self.features)(x, train=train)
    return x.reshape((x.shape[0], -1))


BACKBONES = {
  'conv4': Conv4,
}


def get_backbone(name: str, **kwargs) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(f'Unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}.')
  return BACKBONES[name](**kwargs)


def embed_episode(backbone: nn.Module, *image_sets: jax.Array, train: bool) -> list[jax.Array]:
  """Embeds several image sets of one episode in one call (one set of BN statistics)."""
  sizes = [x.shape[0] for x in image_sets]
  embeddings = backbone(jnp.concatenate(image_sets, axis=0), train=train)
  splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
  return jnp.split(embeddings, splits, axis=0)
