"""The node-labelling GNN: the layers by hand and in NumPy, no label leaks, modes, learning."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from fsl_jax import config as config_lib
from fsl_jax.data.episodes import Episode
from fsl_jax.models import gnn
from fsl_jax.training import train as train_lib

EPS = 1e-5  # BatchNorm's epsilon.

# --- The equations, by hand and against NumPy. -----------------------------------------------


def test_adjacency_softmax_by_hand():
  scores = jnp.array([[5., 0., np.log(3.)],  # Row 0: exp(0), exp(ln 3) over j != 0: 1/4, 3/4.
                      [np.log(2.), 7., 0.],  # Row 1: 2/3, 1/3.
                      [0., 0., -1.]])        # Row 2: 1/2, 1/2.
  expected = [[0., .25, .75], [2 / 3, 0., 1 / 3], [.5, .5, 0.]]
  adjacency_softmax = jax.jit(gnn.adjacency_softmax)
  np.testing.assert_allclose(adjacency_softmax(scores), expected, rtol=1e-6)
  # The diagonal's score is masked, not penalised: no value of it changes a row.
  huge = scores.at[jnp.diag_indices(3)].set(1e30)
  np.testing.assert_allclose(adjacency_softmax(huge), expected, rtol=1e-6)
  # bfloat16 too (a -1e8 penalty is not exact there): zero diagonal, rows sum to 1.
  rng = np.random.default_rng(0)
  low = adjacency_softmax(jnp.asarray(rng.normal(size=(6, 6)) * 50, jnp.bfloat16))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.diag(np.asarray(low, np.float32)), 0.)
  np.testing.assert_allclose(np.asarray(low, np.float32).sum(-1), 1., rtol=1e-2)


def test_graph_convolution_input_by_hand():
  nodes = jnp.array([[1., 0.], [0., 2.], [4., 4.]])
  adjacency = jnp.array([[0., .25, .75], [.5, 0., .5], [1., 0., 0.]])
  # Row 0: .25 [0, 2] + .75 [4, 4] = [3, 3.5]; row 1: ([1, 0] + [4, 4]) / 2; row 2: [1, 0].
  np.testing.assert_allclose(gnn.graph_convolution_input(nodes, adjacency),
                             [[1., 0., 3., 3.5], [0., 2., 2.5, 2.], [4., 4., 1., 0.]])


def test_node_features_by_hand():
  embeddings = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  out = gnn.node_features(embeddings, jnp.array([2, 0, -1]), way=3)
  np.testing.assert_allclose(out, [[1., 2., 0., 0., 1.],
                                   [3., 4., 1., 0., 0.],
                                   [5., 6., 1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_episode_graphs_label_supports_only():
  rng = np.random.default_rng(1)
  s, u, q = (jnp.asarray(rng.normal(size=(n, 2)), jnp.float32) for n in (3, 2, 4))
  labels = jnp.array([1, 0, 2])
  uniform = np.full(3, 1 / 3)
  episode_graphs = jax.jit(gnn.episode_graphs, static_argnames=('way', 'transductive'))
  one = episode_graphs(s, labels, u, q, way=3, transductive=True)
  assert one.shape == (1, 9, 5)
  np.testing.assert_allclose(one[0, :, :2], np.concatenate([s, u, q]))
  np.testing.assert_allclose(one[0, :3, 2:], np.eye(3)[[1, 0, 2]])
  np.testing.assert_allclose(one[0, 3:, 2:], np.tile(uniform, (6, 1)), rtol=1e-6)
  per_query = episode_graphs(s, labels, u, q, way=3, transductive=False)
  assert per_query.shape == (4, 6, 5)  # One graph per query: 3 + 2 supports and the query.
  for g in range(4):
    np.testing.assert_allclose(per_query[g, :5], one[0, :5])
    np.testing.assert_allclose(per_query[g, 5], one[0, 5 + g])


def _leaky(x):
  return np.where(x >= 0, x, 0.01 * x)


def _bn(x, bn, stats=None):
  """NumPy BatchNorm: running averages `stats`, or the batch's (biased) statistics."""
  axes = tuple(range(x.ndim - 1))
  mean, var = (stats['mean'], stats['var']) if stats else (x.mean(axes), x.var(axes))
  return (x - mean) / np.sqrt(var + EPS) * bn['scale'] + bn['bias']


def _np_adjacency(params, stats, nodes):
  """NumPy transcription of `Adjacency`: MLP on |x_i - x_j|, masked row softmax."""
  x = np.abs(nodes[..., :, None, :] - nodes[..., None, :, :])
  k = 0
  while f'Dense_{k}' in params:
    x = x @ params[f'Dense_{k}']['kernel']
    x = _leaky(_bn(x, params[f'BatchNorm_{k}'], stats and stats[f'BatchNorm_{k}']))
    k += 1
  scores = (x @ params['score']['kernel'])[..., 0]
  n = scores.shape[-1]
  scores = np.where(np.eye(n, dtype=bool), -np.inf, scores)
  e = np.exp(scores - scores.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _random_stats(variables, seed):
  """Non-trivial running statistics, as after training."""
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(lambda x: np.float32(x * (1 + rng.random(x.shape)) +
                                            0.3 * rng.normal(size=x.shape)),
                       variables['batch_stats'])
  return {**variables, 'batch_stats': stats}


@pytest.mark.parametrize('train', [False, True])
def test_adjacency_mlp_matches_numpy(train):
  module = gnn.Adjacency(widths=(4, 3), train=train)
  nodes = np.random.default_rng(2).normal(size=(2, 5, 6)).astype(np.float32)
  variables = _random_stats(module.init(jax.random.PRNGKey(0), nodes), 3)
  out = module.apply(variables, nodes, mutable=['batch_stats'])[0] if train else \
    module.apply(variables, nodes)
  p = jax.tree.map(np.asarray, variables['params'])
  expected = _np_adjacency(p, None if train else variables['batch_stats'], nodes)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out).sum(-1), 1., rtol=1e-5)
  assert np.all(np.asarray(out)[:, np.arange(5), np.arange(5)] == 0)
  assert np.asarray(out).std() > 0.01  # Not a uniform matrix whatever the inputs.


def _np_gnn(variables, nodes, num_layers, output_batchnorm):
  """NumPy transcription of `NodeLabelingGNN` in evaluation: densely connected layers."""
  p = jax.tree.map(np.asarray, variables['params'])
  s = jax.tree.map(np.asarray, variables['batch_stats'])
  x = nodes
  for layer in range(num_layers):
    a = _np_adjacency(p[f'adjacency_{layer}'], s[f'adjacency_{layer}'], x)
    conv = p[f'conv_{layer}']
    h = np.concatenate([x, a @ x], -1) @ conv['Dense_0']['kernel']
    if layer == num_layers - 1:
      if output_batchnorm:
        return _bn(h, conv['BatchNorm_0'], s[f'conv_{layer}']['BatchNorm_0'])
      return h + conv['Dense_0']['bias']
    x = np.concatenate([x, _leaky(_bn(h, conv['BatchNorm_0'], s[f'conv_{layer}']['BatchNorm_0']))],
                       -1)


@pytest.mark.parametrize('output_batchnorm', [False, True])
def test_graph_layers_match_numpy(output_batchnorm):
  net = gnn.NodeLabelingGNN(num_layers=3, node_features=3, adjacency_features=4,
                            adjacency_ratios=(1.0, 0.5), output_batchnorm=output_batchnorm)
  nodes = np.random.default_rng(4).normal(size=(2, 5, 6)).astype(np.float32)
  apply = functools.partial(net.apply, way=4, train=False)
  variables = _random_stats(net.init(jax.random.PRNGKey(0), nodes, way=4, train=False), 5)
  scores, adjacency = apply(variables, nodes)
  assert scores.shape == (2, 5, 4) and adjacency.shape == (3, 2, 5, 5)
  np.testing.assert_allclose(scores, _np_gnn(variables, nodes, 3, output_batchnorm), rtol=1e-4,
                             atol=1e-5)
  # Dense connections: each layer's convolution sees concat(x, A x) of a wider x.
  kernels = [variables['params'][f'conv_{i}']['Dense_0']['kernel'].shape for i in range(3)]
  assert kernels == [(12, 3), (18, 3), (24, 4)]
  assert ('bias' in variables['params']['conv_2']['Dense_0']) != output_batchnorm


def test_adjacency_widths_follow_the_reference_omniglot_model():
  # Reference (GNN_nl_omniglot, 5-way, 64-d embedding): inputs 69, 117, 165; MLP base
  # widths 69, 117 and, for the last layer, 117 again; ratios 2, 1.5, 1, 1, rounded down.
  net = gnn.NodeLabelingGNN(num_layers=3, node_features=48, adjacency_features=0,
                            adjacency_ratios=(2.0, 1.5, 1.0, 1.0))
  nodes = jnp.zeros((1, 6, 69))
  params = jax.eval_shape(functools.partial(net.init, way=5, train=False),
                          jax.random.PRNGKey(0), nodes)['params']
  for layer, (inputs, widths) in enumerate([(69, (138, 103, 69, 69)),
                                            (117, (234, 175, 117, 117)),
                                            (165, (234, 175, 117, 117))]):
    mlp = params[f'adjacency_{layer}']
    shapes = [mlp[f'Dense_{k}']['kernel'].shape for k in range(4)]
    assert shapes == list(zip((inputs,) + widths[:-1], widths, strict=True))
  assert gnn.NodeLabelingGNN(adjacency_features=96).adjacency_widths(2, 165) == (192, 192, 96, 96)


# --- The method: leaks, modes, equivariance. -------------------------------------------------


class Flatten(nn.Module):
  """A parameter-free backbone, so tests control the embeddings."""

  @nn.compact
  def __call__(self, x, *, train):
    return x.reshape((x.shape[0], -1))


@functools.cache
def _model(transductive):
  """Small graph layers; dropout in the last adjacency MLP, so training mode draws masks."""
  net = gnn.NodeLabelingGNN(node_features=4, adjacency_features=8, adjacency_ratios=(1.0, 1.0),
                            adjacency_dropout=0.3)
  return gnn.GNN(backbone=Flatten(), gnn=net, transductive=transductive)


def _episode(query=2, seed=0, way=3, shot=1, unlabeled=1):
  """3-way 1-shot, 2 queries per class and 1 unlabelled support per class: one shape for
  most tests, so that each jitted forward compiles once."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.normal(size=(n, 6, 1, 1)).astype(np.float32)
  labels = lambda n: np.repeat(np.arange(way, dtype=np.int32), n)
  return Episode(images(way * shot), labels(shot), images(way * query),
                 rng.permutation(labels(query)), images(way * unlabeled),
                 rng.permutation(labels(unlabeled)))


@functools.cache
def _variables():
  """One set of variables for both modes (they have the same parameters)."""
  episode = _episode()
  init = functools.partial(_model(False).init, way=3, train=False)
  variables = jax.jit(init)(jax.random.PRNGKey(0), episode.support_images,
                            episode.support_labels, episode.query_images,
                            episode.unlabeled_images)
  return _random_stats(variables, 6)


@functools.cache
def _apply_fn(transductive, train):
  return jax.jit(functools.partial(train_lib.apply_method, _model(transductive), way=3,
                                   train=train))


def _logits(transductive, episode, train=False):
  if train:
    out, _ = _apply_fn(transductive, True)(_variables(), episode, rng=jax.random.PRNGKey(1))
  else:
    out = _apply_fn(transductive, False)(_variables(), episode)
  return np.asarray(out.logits)


@pytest.mark.parametrize('transductive', [False, True])
def test_labels_of_queries_and_unlabeled_supports_change_no_prediction(transductive):
  episode = _episode()
  other = episode.replace(query_labels=(episode.query_labels + 1) % 3,
                          unlabeled_labels=(episode.unlabeled_labels + 1) % 3)
  np.testing.assert_array_equal(_logits(transductive, other), _logits(transductive, episode))
  if not transductive:  # Training: batch statistics, dropout with the same key.
    np.testing.assert_array_equal(_logits(False, other, train=True),
                                  _logits(False, episode, train=True))
  # Not vacuous: the unlabelled images are used, and so are the support labels.
  moved = episode.replace(unlabeled_images=episode.unlabeled_images[::-1] * 2)
  assert not np.allclose(_logits(transductive, moved), _logits(transductive, episode))
  relabelled = episode.replace(support_labels=episode.support_labels[::-1])
  assert not np.allclose(_logits(transductive, relabelled), _logits(transductive, episode))


def test_non_transductive_queries_are_independent_in_evaluation():
  episode = _episode()
  changed = episode.replace(query_images=episode.query_images.copy())
  changed.query_images[1] = -changed.query_images[1]
  others = np.arange(6) != 1
  a, b = _logits(False, episode), _logits(False, changed)
  np.testing.assert_allclose(a[others], b[others], rtol=1e-6, atol=1e-7)
  assert not np.allclose(a[1], b[1])
  # Transductive: one graph, so changing one query changes the others' scores.
  a, b = _logits(True, episode), _logits(True, changed)
  assert not np.allclose(a[others], b[others], atol=1e-4)


def test_non_transductive_equals_one_graph_per_query():
  episode = _episode()
  logits = _logits(False, episode)
  for q in range(6):
    alone = episode.replace(query_images=episode.query_images[q:q + 1],
                            query_labels=episode.query_labels[q:q + 1])
    np.testing.assert_allclose(logits[q], _logits(True, alone)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('transductive', [False, True])
def test_permuting_queries_permutes_logits(transductive):
  episode = _episode()
  order = np.random.default_rng(7).permutation(6)
  permuted = episode.replace(query_images=episode.query_images[order])
  np.testing.assert_allclose(_logits(transductive, permuted),
                             _logits(transductive, episode)[order], rtol=1e-5, atol=1e-6)


def test_logits_are_the_query_nodes_scores():
  episode = _episode()
  out = _apply_fn(True, False)(_variables(), episode)

  @jax.jit
  def by_hand(variables, episode):
    flat = lambda x: x.reshape(x.shape[0], -1)
    nodes = gnn.episode_graphs(flat(episode.support_images), episode.support_labels,
                               flat(episode.unlabeled_images), flat(episode.query_images), 3, True)
    gnn_vars = {k: v['gnn'] for k, v in variables.items()}
    return _model(True).gnn.apply(gnn_vars, nodes, way=3, train=False)

  scores, adjacency = by_hand(_variables(), episode)
  np.testing.assert_allclose(out.logits, scores[0, -6:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.aux['adjacency'], adjacency, rtol=1e-5, atol=1e-6)


# --- Configs and training. -------------------------------------------------------------------

VARIANTS = {
  'gnn_omniglot': ['5way1shot', '5way5shot', '20way1shot', '20way5shot',
                   '5way1shot-transductive', '20way5shot-transductive', 'tiny'],
  'gnn_mini_imagenet': ['5way1shot', '5way5shot', '5way5shot-transductive', 'tiny'],
}


@pytest.mark.parametrize('name,variant', [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_configs_load_and_reach_the_module(name, variant):
  config = config_lib.validate(load_config(name, variant), num_devices=1)
  model = gnn.GNN.from_config(config)
  assert isinstance(model, gnn.GNN)
  assert model.transductive == config.transductive == variant.endswith('-transductive')
  net = model.gnn
  assert (net.num_layers, net.node_features, net.adjacency_features, net.adjacency_ratios,
          net.adjacency_dropout, net.output_batchnorm) == (
    config.num_layers, config.node_features, config.adjacency_features,
    tuple(config.adjacency_ratios), config.adjacency_dropout, config.output_batchnorm)
  assert config.way == config.test_way


def test_reference_settings_of_the_configs():
  omniglot = load_config('gnn_omniglot', '20way1shot')
  assert (omniglot.way, omniglot.shot, omniglot.meta_batch_size, omniglot.lr_decay_every,
          omniglot.backbone) == (20, 1, 5, 10_000, 'conv4')
  assert load_config('gnn_omniglot').meta_batch_size * 5 == 300  # The reference's batch.
  mini = load_config('gnn_mini_imagenet', '5way1shot')
  assert (mini.shot, mini.meta_batch_size * 5, mini.weight_decay, mini.lr_decay_every,
          mini.backbone) == (1, 100, 1e-6, 15_000, 'egnn_conv4')
  with pytest.raises(ValueError, match='Unknown variant'):
    load_config('gnn_omniglot', '10way1shot')


@pytest.mark.parametrize('field,value,message', [
  ('test_way', 20, 'way == test_way'),
  ('adjacency_dropout', 1.0, 'adjacency_dropout'),
  ('num_layers', 0, 'num_layers'),
  ('adjacency_ratios', (), 'adjacency_ratios'),
])
def test_bad_config_names_the_field(field, value, message):
  config = load_config('gnn_omniglot', 'tiny')
  config[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    train_lib.build(config)


def test_unlabeled_supports_are_accepted():
  config = load_config('gnn_omniglot', 'tiny')
  config.unlabeled_shot = config.test_unlabeled_shot = 2
  train_lib.build(config)


def test_tiny_gnn_learns_omniglot(tmp_path, data_dir):
  """80 steps of 8 five-way 1-shot episodes, non-transductive; chance is 20%."""
  results = train_lib.train_and_evaluate(load_config('gnn_omniglot', 'tiny'), str(tmp_path))
  assert results['test_accuracy'] > 0.5, results
