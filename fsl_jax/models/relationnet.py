"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

The embedding module f keeps a spatial feature map (`relation_conv4`). A class is
the element-wise sum of its supports' maps (Sec. 3.3: for K shots, the maps of
the class are summed); each (class, query) pair is concatenated along the
channels, `C(f(x_c), f(x_q))`, and the relation module g scores it in [0, 1]
(Eq. 1): two blocks of 3x3 conv (64), BatchNorm, ReLU and 2x2 max-pool, then two
fully connected layers (8 units with ReLU, then 1 with a sigmoid). Training
regresses the scores onto the one-hot match (Eq. 2, mean squared error over
every pair of the episode).

Where this departs from the reference code (floodsung/LearningToCompare_FSL):
  * The reference's BatchNorm layers are called with `momentum=1`, so their
    running averages are the last batch's statistics; here they are the usual
    exponential averages (momentum 0.9), which evaluation uses.
  * No bias before BatchNorm (it cancels), as in the other backbones.
  * Queries are scored one pair at a time in evaluation, through the running
    averages, so no query affects another's scores (tested).
Kept from the reference: the class map is the sum (not the mean) of the shots,
the pair is (class, query) in that channel order, the initialisation (convs He
normal over the fan-out, fully connected layers N(0, 0.01) with biases 1), and
the MSE loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models import backbones
from fsl_jax.models.backbones import batch_norm
from fsl_jax.models.base import FewShotMethod, MethodOutput, register
from fsl_jax.models.linear import Dense


def class_maps(support_maps: jax.Array, labels: jax.Array, way: int) -> jax.Array:
  """The sum of each class's support maps (Sec. 3.3).

  Args:
    support_maps: `[S, h, w, C]`.
    labels: `[S]` in `[0, way)`.
    way: the number of classes.

  Returns:
    `[way, h, w, C]`.
  """
  one_hot = jax.nn.one_hot(labels, way, dtype=support_maps.dtype)  # [S, way]
  return jnp.einsum('sk,shwc->khwc', one_hot, support_maps)


def pair_maps(classes: jax.Array, queries: jax.Array) -> jax.Array:
  """Every (query, class) pair's concatenated map, class channels first.

  Args:
    classes: `[way, h, w, C]`.
    queries: `[Q, h, w, C]`.

  Returns:
    `[Q, way, h, w, 2C]`: entry `[q, k]` is `concat(classes[k], queries[q])`.
  """
  q, way = queries.shape[0], classes.shape[0]
  c = jnp.broadcast_to(classes[None], (q,) + classes.shape)
  x = jnp.broadcast_to(queries[:, None], (q, way) + queries.shape[1:])
  return jnp.concatenate([c, x], axis=-1)


def mse_loss(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """Eq. 2: the mean over queries and classes of `(score - [label == class])^2`."""
  target = jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
  return jnp.mean((scores - target) ** 2)


class RelationModule(nn.Module):
  """g: two conv blocks (conv 3x3, BatchNorm, ReLU, 2x2 max-pool), FC-ReLU, FC-sigmoid.

  Attributes:
    features: channels of the two convs.
    hidden: width of the first fully connected layer.
    padding: of the convs, 'SAME' (the reference's Omniglot module: 5x5 maps)
      or 'VALID' (its miniImageNet module: 19x19 maps).
  """

  features: int = 64
  hidden: int = 8
  padding: str = 'SAME'
  bn_axis: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pairs: jax.Array, *, train: bool) -> jax.Array:
    """`[P, h, w, 2C]` pair maps -> `[P]` relation scores in (0, 1)."""
    x = pairs.astype(self.dtype)
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3), padding=self.padding, use_bias=False, dtype=self.dtype,
                  kernel_init=init)(x)
      x = nn.relu(batch_norm(train, self.bn_axis, max_pool=True)(x))
    x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
    dense = lambda n: Dense(n, kernel_init=nn.initializers.normal(0.01),
                            bias_init=nn.initializers.ones)
    x = nn.relu(dense(self.hidden)(x))
    return nn.sigmoid(dense(1)(x)[:, 0])


@register('relationnet')
class RelationNet(FewShotMethod):
  """Relation Networks with a feature-map backbone (`relation_conv4` by default)."""

  backbone: nn.Module
  relation: RelationModule

  CONFIG_DEFAULTS = {
    'backbone': 'relation_conv4',
    'relation_features': 64,
    'relation_hidden': 8,
    'relation_padding': 'SAME',  # 'VALID' for 84x84 inputs (19x19 maps), as the reference.
  }

  @classmethod
  def from_config(cls, config) -> RelationNet:
    if config.relation_padding not in ('SAME', 'VALID'):
      raise ValueError("relation_padding must be 'SAME' or 'VALID', got "
                       f'{config.relation_padding!r}.')
    relation = RelationModule(config.relation_features, config.relation_hidden,
                              config.relation_padding, backbones.bn_axis(config, embedding=False),
                              backbones.compute_dtype(config))
    return cls(backbone=backbones.from_config(config), relation=relation)

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    del unlabeled_images  # Not used by this method.
    support, query = backbones.embed_episode(self.backbone, support_images, query_images,
                                             train=train)
    if support.ndim != 4:
      raise ValueError(f'relationnet needs a backbone that returns feature maps [N, h, w, C] '
                       f'(e.g. relation_conv4); this one returns shape {support.shape}.')
    pairs = pair_maps(class_maps(support, support_labels, way), query)  # [Q, way, h, w, 2C]
    scores = self.relation(pairs.reshape((-1,) + pairs.shape[2:]), train=train)
    return MethodOutput(logits=scores.reshape(query.shape[0], way))

  def loss(self, outputs: MethodOutput, episode) -> tuple[jax.Array, dict]:
    return mse_loss(outputs.logits, episode.query_labels), {}
