"""TPN: Transductive Propagation Networks (Liu, Lee, Park, Kim, Yang, Hwang & Yang, ICLR 2019).

The supports and all queries of an episode are the nodes of one graph. The
embedding f maps each image to a feature map; a graph-construction module g
predicts from that map a per-example scale sigma_i (Sec. 3.2.2); edge weights
are Gaussian in the scaled embeddings, W_ij = exp(-d(f_i / sigma_i, f_j /
sigma_j) / 2) (Eq. 2), kept for the k largest of each row and symmetrised;
S = D^{-1/2} W D^{-1/2} (Eq. 3); labels propagate in closed form,
F* = (I - alpha S)^{-1} Y (Eq. 4), with Y the supports' one-hot labels and zeros
for the queries, solved as a linear system. A query's scores are its row of F*;
training minimises the cross-entropy of softmax(F*) (Eq. 5-6).

TPN is transductive by construction: every query's scores depend on the other
queries through the graph (in evaluation too). Query labels reach only the loss.

Where this follows the reference code (csyanbin/TPN) where the paper is silent:
  * d is the mean (not the sum) of the squared differences over the features,
    and sigma_i is divided in with a 1e-6 guard: `(f_i / (sigma_i + eps))`.
  * The top-k mask keeps, per row, the k largest weights (the node's own weight,
    1, among them), then an edge is kept if either endpoint kept it;
    `tpn_topk` defaults to the reference's 20 (every edge for smaller graphs).
  * The loss is the cross-entropy of every node's propagated scores, supports
    included (their labels are known), averaged over the nodes.
  * alpha is fixed at 0.99 (`tpn_alpha`); the reference's learned-alpha option is
    not implemented.
  * g: two blocks of 3x3 conv (64, then 1 channel), BatchNorm, ReLU and a 2x2
    max-pool with padding, then FC 8 (ReLU) and FC 1. The reference's pooling
    pads by one pixel on each side; here 'SAME' pooling pads at the end only.
  * g's last FC starts with a zero kernel and a bias of `tpn_sigma_init` (0.3),
    so every sigma starts at 0.3; PyTorch's default draws both at random, and
    sigma then starts scattered around 0, some negative. The scale matters: the
    embedding's BatchNorm makes the mean squared distance between two nodes
    about 0.6 at initialisation, so sigma = 1 gives a nearly complete graph
    (off-diagonal W about 0.74), whose propagated scores are nearly the same
    for every class; in a debugging run on Omniglot 5-way 1-shot that stayed
    near chance on the training episodes, while a constant 0.3 (W about 0.05)
    learns within the tiny config's 100 steps (`test_tiny_tpn_learns_omniglot`).
    Near 0, single examples' scales blow up the distances and the gradients.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fsl_jax.models import backbones
from fsl_jax.models.backbones import batch_norm
from fsl_jax.models.base import FewShotMethod, MethodOutput, register
from fsl_jax.models.linear import Dense


def gaussian_weights(embeddings: jax.Array, sigma: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Eq. 2: `W_ij = exp(-mean_d((x_i - x_j)_d^2) / 2)` with `x_i = f_i / (sigma_i + eps)`.

  Args:
    embeddings: `[N, D]` flattened embeddings.
    sigma: `[N]` per-example scales.

  Returns:
    `[N, N]` weights in (0, 1], 1 on the diagonal.
  """
  x = embeddings / (sigma[:, None] + eps)
  squared = jnp.mean((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
  return jnp.exp(-squared / 2)


def top_k_symmetric(weights: jax.Array, k: int) -> jax.Array:
  """Keeps `W_ij` where j is among the k largest of row i or i among those of row j."""
  n = weights.shape[0]
  if k >= n:
    return weights
  _, indices = jax.lax.top_k(weights, k)  # [N, k]
  kept = jax.nn.one_hot(indices, n, dtype=jnp.bool_).any(axis=1)  # [N, N]
  return jnp.where(kept | kept.T, weights, 0.0)


def normalized_laplacian(weights: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Eq. 3: `S = D^{-1/2} W D^{-1/2}`, D the diagonal of W's row sums."""
  d = jax.lax.rsqrt(weights.sum(axis=1) + eps)
  return d[:, None] * weights * d[None, :]


def solve_positive_definite(a: jax.Array, b: jax.Array) -> jax.Array:
  """`a^{-1} b` for a symmetric positive definite `a`, by Gauss-Jordan elimination.

  No pivoting is needed for such a matrix. Written as a `fori_loop` of N
  eliminations in plain XLA operations instead of `jnp.linalg.solve`: on XLA's
  CPU backend with several (forced host) devices, the batched LU call of the
  evaluation step deadlocked under `pmap` (4 devices on 2 cores, jaxlib 0.10.2).
  """
  n = a.shape[0]

  def eliminate(k, ab):
    row = ab[k] / ab[k, k]
    factor = ab[:, k].at[k].set(0.0)
    return (ab - factor[:, None] * row[None, :]).at[k].set(row)

  ab = jax.lax.fori_loop(0, n, eliminate, jnp.concatenate([a, b], axis=1))
  return ab[:, n:]


def propagate(s: jax.Array, labels_one_hot: jax.Array, alpha: float) -> jax.Array:
  """Eq. 4: `F* = (I - alpha S)^{-1} Y`, as the solution of a linear system.

  `I - alpha S` is symmetric positive definite: S is symmetric with eigenvalues
  in [-1, 1] (a normalised non-negative symmetric matrix), and alpha < 1.

  Args:
    s: `[N, N]` normalised weights.
    labels_one_hot: `[N, way]`, zero rows for unlabelled nodes.
    alpha: in (0, 1).

  Returns:
    `[N, way]` propagated scores.
  """
  n = s.shape[0]
  return solve_positive_definite(jnp.eye(n, dtype=s.dtype) - alpha * s, labels_one_hot)


class GraphConstruction(nn.Module):
  """g: a feature map `[N, h, w, C]` -> per-example scales `[N]` (Sec. 3.2.2)."""

  features: int = 64
  hidden: int = 8
  sigma_init: float = 0.3
  bn_axis: Any = None

  @nn.compact
  def __call__(self, maps: jax.Array, *, train: bool) -> jax.Array:
    x = maps
    for features in (self.features, 1):
      x = nn.Conv(features, (3, 3), padding='SAME', use_bias=False)(x)
      x = nn.relu(batch_norm(train, self.bn_axis)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    x = nn.relu(Dense(self.hidden)(x.reshape((x.shape[0], -1))))
    # g starts as the constant `sigma_init` (zero kernel, that bias); see the
    # module docstring for why.
    return Dense(1, kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.constant(self.sigma_init))(x)[:, 0]


@register('tpn')
class TPN(FewShotMethod):
  """Transductive Propagation Networks with a feature-map backbone.

  Attributes:
    backbone: the embedding f; its output is kept as a map for g (a vector
      backbone's `[N, D]` output is seen as a 1x1 map).
    graph: g, the scale predictor.
    topk: k of the top-k sparsification.
    alpha: the propagation's alpha.
  """

  backbone: nn.Module
  graph: GraphConstruction
  topk: int = 20
  alpha: float = 0.99

  CONFIG_DEFAULTS = {'backbone': 'conv4_map', 'tpn_topk': 20, 'tpn_alpha': 0.99,
                     'tpn_sigma_init': 0.3}

  @classmethod
  def from_config(cls, config) -> TPN:
    if config.tpn_topk < 1:
      raise ValueError(f'tpn_topk must be at least 1, got {config.tpn_topk}.')
    if not 0.0 < config.tpn_alpha < 1.0:
      raise ValueError(f'tpn_alpha must be in (0, 1), got {config.tpn_alpha}.')
    if not config.tpn_sigma_init > 0.0:
      raise ValueError(f'tpn_sigma_init must be positive, got {config.tpn_sigma_init}.')
    graph = GraphConstruction(sigma_init=float(config.tpn_sigma_init),
                              bn_axis=backbones.bn_axis(config, embedding=False))
    return cls(backbone=backbones.from_config(config), graph=graph,
               topk=int(config.tpn_topk), alpha=float(config.tpn_alpha))

  def queries_interact(self) -> bool:
    return True  # All queries propagate labels in one graph.

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    """Query scores `[Q, way]` (rows of F*); `aux['scores']` holds every node's `[N, way]`."""
    del unlabeled_images  # Not used by this method.
    images = jnp.concatenate([support_images, query_images], axis=0)
    maps = self.backbone(images, train=train)
    if maps.ndim == 2:
      maps = maps[:, None, None, :]
    sigma = self.graph(maps, train=train)
    weights = gaussian_weights(maps.reshape((maps.shape[0], -1)), sigma)
    s = normalized_laplacian(top_k_symmetric(weights, self.topk))
    num_supports = support_images.shape[0]
    y = jnp.zeros((images.shape[0], way), jnp.float32).at[:num_supports].set(
      jax.nn.one_hot(support_labels, way))
    scores = propagate(s, y, self.alpha)
    return MethodOutput(logits=scores[num_supports:], aux={'scores': scores})

  def loss(self, outputs: MethodOutput, episode) -> tuple[jax.Array, dict]:
    """Cross-entropy of the propagated scores of every node, supports and queries."""
    labels = jnp.concatenate([episode.support_labels, episode.query_labels])
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs.aux['scores'], labels)
    return loss.mean(), {}
