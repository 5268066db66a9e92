"""Matching Networks: hand-computed equations, FCE against a NumPy transcription, no leaks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, trained_state

from fsl_jax import config as config_lib
from fsl_jax.data.episodes import Episode
from fsl_jax.models import backbones, base, matchingnet
from fsl_jax.training import history, train

S2 = np.sqrt(2.0)


class Flatten(nn.Module):
  """A parameter-free backbone: the embedding is the image itself."""

  @nn.compact
  def __call__(self, x, *, train):
    return x.reshape((x.shape[0], -1))


def as_images(vectors):
  """`[n, D]` vectors as `[n, 1, 1, D]` images for `Flatten`."""
  vectors = np.asarray(vectors, np.float32)
  return vectors.reshape(vectors.shape[0], 1, 1, -1)


def test_cosine_similarity_by_hand():
  query = jnp.array([[1., 0.], [1., 1.]])
  support = jnp.array([[2., 0.], [0., 3.], [-1., 1.]])
  cosine_similarity = jax.jit(matchingnet.cosine_similarity, static_argnums=2)
  np.testing.assert_allclose(cosine_similarity(query, support),
                             [[1., 0., -1 / S2], [1 / S2, 1 / S2, 0.]], rtol=1e-6, atol=1e-7)
  # Supports normalised only: the second query keeps its norm sqrt(2).
  np.testing.assert_allclose(cosine_similarity(query, support, False),
                             [[1., 0., -1 / S2], [1., 1., 0.]], rtol=1e-6, atol=1e-7)


def test_a_zero_embedding_has_cosine_zero_and_a_finite_gradient():
  support = jnp.array([[0., 0.], [1., 0.]])
  query = jnp.array([[3., 4.]])
  np.testing.assert_allclose(jax.jit(matchingnet.cosine_similarity)(query, support), [[0., 0.6]],
                             atol=1e-7)
  grad = jax.jit(jax.grad(lambda s: matchingnet.cosine_similarity(query, s).sum()))(support)
  assert np.isfinite(grad).all()


def test_class_probabilities_sum_the_attention_by_hand():
  # Attention logits 0, ln 2, ln 3: weights 1/6, 2/6, 3/6 (Eq. 2); supports of
  # class 1 at positions 0 and 2: p = (2/6, 4/6) (Eq. 1).
  logits = jnp.log(jnp.array([[1., 2., 3.], [4., 1., 1.]]))
  np.testing.assert_allclose(jax.nn.softmax(logits[:1]), [[1 / 6, 2 / 6, 3 / 6]], rtol=1e-6)
  log_probs = jax.jit(matchingnet.class_log_probs, static_argnames='way')(
    logits, jnp.array([1, 0, 1]), way=2)
  np.testing.assert_allclose(log_probs, np.log([[2 / 6, 4 / 6], [1 / 6, 5 / 6]]), rtol=1e-6)


def test_class_log_probs_are_stable_and_an_empty_class_is_harmless():
  logits = jnp.array([[1000., 1000., -1000.]])
  labels = jnp.array([0, 1, 1])
  class_log_probs = jax.jit(matchingnet.class_log_probs, static_argnums=2)
  np.testing.assert_allclose(class_log_probs(logits, labels, 2), np.log([[.5, .5]]), rtol=1e-6)
  # Class 2 has no support: -inf, and the cross-entropy's gradient stays finite.
  log_probs = np.asarray(class_log_probs(jnp.array([[0., 1., 2.]]), labels, 3))
  assert np.isneginf(log_probs[0, 2]) and np.isfinite(log_probs[0, :2]).all()
  loss = lambda x: -matchingnet.class_log_probs(x, labels, 3)[0, 0]
  assert np.isfinite(jax.jit(jax.grad(loss))(jnp.array([[0., 1., 2.]]))).all()


@pytest.mark.parametrize('normalize_query', [True, False])
def test_module_logits_and_loss_by_hand(normalize_query):
  model = matchingnet.MatchingNet(backbone=Flatten(), normalize_query=normalize_query)
  support = as_images([[1., 0.], [0., 2.], [-3., 0.]])
  labels = jnp.array([0, 1, 1])
  query = as_images([[2., 0.], [0., -1.]])
  out = jax.jit(functools.partial(model.apply, way=2, train=False))({}, support, labels, query)
  # Query (2, 0): similarities (1, 0, -1), or (2, 0, -2) unnormalised; query
  # (0, -1) has norm 1, so (0, -1, 0) either way.
  e = np.exp(2.0 if not normalize_query else 1.0)
  p0 = np.array([e / (e + 1 + 1 / e), 1 / (2 + np.exp(-1.0))])
  np.testing.assert_allclose(out.logits, np.log(np.stack([p0, 1 - p0], 1)), rtol=1e-6)
  np.testing.assert_allclose(out.aux['attention'].sum(-1), [1., 1.], rtol=1e-6)
  episode = Episode(support, labels, query, jnp.array([0, 1]), jnp.zeros((0, 1, 1, 2)),
                    jnp.zeros((0,), jnp.int32))
  loss, _ = jax.jit(model.loss)(out, episode)
  np.testing.assert_allclose(loss, np.mean([-np.log(p0[0]), -np.log(1 - p0[1])]), rtol=1e-6)


# FCE against a NumPy transcription of the paper's appendix.

def _lstm_step(p, carry, x):
  """One step of flax's LSTM cell in NumPy, from its parameters."""
  c, h = carry
  gate = lambda g: x @ p[f'i{g}']['kernel'] + h @ p[f'h{g}']['kernel'] + p[f'h{g}']['bias']
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  c = sigmoid(gate('f')) * c + sigmoid(gate('i')) * np.tanh(gate('g'))
  return c, sigmoid(gate('o')) * np.tanh(c)


def _fce_numpy(params, support, query, steps):
  """Appendix A.2 (g) and A.1 (f) written out; returns g(S) `[S, D]` and f(Q) `[Q, D]`."""
  params = jax.tree.map(np.asarray, params)
  s, d = support.shape
  forward, backward = np.zeros((s, d)), np.zeros((s, d))
  carry = (np.zeros(d), np.zeros(d))
  for i in range(s):
    carry = _lstm_step(params['g']['forward']['cell'], carry, support[i])
    forward[i] = carry[1]
  carry = (np.zeros(d), np.zeros(d))
  for i in reversed(range(s)):
    carry = _lstm_step(params['g']['backward']['cell'], carry, support[i])
    backward[i] = carry[1]
  g = forward + backward + support
  f = []
  for x in query:
    c, h = np.zeros(d), x
    for _ in range(steps):
      a = np.exp(g @ h - (g @ h).max())
      r = (a / a.sum()) @ g  # r_{k-1}
      c, h_hat = _lstm_step(params['f']['steps']['cell'], (c, h), np.concatenate([x, r]))
      h = h_hat + x  # h_k = h^_k + f'(x)
    f.append(h)
  return g, np.stack(f)


@functools.cache
def _fce_model_and_episode(steps):
  model = matchingnet.MatchingNet(backbone=Flatten(), fce=True, fce_steps=steps)
  rng = np.random.default_rng(0)
  support = rng.normal(size=(4, 3)).astype(np.float32)
  query = rng.normal(size=(2, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1], np.int32)
  variables = model.init(jax.random.PRNGKey(0), as_images(support), labels, as_images(query),
                         way=2, train=False)
  return model, variables, support, labels, query


def test_fce_matches_a_numpy_transcription_of_the_appendix():
  model, variables, support, labels, query = _fce_model_and_episode(3)
  out = model.apply(variables, as_images(support), labels, as_images(query), way=2, train=False)
  g, f = _fce_numpy(variables['params'], support, query, steps=3)
  cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
    g / np.linalg.norm(g, axis=1, keepdims=True)).T
  a = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
  expected = np.log(np.stack([a[:, :2].sum(1), a[:, 2:].sum(1)], 1))
  assert out.logits.shape == (2, 2) and out.aux['attention'].shape == (2, 4)
  np.testing.assert_allclose(out.logits, expected, rtol=1e-5, atol=1e-6)
  # FCE changes the prediction: the same embeddings without it give other logits.
  plain = matchingnet.MatchingNet(backbone=Flatten()).apply(
    {}, as_images(support), labels, as_images(query), way=2, train=False)
  assert np.abs(np.asarray(plain.logits) - np.asarray(out.logits)).max() > 1e-3


def test_fce_with_zero_lstms_is_no_fce():
  # An LSTM with zero weights outputs h = 0.5 tanh(0) = 0, so only the skip
  # connections remain: g(x_i) = g'(x_i) and h_K = f'(x).
  model, variables, support, labels, query = _fce_model_and_episode(3)
  zero = {'params': jax.tree.map(jnp.zeros_like, variables['params'])}
  out = model.apply(zero, as_images(support), labels, as_images(query), way=2, train=False)
  plain = matchingnet.MatchingNet(backbone=Flatten()).apply(
    {}, as_images(support), labels, as_images(query), way=2, train=False)
  np.testing.assert_allclose(out.logits, plain.logits, rtol=1e-6)


def _scan_lengths(jaxpr):
  """The lengths of every scan in a jaxpr, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'scan':
      yield eqn.params['length']
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        if hasattr(sub, 'jaxpr') and hasattr(sub, 'consts'):  # A ClosedJaxpr.
          yield from _scan_lengths(sub.jaxpr)
        elif hasattr(sub, 'eqns'):
          yield from _scan_lengths(sub)


def test_the_read_steps_are_one_scan_with_one_set_of_parameters():
  shapes = {}
  for steps in (3, 7):
    model, variables, support, labels, query = _fce_model_and_episode(steps)
    shapes[steps] = jax.tree.map(jnp.shape, variables['params'])
    apply = functools.partial(model.apply, way=2, train=False)
    jaxpr = jax.make_jaxpr(apply)(variables, as_images(support), labels, as_images(query))
    lengths = sorted(_scan_lengths(jaxpr.jaxpr))
    # g's two LSTMs scan the 4 supports; f's K steps are one scan.
    assert lengths == sorted([4, 4, steps]), lengths
  assert shapes[3] == shapes[7]
  assert shapes[7]['f']['steps']['cell']['ii']['kernel'] == (6, 3)  # [f'(x), r] -> D units.


# Leaks and symmetries, with a small Conv-4 (BatchNorm) backbone.

@functools.cache
def _conv_setup(fce):
  """A model, trained-looking variables, an episode, and a jitted `train.apply_method`."""
  model = matchingnet.MatchingNet(backbone=backbones.Conv4(features=8, num_blocks=2), fce=fce,
                                  fce_steps=2)
  rng = np.random.default_rng(0)
  episode = Episode(rng.random((6, 8, 8, 1), np.float32), np.array([0, 0, 1, 1, 2, 2], np.int32),
                    rng.random((6, 8, 8, 1), np.float32), np.zeros(6, np.int32),
                    np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, np.int32))
  variables = model.init(jax.random.PRNGKey(0), episode.support_images, episode.support_labels,
                         episode.query_images, way=3, train=False)
  # Non-trivial running statistics, as after training (in NumPy, not op by op).
  variables = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.random(x.shape, np.float32),
                           variables)
  run = jax.jit(lambda e: train.apply_method(model, variables, e, 3, train=False).logits)
  return model, variables, episode, run


@pytest.mark.parametrize('fce', [False, True])
def test_eval_one_query_changes_no_other_prediction(fce):
  # With FCE this is the test that f never sees another query.
  _, _, episode, run = _conv_setup(fce)
  logits = np.asarray(run(episode))
  changed = episode.query_images.copy()
  changed[3] = 1.0 - changed[3]
  new = np.asarray(run(episode.replace(query_images=changed)))
  others = np.arange(6) != 3
  np.testing.assert_allclose(logits[others], new[others], rtol=1e-6, atol=1e-7)
  assert not np.allclose(logits[3], new[3])


@pytest.mark.parametrize('fce', [False, True])
def test_permuting_queries_permutes_logits_and_supports_matter_only_with_fce(fce):
  _, _, episode, run = _conv_setup(fce)
  logits = np.asarray(run(episode))
  order = np.array([4, 2, 0, 5, 1, 3])
  np.testing.assert_allclose(run(episode.replace(query_images=episode.query_images[order])),
                             logits[order], rtol=1e-5, atol=1e-6)
  # Permuting the supports with their labels: no change without FCE; with FCE,
  # g reads the supports in order (as in the paper), so the logits move.
  moved = np.asarray(run(episode.replace(support_images=episode.support_images[order],
                                         support_labels=episode.support_labels[order])))
  if fce:
    assert not np.allclose(moved, logits, atol=1e-4)
  else:
    np.testing.assert_allclose(moved, logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('fce', [False, True])
def test_query_labels_never_reach_the_forward_pass(fce):
  _, _, episode, run = _conv_setup(fce)
  other = episode.replace(query_labels=np.arange(6, dtype=np.int32) % 3)
  np.testing.assert_array_equal(run(episode), run(other))


def test_training_mode_is_transductive_through_batchnorm():
  # The contrast that makes the eval test meaningful: with batch statistics
  # (training), one query moves every other query's logits.
  model, variables, episode, _ = _conv_setup(False)
  run = jax.jit(lambda e: train.apply_method(model, variables, e, 3, train=True,
                                             rng=jax.random.PRNGKey(0))[0].logits)
  changed = episode.query_images.copy()
  changed[3] = 1.0 - changed[3]
  assert not np.allclose(run(episode)[0], run(episode.replace(query_images=changed))[0])


def test_config_fields_are_validated_and_reach_the_module():
  base.get_method('matchingnet')
  config = config_lib.validate(load_config('matchingnet_mini_imagenet', 'tiny'), num_devices=1)
  model = matchingnet.MatchingNet.from_config(config)
  assert model.fce and model.fce_steps == 5 and model.normalize_query
  config.fce_steps = 0
  with pytest.raises(ValueError, match='fce_steps must be at least 1'):
    matchingnet.MatchingNet.from_config(config)


@pytest.mark.slow
def test_tiny_matchingnet_learns_omniglot(tmp_path, data_dir):
  """60 steps of 4 five-way 1-shot episodes: 72.0% on the 50 test episodes when
  written, where the untrained model gets 55.8% (random features); chance is 20%.
  The logged training loss (mean of 20 steps) went from 1.39 to 1.26."""
  config = load_config('matchingnet_omniglot', 'tiny')
  config.num_devices = 1
  config.eval_every = 0  # One evaluator to compile; the last checkpoint is tested.
  config.checkpoint_every = 60
  config.eval_episodes, config.eval_batch_size = 50, 25
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['test_accuracy'] > 0.65, results
  losses = [r['train/loss'] for r in history.read(str(tmp_path)) if 'train/loss' in r]
  assert losses[-1] < losses[0] - 0.05, losses
  state = trained_state(config, str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
