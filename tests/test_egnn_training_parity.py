"""One EGNN training forward against a NumPy transcription of the official code's.

The official EGNN (`train.py` of jmkim0309/fewshot-egnn) embeds a meta-batch one
node position at a time, so its embedding's BatchNorm statistics come from the B
images at one position and its running averages take N updates per step; its
graph layers see the meta-batch as one batch; its transductive loss counts each
query's self-edge; and PyTorch updates running variances with the unbiased
variance. `egnn_reference.py` writes those computations out in NumPy (float64),
meta-batch first as the reference lays it out, and the tests compare them with
the vmapped module in both modes: 'reference' (`batchnorm_stats='per_position'`,
unbiased running variance, self-edges) and fsl_jax's own ('meta_batch', flax's
running variance, no self-edges), transductive and not.
"""

import functools

import egnn_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models import backbones, egnn

B, WAY, SHOT, QUERY, SIZE = 4, 3, 2, 1, 20  # 20x20 images end at 1x1 in EGNN's Conv-4.
S, Q = WAY * SHOT, WAY * QUERY
LAYERS, WIDTH, EMBED = 2, 6, 8


def _model(reference: bool, transductive: bool):
  axis = (backbones.EPISODES,)
  embedding_bn = backbones.BatchNormSpec(axis, reference, per_position=reference)
  backbone = backbones.EGNNConv4(features=(4, 4, 4, 4), dropout=(0.0,) * 4, embed_dim=EMBED,
                                 bn_axis=embedding_bn)
  gnn = egnn.EdgeLabelingGNN(LAYERS, WIDTH, WIDTH, 0.0, backbones.BatchNormSpec(axis, reference))
  return egnn.EGNN(backbone, gnn, transductive=transductive, edge_loss_weights=(0.5, 1.0),
                   loss_self_edges=reference and transductive)


def _meta_batch(seed=0):
  rng = np.random.default_rng(seed)
  support_labels = np.stack([np.repeat(rng.permutation(WAY), SHOT) for _ in range(B)])
  query_labels = np.stack([rng.permutation(WAY) for _ in range(B)])
  support = rng.normal(size=(B, S, SIZE, SIZE, 3)) + 0.5
  query = rng.normal(size=(B, Q, SIZE, SIZE, 3)) + 0.5
  return support, support_labels.astype(np.int32), query, query_labels.astype(np.int32)


def _variables(model, seed=1):
  """Random variables of the model's shapes, every one off its default (float64)."""
  support, labels, query, _ = _meta_batch()
  shapes = jax.eval_shape(lambda s, sl, q: model.init(jax.random.PRNGKey(0), s, sl, q, way=WAY,
                                                      train=False),
                          jnp.asarray(support[0], jnp.float32), jnp.asarray(labels[0]),
                          jnp.asarray(query[0], jnp.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, noise = path[-1].key, rng.normal(size=leaf.shape)
    if name == 'kernel':  # Conv [3, 3, in, out] or Dense [(layers,) in, out].
      fan_in = leaf.shape[-2] * (9 if 'Conv' in path[-2].key else 1)
      return noise / np.sqrt(fan_in)
    if name in ('scale', 'var'):
      return 1.0 + 0.2 * np.abs(noise) * (1 if name == 'var' else np.sign(noise))
    return 0.2 * noise  # bias, mean.

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _fsl_jax_forward(model, variables, batch):
  support, support_labels, query, query_labels = batch
  from fsl_jax.data.episodes import Episode

  def one(s, sl, q, ql):
    episode = Episode(s, sl, q, ql, s[:0], sl[:0])
    outputs, updates = model.apply(
      jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables), s, sl, q, s[:0],
      way=WAY, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)})
    loss, _ = model.loss(outputs, episode)
    return outputs, loss, updates['batch_stats']

  outputs, losses, stats = jax.jit(jax.vmap(one, axis_name=backbones.EPISODES))(
    jnp.asarray(support, jnp.float32), jnp.asarray(support_labels),
    jnp.asarray(query, jnp.float32), jnp.asarray(query_labels))
  return outputs, float(losses.mean()), jax.tree.map(lambda x: np.asarray(x[0]), stats)


def _reference_forward(variables, batch, reference: bool, transductive: bool):
  """The official code's training forward in NumPy; see the module docstring."""
  support, support_labels, query, query_labels = batch
  params, stats = variables['params'], variables['batch_stats']
  images = np.concatenate([support, query], axis=1)  # [B, N, H, W, 3]
  n = S + Q
  # (1) The embedding: one call per node position (reference), or one call on
  # every image of the meta-batch (fsl_jax's 'meta_batch').
  calls, embedded = [], []
  chunks = ([images[:, p] for p in range(n)] if reference
            else [images.reshape(-1, *images.shape[2:])])
  for chunk in chunks:
    bn = ref.BatchNormTrain(unbiased=reference)
    embedded.append(ref.egnn_conv4(chunk, params['backbone'], bn))
    calls.append(bn.calls)
  nodes = np.stack(embedded, axis=1) if reference else embedded[0].reshape(B, n, -1)
  names = [f'BatchNorm_{i}' for i in range(5)]
  running = ref.running_averages(calls, [stats['backbone'][k]['mean'] for k in names],
                                 [stats['backbone'][k]['var'] for k in names])
  # (2) The graph, BatchNorm over the meta-batch's graphs.
  labels = np.concatenate([support_labels, query_labels], axis=1)  # [B, N]
  target = (labels[:, :, None] == labels[:, None, :]).astype(np.float64)
  init = np.stack([np.asarray(egnn.initial_edges(jnp.asarray(
    np.concatenate([sl, -np.ones(Q, np.int32)])))) for sl in support_labels])
  layers = [jax.tree.map(lambda x, i=i: x[i], params['gnn']['layers']) for i in range(LAYERS)]
  bn = ref.BatchNormTrain(unbiased=reference)
  if transductive:
    full = [e[..., 0] for e in ref.graph_layers(nodes, init, layers, EMBED, bn)]
  else:  # One graph per query (supports + that query), assembled back into [B, N, N].
    graph_nodes = np.concatenate([np.repeat(nodes[:, None, :S], Q, axis=1),
                                  nodes[:, S:, None]], axis=2).reshape(B * Q, S + 1, -1)
    graph_init = np.stack([np.asarray(egnn.initial_edges(jnp.asarray(
      np.concatenate([sl, [-1]]).astype(np.int32)))) for sl in support_labels])
    graph_init = np.repeat(graph_init, Q, axis=0)
    full = []
    for e in ref.graph_layers(graph_nodes, graph_init, layers, EMBED, bn):
      e = e[..., 0].reshape(B, Q, S + 1, S + 1)
      f = np.zeros((B, n, n))
      f[:, :S, S:] = e[:, :, :S, -1].transpose(0, 2, 1)
      f[:, S:, :S] = e[:, :, -1, :S]
      full.append(f)
  mask = ref.reference_masks(S, n, transductive)
  if not reference and transductive:
    mask = mask * (1 - np.eye(n))  # fsl_jax leaves the self-edges out.
  per_layer = [ref.meta_batch_edge_loss(np.where(mask > 0, f, 0.5), target, mask) for f in full]
  loss = np.mean(np.array([0.5, 1.0]) * np.array(per_layer))
  one_hot = np.eye(WAY)[support_labels]  # [B, S, way]
  logits = np.einsum('bqs,bsw->bqw', full[-1][:, S:, :S], one_hot)
  return logits, loss, running


@functools.cache
def _both(reference: bool, transductive: bool):
  """fsl_jax's forward and the NumPy one on the same variables and meta-batch."""
  model = _model(reference, transductive)
  variables, batch = _variables(model), _meta_batch()
  return (_fsl_jax_forward(model, variables, batch),
          _reference_forward(variables, batch, reference, transductive))


@pytest.mark.parametrize('transductive', [True, False])
@pytest.mark.parametrize('reference', [True, False])
def test_training_forward_equals_the_reference_equations(reference, transductive):
  (outputs, loss, stats), (want_logits, want_loss, (want_mean, want_var)) = _both(
    reference, transductive)
  np.testing.assert_allclose(outputs.logits, want_logits, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(loss, want_loss, rtol=2e-4)
  for i in range(5):
    got = stats['backbone'][f'BatchNorm_{i}']
    np.testing.assert_allclose(got['mean'], want_mean[i], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got['var'], want_var[i], rtol=1e-4, atol=1e-5)


def test_the_modes_differ():
  # The check above would pass for both modes if the mode changed nothing.
  (ours, _), (theirs, _) = _both(False, True), _both(True, True)
  assert not np.allclose(ours[0].logits, theirs[0].logits, rtol=1e-2)
  assert abs(ours[1] - theirs[1]) > 1e-3
  assert not np.allclose(ours[2]['backbone']['BatchNorm_4']['var'],
                         theirs[2]['backbone']['BatchNorm_4']['var'], rtol=1e-2)
