"""TPN: hand-computed equations, no label leak, transductive by construction, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from helpers import learning_test, load_config

from fsl_jax.data.episodes import Episode
from fsl_jax.models import backbones, tpn
from fsl_jax.training import train


def test_gaussian_weights_by_hand():
  # x = f / sigma: (0, 0) and (1, 0); mean squared difference (1 + 0) / 2.
  w = tpn.gaussian_weights(jnp.array([[0., 0.], [2., 0.]]), jnp.array([1., 2.]), eps=0.0)
  np.testing.assert_allclose(w, [[1., np.exp(-0.25)], [np.exp(-0.25), 1.]], rtol=1e-6)


def test_top_k_keeps_an_edge_either_endpoint_keeps():
  w = jnp.array([[1., .9, .1, .2],
                 [.9, 1., .3, .1],
                 [.1, .3, 1., .8],
                 [.2, .1, .8, 1.]])
  # k = 2: row 0 keeps {0, 1}, row 1 {1, 0}, row 2 {2, 3}, row 3 {3, 2}; then the
  # union with the transpose changes nothing here. With k = 3, row 1 also keeps 2,
  # so (2, 1) comes back through the symmetry although row 2's top 3 has it anyway.
  kept = np.asarray(tpn.top_k_symmetric(w, 2)) > 0
  np.testing.assert_array_equal(kept, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
  kept3 = np.asarray(tpn.top_k_symmetric(w, 3)) > 0
  # Row tops: 0 {0,1,3}, 1 {1,0,2}, 2 {2,3,1}, 3 {3,2,0}; union with the transpose.
  np.testing.assert_array_equal(kept3, [[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]])
  np.testing.assert_array_equal(tpn.top_k_symmetric(w, 4), w)


def test_normalized_laplacian_by_hand():
  w = jnp.array([[1., 1.], [1., 3.]])  # Row sums 2 and 4.
  want = [[1 / 2, 1 / np.sqrt(8)], [1 / np.sqrt(8), 3 / 4]]
  np.testing.assert_allclose(tpn.normalized_laplacian(w), want, rtol=1e-6)


def test_propagation_by_hand_and_against_the_inverse():
  # (I - a S)^-1 for S = [[0, 1], [1, 0]] is [[1, a], [a, 1]] / (1 - a^2).
  a = 0.5
  propagate = jax.jit(tpn.propagate, static_argnums=2)
  f = propagate(jnp.array([[0., 1.], [1., 0.]]), jnp.array([[1.], [0.]]), a)
  np.testing.assert_allclose(f[:, 0], [1 / (1 - a * a), a / (1 - a * a)], rtol=1e-6)
  rng = np.random.default_rng(0)
  w = rng.random((6, 6))
  s = np.asarray(jax.jit(tpn.normalized_laplacian)(jnp.asarray(w + w.T)))
  y = np.eye(3)[[0, 1, 2, 0, 0, 0]] * (np.arange(6) < 3)[:, None]
  want = np.linalg.inv(np.eye(6) - 0.99 * s) @ y
  np.testing.assert_allclose(propagate(jnp.asarray(s), jnp.asarray(y), 0.99), want,
                             rtol=1e-3)


def _model_and_episode():
  model = tpn.TPN(backbone=backbones.Conv4(flatten=False), graph=tpn.GraphConstruction(), topk=4)
  rng = np.random.default_rng(0)
  support = rng.random((3, 28, 28, 1), np.float32)
  labels = np.array([2, 0, 1], np.int32)
  query = rng.random((6, 28, 28, 1), np.float32)
  variables = jax.jit(functools.partial(model.init, way=3, train=False))(
    jax.random.PRNGKey(0), support, labels, query)
  variables = {'params': variables['params'],
               'batch_stats': jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.random(
                 x.shape, np.float32), variables['batch_stats'])}
  return model, variables, support, labels, query


def test_permuting_queries_permutes_the_scores():
  # Label leaks and query interaction: tests/test_leaks.py.
  model, variables, support, labels, query = _model_and_episode()
  apply = jax.jit(functools.partial(model.apply, way=3, train=False))
  a = apply(variables, support, labels, query).logits
  perm = np.array([5, 2, 0, 4, 1, 3])
  c = apply(variables, support, labels, query[perm]).logits
  np.testing.assert_allclose(c, np.asarray(a)[perm], rtol=1e-4, atol=1e-6)
  assert a.shape == (6, 3) and np.all(np.isfinite(a))


def test_loss_is_the_cross_entropy_of_every_node():
  scores = jnp.array([[2., 0.], [0., 1.], [1., 1.]])
  out = tpn.MethodOutput(logits=scores[2:], aux={'scores': scores})
  episode = Episode(jnp.zeros((2, 1, 1, 1)), jnp.array([0, 1]), jnp.zeros((1, 1, 1, 1)),
                    jnp.array([0]), jnp.zeros((0, 1, 1, 1)), jnp.zeros((0,), jnp.int32))
  model = tpn.TPN(backbone=backbones.Conv4(), graph=tpn.GraphConstruction())
  loss, _ = jax.jit(model.loss)(out, episode)
  want = np.mean([np.log1p(np.exp(-2.)), np.log1p(np.exp(-1.)), np.log(2.)])
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_tiny_tpn_learns_omniglot(tmp_path, data_dir):
  """100 steps of 4 five-way 1-shot episodes (90.1% on 60 test episodes when written);
  chance is 20%."""
  config = learning_test(load_config('tpn_omniglot', 'tiny'))
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['test_accuracy'] > 0.5, results


def test_every_scale_starts_at_sigma_init():
  maps = np.random.default_rng(1).random((7, 1, 1, 64), np.float32)
  g = tpn.GraphConstruction(sigma_init=0.3)
  variables = jax.jit(functools.partial(g.init, train=True))(jax.random.PRNGKey(0), maps)
  sigma, _ = jax.jit(functools.partial(g.apply, train=True, mutable=['batch_stats']))(
    variables, maps)
  np.testing.assert_allclose(sigma, np.full(7, 0.3), rtol=1e-6)


def test_bad_tpn_fields_are_refused():
  for field, value, message in (('tpn_topk', 0, 'tpn_topk'), ('tpn_alpha', 1.0, 'tpn_alpha'),
                                ('tpn_sigma_init', 0.0, 'tpn_sigma_init')):
    config = load_config('tpn_omniglot', 'tiny')
    config[field] = value
    try:
      train.build(config)
    except ValueError as error:
      assert message in str(error)
    else:
      raise AssertionError(f'{field}={value} was accepted')
