"""Embedding networks: BatchNorm fused with the max-pool that follows it."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models import backbones, batchnorm


def _bn_then_pool(x, scale, bias):
  """The unfused reference: flax's BatchNorm formula, then flax's max-pool."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = ((x - mean) ** 2).mean(axes)
  y = (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias
  flat = y.reshape((-1, *y.shape[-3:]))
  pooled = nn.max_pool(flat, (2, 2), strides=(2, 2))
  return pooled.reshape((*y.shape[:-3], *pooled.shape[-3:]))


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (2, 7, 5, 3), (3, 1, 6, 6, 2)])
def test_normalize_max_pool_equals_batchnorm_then_max_pool(shape):
  # Odd sizes drop the last row and column ('VALID'), which still count in the
  # statistics; a negative scale takes each window's minimum of x; leading axes are batch.
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(k[0], shape) * 3.0 + 1.0
  scale = jnp.array([1.5, -0.7, 0.4][: shape[-1]])
  bias = jax.random.normal(k[1], (shape[-1],))
  fused = lambda x, s, b: batchnorm.normalize_max_pool(x, s, b, None, 1e-5)[0]
  expected = jax.jit(_bn_then_pool)(x, scale, bias)
  np.testing.assert_allclose(jax.jit(fused)(x, scale, bias), expected, rtol=1e-5, atol=1e-5)
  weights = jax.random.normal(k[2], expected.shape)
  grad = lambda f: jax.jit(jax.grad(lambda *a: (f(*a) * weights).sum(), argnums=(0, 1, 2)))
  grads = grad(fused)(x, scale, bias)
  want = grad(_bn_then_pool)(x, scale, bias)
  for got, w in zip(grads, want, strict=True):
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)


def test_normalize_max_pool_by_hand_with_a_tie():
  # One channel, a 2x2 map [[1, 3], [3, 1]]: mean 2, variance 1 (epsilon 0), so the
  # normalised map is [[-1, 1], [1, -1]] and its maximum 1, reached twice.
  x = jnp.asarray(np.array([[1., 3.], [3., 1.]], np.float32).reshape(1, 2, 2, 1))
  fused = lambda x: batchnorm.normalize_max_pool(x, jnp.ones(1), jnp.zeros(1), None, 0.0)
  y, mean, var = jax.jit(fused)(x)
  assert (y.item(), mean.item(), var.item()) == (1.0, 2.0, 1.0)
  grad = jax.jit(jax.grad(lambda x: fused(x)[0].sum()))(x)
  # The two tied maxima share the gradient: d out / dx_j = 0.5 * sum over the tied i of
  # d xhat_i / dx_j = 0.5 * (1[j tied] - 1/2 - xhat_j / 2), which is 0 for every j. Sending
  # it all to the first maximum instead would give 0.5 and -0.5 at the two tied places.
  np.testing.assert_allclose(grad.reshape(2, 2), np.zeros((2, 2)), atol=1e-6)


def test_batchnorm_max_pool_module_in_evaluation_equals_the_unfused_layers():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 9, 3))
  variables = {'params': {'scale': jnp.array([1., -2., .5]), 'bias': jnp.array([.1, .2, .3])},
               'batch_stats': {'mean': jnp.array([.3, -.1, 0.]), 'var': jnp.array([2., .5, 1.])}}

  @jax.jit
  def fused_and_unfused(variables, x):
    fused = batchnorm.BatchNorm(use_running_average=True, max_pool=True).apply(variables, x)
    unfused = batchnorm.BatchNorm(use_running_average=True).apply(variables, x)
    return fused, nn.max_pool(unfused, (2, 2), strides=(2, 2))

  np.testing.assert_allclose(*fused_and_unfused(variables, x), rtol=1e-6, atol=1e-6)


def test_backbones_keep_their_parameter_names():
  # Checkpoints written before the fused BatchNorm load: the same tree of names.
  variables = jax.eval_shape(lambda: backbones.EGNNConv4().init(
    jax.random.PRNGKey(0), jnp.zeros((2, 84, 84, 3)), train=False))
  assert sorted(variables['params']) == ['BatchNorm_0', 'BatchNorm_1', 'BatchNorm_2',
                                         'BatchNorm_3', 'BatchNorm_4', 'Conv_0', 'Conv_1',
                                         'Conv_2', 'Conv_3', 'Dense_0']
  conv4 = jax.eval_shape(lambda: backbones.Conv4().init(
    jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)), train=False))
  assert sorted(conv4['batch_stats']['ConvBlock_0']['BatchNorm_0']) == ['mean', 'var']


def test_bfloat16_backbone_returns_float32_embeddings_with_float32_parameters():
  net = backbones.Conv4(dtype=jnp.bfloat16)
  x = jnp.ones((4, 28, 28, 1))
  variables = jax.jit(functools.partial(net.init, train=False))(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out, updates = jax.jit(functools.partial(net.apply, train=True, mutable=['batch_stats']))(
    variables, x)
  assert out.dtype == jnp.float32 and out.shape == (4, 64)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(updates))


def test_resnet12_shapes_and_parameter_count():
  net = backbones.ResNet12()
  variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((2, 84, 84, 3)),
                                              train=False))
  out = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((2, 84, 84, 3)), train=False), variables)
  assert out.shape == (2, 5 * 5 * 640)  # 84 -> 42 -> 21 -> 10 -> 5.
  # Per block: three 3x3 convs and a 1x1 shortcut (no biases), four BatchNorms.
  expected, c_in = 0, 3
  for c in (64, 160, 320, 640):
    expected += 9 * c_in * c + 9 * c * c * 2 + c_in * c + 4 * 2 * c
    c_in = c
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == expected  # 12.4M
  avg = backbones.get_backbone('resnet12_avgpool')
  out = jax.eval_shape(lambda v: avg.apply(v, jnp.zeros((2, 32, 32, 3)), train=False), variables)
  assert out.shape == (2, 640)


def test_residual_block_by_hand_in_evaluation():
  # With identity BatchNorms (running mean 0, var 1 - eps), the block is
  # maxpool(leaky(conv3(leaky(conv2(leaky(conv1 x)))) + conv1x1 x)).
  block = backbones.ResidualBlock(4)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
  variables = jax.jit(block.init, static_argnums=2)(jax.random.PRNGKey(1), x, False)
  stats = jax.tree.map(lambda v: v, variables['batch_stats'])
  for name in stats:
    stats[name] = {'mean': jnp.zeros(4), 'var': jnp.full(4, 1 - 1e-5)}
  params = variables['params']
  params = {k: ({'scale': jnp.ones(4), 'bias': jnp.zeros(4)} if k.startswith('BatchNorm') else v)
            for k, v in params.items()}
  out = jax.jit(block.apply, static_argnums=2)({'params': params, 'batch_stats': stats}, x, False)

  @jax.jit
  def by_hand(params, x):
    conv = lambda name, y, pad: jax.lax.conv_general_dilated(
      y, params[name]['kernel'], (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    leaky = lambda y: jnp.where(y > 0, y, 0.1 * y)
    h = leaky(conv('Conv_1', x, 'SAME'))
    h = leaky(conv('Conv_2', h, 'SAME'))
    h = conv('Conv_3', h, 'SAME')
    y = leaky(h + conv('Conv_0', x, 'VALID'))
    return y.reshape(1, 3, 2, 3, 2, 4).max(axis=(2, 4))

  np.testing.assert_allclose(out, by_hand(params, x), rtol=1e-5, atol=1e-5)


def test_drop_block_drops_whole_squares_and_rescales():
  x = jnp.ones((64, 10, 10, 3))
  out = jax.jit(backbones.drop_block, static_argnums=(1, 2))(x, 0.2, 3, jax.random.PRNGKey(0))
  dropped = np.asarray(out) == 0
  # Every dropped unit lies in a fully dropped 3x3 square.
  for n, i, j, c in zip(*np.nonzero(dropped[:8]), strict=True):
    assert any(dropped[n, a:a + 3, b:b + 3, c].all()
               for a in range(max(0, i - 2), min(i, 7) + 1)
               for b in range(max(0, j - 2), min(j, 7) + 1))
  rate = dropped.mean()
  assert 0.12 < rate < 0.22  # About `rate`, a little less where blocks overlap.
  np.testing.assert_allclose(np.asarray(out).sum(), x.size, rtol=1e-5)  # Rescaled: same sum.


@pytest.mark.parametrize('name, features', [('conv4', 8), ('resnet12', (8, 8, 16, 16))])
def test_remat_computes_the_same_values_and_gradients(name, features):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 20, 20, 3))
  plain = backbones.get_backbone(name, features=features)
  remat = backbones.get_backbone(name, features=features, remat=True)
  # Eager: a jitted init compiles for longer than its ops one by one.
  variables = plain.init(jax.random.PRNGKey(1), x, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(jax.eval_shape(
    functools.partial(remat.init, train=False), jax.random.PRNGKey(1), x))

  def loss(params, net):
    out, _ = net.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return (out ** 2).mean()

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  for a, b in zip(jax.tree.leaves(grad(variables['params'], plain)),
                  jax.tree.leaves(grad(variables['params'], remat)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_on_a_backbone_without_it_is_a_clear_error():
  from fsl_jax import config as config_lib

  config = config_lib.base_config()
  config.backbone, config.remat = 'egnn_conv4', True
  with pytest.raises(ValueError, match="'egnn_conv4' has no remat option.*resnet12"):
    backbones.from_config(config)


def _chunked_and_whole(chunk_size):
  # 3 episodes of 7 images, per-position BatchNorm statistics pooled over the episodes,
  # as `batchnorm_stats='per_position'` trains: chunks of 3 leave a remainder of 1.
  spec = backbones.BatchNormSpec(axis=backbones.EPISODES, per_position=True)
  whole = backbones.EGNNConv4(features=(8, 8, 8, 8), embed_dim=6, dropout=(0.0,) * 4,
                              bn_axis=spec)
  return backbones.in_chunks(whole, chunk_size), whole


def test_embedding_in_chunks_keeps_the_parameters_and_evaluates_the_same():
  chunked, whole = _chunked_and_whole(3)
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 21, 21, 3))
  init = lambda net: jax.eval_shape(functools.partial(net.init, train=False),
                                    jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, init(chunked)) == jax.tree.map(jnp.shape, init(whole))
  variables = whole.init(jax.random.PRNGKey(1), x, train=False)
  variables = {**variables, 'batch_stats': jax.tree.map(  # Running averages not 0 and 1.
    lambda v: v + jax.random.uniform(jax.random.PRNGKey(2), v.shape), variables['batch_stats'])}
  evaluate = jax.jit(lambda net: net.apply(variables, x, train=False), static_argnums=0)
  np.testing.assert_allclose(evaluate(chunked), evaluate(whole), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('chunk_size', [3, 7, 10])
def test_training_in_chunks_equals_the_whole_batch(chunk_size):
  # The outputs, the gradients and the running averages (P sequential updates, one
  # per position, carried from chunk to chunk in order) of the whole meta-batch at once.
  chunked, whole = _chunked_and_whole(chunk_size)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 21, 21, 3))
  variables = whole.init(jax.random.PRNGKey(1), x[0], train=False)

  @functools.partial(jax.jit, static_argnums=1)
  def loss_and_grad(params, net):
    def loss(params):
      apply = lambda x: net.apply({**variables, 'params': params}, x, train=True,
                                  mutable=['batch_stats'])
      out, updates = jax.vmap(apply, axis_name=backbones.EPISODES)(x)
      return (out ** 2).mean(), (out, updates)
    return jax.grad(loss, has_aux=True)(params)

  got, want = loss_and_grad(variables['params'], chunked), loss_and_grad(variables['params'],
                                                                        whole)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_embed_chunk_size_from_config_and_its_errors():
  from fsl_jax import config as config_lib

  config = config_lib.base_config()
  config.backbone, config.batchnorm_stats, config.embed_chunk_size = 'egnn_conv4', 'per_position', 5
  net = backbones.from_config(config)
  assert isinstance(net, backbones.EGNNConv4) and net.embed_chunk_size == 5 and net.loop_conv
  config.embed_chunk_size = -1
  with pytest.raises(ValueError, match='must be 0 .* or positive, got -1'):
    backbones.from_config(config)
  config.embed_chunk_size, config.batchnorm_stats = 5, 'episode'
  with pytest.raises(ValueError, match="needs batchnorm_stats='per_position'"):
    backbones.from_config(config)
  config.batchnorm_stats, config.backbone, config.remat = 'per_position', 'conv4', True
  with pytest.raises(ValueError, match='set remat=False'):
    backbones.from_config(config)
