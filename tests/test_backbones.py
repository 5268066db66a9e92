"""Embedding networks: BatchNorm fused with the max-pool that follows it."""

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
  expected = _bn_then_pool(x, scale, bias)
  np.testing.assert_allclose(fused(x, scale, bias), expected, rtol=1e-5, atol=1e-5)
  weights = jax.random.normal(k[2], expected.shape)
  grads = jax.grad(lambda *a: (fused(*a) * weights).sum(), argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(lambda *a: (_bn_then_pool(*a) * weights).sum(), argnums=(0, 1, 2))(
    x, scale, bias)
  for got, w in zip(grads, want, strict=True):
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)


def test_normalize_max_pool_by_hand_with_a_tie():
  # One channel, a 2x2 map [[1, 3], [3, 1]]: mean 2, variance 1 (epsilon 0), so the
  # normalised map is [[-1, 1], [1, -1]] and its maximum 1, reached twice.
  x = jnp.array([[1., 3.], [3., 1.]]).reshape(1, 2, 2, 1)
  y, mean, var = batchnorm.normalize_max_pool(x, jnp.ones(1), jnp.zeros(1), None, 0.0)
  assert (y.item(), mean.item(), var.item()) == (1.0, 2.0, 1.0)
  grad = jax.grad(lambda x: batchnorm.normalize_max_pool(x, jnp.ones(1), jnp.zeros(1), None,
                                                         0.0)[0].sum())(x)
  # The two tied maxima share the gradient: d out / dx_j = 0.5 * sum over the tied i of
  # d xhat_i / dx_j = 0.5 * (1[j tied] - 1/2 - xhat_j / 2), which is 0 for every j. Sending
  # it all to the first maximum instead would give 0.5 and -0.5 at the two tied places.
  np.testing.assert_allclose(grad.reshape(2, 2), np.zeros((2, 2)), atol=1e-6)


def test_batchnorm_max_pool_module_in_evaluation_equals_the_unfused_layers():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 9, 3))
  variables = {'params': {'scale': jnp.array([1., -2., .5]), 'bias': jnp.array([.1, .2, .3])},
               'batch_stats': {'mean': jnp.array([.3, -.1, 0.]), 'var': jnp.array([2., .5, 1.])}}
  fused = batchnorm.BatchNorm(use_running_average=True, max_pool=True).apply(variables, x)
  unfused = batchnorm.BatchNorm(use_running_average=True).apply(variables, x)
  np.testing.assert_allclose(fused, nn.max_pool(unfused, (2, 2), strides=(2, 2)), rtol=1e-6,
                             atol=1e-6)


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
  variables = net.init(jax.random.PRNGKey(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out, updates = net.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.dtype == jnp.float32 and out.shape == (4, 64)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(updates))
