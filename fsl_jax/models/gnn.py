"""Few-shot learning with graph neural networks (Garcia & Bruna, ICLR 2018).

The supports, unlabelled supports and queries of an episode are the nodes of a
graph. A node's features are its embedding concatenated with its label's
one-hot vector, or with the uniform vector 1/way when the label is unknown (a
query or an unlabelled support, as the paper has it). Each layer learns its
own adjacency from the current node features: an MLP scores every pair from
|x_i - x_j| and a softmax over the neighbours j (the node itself excluded)
normalises each row. A layer is a graph convolution over the operator family
{I, A}: a linear map of `concat(x, A x)`, then BatchNorm and LeakyReLU,
and its output is concatenated to its input (dense connections), so node
features grow by `node_features` per layer. The last layer maps
`concat(x, A x)` to `way` scores per node; the queries' scores are the logits,
trained with cross-entropy.

Non-transductive mode (the paper's: one query per graph) gives each query its
own graph with the labelled and unlabelled supports; transductive mode puts all
queries in one graph. BatchNorm in the graph layers normalises over all nodes
(graph convolutions) or all node pairs (adjacency MLPs) of the episode's graphs
in training, and uses running averages in evaluation, so a non-transductive
prediction in evaluation depends on its own query only (`tests/test_gnn.py`).

Kept from the reference implementation (vgsatorras/few-shot-gnn): the layer
count (two hidden layers of 48 new features, nf / 2 with nf = 96, then the
output layer), the adjacency MLP widths (miniImageNet: 2nf, 2nf, nf, nf with
nf = 96; Omniglot: ratios 2, 1.5, 1, 1 of the layer's input width, the last
layer's of its predecessor's input width), LeakyReLU 0.01 in the graph layers,
dropout 0.3 after the first hidden layer of the last adjacency MLP and
BatchNorm on the output scores (both Omniglot only), the node features in the
order [embedding, label], and the per-query cross-entropy.

Where this file departs from the reference:
  * Unknown labels are the uniform vector 1/way, as the paper writes; the
    reference code uses zeros.
  * The self-loop is removed from the softmax by a mask (`adjacency_softmax`),
    not by subtracting 1e8 from the diagonal's score.
  * No bias before BatchNorm (it cancels), and none on the adjacency score
    (a softmax over j is invariant to it): both would have zero gradient. The
    output layer keeps its bias when it has no BatchNorm (miniImageNet).
  * Queries are shuffled by the episode sampler; the reference puts its one
    query at node 0 (harmless there: the network is permutation-equivariant).
  * More than one query per episode: in non-transductive mode the `way * query`
    queries of an episode share its supports, each in its own graph.
  * Parameters start from flax's initialisers (LeCun normal), not PyTorch's.
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

LEAKY_SLOPE = 0.01  # PyTorch's default, which the reference's graph layers use.


def node_features(embeddings: jax.Array, labels: jax.Array, way: int) -> jax.Array:
  """Node features: the embedding, then the label's one-hot vector.

  Args:
    embeddings: `[N, D]`.
    labels: `[N]` in `[0, way)`, or -1 for a node whose label is unknown.
    way: the number of classes.

  Returns:
    `[N, D + way]`; the last `way` features are the uniform 1/way for unknown labels.
  """
  one_hot = jax.nn.one_hot(labels, way, dtype=embeddings.dtype)
  label = jnp.where((labels >= 0)[:, None], one_hot, 1.0 / way)
  return jnp.concatenate([embeddings, label], axis=-1)


def adjacency_softmax(scores: jax.Array) -> jax.Array:
  """Row-wise softmax over the neighbours j != i.

  Args:
    scores: `[..., N, N]` pair scores, `[..., i, j]`.

  Returns:
    `[..., N, N]`: each row sums to 1 over j != i, with a zero diagonal. A mask
    (not a large negative score) keeps this exact in any dtype.
  """
  off_diagonal = ~jnp.eye(scores.shape[-1], dtype=bool)
  return jax.nn.softmax(scores, axis=-1, where=off_diagonal)


def graph_convolution_input(nodes: jax.Array, adjacency: jax.Array) -> jax.Array:
  """The operator family {I, A} applied to the nodes: `concat(x, A x)`.

  Args:
    nodes: `[..., N, D]`.
    adjacency: `[..., N, N]`.

  Returns:
    `[..., N, 2D]`.
  """
  return jnp.concatenate([nodes, adjacency @ nodes], axis=-1)


def episode_graphs(support: jax.Array, support_labels: jax.Array, unlabeled: jax.Array,
                   query: jax.Array, way: int, transductive: bool) -> jax.Array:
  """The initial node features of an episode's graphs.

  Args:
    support: `[S, D]` embeddings of the labelled supports.
    support_labels: `[S]` in `[0, way)`.
    unlabeled: `[U, D]` embeddings of the unlabelled supports.
    query: `[Q, D]` embeddings of the queries.
    way: the number of classes.
    transductive: one graph for the episode, or one per query.

  Returns:
    `[1, S + U + Q, D + way]` (transductive) or `[Q, S + U + 1, D + way]`; nodes
    ordered labelled supports, unlabelled supports, queries; unlabelled supports
    and queries carry the uniform label.
  """
  unknown = lambda x: node_features(x, jnp.full((x.shape[0],), -1, jnp.int32), way)
  context = jnp.concatenate([node_features(support, support_labels, way), unknown(unlabeled)])
  query = unknown(query)
  if transductive:
    return jnp.concatenate([context, query], axis=0)[None]
  context = jnp.broadcast_to(context, (query.shape[0],) + context.shape)
  return jnp.concatenate([context, query[:, None]], axis=1)


class Adjacency(nn.Module):
  """A learned adjacency: an MLP on |x_i - x_j| (the reference's 1x1 convs), then
  `adjacency_softmax`.

  Attributes:
    widths: the hidden layers, each Dense (no bias), BatchNorm, LeakyReLU.
    train: batch statistics and dropout.
    dropout: elementwise, after the first hidden layer (training only).
    bn_axis: see `backbones.batch_norm`.
  """

  widths: tuple[int, ...]
  train: bool
  dropout: float = 0.0
  bn_axis: Any = None

  @nn.compact
  def __call__(self, nodes: jax.Array) -> jax.Array:
    """`[..., N, D]` nodes -> `[..., N, N]` row-stochastic adjacency, zero diagonal."""
    x = jnp.abs(nodes[..., :, None, :] - nodes[..., None, :, :])  # [..., N, N, D]
    for k, width in enumerate(self.widths):
      x = Dense(width, use_bias=False)(x)
      x = nn.leaky_relu(batch_norm(self.train, self.bn_axis)(x), LEAKY_SLOPE)
      if k == 0 and self.train and self.dropout:
        x = nn.Dropout(self.dropout, deterministic=False)(x, rng=self.make_rng('dropout'))
    scores = Dense(1, use_bias=False, name='score')(x)[..., 0]
    return adjacency_softmax(scores)


class GraphConvolution(nn.Module):
  """The graph convolution over {I, A}: a linear map of `concat(x, A x)`, then BatchNorm."""

  features: int
  train: bool
  batchnorm: bool = True
  bn_axis: Any = None

  @nn.compact
  def __call__(self, nodes: jax.Array, adjacency: jax.Array) -> jax.Array:
    """`[..., N, D]` nodes and `[..., N, N]` adjacency -> `[..., N, features]`."""
    x = Dense(self.features, use_bias=not self.batchnorm)(graph_convolution_input(nodes, adjacency))
    return batch_norm(self.train, self.bn_axis)(x) if self.batchnorm else x


class NodeLabelingGNN(nn.Module):
  """The graph layers: `num_layers - 1` densely connected hidden layers, then the
  output layer.

  Attributes:
    num_layers: graph convolutions, the output layer included.
    node_features: new features per hidden layer (nf / 2 in the reference).
    adjacency_features: the base width of the adjacency MLPs (nf); 0 uses each
      layer's input width instead, and the last layer its predecessor's (the
      reference's Omniglot model).
    adjacency_ratios: the MLP's hidden widths as multiples of the base width
      (rounded down, as `int()` in the reference).
    adjacency_dropout: in the last layer's adjacency MLP (see `Adjacency`).
    output_batchnorm: BatchNorm on the output scores (the reference's Omniglot model).
    bn_axis: see `backbones.batch_norm`.
  """

  num_layers: int = 3
  node_features: int = 48
  adjacency_features: int = 96
  adjacency_ratios: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0)
  adjacency_dropout: float = 0.0
  output_batchnorm: bool = False
  bn_axis: Any = None

  def adjacency_widths(self, layer: int, input_width: int) -> tuple[int, ...]:
    """The hidden widths of layer `layer`'s adjacency MLP, given its input width."""
    base = self.adjacency_features
    if not base:
      last = layer == self.num_layers - 1
      base = input_width - (self.node_features if last and layer else 0)
    return tuple(int(base * ratio) for ratio in self.adjacency_ratios)

  @nn.compact
  def __call__(self, nodes: jax.Array, *, way: int, train: bool) -> tuple[jax.Array, jax.Array]:
    """Class scores of every node of a batch of graphs.

    Args:
      nodes: `[G, N, D]` initial node features of G graphs.
      way: the number of classes (output scores per node).
      train: batch statistics and dropout.

    Returns:
      `([G, N, way] scores, [L, G, N, N] the adjacency of each layer)`.
    """
    adjacencies = []
    # A Python loop, not `nn.scan`: with dense connections every layer sees a
    # wider input than the one before, so the layers' parameters differ in shape.
    for layer in range(self.num_layers - 1):
      widths = self.adjacency_widths(layer, nodes.shape[-1])
      adjacency = Adjacency(widths, train, 0.0, self.bn_axis, name=f'adjacency_{layer}')(nodes)
      new = GraphConvolution(self.node_features, train, True, self.bn_axis,
                             name=f'conv_{layer}')(nodes, adjacency)
      nodes = jnp.concatenate([nodes, nn.leaky_relu(new, LEAKY_SLOPE)], axis=-1)
      adjacencies.append(adjacency)
    last = self.num_layers - 1
    widths = self.adjacency_widths(last, nodes.shape[-1])
    adjacency = Adjacency(widths, train, self.adjacency_dropout, self.bn_axis,
                          name=f'adjacency_{last}')(nodes)
    scores = GraphConvolution(way, train, self.output_batchnorm, self.bn_axis,
                              name=f'conv_{last}')(nodes, adjacency)
    return scores, jnp.stack(adjacencies + [adjacency])


@register('gnn')
class GNN(FewShotMethod):
  """The node-labelling GNN with a configurable embedding, in either mode.

  Attributes:
    backbone: the embedding network.
    gnn: the graph layers.
    transductive: one graph over the whole episode; otherwise (the paper's
      setting) one graph per query, holding the supports and that query.
  """

  backbone: nn.Module
  gnn: NodeLabelingGNN
  transductive: bool = False

  SUPPORTS_UNLABELED = True
  CONFIG_DEFAULTS = {
    'backbone': 'egnn_conv4',  # The reference's miniImageNet embedding (128-d).
    'transductive': False,
    'num_layers': 3,
    'node_features': 48,
    'adjacency_features': 96,  # 0: each layer's input width (the reference's Omniglot).
    'adjacency_ratios': (2.0, 2.0, 1.0, 1.0),
    'adjacency_dropout': 0.0,  # In the last layer's adjacency MLP; Omniglot: 0.3.
    'output_batchnorm': False,  # Omniglot: True.
  }

  @classmethod
  def from_config(cls, config) -> GNN:
    if config.way != config.test_way:
      raise ValueError(
        f'gnn needs way == test_way (got {config.way} and {config.test_way}): the label '
        'features and the output layer have `way` units.')
    if config.num_layers < 1:
      raise ValueError(f'num_layers must be at least 1 (the output layer), got '
                       f'{config.num_layers}.')
    if not 0.0 <= config.adjacency_dropout < 1.0:
      raise ValueError(f'adjacency_dropout must be in [0, 1), got {config.adjacency_dropout}.')
    ratios = tuple(float(r) for r in config.adjacency_ratios)
    if not ratios or min(ratios) <= 0:
      raise ValueError(f'adjacency_ratios must be positive, got {config.adjacency_ratios}.')
    gnn = NodeLabelingGNN(config.num_layers, config.node_features, config.adjacency_features,
                          ratios, float(config.adjacency_dropout), bool(config.output_batchnorm),
                          backbones.bn_axis(config, embedding=False))
    return cls(backbone=backbones.from_config(config), gnn=gnn,
               transductive=bool(config.transductive))

  def queries_interact(self) -> bool:
    return self.transductive

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    """Query scores and the adjacency of every layer.

    Returns:
      `MethodOutput` with `logits [Q, way]` and `aux['adjacency']`:
      `[L, G, N, N]`, G = 1 graph of `S + U + Q` nodes (transductive) or G = Q
      graphs of `S + U + 1` nodes; nodes are ordered labelled supports,
      unlabelled supports, queries.
    """
    if unlabeled_images is None:
      unlabeled_images = support_images[:0]
    support, unlabeled, query = backbones.embed_episode(
      self.backbone, support_images, unlabeled_images, query_images, train=train)
    nodes = episode_graphs(support, support_labels, unlabeled, query, way, self.transductive)
    scores, adjacency = self.gnn(nodes, way=way, train=train)
    num_queries = query.shape[0]
    logits = scores[0, -num_queries:] if self.transductive else scores[:, -1]
    return MethodOutput(logits=logits, aux={'adjacency': adjacency})
