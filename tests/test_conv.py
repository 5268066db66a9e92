"""`conv.conv_general_dilated`: lax's convolution with a loop-friendly backward pass."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fsl_jax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax(x, w, padding):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)


def _ours(x, w, padding):
  return conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)


def _inputs(x_shape, w_shape, dtype=jnp.float32):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(kx, x_shape).astype(dtype),
          (jax.random.normal(kw, w_shape) * 0.3).astype(dtype), kg)


def _value_and_grads(fn, x, w, padding, key):
  """The output and (dx, dw) of `sum(fn(x, w) * t)` for a random cotangent `t`."""
  out_shape = jax.eval_shape(lambda: fn(x, w, padding)).shape
  t = jax.random.normal(key, out_shape)
  loss = lambda x, w: (fn(x, w, padding).astype(jnp.float32) * t).sum()
  return jax.jit(lambda x, w: (fn(x, w, padding), *jax.grad(loss, argnums=(0, 1))(x, w)))(x, w)


@pytest.mark.parametrize('w_shape, padding', [
  ((3, 3, 4, 5), 'SAME'), ((3, 3, 4, 5), 'VALID'), ((1, 1, 4, 5), 'SAME'),
  ((2, 3, 4, 5), 'SAME'), ((3, 3, 4, 5), ((2, 0), (0, 1)))])
def test_values_and_gradients_equal_lax(w_shape, padding):
  # Even and asymmetric windows and explicit padding exercise the input gradient's pads.
  x, w, key = _inputs((3, 7, 6, 4), w_shape)
  for got, want in zip(_value_and_grads(_ours, x, w, padding, key),
                       _value_and_grads(_lax, x, w, padding, key), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_inside_a_loop_equal_lax_and_compile_to_the_canonical_form():
  # Inside `lax.map`, XLA's CPU backend keeps lax's weight gradient as a convolution
  # over the batch (`f01b_i01o->01bf`), which it runs as a naive loop nest, 50x slower;
  # every convolution of ours is the one form its fast kernels take.
  x, w, key = _inputs((2, 3, 9, 9, 4), (3, 3, 4, 6))
  t = jax.random.normal(key, (2, 3, 9, 9, 6))

  def grads(fn):
    loss = lambda x, w: lax.map(lambda xt: (fn(xt[0], w, 'SAME') * xt[1]).sum(), (x, t)).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  for got, want in zip(grads(_ours)(x, w), grads(_lax)(x, w), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  hlo = grads(_ours).lower(x, w).compile().as_text()
  assert set(re.findall(r'dim_labels=([\w>-]+)', hlo)) == {'b01f_01io->b01f'}


def test_bfloat16_gradients_stay_close_to_float32():
  x, w, key = _inputs((4, 10, 10, 8), (3, 3, 8, 16))
  _, dx32, dw32 = _value_and_grads(_ours, x, w, 'SAME', key)
  out, dx, dw = _value_and_grads(_ours, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                 'SAME', key)
  assert out.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  # The weight gradient sums 400 products in float32 whatever the dtype: the error is
  # the inputs' bf16 rounding (2^-9 relative) plus one rounding of the result.
  rel = lambda a, b: float(jnp.abs(a.astype(jnp.float32) - b).max() / jnp.abs(b).max())
  assert rel(dw, dw32) < 1e-2 and rel(dx, dx32) < 2e-2


@pytest.mark.parametrize('kwargs', [
  {'window_strides': (2, 2)}, {'rhs_dilation': (2, 2)},
  {'lhs_dilation': (2, 1), 'padding': ((1, 1), (1, 1))},
  {'feature_group_count': 2}, {'dimension_numbers': ('NCHW', 'OIHW', 'NCHW')}])
def test_other_convolutions_go_to_lax_unchanged(kwargs):
  x, w, _ = _inputs((2, 8, 8, 4), (3, 3, 2, 6) if 'feature_group_count' in kwargs
                    else (3, 3, 4, 6))
  if 'dimension_numbers' in kwargs:
    x, w = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
  args = {'window_strides': (1, 1), 'padding': 'SAME', 'dimension_numbers': NHWC, **kwargs}
  jaxpr = str(jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(x, w, **args))(x, w))
  assert 'custom_vjp' not in jaxpr and 'conv_general_dilated' in jaxpr
  np.testing.assert_array_equal(conv.conv_general_dilated(x, w, **args),
                                lax.conv_general_dilated(x, w, **args))


def test_conv_module_has_nn_conv_parameters_and_values():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
  ours, theirs = conv.Conv(4, (3, 3), use_bias=False), nn.Conv(4, (3, 3), use_bias=False)
  variables = theirs.init(jax.random.PRNGKey(2), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(2), x)) == jax.tree.map(
    jnp.shape, variables)
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                             rtol=1e-6, atol=1e-6)
