"""The benchmark's step profile: what it calls each XLA operation, and what it sums."""

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.training import benchmark


def _conv_loss(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.tanh(y) @ jnp.ones((8, 16)))


def _compiled():
  args = jnp.ones((3, 3, 4, 8)), jnp.ones((2, 10, 10, 4))
  return jax.jit(jax.grad(_conv_loss, argnums=(0, 1))).lower(*args).compile(), args


def test_op_kinds_tell_the_forward_input_gradient_and_weight_gradient_convolutions():
  compiled, _ = _compiled()
  kinds = benchmark.hlo_op_kinds(compiled.as_text())
  convolutions = sorted(kind for kind in kinds.values() if kind.startswith('convolution'))
  assert convolutions == ['convolution backward', 'convolution forward',
                          'convolution weight gradient'], kinds
  assert any(kind.startswith('dot') for kind in kinds.values()), kinds


def test_step_profile_sums_the_traced_operations_of_one_call():
  compiled, args = _compiled()
  profile = benchmark.step_profile(compiled, lambda: compiled(*args), top=3)
  assert profile['total_ms'] > 0
  kinds = dict((kind, ms) for kind, ms, _ in profile['by_kind'])
  assert {'convolution forward', 'convolution weight gradient'} <= set(kinds), profile
  np.testing.assert_allclose(sum(share for *_, share in profile['by_kind']), 1.0, atol=0.01)
  assert len(profile['top_ops']) == 3
  assert [row[2] for row in profile['top_ops']] == sorted(
    (row[2] for row in profile['top_ops']), reverse=True)
