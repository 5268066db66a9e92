"""Siamese networks: hand-computed equations, no leak, learning on real Omniglot."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from helpers import learning_test, load_config

from fsl_jax.data.episodes import Episode
from fsl_jax.models import backbones, siamese
from fsl_jax.training import train


class Flatten(nn.Module):
  """A parameter-free backbone: the embedding is the image itself."""

  @nn.compact
  def __call__(self, x, *, train):
    return x.reshape((x.shape[0], -1))


def test_weighted_l1_by_hand():
  query = jnp.array([[1., 2.]])
  support = jnp.array([[0., 0.], [1., 5.]])
  # |(1, 2) - (0, 0)| = (1, 2): 0.5 * 1 - 1 * 2 + 0.25 = -1.25; |(0, -3)|: -3 + 0.25.
  logits = siamese.weighted_l1_logits(query, support, jnp.array([0.5, -1.0]), jnp.array(0.25))
  np.testing.assert_allclose(logits, [[-1.25, -2.75]])


def test_class_similarity_is_the_mean_over_shots_by_hand():
  probs = jnp.array([[0.9, 0.5, 0.2, 0.4]])
  labels = jnp.array([1, 1, 0, 0])
  np.testing.assert_allclose(siamese.class_similarity(probs, labels, way=2), [[0.3, 0.7]])


def test_balanced_pair_loss_by_hand():
  logits = jnp.array([[2.0, -1.0, 0.0]])
  same = jnp.array([[True, False, False]])
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  bce = lambda x, y: -(y * np.log(sigmoid(x)) + (1 - y) * np.log(1 - sigmoid(x)))
  want = 0.5 * (bce(2.0, 1) + 0.5 * (bce(-1.0, 0) + bce(0.0, 0)))
  np.testing.assert_allclose(siamese.balanced_pair_loss(logits, same), want, rtol=1e-6)


def test_module_by_hand_with_a_flat_backbone():
  model = siamese.Siamese(backbone=Flatten())
  support = jnp.array([[0.], [3.], [1.]]).reshape(3, 1, 1, 1)
  labels = jnp.array([1, 0, 1])
  query = jnp.array([[0.5]]).reshape(1, 1, 1, 1)
  variables = {'params': {'alpha': jnp.array([-2.0]), 'bias': jnp.array(1.0)}}
  out = model.apply(variables, support, labels, query, way=2, train=False)
  # Distances 0.5, 2.5, 0.5 -> logits 0, -4, 0 -> class 1: mean(0.5, 0.5), class 0: sigmoid(-4).
  np.testing.assert_allclose(out.aux['pair_logits'], [[0., -4., 0.]], atol=1e-6)
  np.testing.assert_allclose(out.logits, [[1 / (1 + np.exp(4.)), 0.5]], rtol=1e-6)
  episode = Episode(support, labels, query, jnp.array([1]), jnp.zeros((0, 1, 1, 1)),
                    jnp.zeros((0,), jnp.int32))
  loss, _ = model.loss(out, episode)  # Positives: pairs 0 and 2 (logit 0); negative: pair 1.
  want = 0.5 * (np.log(2.) + np.log1p(np.exp(-4.)))
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def _model_and_episode():
  model = siamese.Siamese(backbone=backbones.Conv4(), embed_dim=16)
  rng = np.random.default_rng(0)
  support = rng.random((6, 28, 28, 1), np.float32)
  labels = np.array([2, 0, 1, 1, 0, 2], np.int32)
  query = rng.random((4, 28, 28, 1), np.float32)
  variables = model.init(jax.random.PRNGKey(0), support, labels, query, way=3, train=False)
  variables = {'params': variables['params'],
               'batch_stats': jax.tree.map(lambda x: x + 0.1 * rng.random(x.shape, np.float32),
                                           variables['batch_stats'])}
  return model, variables, support, labels, query


def test_tiny_siamese_learns_omniglot(tmp_path, data_dir):
  """100 steps of 4 five-way 1-shot episodes (63.4% on 60 test episodes when written);
  chance is 20%."""
  config = learning_test(load_config('siamese_omniglot', 'tiny'))
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['test_accuracy'] > 0.5, results
