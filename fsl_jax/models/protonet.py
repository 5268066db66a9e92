"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

A class is represented by the mean of its support embeddings (its prototype,
Eq. 1) and a query is classified by a softmax over negative squared Euclidean
distances to the prototypes (Eq. 2), trained with cross-entropy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models import backbones
from fsl_jax.models.base import FewShotMethod, MethodOutput, register


def prototypes(embeddings: jax.Array, labels: jax.Array, way: int) -> jax.Array:
  """Class means (Eq. 1).

  Args:
    embeddings: `[num_supports, D]`.
    labels: `[num_supports]` in `[0, way)`.
    way: the number of classes.

  Returns:
    `[way, D]` prototypes.
  """
  one_hot = jax.nn.one_hot(labels, way, dtype=embeddings.dtype)  # [S, way]
  return (one_hot.T @ embeddings) / jnp.maximum(one_hot.sum(0), 1.0)[:, None]


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """`[n, D] x [m, D] -> [n, m]` squared Euclidean distances."""
  return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)


@register('protonet')
class ProtoNet(FewShotMethod):
  """Prototypical Networks with a configurable backbone."""

  backbone: nn.Module

  CONFIG_DEFAULTS = {'backbone': 'conv4'}

  @classmethod
  def from_config(cls, config) -> ProtoNet:
    return cls(backbone=backbones.from_config(config))

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    del unlabeled_images  # Not used by this method.
    support, query = backbones.embed_episode(self.backbone, support_images, query_images,
                                             train=train)
    protos = prototypes(support, support_labels, way)
    return MethodOutput(logits=-squared_distances(query, protos), aux={'prototypes': protos})
