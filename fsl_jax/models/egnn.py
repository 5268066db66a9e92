"""EGNN: the Edge-Labeling Graph Neural Network (Kim, Kim, Kim & Yoo, CVPR 2019).

The supports, unlabelled supports and queries of an episode are the nodes of one
graph. Each edge carries two weights, [same class, different class]: the ground
truth between two labelled supports, 0.5/0.5 on every edge that touches a query
or an unlabelled support, and [1, 0] on the diagonal. L layers refine them, each
a node update (aggregate neighbours with each channel's row-normalised weights,
Eq. 3 of the paper) followed by an edge update (a learned similarity of the new
node features rescales each channel, Eq. 4-5). A query's score for class k is the
sum of its final same-class weights to the labelled supports of class k (Eq. 8),
and training minimises a balanced binary cross-entropy on the edges that touch a
query, summed over layers with weights (Eq. 6-7).

Where this file departs from the reference implementation (jmkim0309/fewshot-egnn):
  * The readout sums over labelled supports only: an unlabelled support's label
    is used nowhere, neither in the readout nor in the loss (the reference reads
    both). Its edges start at 0.5 and the loss skips every edge that touches it.
  * Non-transductive mode gives each query its own graph with the supports
    (`[queries, supports + 1]` nodes): the graph axis plays the role of a vmap
    over queries, and the edge initialisation of each graph is its own (the
    reference tiles the initial edges in another order than the nodes when the
    meta-batch has more than one episode).
  * By default, self-edges are left out of the loss: after the edge update they
    are [1, 0] up to 1e-6 whatever the parameters are, so they carry no gradient
    and only dilute the mean over positive edges (`loss_self_edges=True` counts
    them, as the reference's transductive mask does).
  * Queries are shuffled by the episode sampler, so their position says nothing
    about their class (the reference orders them by class).
Kept from the reference: no bias before BatchNorm, LeakyReLU 0.01 in the graph
layers, channel dropout, the +1e-6 before the final channel normalisation, and
the loss normalisation `mean_l(w_l * loss_l)`.

BatchNorm in the graph layers normalises over all nodes (node MLP) or all node
pairs (edge MLP) of the episode's graphs in training (with
`batchnorm_stats='meta_batch'` or `'per_position'`, as in the reference, of all
the step's episodes), and uses running averages in evaluation. So in
evaluation a non-transductive prediction is exactly that of a graph holding the
supports and that query alone (`tests/test_egnn.py` checks it).

Training as the reference: `batchnorm_stats='per_position'` (the embedding's
statistics per node position over the meta-batch, as the reference's one call
per position gives), `batchnorm_unbiased_running_var=True` (PyTorch's rule) and
`loss_self_edges=True`. `tests/test_egnn_training_parity.py` compares one
training forward in each mode with a NumPy transcription of the reference's;
README.md, "Training as the reference", says why fsl_jax's defaults differ.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models import backbones
from fsl_jax.models.backbones import batch_norm, channel_dropout
from fsl_jax.models.base import FewShotMethod, MethodOutput, register
from fsl_jax.models.linear import Dense

# Edge channels.
SAME, DIFF = 0, 1


def initial_edges(labels: jax.Array) -> jax.Array:
  """The initial edge labels of one graph.

  Args:
    labels: `[N]` node labels, -1 for a node whose label is unknown (a query or
      an unlabelled support).

  Returns:
    `[N, N, 2]` edges: [1, 0] or [0, 1] between two labelled nodes of the same
    or different classes, [0.5, 0.5] on edges touching an unknown node, [1, 0]
    on the diagonal.
  """
  known = labels >= 0
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  same = jnp.where(known[:, None] & known[None, :], same, 0.5)
  same = jnp.where(jnp.eye(labels.shape[0], dtype=bool), 1.0, same)
  return jnp.stack([same, 1.0 - same], axis=-1)


def _zero_diagonal(edges: jax.Array) -> jax.Array:
  n = edges.shape[-2]
  return edges * (1.0 - jnp.eye(n, dtype=edges.dtype))[:, :, None]


def _l1_rows(edges: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Each channel divided by its row sum (`F.normalize(p=1, dim=-1)`); weights are >= 0."""
  return edges / jnp.maximum(edges.sum(axis=-2, keepdims=True), eps)


def aggregate(nodes: jax.Array, edges: jax.Array) -> jax.Array:
  """Steps 1-3 of the node update (Eq. 3): the input of the node MLP.

  Args:
    nodes: `[..., N, D]` node features.
    edges: `[..., N, N, 2]` edge labels.

  Returns:
    `[..., N, 3D]`: each node's own features, then the average of its neighbours
    under the same-class weights, then under the different-class weights (the
    weights with self-edges zeroed, L1-normalised along each row per channel).
  """
  weights = _l1_rows(_zero_diagonal(edges))
  neighbours = jnp.einsum('...ijc,...jd->...icd', weights, nodes)
  return jnp.concatenate([nodes, neighbours.reshape(nodes.shape[:-1] + (-1,))], axis=-1)


def update_edges(similarity: jax.Array, edges: jax.Array) -> jax.Array:
  """Steps 2-3 of the edge update (Eq. 4-5).

  Args:
    similarity: `[..., N, N]` f_ij in (0, 1).
    edges: `[..., N, N, 2]` the previous edge labels.

  Returns:
    `[..., N, N, 2]`: the same-class channel scaled by f and the different-class
    channel by 1 - f, each channel's row rescaled to keep its previous sum
    (self-edges zeroed), then a [1, 0] self-loop, +1e-6, and the two channels
    normalised to sum to 1.
  """
  edges = _zero_diagonal(edges)
  row_sums = edges.sum(axis=-2, keepdims=True)
  scaled = jnp.stack([similarity, 1.0 - similarity], axis=-1) * edges
  edges = _l1_rows(scaled) * row_sums
  n = edges.shape[-2]
  edges = edges + jnp.stack([jnp.eye(n), jnp.zeros((n, n))], axis=-1)
  edges = edges + 1e-6
  return edges / edges.sum(axis=-1, keepdims=True)


def readout(query_edges: jax.Array, support_labels: jax.Array, way: int) -> jax.Array:
  """Class scores (Eq. 8): summed same-class weights to each class's labelled supports.

  Args:
    query_edges: `[Q, S]` final same-class weights from each query to the
      labelled supports.
    support_labels: `[S]` labels in `[0, way)`.
    way: the number of classes.

  Returns:
    `[Q, way]` scores.
  """
  return query_edges @ jax.nn.one_hot(support_labels, way, dtype=query_edges.dtype)


def loss_edges(labels: jax.Array, is_query: jax.Array,
               self_edges: bool = False) -> tuple[jax.Array, jax.Array]:
  """Which edges of one graph the loss sees, and their targets.

  Args:
    labels: `[N]` node labels as the loss knows them: queries' true labels, -1
      for unlabelled supports.
    is_query: `[N]` bool.
    self_edges: also count each query's edge to itself (a positive). The
      reference code's transductive mask does: its query-edge mask is all ones
      outside the support block, diagonal included. Those edges are fixed at
      about [1, 0], so their loss is about 1e-6 and they only enlarge the
      positive mean's denominator.

  Returns:
    `([N, N] bool mask, [N, N] bool same-class target)`: the edges with a query
    endpoint whose two labels are known, off the diagonal (unless `self_edges`).
  """
  known = labels >= 0
  mask = (is_query[:, None] | is_query[None, :]) & known[:, None] & known[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  mask &= ~eye | (self_edges & is_query[:, None] & eye)
  return mask, labels[:, None] == labels[None, :]


def _safe_log(p: jax.Array) -> jax.Array:
  # Edge weights are >= ~1e-6 by construction; the floor keeps log and its
  # gradient finite even for a weight that underflows.
  return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def balanced_edge_loss(edges: jax.Array, mask: jax.Array, same: jax.Array) -> jax.Array:
  """Mean BCE over positive edges plus mean BCE over negative edges (Eq. 7).

  Args:
    edges: `[..., N, N, 2]` predicted edge labels.
    mask: `[..., N, N]` edges to include.
    same: `[..., N, N]` bool targets.

  Returns:
    A scalar; a term with no edge counts 0.
  """
  pos, neg = mask & same, mask & ~same
  pos_loss = -jnp.sum(jnp.where(pos, _safe_log(edges[..., SAME]), 0.0))
  neg_loss = -jnp.sum(jnp.where(neg, _safe_log(edges[..., DIFF]), 0.0))
  return pos_loss / jnp.maximum(pos.sum(), 1) + neg_loss / jnp.maximum(neg.sum(), 1)


class NodeUpdate(nn.Module):
  """Eq. 3: aggregation, then an MLP (2d, d) shared over nodes."""

  features: int
  train: bool
  bn_axis: Any = None

  @nn.compact
  def __call__(self, nodes, edges, dropout_rate):
    x = aggregate(nodes, edges)
    for width in (2 * self.features, self.features):
      x = Dense(width, use_bias=False)(x)
      x = batch_norm(self.train, self.bn_axis)(x)
      x = nn.leaky_relu(x, 0.01)
    if self.train:  # Channel dropout at the end; one mask per graph.
      x = channel_dropout(x, dropout_rate, self.make_rng('dropout'), axes=(x.ndim - 2,))
    return x


class EdgeUpdate(nn.Module):
  """Eq. 4-5: f_ij = sigmoid(MLP(|v_i - v_j|)), MLP widths (2d, 2d, d, d, 1)."""

  features: int
  train: bool
  bn_axis: Any = None

  @nn.compact
  def __call__(self, nodes, edges, dropout_rate):
    x = jnp.abs(nodes[..., :, None, :] - nodes[..., None, :, :])  # [..., N, N, D]
    for width in (2 * self.features, 2 * self.features, self.features, self.features):
      x = Dense(width, use_bias=False)(x)
      x = batch_norm(self.train, self.bn_axis)(x)
      x = nn.leaky_relu(x, 0.01)
      if self.train:
        x = channel_dropout(x, dropout_rate, self.make_rng('dropout'),
                            axes=(x.ndim - 3, x.ndim - 2))
    similarity = nn.sigmoid(Dense(1)(x)[..., 0])
    return update_edges(similarity, edges)


class GraphLayer(nn.Module):
  """One EGNN layer, node update then edge update; the body of the scan.

  The carry is `(nodes, edges)` with nodes of a fixed width W = max(embedding
  width, node_features), so that every layer has the same parameter shapes and
  the L layers stack on one axis. A layer's node MLP maps `3W -> node_features`
  and its output is zero-padded back to W. With the reference widths (128-d
  embeddings, 96-d nodes) the first layer sees all 3 x 128 inputs and the later
  layers see 96 features plus 32 zeros per block: the kernel rows of those zero
  inputs receive no gradient, so the network computes exactly the reference's
  function (layer 1: 384 -> 192, later layers: 288 -> 192) while the parameters
  of all layers live on one leading axis.
  """

  node_features: int
  edge_features: int
  train: bool
  bn_axis: Any = None

  @nn.compact
  def __call__(self, carry, dropout_rate):
    nodes, edges = carry
    new_nodes = NodeUpdate(self.node_features, self.train, self.bn_axis)(nodes, edges,
                                                                         dropout_rate)
    edges = EdgeUpdate(self.edge_features, self.train, self.bn_axis)(new_nodes, edges,
                                                                     dropout_rate)
    pad = nodes.shape[-1] - self.node_features
    nodes = jnp.pad(new_nodes, [(0, 0)] * (new_nodes.ndim - 1) + [(0, pad)])
    return (nodes, edges), edges


class EdgeLabelingGNN(nn.Module):
  """The L graph layers as one `nn.scan`, with parameters stacked on a leading axis.

  Attributes:
    num_layers: L.
    node_features: d of the node MLPs.
    edge_features: d of the edge MLPs.
    dropout: channel dropout in every layer but the last.
    bn_axis: see `backbones.batch_norm`.
    unroll: layers per iteration of the scan's loop (`num_layers` or more: no
      loop). The same function either way; XLA's cost analysis counts a loop
      body once, so the benchmark counts FLOPs with the scan unrolled.
    remat: recompute each layer's activations in the backward pass instead of
      keeping them (`nn.remat` of the scan's body): the same function and
      gradients, with one layer's activations alive at a time instead of all
      of them. Pays where the graphs are large, as the non-transductive
      form's one graph per query.
  """

  num_layers: int = 3
  node_features: int = 96
  edge_features: int = 96
  dropout: float = 0.0
  bn_axis: Any = None
  unroll: int = 1
  remat: bool = False

  @nn.compact
  def __call__(self, nodes: jax.Array, edges: jax.Array, *, train: bool) -> jax.Array:
    """Refines the edges of a batch of graphs.

    Args:
      nodes: `[G, N, D]` initial node features of G graphs.
      edges: `[G, N, N, 2]` initial edge labels.
      train: batch statistics and dropout.

    Returns:
      `[L, G, N, N, 2]` the edge labels after each layer.
    """
    width = max(nodes.shape[-1], self.node_features)
    nodes = jnp.pad(nodes, [(0, 0)] * (nodes.ndim - 1) + [(0, width - nodes.shape[-1])])
    rates = jnp.array([self.dropout] * (self.num_layers - 1) + [0.0], jnp.float32)
    # prevent_cse=False: inside a scan the recomputation cannot be merged away.
    body = nn.remat(GraphLayer, prevent_cse=False) if self.remat else GraphLayer
    layers = nn.scan(
      body,
      variable_axes={'params': 0, 'batch_stats': 0},
      split_rngs={'params': True, 'dropout': True},
      length=self.num_layers,
      unroll=max(1, min(self.unroll, self.num_layers)),
    )(self.node_features, self.edge_features, train, self.bn_axis, name='layers')
    _, edges_per_layer = layers((nodes, edges), rates)
    return edges_per_layer


@register('egnn')
class EGNN(FewShotMethod):
  """EGNN with a configurable embedding, in transductive or non-transductive mode.

  Attributes:
    backbone: the embedding network.
    gnn: the graph layers.
    transductive: one graph over the whole episode; otherwise one graph per
      query, holding the (labelled and unlabelled) supports and that query.
    edge_loss_weights: the loss weight of each layer.
  """

  backbone: nn.Module
  gnn: EdgeLabelingGNN
  transductive: bool = True
  edge_loss_weights: tuple[float, ...] = (0.5, 0.5, 1.0)
  loss_self_edges: bool = False  # See `loss_edges`; transductive graphs only.

  SUPPORTS_UNLABELED = True
  CONFIG_DEFAULTS = {
    'backbone': 'egnn_conv4',
    'transductive': True,
    'num_layers': 3,
    'node_features': 96,
    'edge_features': 96,
    'graph_dropout': 0.1,  # Reference: 0.1 on miniImageNet, 0 on tieredImageNet.
    'edge_loss_weights': (0.5, 0.5, 1.0),
    'scan_unroll': 1,  # Graph layers per scan iteration; see `EdgeLabelingGNN.unroll`.
    'graph_remat': False,  # Recompute the graph layers in the backward pass; ditto `remat`.
    # The reference's transductive loss counts each query's self-edge (`loss_edges`).
    'loss_self_edges': False,
  }

  @classmethod
  def from_config(cls, config) -> EGNN:
    weights = tuple(float(w) for w in config.edge_loss_weights)
    if len(weights) != config.num_layers:
      raise ValueError(
        f'edge_loss_weights has {len(weights)} entries but num_layers={config.num_layers}; '
        'give one weight per layer.')
    if not 0.0 <= config.graph_dropout < 1.0:
      raise ValueError(f'graph_dropout must be in [0, 1), got {config.graph_dropout}.')
    bn_axis = backbones.bn_axis(config, embedding=False)
    gnn = EdgeLabelingGNN(config.num_layers, config.node_features, config.edge_features,
                          config.graph_dropout, bn_axis, config.scan_unroll,
                          bool(config.graph_remat))
    return cls(backbone=backbones.from_config(config), gnn=gnn,
               transductive=bool(config.transductive), edge_loss_weights=weights,
               loss_self_edges=bool(config.loss_self_edges))

  def queries_interact(self) -> bool:
    return self.transductive

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, unlabeled_images=None,
               *, way: int, train: bool) -> MethodOutput:
    """Query scores and the edges of every layer.

    Returns:
      `MethodOutput` with `logits [Q, way]` and `aux['edges']`: `[L, G, N, N, 2]`,
      G = 1 graph of `S + U + Q` nodes (transductive) or G = Q graphs of
      `S + U + 1` nodes; nodes are ordered labelled supports, unlabelled
      supports, queries.
    """
    if unlabeled_images is None:
      unlabeled_images = support_images[:0]
    support, unlabeled, query = backbones.embed_episode(
      self.backbone, support_images, unlabeled_images, query_images, train=train)
    num_supports, num_queries = support.shape[0], query.shape[0]
    context = jnp.concatenate([support, unlabeled], axis=0)
    if self.transductive:
      nodes = jnp.concatenate([context, query], axis=0)[None]
      unknown = context.shape[0] - num_supports + num_queries
    else:
      context = jnp.broadcast_to(context, (num_queries,) + context.shape)
      nodes = jnp.concatenate([context, query[:, None]], axis=1)
      unknown = context.shape[1] - num_supports + 1
    labels = jnp.concatenate([support_labels, jnp.full((unknown,), -1, support_labels.dtype)])
    edges = jnp.broadcast_to(initial_edges(labels), (nodes.shape[0],) + 2 * labels.shape + (2,))
    edges_per_layer = self.gnn(nodes, edges, train=train)
    final = edges_per_layer[-1, ..., SAME]
    if self.transductive:
      query_edges = final[0, -num_queries:, :num_supports]
    else:
      query_edges = final[:, -1, :num_supports]
    logits = readout(query_edges, support_labels, way)
    return MethodOutput(logits=logits, aux={'edges': edges_per_layer})

  def loss(self, outputs: MethodOutput, episode) -> tuple[jax.Array, dict]:
    """The weighted per-layer balanced edge loss over edges with a query endpoint.

    Non-transductive graphs hold one query each, so query-query edges are
    excluded there by construction. Unlabelled supports count as unknown (-1)
    here whatever `episode.unlabeled_labels` holds.
    """
    edges = outputs.aux['edges']  # [L, G, N, N, 2]
    num_unlabeled = episode.unlabeled_images.shape[0]
    hidden = jnp.full((num_unlabeled,), -1, episode.support_labels.dtype)
    context = jnp.concatenate([episode.support_labels, hidden])
    if self.transductive:
      labels = jnp.concatenate([context, episode.query_labels])[None]
      queries = episode.query_labels.shape[0]
    else:
      per_query = jnp.broadcast_to(context, (episode.query_labels.shape[0],) + context.shape)
      labels = jnp.concatenate([per_query, episode.query_labels[:, None]], axis=1)
      queries = 1
    is_query = jnp.arange(labels.shape[1]) >= labels.shape[1] - queries
    self_edges = self.loss_self_edges and self.transductive
    mask, same = jax.vmap(loss_edges, in_axes=(0, None, None))(labels, is_query, self_edges)
    per_layer = jax.vmap(balanced_edge_loss, in_axes=(0, None, None))(edges, mask, same)
    weights = jnp.asarray(self.edge_loss_weights, per_layer.dtype)
    metrics = {f'edge_loss_layer{i + 1}': per_layer[i] for i in range(per_layer.shape[0])}
    return jnp.mean(weights * per_layer), metrics
