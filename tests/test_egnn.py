"""EGNN: the equations by hand, equivariance, no label leaks, modes, devices, learning."""

import functools

import chex
import egnn_reference as ref
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import learning_test, load_config, state_after_steps

from fsl_jax import config as config_lib
from fsl_jax.data.episodes import Episode
from fsl_jax.models import backbones, egnn
from fsl_jax.training import train as train_lib

# --- The equations on 3- and 4-node graphs. ---------------------------------------------------


def test_initial_edges_by_hand():
  # Two labelled supports of different classes, one of class 0, one query (-1).
  edges = np.asarray(egnn.initial_edges(jnp.array([0, 1, 0, -1])))
  same = [[1, 0, 1, .5],
          [0, 1, 0, .5],
          [1, 0, 1, .5],
          [.5, .5, .5, 1]]
  np.testing.assert_array_equal(edges[..., 0], same)
  np.testing.assert_array_equal(edges[..., 1], 1 - np.array(same))


def test_node_aggregation_by_hand():
  nodes = jnp.array([[1., 0.], [0., 2.], [4., 4.]])
  same = jnp.array([[9., 1., 3.],  # The diagonal (9) is dropped before normalising.
                    [2., 9., 2.],
                    [1., 0., 9.]])
  edges = jnp.stack([same, 1. - same / 10.], axis=-1)
  out = np.asarray(egnn.aggregate(nodes, edges))
  # Row 0, same channel: weights (0, 1, 3) / 4 -> (0*[1,0] + 1*[0,2] + 3*[4,4]) / 4 = [3, 3.5].
  # Row 1: (2, 0, 2) / 4 -> ([1,0] + [4,4]) / 2 = [2.5, 2].  Row 2: (1, 0, 0) -> [1, 0].
  np.testing.assert_allclose(out[:, :2], nodes)
  np.testing.assert_allclose(out[:, 2:4], [[3., 3.5], [2.5, 2.], [1., 0.]])
  # Different channel, row 0: weights (0, 0.9, 0.7) / 1.6.
  np.testing.assert_allclose(out[0, 4:], (0.9 * np.array([0., 2.]) + 0.7 * np.array([4., 4.]))
                             / 1.6, rtol=1e-6)
  rng = np.random.default_rng(0)
  x, e = rng.random((4, 5)), rng.random((4, 4, 2))
  np.testing.assert_allclose(egnn.aggregate(jnp.array(x), jnp.array(e)), ref.node_input(x, e),
                             rtol=1e-5)


def test_edge_update_by_hand():
  # 3 nodes; edges at their initial values for supports 0 (class 0), 1 (class 1), query 2.
  edges = egnn.initial_edges(jnp.array([0, 1, -1]))
  f = jnp.array([[.5, .2, .8],
                 [.2, .5, .4],
                 [.8, .4, .5]])
  out = np.asarray(egnn.update_edges(f, edges))
  # Row 2 (query), same channel: old weights (.5, .5, 0) sum to 1; f * e = (.4, .2, 0),
  # L1-normalised (2/3, 1/3, 0), times the old sum 1. Different channel: (1 - f) * e =
  # (.1, .3, 0) -> (1/4, 3/4, 0). The diagonal gets [1, 0]. Then +1e-6 and channel sums.
  def pair(a, b):
    return np.array([a + 1e-6, b + 1e-6]) / (a + b + 2e-6)

  np.testing.assert_allclose(out[2, 0], pair(2 / 3, 1 / 4), rtol=1e-5)
  np.testing.assert_allclose(out[2, 1], pair(1 / 3, 3 / 4), rtol=1e-5)
  np.testing.assert_allclose(out[2, 2], pair(1., 0.), rtol=1e-5)
  # Row 0: same channel (0, 0, .5) -> only the query edge is left: (0, 0, 1) * .5.
  # Different channel: (0, 1, .5) * (1 - f) = (0, .8, .1) -> (0, 8/9, 1/9) * 1.5.
  np.testing.assert_allclose(out[0, 1], pair(0., 1.5 * 8 / 9), rtol=1e-5)
  np.testing.assert_allclose(out[0, 2], pair(.5, 1.5 / 9), rtol=1e-5)
  np.testing.assert_allclose(out.sum(-1), 1., rtol=1e-6)
  rng = np.random.default_rng(1)
  f, e = rng.random((4, 4)), rng.random((4, 4, 2))
  np.testing.assert_allclose(egnn.update_edges(jnp.array(f), jnp.array(e)),
                             ref.edge_update(f, e), rtol=1e-5)


def test_loss_by_hand():
  # Supports of class 0 and 1, an unlabelled support (label hidden: -1), two queries.
  labels = jnp.array([0, 1, -1, 1, 0])
  is_query = jnp.array([False, False, False, True, True])
  mask, same = egnn.loss_edges(labels, is_query)
  expected_mask = np.array([[0, 0, 0, 1, 1],
                            [0, 0, 0, 1, 1],
                            [0, 0, 0, 0, 0],  # The unlabelled support: no edge at all.
                            [1, 1, 0, 0, 1],  # Query-query edges count (transductive),
                            [1, 1, 0, 1, 0]], bool)  # self-edges do not.
  np.testing.assert_array_equal(mask, expected_mask)
  p = np.full((5, 5), 0.5)
  p[3, 1] = p[1, 3] = 0.8  # Positive edges: (3,1), (1,3), (4,0), (0,4).
  p[4, 0] = p[0, 4] = 0.4
  p[3, 0] = p[0, 3] = 0.25  # Negative: (3,0), (0,3), (4,1), (1,4), (3,4), (4,3).
  edges = jnp.stack([jnp.array(p), jnp.array(1 - p)], axis=-1)
  loss = egnn.balanced_edge_loss(edges, mask, same)
  pos = -(2 * np.log(.8) + 2 * np.log(.4)) / 4
  neg = -(2 * np.log(.75) + 4 * np.log(.5)) / 6
  np.testing.assert_allclose(loss, pos + neg, rtol=1e-6)
  np.testing.assert_allclose(loss, ref.balanced_loss(p, np.asarray(labels), np.asarray(is_query)),
                             rtol=1e-6)


def test_loss_with_the_reference_self_edges_by_hand():
  # The same graph with `self_edges`: the two queries' diagonal edges join the
  # positives. With the diagonal at 1 - 1e-6 (as the layers leave it), the positive
  # mean keeps its sum and gains 2 in its denominator: 4 / 6 of the term above.
  labels = jnp.array([0, 1, -1, 1, 0])
  is_query = jnp.array([False, False, False, True, True])
  mask, same = egnn.loss_edges(labels, is_query, self_edges=True)
  without, _ = egnn.loss_edges(labels, is_query)
  np.testing.assert_array_equal(mask & ~without, np.diag([0, 0, 0, 1, 1]).astype(bool))
  p = np.full((5, 5), 0.5)
  p[3, 1] = p[1, 3] = 0.8
  p[4, 0] = p[0, 4] = 0.4
  p[3, 0] = p[0, 3] = 0.25
  np.fill_diagonal(p, 1 - 1e-6)
  edges = jnp.stack([jnp.array(p), jnp.array(1 - p)], axis=-1)
  pos = -(2 * np.log(.8) + 2 * np.log(.4) + 2 * np.log(1 - 1e-6)) / 6
  neg = -(2 * np.log(.75) + 4 * np.log(.5)) / 6
  np.testing.assert_allclose(egnn.balanced_edge_loss(edges, mask, same), pos + neg, rtol=1e-6)


def test_self_edges_apply_to_transductive_graphs_only():
  from helpers import load_config

  from fsl_jax.training import train

  for transductive in (True, False):
    config = load_config('egnn_omniglot', 'tiny')
    config.loss_self_edges, config.transductive = True, transductive
    _, model = train.build(config)
    assert model.loss_self_edges
    spec = train.episode_spec(config)
    episode = train.dummy_episode(spec, (28, 28, 1))
    variables = _init(model, episode.support_images, episode.support_labels,
                      episode.query_images, way=spec.way)
    outputs = _apply(model, variables, episode, spec.way)
    loss, plain = (jax.jit(lambda o, e, m=m: m.loss(o, e)[0])(outputs, episode)
                   for m in (model, model.clone(loss_self_edges=False)))
    assert (float(loss) != float(plain)) == transductive


def test_loss_has_no_nan_at_zero_or_one():
  edges = jnp.array([[[1., 0.], [0., 1.]], [[1., 0.], [1., 0.]]])  # A wrong, certain edge.
  mask = jnp.array([[False, True], [True, False]])
  same = jnp.array([[True, False], [False, True]])
  value, grad = jax.value_and_grad(egnn.balanced_edge_loss)(edges, mask, same)
  assert np.isfinite(value) and value > 40  # (0 - log(tiny)) / 2 negative edges.
  assert np.all(np.isfinite(grad))


def test_readout_sums_same_class_weights_by_hand():
  query_edges = jnp.array([[.9, .1, .7, .2], [.1, .6, .2, .3]])
  support_labels = jnp.array([1, 0, 1, 2])
  np.testing.assert_allclose(egnn.readout(query_edges, support_labels, way=3),
                             [[.1, 1.6, .2], [.6, .3, .3]])


# --- The module. -----------------------------------------------------------------------------


class Flatten(nn.Module):
  """A parameter-free backbone, so tests can place embeddings by hand."""

  @nn.compact
  def __call__(self, x, *, train):
    return x.reshape((x.shape[0], -1))


def _model(transductive=True, backbone=None, **gnn):
  gnn = egnn.EdgeLabelingGNN(**{'node_features': 8, 'edge_features': 8, **gnn})
  return egnn.EGNN(backbone=backbone or Flatten(), gnn=gnn, transductive=transductive)


def _episode(way=3, shot=2, query=2, unlabeled=0, seed=0):
  """An episode of 16-d 'images' (embedded by `Flatten`), labels as the sampler gives them."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.normal(size=(n, 16, 1, 1)).astype(np.float32)
  labels = lambda n: np.repeat(np.arange(way, dtype=np.int32), n)
  query_labels = rng.permutation(labels(query))
  return Episode(images(way * shot), labels(shot), images(way * query), query_labels,
                 images(way * unlabeled), rng.permutation(labels(unlabeled)))


def _init(module, *args, way=None, seed=0):
  kwargs = {'train': False} if way is None else {'way': way, 'train': False}
  return jax.jit(functools.partial(module.init, **kwargs))(jax.random.PRNGKey(seed), *args)


def _variables(model, episode, way=3, seed=0):
  variables = _init(model, episode.support_images, episode.support_labels, episode.query_images,
                    episode.unlabeled_images, way=way, seed=seed)
  # Non-trivial running statistics, as after training.
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(
    lambda x: x * (1 + 0.2 * rng.random(x.shape)) + 0.1 * rng.normal(size=x.shape),
    variables['batch_stats'])
  return {**variables, 'batch_stats': jax.tree.map(jnp.float32, stats)}


def _apply(model, variables, episode, way=3, *, train=False, rng=None):
  """`train.apply_method`, jitted (eager op-by-op dispatch of the scan is slow)."""
  fn = functools.partial(train_lib.apply_method, model, way=way, train=train)
  return jax.jit(fn)(variables, episode, rng=rng)


def _logits(model, variables, episode, way=3):
  return np.asarray(_apply(model, variables, episode, way).logits)


def test_layers_are_one_scan_with_stacked_parameters():
  model, episode = _model(num_layers=3), _episode()
  params = _variables(model, episode)['params']['gnn']
  assert list(params) == ['layers']
  leaves = jax.tree.leaves(params)
  assert all(x.shape[0] == 3 for x in leaves)
  # Different layers start from different parameters.
  kernel = params['layers']['EdgeUpdate_0']['Dense_0']['kernel']
  assert not np.allclose(kernel[0], kernel[1])


def test_padding_inputs_of_later_layers_get_no_gradient():
  """The node MLP of layers >= 2 sees 8 real features + 8 zeros per block (16-d embeddings)."""
  model, episode = _model(), _episode()
  variables = _variables(model, episode)

  def loss(params):
    out, _ = train_lib.apply_method(model, {**variables, 'params': params}, episode, 3,
                                    train=True, rng=jax.random.PRNGKey(0))
    return model.loss(out, episode)[0]

  grad = jax.jit(jax.grad(loss))(variables['params'])
  kernel = grad['gnn']['layers']['NodeUpdate_0']['Dense_0']['kernel']  # [L, 3 * 16, 16]
  assert kernel.shape == (3, 3 * 16, 16)
  blocks = kernel.reshape(3, 3, 16, 16)
  np.testing.assert_array_equal(blocks[1:, :, 8:], 0.)
  assert np.abs(blocks[0, :, 8:]).min() > 0  # Layer 1 uses all 16 embedding features.
  assert np.abs(blocks[1:, :, :8]).max() > 0


def test_permuting_queries_permutes_logits_in_both_modes():
  for transductive in (True, False):
    model, episode = _model(transductive), _episode(query=3)
    variables = _variables(model, episode)
    order = np.random.default_rng(3).permutation(9)
    permuted = episode.replace(query_images=episode.query_images[order])
    np.testing.assert_allclose(_logits(model, variables, permuted),
                               _logits(model, variables, episode)[order], rtol=1e-5, atol=1e-6)


def test_permuting_supports_with_their_labels_changes_nothing():
  model, episode = _model(), _episode(shot=2, unlabeled=1)
  variables = _variables(model, episode)
  order = np.random.default_rng(4).permutation(6)
  permuted = episode.replace(support_images=episode.support_images[order],
                             support_labels=episode.support_labels[order])
  np.testing.assert_allclose(_logits(model, variables, permuted),
                             _logits(model, variables, episode), rtol=1e-5, atol=1e-6)


def test_graph_is_permutation_equivariant():
  """Any node permutation of the graph permutes every layer's edges the same way."""
  gnn = egnn.EdgeLabelingGNN(node_features=8, edge_features=8)
  rng = np.random.default_rng(5)
  nodes = jnp.array(rng.normal(size=(1, 6, 8)), jnp.float32)
  edges = egnn.initial_edges(jnp.array([0, 1, 0, -1, -1, 1]))[None]
  variables = _init(gnn, nodes, edges)
  apply = jax.jit(functools.partial(gnn.apply, train=False))
  out = apply(variables, nodes, edges)
  p = rng.permutation(6)
  out_p = apply(variables, nodes[:, p], edges[:, p][:, :, p])
  np.testing.assert_allclose(out_p, out[:, :, p][:, :, :, p], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('transductive', [True, False])
def test_labels_of_queries_and_unlabeled_supports_change_no_prediction(transductive):
  model, episode = _model(transductive), _episode(unlabeled=1)
  variables = _variables(model, episode)
  other = episode.replace(query_labels=(episode.query_labels + 1) % 3,
                          unlabeled_labels=(episode.unlabeled_labels + 1) % 3)
  np.testing.assert_array_equal(_logits(model, variables, other),
                                _logits(model, variables, episode))
  # Training mode too (batch statistics, dropout with the same key).
  run = lambda e: _apply(model, variables, e, train=True, rng=jax.random.PRNGKey(1))[0].logits
  np.testing.assert_array_equal(run(other), run(episode))
  # The loss uses query labels, but never those of the unlabelled supports.
  out = _apply(model, variables, episode)
  loss = jax.jit(lambda e: model.loss(out, e)[0])
  np.testing.assert_array_equal(
    loss(episode), loss(episode.replace(unlabeled_labels=other.unlabeled_labels)))


def test_readout_ignores_unlabeled_supports():
  """A query identical to an unlabelled support is scored only through labelled supports."""
  model = _model()
  rng = np.random.default_rng(6)
  support = rng.normal(size=(3, 4, 1, 1)).astype(np.float32)
  unlabeled = rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
  query = unlabeled.copy()
  labels = np.array([0, 1, 2], np.int32)
  variables = _init(model, support, labels, query, unlabeled, way=3)
  out = jax.jit(functools.partial(model.apply, way=3, train=False))(variables, support, labels,
                                                                   query, unlabeled)
  final = np.asarray(out.aux['edges'][-1, 0, ..., 0])  # Nodes: 3 supports, 2 unlabelled, 2 queries.
  np.testing.assert_allclose(out.logits, final[5:, :3], rtol=1e-6)  # One support per class.


def test_non_transductive_equals_separate_graphs():
  model, episode = _model(transductive=False), _episode(query=2, unlabeled=1)
  transductive = _model(transductive=True)
  variables = _variables(model, episode)
  logits = _logits(model, variables, episode)
  for q in range(6):
    alone = episode.replace(query_images=episode.query_images[q:q + 1],
                            query_labels=episode.query_labels[q:q + 1])
    np.testing.assert_allclose(logits[q], _logits(transductive, variables, alone)[0], rtol=1e-5,
                               atol=1e-6)
  # And the transductive graph over all queries gives other scores (queries interact).
  assert not np.allclose(logits, _logits(transductive, variables, episode), atol=1e-4)


def test_non_transductive_loss_has_no_query_query_edges():
  model, episode = _model(transductive=False), _episode(query=2)
  out = _apply(model, _variables(model, episode), episode)
  assert out.aux['edges'].shape == (3, 6, 7, 7, 2)  # 6 graphs of 6 supports + 1 query.
  # The loss equals the NumPy loss over each graph's query-support edges only.
  edges = np.asarray(out.aux['edges'])
  labels = [np.append(episode.support_labels, episode.query_labels[g]) for g in range(6)]
  expected = []
  for layer in range(3):
    pos, neg = [], []
    for g in range(6):
      for s in range(6):
        for i, j in ((6, s), (s, 6)):
          p = edges[layer, g, i, j]
          (pos if labels[g][s] == labels[g][6] else neg).append(-np.log(p[0] if labels[g][s]
                                                                       == labels[g][6] else p[1]))
    expected.append(np.mean(pos) + np.mean(neg))
  loss, metrics = model.loss(out, episode)
  np.testing.assert_allclose([metrics[f'edge_loss_layer{i}'] for i in (1, 2, 3)], expected,
                             rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(np.array([.5, .5, 1.]) * expected), rtol=1e-5)


def test_cross_way_and_cross_shot_with_the_egnn_embedding():
  model = _model(backbone=backbones.get_backbone('egnn_conv4_omniglot'))
  rng = np.random.default_rng(7)
  images = lambda n: rng.random((n, 28, 28, 1), np.float32)
  labels = lambda way, n: np.repeat(np.arange(way, dtype=np.int32), n)
  variables = _init(model, images(3), labels(3, 1), images(3), way=3)
  apply = jax.jit(functools.partial(model.apply, way=7, train=False))
  out = apply(variables, images(14), labels(7, 2), images(7))
  assert out.logits.shape == (7, 7) and out.aux['edges'].shape == (3, 1, 21, 21, 2)
  assert np.all(np.isfinite(out.logits))


# --- Configs and training. -------------------------------------------------------------------


def test_configs_load_and_validate():
  for variant in ('5way1shot', '20way1shot', '5way5shot-nontransductive', 'tiny'):
    config = config_lib.validate(load_config('egnn_omniglot', variant), 1)
    assert config.method == 'egnn'
  config = load_config('egnn_omniglot', '20way1shot')
  assert (config.way, config.shot, config.meta_batch_size, config.transductive) == (20, 1, 20, True)
  assert not load_config('egnn_omniglot', '5way5shot-nontransductive').transductive
  with pytest.raises(ValueError, match='Unknown variant'):
    load_config('egnn_omniglot', '5-way')


def test_bad_egnn_config_names_the_field():
  config = load_config('egnn_omniglot', 'tiny')
  config.edge_loss_weights = (1.0, 1.0)
  with pytest.raises(config_lib.ConfigError, match='edge_loss_weights has 2 entries'):
    train_lib.build(config)


def test_four_devices_equal_one_device():
  """One SGD step from the same state: 4 devices x 1 episode = 1 device x 4 episodes.

  One step, because float rounding (about 5e-7 after one step, from the order of
  the sums) grows to about 1e-4 in the second step: the edge normalisations are
  sharp. The generic multi-step check is `test_training.py`'s, with ProtoNet.
  """
  states = {}
  for n in (1, 4):
    config = load_config('egnn_omniglot', 'tiny')
    config.update(dict(num_devices=n, meta_batch_size=4, optimizer='sgd', learning_rate=0.05,
                       weight_decay=0.0))
    states[n] = state_after_steps(config, 1)
  a, b = states[1], states[4]
  assert int(a.step) == int(b.step) == 1
  chex.assert_trees_all_close((a.params, a.batch_stats), (b.params, b.batch_stats),
                              rtol=1e-4, atol=1e-5)
  # The config of the runs: its initialisation program is compiled already.
  init = train_lib.create_train_state(*train_lib.build(config), (28, 28, 1),
                                      jax.random.PRNGKey(0)).params
  moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.params, init)
  assert min(jax.tree.leaves(moved)) > 1e-4  # The step moved every parameter.


def test_tiny_egnn_learns_omniglot(tmp_path, data_dir):
  """60 steps of 8 five-way transductive episodes, then the checkpoint tested in
  both modes on 60 test episodes (67.7% transductive, 59.3% not, when written;
  chance is 20%).
  Training in the non-transductive mode is the same train step with other edge
  masks, held to the leak tests; training it here too doubled this test's time."""
  config = load_config('egnn_omniglot', 'tiny')
  config.num_train_steps = 60
  results = train_lib.train_and_evaluate(learning_test(config), str(tmp_path))
  assert results['test_accuracy'] > 0.45, results
  other = train_lib.evaluate_checkpoint(str(tmp_path), transductive=False)
  assert other['method_config']['transductive'] is False
  assert other['test_episodes'] == 60 and other['test_accuracy'] > 0.45, other


def test_unrolled_scan_computes_the_same_function():
  # `scan_unroll` (used by the benchmark to count FLOPs) changes the loop, not the model.
  episode = _episode()
  rolled, unrolled = _model(), _model(unroll=3)
  variables = _variables(rolled, episode)
  for train in (False, True):
    a = _apply(rolled, variables, episode, train=train, rng=jax.random.PRNGKey(1))
    b = _apply(unrolled, variables, episode, train=train, rng=jax.random.PRNGKey(1))
    if train:
      a, b = a[0], b[0]
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('transductive', [False, True])
def test_graph_remat_computes_the_same_loss_gradients_and_statistics(transductive):
  """`graph_remat` recomputes the layers in the backward pass: the same function."""
  episode = _episode(unlabeled=1)
  plain, remat = _model(transductive, dropout=0.3), _model(transductive, dropout=0.3, remat=True)
  variables = _variables(plain, episode)

  def loss(params, model):
    outputs, new = train_lib.apply_method(model, {**variables, 'params': params}, episode, 3,
                                          train=True, rng=jax.random.PRNGKey(1))
    return model.loss(outputs, episode)[0], new['batch_stats']

  results = [jax.jit(jax.value_and_grad(functools.partial(loss, model=model), has_aux=True))(
    variables['params']) for model in (plain, remat)]
  (a_loss, a_stats), a_grads = results[0]
  (b_loss, b_stats), b_grads = results[1]
  np.testing.assert_allclose(a_loss, b_loss, rtol=1e-6)
  assert float(a_loss) > 0
  chex.assert_trees_all_close(a_grads, b_grads, rtol=1e-5, atol=1e-6)  # Rounding: 4e-7 seen.
  chex.assert_trees_all_close(a_stats, b_stats, rtol=1e-6, atol=1e-7)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(a_grads['gnn'])) > 0


def test_graph_remat_from_config():
  config = load_config('egnn_mini_imagenet', '5way5shot-nontransductive')
  assert egnn.EGNN.from_config(config).gnn.remat is bool(config.graph_remat)
  config.graph_remat = not config.graph_remat
  assert egnn.EGNN.from_config(config).gnn.remat is bool(config.graph_remat)


def test_benchmark_counts_a_chunked_embedding_in_full():
  """The benchmark's FLOP count of a step that embeds in chunks (a scan, whose body
  XLA's cost analysis counts once) equals that of the same step embedding at once."""
  from fsl_jax.training import benchmark

  counts = {}
  for chunk in (5, 0):
    config = load_config('egnn_mini_imagenet', 'tiny')
    config.embed_chunk_size = chunk
    config.num_layers, config.edge_loss_weights = 1, (1.0,)  # Less to compile.
    counts[chunk] = benchmark.benchmark(config, compile_only=True,
                                        synthetic_shape=(28, 28, 3))['train_step_flops']
  assert counts[0] and counts[5] == counts[0], counts
