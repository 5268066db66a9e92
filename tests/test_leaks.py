"""Nothing leaks, for every registered method and each of its modes.

A method added in one file is held to these with no test of its own: its
`<method>_omniglot.py:tiny` config builds it, and `queries_interact()` says
whether it is transductive. In evaluation and in training:

1. The labels of the queries (and of unlabelled supports) change no score.
2. The support labels do (so 1 is not vacuous).
3. In evaluation, changing one query's image changes that query's scores only,
   unless the method says its queries interact; then it changes the others' too,
   so the answer is checked both ways.
"""

import jax
import numpy as np
import pytest
from helpers import load_config

from fsl_jax.data.episodes import Episode
from fsl_jax.models import backbones, base
from fsl_jax.training import train

base.import_all_methods()
SHOT, QUERY, CHANGED = 2, 2, 3  # Per class; CHANGED: the query whose image changes.


def _cases():
  for name, method in sorted(base.METHODS.items()):
    modes = (True, False) if 'transductive' in method.CONFIG_DEFAULTS else (None,)
    for mode in modes:
      yield pytest.param(name, mode, id=name if mode is None else f'{name}-transductive-{mode}')


def _setup(name, transductive):
  config = load_config(f'{name}_omniglot', 'tiny')
  config.num_devices = 1
  if transductive is not None:
    config.transductive = transductive
  config, model = train.build(config)
  way, rng = config.way, np.random.default_rng(0)
  unlabeled = 1 if model.SUPPORTS_UNLABELED else 0
  # Images of a class share a pattern, so that the scores say something.
  patterns = rng.random((way, 28, 28, 1), np.float32)
  labels = lambda n: np.repeat(np.arange(way, dtype=np.int32), n)
  images = lambda n: (0.7 * patterns[labels(n)] +
                      0.3 * rng.random((way * n, 28, 28, 1))).astype(np.float32)
  episode = Episode(images(SHOT), labels(SHOT), images(QUERY), labels(QUERY),
                    images(unlabeled), labels(unlabeled))
  # Jitted, and the arithmetic below in NumPy: op by op, EGNN's transductive case
  # compiled 220 programs.
  init = jax.jit(lambda key, e: model.init(
    {'params': key, 'dropout': key}, e.support_images, e.support_labels, e.query_images,
    e.unlabeled_images, way=way, train=False))
  variables = jax.tree.map(np.asarray, init(jax.random.PRNGKey(0), episode))
  # Parameters moved from their initialisation (whose scores can be flat: every
  # edge at 0.5, every relation score equal), running statistics from 0 and 1.
  variables = {**variables, 'params': jax.tree.map(
    lambda x: x + (0.5 * np.std(x) + 0.05) * rng.standard_normal(x.shape, np.float32),
    variables['params'])}
  if 'batch_stats' in variables:
    variables = {**variables, 'batch_stats': jax.tree.map(
      lambda x: x + 0.1 * rng.random(x.shape, np.float32), variables['batch_stats'])}
  return model, variables, episode, way


def _scorers(model, variables, way):
  evaluate = jax.jit(lambda e: train.apply_method(model, variables, e, way, train=False).logits)
  # Training mode as the training loop runs it: BatchNorm may pool its statistics
  # over the meta-batch's named axes (one episode on one device here).
  step = jax.pmap(jax.vmap(lambda e: train.apply_method(
    model, variables, e, way, train=True, rng=jax.random.PRNGKey(1))[0].logits,
    axis_name=backbones.EPISODES), axis_name=train.AXIS, devices=jax.devices()[:1])
  training = lambda e: step(jax.tree.map(lambda x: x[None, None], e))[0, 0]
  return evaluate, training


@pytest.mark.parametrize('name,transductive', list(_cases()))
def test_no_label_leaks_and_queries_interact_only_if_the_method_says_so(name, transductive):
  model, variables, episode, way = _setup(name, transductive)
  evaluate, training = _scorers(model, variables, way)
  shift = lambda y: (y + 1) % way
  other_labels = episode.replace(query_labels=shift(episode.query_labels),
                                 unlabeled_labels=shift(episode.unlabeled_labels))
  relabelled = episode.replace(support_labels=shift(episode.support_labels))
  for run in (evaluate, training):
    scores = np.asarray(run(episode))
    assert scores.shape == (way * QUERY, way) and np.isfinite(scores).all()
    np.testing.assert_array_equal(run(other_labels), scores)
    assert not np.allclose(run(relabelled), scores, atol=1e-5)

  changed = episode.query_images.copy()
  changed[CHANGED] = 1.0 - changed[CHANGED]
  before, after = np.asarray(evaluate(episode)), np.asarray(evaluate(
    episode.replace(query_images=changed)))
  others = np.arange(way * QUERY) != CHANGED
  assert not np.allclose(before[CHANGED], after[CHANGED], atol=1e-5)
  if model.queries_interact():
    assert not np.allclose(before[others], after[others], atol=1e-5), (
      f'{name} says its queries interact, but another query changed no score.')
  else:
    np.testing.assert_allclose(after[others], before[others], rtol=1e-5, atol=1e-6,
                               err_msg=f'{name}: another query changed a score in evaluation.')


def test_every_method_is_covered():
  names = {p.values[0] for p in _cases()}
  assert names == set(base.METHODS) and len(names) >= 8, names
