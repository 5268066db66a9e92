"""Embedding networks shared by the methods."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import parallel
from fsl_jax.models import batchnorm, linear

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), as in the
# reference implementations of every method in this library. `batchnorm.BatchNorm`
# is `nn.BatchNorm` with a backward pass that is fast on XLA's CPU backend.
BatchNorm = functools.partial(batchnorm.BatchNorm, momentum=0.9, epsilon=1e-5)

# The vmap axis of the episodes in the train step (`fsl_jax.training.train`).
EPISODES = 'episodes'


def batch_norm(train: bool, bn_axis, **kwargs) -> batchnorm.BatchNorm:
  """BatchNorm whose training statistics also pool over the named axes `bn_axis`.

  `bn_axis=None` normalises with the statistics of the call alone (one episode,
  as the model is vmapped over episodes); `('episodes', 'devices')` pools them
  over the whole meta-batch, as a PyTorch model that sees the meta-batch as one
  batch does. Evaluation always uses the running averages.
  """
  return BatchNorm(use_running_average=not train, axis_name=bn_axis if train else None,
                   **kwargs)


class ConvBlock(nn.Module):
  """3x3 conv, BatchNorm, ReLU, 2x2 max-pool.

  The conv has no bias: BatchNorm removes it, so its true gradient is zero and
  Adam would only turn float noise in that gradient into full-size steps.
  ReLU and the max-pool commute (ReLU is monotone), so the pool runs first, fused
  with the BatchNorm (`batchnorm.normalize_max_pool`), and ReLU on the pooled map.
  """

  features: int = 64
  bn_axis: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False, dtype=self.dtype)(x)
    x = batch_norm(train, self.bn_axis, max_pool=True)(x)
    return nn.relu(x)


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
  bn_axis: Any = None  # See `batch_norm`.
  dtype: Any = jnp.float32  # Compute dtype; see `compute_dtype`.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps `[batch, H, W, C]` images to `[batch, D]` float32 embeddings."""
    x = images.astype(self.dtype)
    for _ in range(self.num_blocks):
      x = ConvBlock(self.features, self.bn_axis, self.dtype)(x, train=train)
    return x.reshape((x.shape[0], -1)).astype(jnp.float32)


def channel_dropout(x: jax.Array, rate, rng: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Dropout of whole channels (PyTorch's `Dropout2d`), scaled by `1 / (1 - rate)`.

  Args:
    x: features with channels last.
    rate: drop probability; a Python float or a traced scalar (as inside a scan,
      where each layer has its own rate). A rate of 0 is the identity.
    rng: the dropout key.
    axes: the axes a mask entry is shared over (e.g. the spatial axes).

  Returns:
    `x` with dropped channels zeroed and kept ones rescaled.
  """
  keep = 1.0 - jnp.asarray(rate, x.dtype)
  shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
  mask = jax.random.bernoulli(rng, keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class EGNNConv4(nn.Module):
  """The embedding network of EGNN (Kim et al. 2019) for 84x84 images.

  Four blocks of 3x3 conv (64, 96, 128, 256 channels; the second without
  padding), BatchNorm, 2x2 max-pool and LeakyReLU 0.2, with channel dropout 0.4
  after block 3 and 0.5 after block 4; then flatten, a linear layer to
  `embed_dim` and BatchNorm. 84x84 inputs end at 5x5x256 (84 -> 42 -> 20 -> 10
  -> 5); the same network on 28x28 Omniglot ends at 1x1x256 (28 -> 14 -> 6 -> 3
  -> 1), so the linear layer maps 256 -> 128 there (`egnn_conv4_omniglot`, which
  also drops the dropout: see `BACKBONES`).
  """

  features: tuple[int, ...] = (64, 96, 128, 256)
  padding: tuple[str, ...] = ('SAME', 'VALID', 'SAME', 'SAME')
  dropout: tuple[float, ...] = (0.0, 0.0, 0.4, 0.5)
  embed_dim: int = 128
  bn_axis: Any = None  # See `batch_norm`.
  dtype: Any = jnp.float32  # Compute dtype; see `compute_dtype`.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps `[batch, H, W, C]` images to `[batch, embed_dim]` float32 embeddings."""
    x = images.astype(self.dtype)
    for features, padding, rate in zip(self.features, self.padding, self.dropout, strict=True):
      x = nn.Conv(features, (3, 3), padding=padding, use_bias=False, dtype=self.dtype)(x)
      x = batch_norm(train, self.bn_axis, max_pool=True)(x)  # BatchNorm, then the max-pool.
      x = nn.leaky_relu(x, 0.2)
      if train and rate:
        x = channel_dropout(x, rate, self.make_rng('dropout'), axes=(1, 2))
    # No bias before BatchNorm (the reference has one; BN cancels it, see ConvBlock),
    # and no shift in the last BatchNorm: EGNN's graph (|v_i - v_j| and a node MLP
    # that starts with BatchNorm) and metric methods are invariant to a shift of all
    # embeddings, so its gradient is zero (the multi-device test found it frozen).
    x = linear.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)(x.reshape((x.shape[0], -1)))
    return batch_norm(train, self.bn_axis, use_bias=False)(x).astype(jnp.float32)


BACKBONES = {
  'conv4': Conv4,
  'egnn_conv4': EGNNConv4,
  # Omniglot: EGNN's paper has no Omniglot experiment, so this is our choice: the
  # same network (a 1x1x256 map before the linear layer on 28x28), without the
  # dropout, which ProtoNet-style Omniglot embeddings do not use either.
  'egnn_conv4_omniglot': functools.partial(EGNNConv4, dropout=(0.0, 0.0, 0.0, 0.0)),
}


def bn_axis(config):
  """The `bn_axis` of a config's `batchnorm_stats`: 'episode' or 'meta_batch'."""
  return None if config.batchnorm_stats == 'episode' else (EPISODES, parallel.AXIS)


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config):
  """The dtype of a config's `compute_dtype` ('float32' or 'bfloat16').

  With 'bfloat16' the backbones compute their convolutions, matrix products and
  activations in bfloat16. Parameters, BatchNorm statistics and the running
  averages stay float32, and the embeddings are returned as float32, so that
  everything after the backbone (distances, EGNN's graph, the loss) is float32.
  """
  return COMPUTE_DTYPES[config.compute_dtype]  # Checked by `fsl_jax.config.validate`.


def get_backbone(name: str, **kwargs) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(f'Unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}.')
  return BACKBONES[name](**kwargs)


def from_config(config) -> nn.Module:
  """The backbone a config names, with its BatchNorm pooling and compute dtype."""
  return get_backbone(config.backbone, bn_axis=bn_axis(config), dtype=compute_dtype(config))


def embed_episode(backbone: nn.Module, *image_sets: jax.Array, train: bool) -> list[jax.Array]:
  """Embeds several image sets of one episode in one call (one set of BN statistics)."""
  sizes = [x.shape[0] for x in image_sets]
  embeddings = backbone(jnp.concatenate(image_sets, axis=0), train=train)
  splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
  return jnp.split(embeddings, splits, axis=0)
