"""Embedding networks: the pooling they share."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models import backbones


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (2, 7, 5, 3), (4, 2, 21, 21, 2)])
def test_max_pool_2x2_equals_flax_max_pool(shape):
  # Odd sizes drop the last row and column ('VALID'); leading axes are batch axes.
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  flat = x.reshape((-1, *shape[-3:]))
  expected = nn.max_pool(flat, (2, 2), strides=(2, 2)).reshape(
    (*shape[:-3], shape[-3] // 2, shape[-2] // 2, shape[-1]))
  weights = jax.random.normal(jax.random.PRNGKey(1), expected.shape)
  flax_grad = jax.grad(
    lambda x: (nn.max_pool(x, (2, 2), strides=(2, 2)) * weights.reshape(
      (-1, *expected.shape[-3:]))).sum())(flat)
  for train in (True, False):
    np.testing.assert_array_equal(backbones.max_pool_2x2(x, train=train), expected)
    # Without ties the gradient goes to each window's maximum, as select-and-scatter's does.
    def loss(x, train=train):
      return (backbones.max_pool_2x2(x, train=train) * weights).sum()
    grad = jax.grad(loss)(x)
    np.testing.assert_array_equal(grad, flax_grad.reshape(shape))


def test_max_pool_2x2_by_hand_with_a_tie():
  x = jnp.array([[1., 3.], [3., 2.]]).reshape(1, 2, 2, 1)
  assert backbones.max_pool_2x2(x, train=True).item() == 3.
  grad = jax.grad(lambda x: backbones.max_pool_2x2(x, train=True).sum())(x)
  # The two tied maxima share the gradient.
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0., 0.5], [0.5, 0.]])
