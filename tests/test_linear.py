"""The dense layer with the transposed kernel-gradient contraction equals nn.Dense."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.models import linear


def test_dense_equals_flax_dense_in_values_and_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5, 6))
  g = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 5, 7))
  variables = nn.Dense(7).init(jax.random.PRNGKey(2), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # A non-zero bias.
  assert jax.tree.structure(linear.Dense(7).init(jax.random.PRNGKey(2), x)) == \
    jax.tree.structure(variables)

  def loss(module):
    return lambda v, x: jnp.sum(module.apply(v, x) * g)

  for module in (linear.Dense(7), nn.Dense(7)):
    np.testing.assert_allclose(module.apply(variables, x), nn.Dense(7).apply(variables, x),
                               rtol=1e-6)
  ours = jax.grad(loss(linear.Dense(7)), argnums=(0, 1))(variables, x)
  want = jax.grad(loss(nn.Dense(7)), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_by_hand():
  # y = x @ k with x = [[1, 2]], g = [[3]]: dk = x^T g = [[3], [6]], dx = g k^T.
  x, k = jnp.array([[1., 2.]]), jnp.array([[0.5], [-1.]])
  dx, dk = jax.grad(lambda x, k: jnp.sum(linear.matmul(x, k) * 3.0), argnums=(0, 1))(x, k)
  np.testing.assert_allclose(dk, [[3.], [6.]])
  np.testing.assert_allclose(dx, [[1.5, -3.]])


def test_bfloat16_compute_keeps_float32_parameters():
  x = jnp.ones((2, 3))
  module = linear.Dense(4, dtype=jnp.bfloat16)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert module.apply(variables, x).dtype == jnp.bfloat16
  grads = jax.grad(lambda v: module.apply(v, x).astype(jnp.float32).sum())(variables)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(grads))
