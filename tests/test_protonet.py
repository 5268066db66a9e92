"""Prototypical Networks: hand-computed equations, and no leak across queries."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.data.episodes import Episode
from fsl_jax.models import backbones, protonet


class Flatten(nn.Module):
  """A parameter-free backbone: the embedding is the image itself."""

  @nn.compact
  def __call__(self, x, *, train):
    return x.reshape((x.shape[0], -1))


def test_prototypes_and_distances_by_hand():
  support = jnp.array([[0., 0.], [2., 0.], [0., 4.], [0., 2.]])
  protos = protonet.prototypes(support, jnp.array([0, 0, 1, 1]), way=2)
  np.testing.assert_allclose(protos, [[1., 0.], [0., 3.]])
  query = jnp.array([[1., 1.], [0., 3.]])
  # |(1,1)-(1,0)|^2 = 1, |(1,1)-(0,3)|^2 = 1 + 4 = 5; |(0,3)-(1,0)|^2 = 10, 0.
  np.testing.assert_allclose(protonet.squared_distances(query, protos), [[1., 5.], [10., 0.]])


def test_module_logits_by_hand_with_unordered_supports():
  model = protonet.ProtoNet(backbone=Flatten())
  support = jnp.array([[3.], [1.], [-2.]]).reshape(3, 1, 1, 1)
  labels = jnp.array([1, 1, 0])  # Prototypes: class 0 at -2, class 1 at 2.
  query = jnp.array([[0.], [2.5]]).reshape(2, 1, 1, 1)
  out = model.apply({}, support, labels, query, way=2, train=False)
  np.testing.assert_allclose(out.logits, [[-4., -4.], [-20.25, -0.25]])
  loss, _ = model.loss(out, Episode(support, labels, query, jnp.array([0, 1]),
                                    jnp.zeros((0, 1, 1, 1)), jnp.zeros((0,), jnp.int32)))
  expected = np.mean([np.log(2.), -np.log(np.exp(-0.25) / (np.exp(-0.25) + np.exp(-20.25)))])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def _conv4_protonet_and_episode():
  model = protonet.ProtoNet(backbone=backbones.Conv4())
  rng = np.random.default_rng(0)
  support = rng.random((5, 28, 28, 1), np.float32)
  query = rng.random((10, 28, 28, 1), np.float32)
  labels = np.arange(5, dtype=np.int32)
  variables = model.init(jax.random.PRNGKey(0), support, labels, query, way=5, train=False)
  # Non-trivial running statistics, as after training.
  variables = jax.tree.map(lambda x: x + 0.1 * rng.random(x.shape, np.float32), variables)
  return model, variables, support, labels, query


def test_non_transductive_eval_one_query_changes_no_other_prediction():
  model, variables, support, labels, query = _conv4_protonet_and_episode()
  logits = model.apply(variables, support, labels, query, way=5, train=False).logits
  changed = query.copy()
  changed[3] = 1.0 - changed[3]
  new = model.apply(variables, support, labels, changed, way=5, train=False).logits
  others = np.arange(10) != 3
  np.testing.assert_array_equal(np.asarray(logits)[others], np.asarray(new)[others])
  assert not np.allclose(logits[3], new[3])


def test_training_mode_is_transductive_through_batchnorm():
  # The contrast that makes the test above meaningful: with batch statistics
  # (training), one query moves every other query's logits.
  model, variables, support, labels, query = _conv4_protonet_and_episode()
  run = lambda q: model.apply(variables, support, labels, q, way=5, train=True,
                              mutable=['batch_stats'])[0].logits
  changed = query.copy()
  changed[3] = 1.0 - changed[3]
  assert not np.allclose(run(query)[0], run(changed)[0])
