"""Siamese networks for one-shot recognition (Koch, Zemel & Salakhutdinov, ICML-W 2015).

A shared encoder embeds both images of a pair, `h = sigmoid(W f(x))` (the
paper's last layer is a sigmoid-activated fully connected layer on the conv
features); the pair's probability of showing one class is
`p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b)`, the weighted L1 distance of
Eq. 2-3, trained with binary cross-entropy on same / different pairs (Eq. 4).
At test time a query takes the class of its most similar support; with K shots
a class's similarity is the mean of its K supports' probabilities.

Pairs come from the training episodes, on the device: every (query, support)
pair of an episode is a verification pair, positive when both come from one
class. An N-way episode has N - 1 times more negative pairs than positive ones,
so the loss is balanced: the mean BCE over positive pairs plus the mean over
negative pairs, halved, i.e. pairs weighted as if drawn half same, half
different (the paper samples balanced pairs).

Where this departs from the paper:
  * The encoder is any backbone of the library (the Conv-4 by default, on the
    28x28 Vinyals protocol; the paper's network takes 105x105 images), followed
    by the sigmoid-activated fully connected layer (`siamese_embed_dim` units;
    the paper's 4096).
  * Training uses the library's optimizer (Adam by default), not the paper's
    SGD with per-layer learning rates, momentum schedules and L2 weights; and
    no affine distortions (the paper's augmentation).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fsl_jax.models import backbones
from fsl_jax.models.base import FewShotMethod, MethodOutput, register
from fsl_jax.models.linear import Dense


def weighted_l1_logits(query: jax.Array, support: jax.Array, alpha: jax.Array,
                       bias: jax.Array) -> jax.Array:
  """Eq. 2-3 before the sigmoid: `sum_j alpha_j |q_j - s_j| + b` for every pair.

  Args:
    query: `[Q, D]` embeddings.
    support: `[S, D]` embeddings.
    alpha: `[D]` weights of the component-wise distances.
    bias: scalar.

  Returns:
    `[Q, S]` pair logits.
  """
  return jnp.abs(query[:, None, :] - support[None, :, :]) @ alpha + bias


def class_similarity(pair_probs: jax.Array, support_labels: jax.Array, way: int) -> jax.Array:
  """`[Q, S]` pair probabilities -> `[Q, way]` mean probability over each class's supports."""
  one_hot = jax.nn.one_hot(support_labels, way, dtype=pair_probs.dtype)  # [S, way]
  return (pair_probs @ one_hot) / jnp.maximum(one_hot.sum(0), 1.0)


def balanced_pair_loss(pair_logits: jax.Array, same: jax.Array) -> jax.Array:
  """Half the mean BCE over positive pairs plus half the mean over negative ones.

  Args:
    pair_logits: `[Q, S]` logits of `p(same)`.
    same: `[Q, S]` bool targets.

  Returns:
    A scalar; a side with no pair counts 0.
  """
  bce = optax.sigmoid_binary_cross_entropy(pair_logits, same.astype(pair_logits.dtype))
  pos = jnp.sum(jnp.where(same, bce, 0.0)) / jnp.maximum(same.sum(), 1)
  neg = jnp.sum(jnp.where(same, 0.0, bce)) / jnp.maximum((~same).sum(), 1)
  return 0.5 * (pos + neg)


@register('siamese')
class Siamese(FewShotMethod):
  """Siamese networks: a shared encoder, a weighted L1 distance, pair verification.

  Attributes:
    backbone: the shared encoder.
    embed_dim: units of the sigmoid-activated fully connected layer after it; 0
      uses the backbone's embedding as is.
  """

  backbone: nn.Module
  embed_dim: int = 0

  CONFIG_DEFAULTS = {'backbone': 'conv4', 'siamese_embed_dim': 0}

  @classmethod
  def from_config(cls, config) -> Siamese:
    if config.siamese_embed_dim < 0:
      raise ValueError(f'siamese_embed_dim must be >= 0, got {config.siamese_embed_dim}.')
    return cls(backbone=backbones.from_config(config), embed_dim=config.siamese_embed_dim)

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    """Class scores (mean pair probabilities) and, in `aux`, the `[Q, S]` pair logits."""
    del unlabeled_images  # Not used by this method.
    support, query = backbones.embed_episode(self.backbone, support_images, query_images,
                                             train=train)
    if self.embed_dim:
      head = Dense(self.embed_dim, name='embed')
      support, query = nn.sigmoid(head(support)), nn.sigmoid(head(query))
    alpha = self.param('alpha', nn.initializers.normal(0.2), (support.shape[-1],), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (), jnp.float32)
    pair_logits = weighted_l1_logits(query, support, alpha, bias)
    scores = class_similarity(nn.sigmoid(pair_logits), support_labels, way)
    return MethodOutput(logits=scores, aux={'pair_logits': pair_logits})

  def loss(self, outputs: MethodOutput, episode) -> tuple[jax.Array, dict]:
    same = episode.query_labels[:, None] == episode.support_labels[None, :]
    return balanced_pair_loss(outputs.aux['pair_logits'], same), {}
