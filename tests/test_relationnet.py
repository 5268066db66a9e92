"""Relation Networks: hand-computed equations, the pair assembly, no leak, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from helpers import learning_test, load_config

from fsl_jax.models import backbones, relationnet
from fsl_jax.training import train


def test_class_maps_sum_the_shots_by_hand():
  maps = jnp.array([1., 2., 4., 8.]).reshape(4, 1, 1, 1)
  classes = relationnet.class_maps(maps, jnp.array([1, 0, 1, 1]), way=2)
  np.testing.assert_allclose(classes[:, 0, 0, 0], [2., 13.])


def test_pairs_put_the_class_channels_first():
  classes = jnp.array([[10.], [20.]]).reshape(2, 1, 1, 1)
  queries = jnp.array([[1.], [2.], [3.]]).reshape(3, 1, 1, 1)
  pairs = relationnet.pair_maps(classes, queries)[:, :, 0, 0, :]  # [Q, way, 2]
  np.testing.assert_array_equal(pairs[2, 1], [20., 3.])
  np.testing.assert_array_equal(pairs[0, 0], [10., 1.])
  assert pairs.shape == (3, 2, 2)


def test_mse_loss_by_hand():
  scores = jnp.array([[0.9, 0.2], [0.4, 0.5]])
  # Targets [1, 0], [0, 1]: (0.01 + 0.04 + 0.16 + 0.25) / 4.
  np.testing.assert_allclose(relationnet.mse_loss(scores, jnp.array([0, 1])), 0.115, rtol=1e-6)


@functools.cache
def _model_and_episode(shot=2):
  """A model, trained-looking variables, an episode, and the jitted evaluation forward.

  Cached, so shared by the tests that call it: they must not change what it returns."""
  model = relationnet.RelationNet(backbone=backbones.RelationConv4(),
                                  relation=relationnet.RelationModule())
  rng = np.random.default_rng(0)
  support = rng.random((3 * shot, 28, 28, 1), np.float32)
  labels = np.repeat(np.array([2, 0, 1], np.int32), shot)
  query = rng.random((4, 28, 28, 1), np.float32)
  variables = jax.jit(functools.partial(model.init, way=3, train=False))(
    jax.random.PRNGKey(0), support, labels, query)
  variables = jax.tree.map(np.asarray, variables)  # The changes below in NumPy, not op by op.
  # Non-trivial running statistics, as after training; parameters kept at their
  # scale (the reference's initialisation), so that scores stay inside (0, 1).
  variables = {
    'params': jax.tree.map(lambda x: x * (1 + 0.3 * rng.standard_normal(x.shape, np.float32)),
                           variables['params']),
    'batch_stats': jax.tree.map(lambda x: x + 0.1 * rng.random(x.shape, np.float32),
                                variables['batch_stats'])}
  for name in ('Dense_0', 'Dense_1'):  # From N(0, 0.01) to about N(0, 0.3): varied scores.
    dense = variables['params']['relation'][name]
    dense['kernel'] = dense['kernel'] * 30
  apply = jax.jit(functools.partial(model.apply, way=3, train=False))
  return model, variables, support, labels, query, apply


def test_scores_are_the_relation_module_on_each_class_query_pair():
  model, variables, support, labels, query, apply = _model_and_episode()
  scores = np.asarray(apply(variables, support, labels, query).logits)
  embed = jax.jit(lambda x: model.backbone.apply(
    {'params': variables['params']['backbone'],
     'batch_stats': variables['batch_stats']['backbone']}, x, train=False))
  relate = jax.jit(lambda x: model.relation.apply(
    {'params': variables['params']['relation'],
     'batch_stats': variables['batch_stats']['relation']}, x, train=False))
  s, q = np.asarray(embed(support)), np.asarray(embed(query))
  for k in range(3):
    class_map = s[labels == k].sum(0)
    for i in range(4):
      pair = np.concatenate([class_map, q[i]], axis=-1)[None]
      np.testing.assert_allclose(scores[i, k], relate(pair)[0], rtol=1e-5)
  assert scores.shape == (4, 3) and np.all((scores > 0) & (scores < 1))


def test_relabelling_the_classes_permutes_the_scores():
  _, variables, support, labels, query, apply = _model_and_episode()
  scores = apply(variables, support, labels, query).logits
  perm = np.array([1, 2, 0])  # Class k becomes perm[k].
  permuted = apply(variables, support, perm[labels], query).logits
  np.testing.assert_allclose(np.asarray(permuted)[:, perm], scores, rtol=1e-5)


def test_a_vector_backbone_is_refused():
  import pytest

  model = relationnet.RelationNet(backbone=backbones.Conv4(),
                                  relation=relationnet.RelationModule())
  x = np.zeros((3, 28, 28, 1), np.float32)
  with pytest.raises(ValueError, match='feature maps'):
    jax.jit(functools.partial(model.init, way=3, train=False))(jax.random.PRNGKey(0), x,
                                                               np.arange(3), x)


def test_tiny_relationnet_learns_omniglot(tmp_path, data_dir):
  """100 steps of 4 five-way 1-shot episodes (68.0% on 60 test episodes when written);
  chance is 20%."""
  config = learning_test(load_config('relationnet_omniglot', 'tiny'))
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['test_accuracy'] > 0.5, results
