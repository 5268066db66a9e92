"""MAML: the inner loop by hand, first vs second order, BatchNorm's two modes, devices, learning."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import learning_test, load_config, trained_state
from test_configs import VARIANTS

from fsl_jax import config as config_lib
from fsl_jax import parallel
from fsl_jax.data import episodes
from fsl_jax.data.dataset import ClassMajorDataset
from fsl_jax.data.episodes import Episode, EpisodeSpec
from fsl_jax.models import maml
from fsl_jax.training import history, train

WAY, SHOT, QUERIES, SIZE = 3, 2, 4, 8
LR = 0.1
# The unit tests' computations are tiny; XLA's CPU optimisations only lengthen
# their compilations (about half the time of this file otherwise).
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0,
                                                    'xla_llvm_disable_expensive_passes': True})
# Two conv blocks of 4 filters on 8x8 images: the same code as the paper's four
# blocks (the network loops over the blocks it has), and shorter compilations.
SMALL = dict(filters=4, num_blocks=2, inner_lr=LR, inner_steps=2, test_inner_steps=3,
             head_init='xavier')


def _episode(seed=0):
  rng = np.random.default_rng(seed)
  support = rng.standard_normal((WAY * SHOT, SIZE, SIZE, 1)).astype(np.float32)
  labels = np.repeat(np.array([2, 0, 1], np.int32), SHOT)
  query = rng.standard_normal((QUERIES, SIZE, SIZE, 1)).astype(np.float32)
  query_labels = np.array([0, 1, 2, 1], np.int32)
  return support, labels, query, query_labels


def _model(**kwargs):
  return maml.MAML(**{**SMALL, **kwargs})


@pytest.fixture(scope='module')
def params():
  """The small models' parameters (one tree for every option), with BatchNorm's
  offsets away from 0, so that they matter."""
  support, labels, query, _ = _episode()
  init = _jit(lambda key: _model().init(key, support, labels, query, way=WAY, train=False))
  rng = np.random.default_rng(1)
  return {k: np.asarray(v) + (0.2 * rng.standard_normal(v.shape).astype(np.float32)
                              if 'offset' in k or 'bias' in k else 0)
          for k, v in init(jax.random.PRNGKey(0))['params'].items()}


def _support_loss(p, support, labels):
  """The official inner loss, written out: the sum of the cross-entropies over the shot."""
  logits = maml.network(p, support)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum() / SHOT


def _hand_adapted(params, support, labels, steps):
  """`steps` SGD steps of the conv kernels and the head (the official fast weights;
  not the BatchNorm offsets), each with its own explicit `jax.grad`."""
  p, losses = params, []
  fast = lambda k: k.endswith('_kernel') or k == 'head_bias'
  for _ in range(steps):
    losses.append(_support_loss(p, support, labels))
    grads = jax.grad(_support_loss)(p, support, labels)
    p = {k: p[k] - LR * grads[k] if fast(k) else p[k] for k in p}
  return p, jnp.stack(losses)


@pytest.mark.parametrize('stride', [1, 2])
def test_conv3x3_is_tensorflows_same_convolution(stride):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 8, 3)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
  want = jax.lax.conv_general_dilated(x, kernel, (stride, stride), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(maml.conv3x3(x, kernel, stride), want, rtol=1e-5, atol=1e-5)


def test_inner_loop_and_meta_gradients_by_hand(params):
  """The forward pass is two hand-written SGD steps (three at test time); the
  second-order meta-gradient is the derivative through them; the first-order one
  is the query loss's gradient at the adapted parameters taken as constants
  (checked with remat and unrolling on), and the two differ. Recomputing each
  inner step (`inner_remat`) leaves the second-order meta-gradient unchanged."""
  support, labels, query, query_labels = _episode()
  query_loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(
    logits, query_labels).mean()

  def model_loss(model, p):
    out = model.apply({'params': p}, support, labels, query, way=WAY, train=True)
    return query_loss(out.logits), (out.logits, out.aux['support_losses'])

  def hand_loss(p):
    adapted, losses = _hand_adapted(p, support, labels, steps=2)
    logits = maml.network(adapted, query)
    return query_loss(logits), (logits, losses, adapted)

  def everything(p):  # One compilation.
    grad = lambda f: jax.grad(f, has_aux=True)(p)
    second, (logits, losses) = grad(functools.partial(model_loss, _model()))
    first_model = _model(first_order=True, inner_remat=True, scan_unroll=2)
    first, (first_logits, _) = grad(functools.partial(model_loss, first_model))
    remat, _ = grad(functools.partial(model_loss, _model(inner_remat=True)))
    by_hand, (hand_logits, hand_losses, adapted) = grad(hand_loss)
    at_adapted = jax.grad(lambda a: query_loss(maml.network(a, query)))(adapted)
    evaluated = _model().apply({'params': p}, support, labels, query, way=WAY, train=False)
    three = maml.network(_hand_adapted(p, support, labels, steps=3)[0], query)
    return dict(second=second, remat=remat, logits=logits, losses=losses, first=first,
                first_logits=first_logits, by_hand=by_hand, hand_logits=hand_logits,
                hand_losses=hand_losses, at_adapted=at_adapted, evaluated=evaluated.logits,
                evaluated_steps=evaluated.aux['support_losses'], three=three)

  r = _jit(everything)(params)
  np.testing.assert_allclose(r['logits'], r['hand_logits'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(r['losses'], r['hand_losses'], rtol=1e-5)
  assert r['hand_losses'][1] < r['hand_losses'][0]  # The steps descend.
  chex.assert_trees_all_close(r['second'], r['by_hand'], rtol=1e-3, atol=1e-6)
  chex.assert_trees_all_close(r['remat'], r['second'], rtol=1e-5, atol=1e-7)  # Recomputed.
  np.testing.assert_allclose(r['first_logits'], r['hand_logits'], rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(r['first'], r['at_adapted'], rtol=1e-3, atol=1e-6)
  norm = lambda tree: np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree)))
  difference = norm(jax.tree.map(np.subtract, r['second'], r['first']))
  assert difference > 0.05 * norm(r['second'])
  # Evaluation (`train=False`) runs test_inner_steps = 3.
  assert r['evaluated_steps'].shape == (3,)
  np.testing.assert_allclose(r['evaluated'], r['three'], rtol=1e-4, atol=1e-5)


def test_anil_adapts_the_head_on_fixed_features(params):
  support, labels, query, _ = _episode()
  model = _model(adapt='head')

  def by_hand(p):
    features, query_features = maml.body(p, support), maml.body(p, query)
    head = {k: p[k] for k in maml.HEAD}
    for _ in range(2):
      grads = jax.grad(lambda h: optax.softmax_cross_entropy_with_integer_labels(
        maml.head(h, features), labels).sum() / SHOT)(head)
      head = {k: head[k] - LR * grads[k] for k in head}
    return maml.head(head, query_features)

  logits = _jit(lambda p: model.apply({'params': p}, support, labels, query, way=WAY,
                                         train=True).logits)(params)
  np.testing.assert_allclose(logits, _jit(by_hand)(params), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('transductive', [False, True])
def test_queries_affect_each_other_only_when_transductive(params, transductive):
  support, labels, query, query_labels = _episode()
  model = _model(transductive=transductive)
  variables = {'params': params}
  logits = _jit(lambda e: train.apply_method(model, variables, e, WAY, train=False).logits)
  episode = Episode(support, labels, query, query_labels, np.zeros((0, SIZE, SIZE, 1)),
                    np.zeros(0, np.int32))
  changed = query.copy()
  changed[1] = 2.0 * changed[1] + 1.0
  a = np.asarray(logits(episode))
  b = np.asarray(logits(episode.replace(query_images=changed)))
  others = np.arange(QUERIES) != 1
  assert not np.allclose(a[1], b[1])
  if transductive:  # The query batch's statistics: every query moves.
    assert np.abs(a[others] - b[others]).max() > 1e-3
  else:  # The supports' statistics: no other query moves.
    np.testing.assert_allclose(a[others], b[others], rtol=1e-5, atol=1e-6)
  # Query labels never reach the forward pass.
  np.testing.assert_array_equal(a, logits(episode.replace(query_labels=query_labels[::-1])))


def test_every_variant_loads_and_builds():
  for name in ('maml_omniglot', 'maml_mini_imagenet'):
    for variant in VARIANTS[name]:
      config = load_config(name, variant)
      config.num_devices = 1
      config, model = train.build(config)
      assert isinstance(model, maml.MAML) and config.test_way == config.way, variant
      assert model.first_order == ('firstorder' in variant), variant
      assert model.transductive == ('nontransductive' not in variant), variant
  mini = load_config('maml_mini_imagenet', '5way5shot')
  assert (mini.filters, mini.downsample, mini.inner_lr, mini.query) == (32, 'max_pool', 0.01, 15)
  omniglot = load_config('maml_omniglot', '20way1shot')
  assert (omniglot.meta_batch_size, omniglot.inner_lr, omniglot.inner_steps) == (16, 0.1, 5)
  with pytest.raises(ValueError, match='Unknown variant'):
    load_config('maml_omniglot', '5way1shot-secondorder')


@pytest.mark.parametrize('overrides, message', [
  ({'downsample': 'avg'}, "downsample must be one of \\('stride', 'max_pool'\\)"),
  ({'adapt': 'body'}, "adapt must be one of \\('all', 'head'\\)"),
  ({'inner_steps': 0}, 'inner_steps must be an integer of at least 1'),
  ({'inner_lr': -0.1}, 'inner_lr must be positive'),
  ({'scan_unroll': 0}, 'scan_unroll must be an integer of at least 1'),
  ({'filters': True}, 'filters must be an integer of at least 1, got True'),
  ({'embed_chunk_size': 5}, 'leave embed_chunk_size=0'),
  ({'test_way': 20}, 'test_way \\(20\\) must equal way \\(5\\)'),
  ({'batchnorm_stats': 'meta_batch'}, 'keeps no running statistics'),
  ({'remat': True}, 'set inner_remat=True'),
  ({'compute_dtype': 'bfloat16'}, 'float32 only'),
  ({'inner_step': 3}, "Unknown config field 'inner_step'.*Did you mean 'inner_steps'"),
])
def test_bad_configs_are_clear_errors(overrides, message):
  config = load_config('maml_omniglot', 'tiny')
  with config.unlocked():
    config.update(overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    train.build(config)


def test_four_devices_equal_one_device(params):
  """Two SGD steps (see tests/test_training.py) on 4 episodes on 4 devices and on 1,
  then 6 evaluation episodes, on 8x8 images of 5 random classes: the small model
  keeps the four compilations short. Every parameter moves, the BatchNorm offsets
  too, which the inner loop does not adapt: the meta-gradient reaches them all."""
  rng = np.random.default_rng(2)
  dataset = ClassMajorDataset(rng.integers(0, 256, (5, 4, SIZE, SIZE, 1), np.uint8),
                              tuple(str(c) for c in range(5)))
  spec, model = EpisodeSpec(WAY, SHOT, 1), _model()
  state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                                  batch_stats={}, train_key=jax.random.PRNGKey(1))
  results = {}
  for n in (1, 4):
    devices = jax.local_devices()[:n]
    source = episodes.DeviceEpisodes(dataset, spec, devices=devices)
    step = jax.pmap(functools.partial(train.train_step, model=model, source=source, spec=spec,
                                      per_device=4 // n), axis_name=train.AXIS, devices=devices)
    p_state = parallel.replicate(state, devices)
    for _ in range(2):
      p_state, metrics = step(p_state, source.step_inputs())
    evaluate = train.Evaluator(model, source, num_episodes=6, seed=0, per_device=2)
    summary, loss = evaluate({'params': p_state.params, 'batch_stats': {}})
    results[n] = (parallel.unreplicate(p_state).params, parallel.unreplicate(metrics),
                  summary.accuracy, loss)
  assert jax.local_device_count() == 4
  chex.assert_trees_all_close(results[1], results[4], rtol=1e-4, atol=1e-5)
  moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), results[1][0], params)
  assert min(jax.tree.leaves(moved)) > 1e-5, moved


@pytest.mark.slow
def test_tiny_maml_learns_omniglot(tmp_path, data_dir):
  """Second-order MAML, 100 steps of 4 five-way 1-shot episodes. Chance is 20%, and
  the untrained network reaches about 50% from its 3 test-time inner steps alone,
  so the bar is meta-learning, not adaptation (64.5 +- 3.1% on 60 test episodes
  when written)."""
  config = learning_test(load_config('maml_omniglot', 'tiny'))
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['test_accuracy'] - results['test_ci95'] > 0.58, results
  accuracy = [r['train/accuracy'] for r in history.read(str(tmp_path)) if 'train/accuracy' in r]
  assert accuracy[-1] > accuracy[0] + 0.1, accuracy  # Post-update query accuracy rises.
  state = trained_state(config, str(tmp_path))
  assert int(state.step) == 100
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
