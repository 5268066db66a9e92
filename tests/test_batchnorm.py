"""The fast BatchNorm against flax's and against the formula, values and gradients."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models import batchnorm


def _inputs(shape, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.normal(k[0], shape) * 2.0 + 5.0  # A large mean, as after a ReLU.
  c = shape[-1]
  return x, jax.random.normal(k[1], (c,)), jax.random.normal(k[2], (c,)), jax.random.normal(
    k[3], shape)


def _value_and_vjp(f, g, *args):
  """`f(*args)` and its vjp of the cotangent `g`, in one jitted call."""
  def run(g, *args):
    y, vjp = jax.vjp(f, *args)
    return y, *vjp(g)
  return jax.jit(run)(g, *args)


def test_normalize_by_hand():
  # One channel, values 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
  x = jnp.array([1., 2., 3., 6.]).reshape(2, 2, 1)
  y, mean, var = jax.jit(lambda x: batchnorm.normalize(x, jnp.array([2.]), jnp.array([1.]),
                                                        None, 0.0))(x)
  assert float(mean[0]) == pytest.approx(3.0)
  assert float(var[0]) == pytest.approx(3.5)
  expected = 2.0 * (np.array([1., 2., 3., 6.]) - 3.0) / np.sqrt(3.5) + 1.0
  np.testing.assert_allclose(np.asarray(y).ravel(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape', [(6, 5, 5, 4), (3, 7, 8), (40, 16)])
def test_normalize_and_its_gradients_match_the_formula_in_float64(shape):
  x, scale, bias, g = _inputs(shape)

  def formula(x, scale, bias):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = ((x - mean) ** 2).mean(axes)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

  as64 = lambda t: np.asarray(t, np.float64)
  want64 = _value_and_vjp(formula, *(jnp.asarray(as64(t)) for t in (g, x, scale, bias)))
  ours = _value_and_vjp(lambda x, s, b: batchnorm.normalize(x, s, b, None, 1e-5)[0], g, x,
                        scale, bias)
  for got, want in zip(ours, want64, strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * float(np.abs(want).max()))


def test_module_equals_flax_batchnorm_in_training_and_evaluation():
  x, _, _, g = _inputs((4, 6, 6, 3))
  ours = batchnorm.BatchNorm(momentum=0.9, epsilon=1e-5)
  flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)
  variables = jax.jit(functools.partial(flax_bn.init, use_running_average=False))(
    jax.random.PRNGKey(0), x)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # Non-trivial scale, bias, averages.
  assert jax.tree.structure(jax.eval_shape(ours.init, jax.random.PRNGKey(0), x)) == \
    jax.tree.structure(variables)

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def loss(module, params, use_running_average):
    def f(params):
      kwargs = {} if module is flax_bn else {}
      out, updates = module.clone(use_running_average=use_running_average).apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x, mutable=['batch_stats'],
        **kwargs)
      return jnp.sum(out * g), (out, updates)
    return jax.grad(f, has_aux=True)(params)

  for train in (True, False):
    (g1, (y1, u1)), (g2, (y2, u2)) = (loss(m, variables['params'], not train)
                                      for m in (ours, flax_bn))
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves((g1, u1)), jax.tree.leaves((g2, u2)), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_statistics_pool_over_a_named_vmap_axis():
  # BatchNorm under vmap with axis_name equals one call on all the examples.
  x, scale, bias, g = _inputs((3, 5, 4))

  def pooled(x, scale, bias):
    return jax.vmap(lambda e: batchnorm.normalize(e, scale, bias, 'e', 1e-5)[0],
                    axis_name='e')(x)

  def single(x, scale, bias):
    return batchnorm.normalize(x.reshape(15, 4), scale, bias, None, 1e-5)[0].reshape(3, 5, 4)

  y1, *grads1 = _value_and_vjp(pooled, g, x, scale, bias)
  y2, *grads2 = _value_and_vjp(single, g, x, scale, bias)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads1, grads2, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_keep_float32_statistics():
  x, scale, bias, _ = _inputs((8, 4, 4, 3))
  normalize = jax.jit(lambda x: batchnorm.normalize(x, scale, bias, None, 1e-5))
  y, mean, var = normalize(x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32
  y32 = normalize(x)[0]
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=0.05 * float(jnp.abs(y32).max()))


def test_initialisation_leaves_the_running_averages_alone():
  x, _, _, _ = _inputs((4, 3))
  variables = jax.jit(batchnorm.BatchNorm().init)(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(variables['batch_stats']['mean'], np.zeros(3))
  np.testing.assert_array_equal(variables['batch_stats']['var'], np.ones(3))


def test_parameter_gradients_over_devices_add_up_to_the_single_call_gradient():
  # Under pmap each device returns its own share of the parameters' gradient (the
  # train step averages them); only the input gradient uses the pooled sums.
  devices = jax.local_devices()[:4]
  x, scale, bias, g = _inputs((len(devices), 6, 3, 3, 2))

  def local(scale, bias, x, g):
    y = batchnorm.normalize_max_pool(x, scale, bias, 'd', 1e-5)[0]
    return jnp.sum(y * g)

  per_device = jax.pmap(jax.grad(local, argnums=(0, 1, 2)), axis_name='d',
                        in_axes=(None, None, 0, 0), devices=devices)
  pooled_grads = per_device(scale, bias, x, g[..., :1, :1, :])

  def single(scale, bias, x):
    merged = x.reshape(-1, *x.shape[2:])
    y = batchnorm.normalize_max_pool(merged, scale, bias, None, 1e-5)[0]
    return jnp.sum(y * g[..., :1, :1, :].reshape(-1, 1, 1, 2))

  want = jax.jit(jax.grad(single, argnums=(0, 1, 2)))(scale, bias, x)
  np.testing.assert_allclose(pooled_grads[0].sum(0), want[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pooled_grads[1].sum(0), want[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pooled_grads[2], want[2], rtol=1e-4, atol=1e-4)


def test_unbiased_running_variance_by_hand():
  # One channel, values 1, 2, 3, 6 split over a vmapped axis of 2 calls: n = 4,
  # mean 3, biased variance 14 / 4 = 3.5, unbiased 14 / 3. Momentum 0.9 from var 1.
  x = jnp.array([1., 2., 3., 6.]).reshape(2, 2, 1)
  for unbiased, want in ((False, 0.9 + 0.1 * 3.5), (True, 0.9 + 0.1 * 14 / 3)):
    bn = batchnorm.BatchNorm(axis_name='b', momentum=0.9, unbiased_running_var=unbiased)
    variables = jax.jit(bn.init)(jax.random.PRNGKey(0), x[0])
    _, updates = jax.jit(jax.vmap(lambda v, bn=bn, variables=variables: bn.apply(
      variables, v, mutable=['batch_stats']), axis_name='b'))(x)
    np.testing.assert_allclose(updates['batch_stats']['var'][0], [want], rtol=1e-6)
    np.testing.assert_allclose(updates['batch_stats']['mean'][0], [0.9 * 0 + 0.1 * 3], rtol=1e-6)


def test_config_field_reaches_every_batchnorm():
  from fsl_jax import config as config_lib
  from fsl_jax.models import backbones

  config = config_lib.base_config()
  config.batchnorm_stats, config.batchnorm_unbiased_running_var = 'meta_batch', True
  spec = backbones.bn_axis(config)
  assert spec == backbones.BatchNormSpec(('episodes', 'devices'), True)
  assert backbones.batch_norm(True, spec).unbiased_running_var
  assert backbones.batch_norm(True, spec).axis_name == ('episodes', 'devices')
  config.batchnorm_unbiased_running_var = False
  assert not backbones.batch_norm(True, backbones.bn_axis(config)).unbiased_running_var


def test_per_position_statistics_and_running_averages_by_hand():
  # Two calls (episodes) on a vmapped axis, three positions, one channel, no
  # spatial axes (BatchNorm1d): position p's statistics come from the two values
  # at p. Positions: (1, 3) mean 2 var 1; (10, 20) mean 15 var 25; (4, 8) mean 6
  # var 4. Normalised values are all -1 or +1 (epsilon 0). Running averages take
  # the three updates in order, momentum 0.9, from mean 0 and variance 1.
  x = jnp.array([[1., 10., 4.], [3., 20., 8.]])[..., None]  # [calls, positions, C]
  for unbiased, var_p in ((False, (1., 25., 4.)), (True, (2., 50., 8.))):
    bn = batchnorm.BatchNorm(axis_name='b', momentum=0.9, epsilon=0.0, per_position=True,
                             unbiased_running_var=unbiased)
    variables = jax.jit(bn.init)(jax.random.PRNGKey(0), x[0])
    y, updates = jax.jit(jax.vmap(lambda v, bn=bn, variables=variables: bn.apply(
      variables, v, mutable=['batch_stats']), axis_name='b'))(x)
    np.testing.assert_allclose(y[..., 0], [[-1., -1., -1.], [1., 1., 1.]], rtol=1e-6)
    stats = jax.tree.map(lambda t: t[0, 0], updates['batch_stats'])
    np.testing.assert_allclose(stats['mean'], .1 * .81 * 2 + .1 * .9 * 15 + .1 * 6, rtol=1e-6)
    want_var = .729 * 1 + .1 * .81 * var_p[0] + .1 * .9 * var_p[1] + .1 * var_p[2]
    np.testing.assert_allclose(stats['var'], want_var, rtol=1e-6)


@pytest.mark.parametrize('max_pool', [False, True])
def test_per_position_equals_one_call_per_position(max_pool):
  # What PyTorch code computes when it calls the network once per node position:
  # a plain BatchNorm applied to position p of every call, positions in order,
  # each update feeding the next. Values, running averages and gradients agree.
  x, _, _, _ = _inputs((3, 4, 6, 6, 2))  # [calls, positions, H, W, C]
  scale, bias = jnp.array([1.5, -0.7]), jnp.array([0.2, 0.4])
  params = {'scale': scale, 'bias': bias}
  stats = {'mean': jnp.array([0.3, -0.1]), 'var': jnp.array([1.2, 0.8])}
  g = jax.random.normal(jax.random.PRNGKey(5), (3, 4, 3, 3, 2) if max_pool else x.shape)
  kwargs = dict(axis_name='b', momentum=0.9, max_pool=max_pool, unbiased_running_var=True)

  def per_position(params):
    bn = batchnorm.BatchNorm(per_position=True, **kwargs)
    y, upd = jax.vmap(lambda v: bn.apply({'params': params, 'batch_stats': stats}, v,
                                         mutable=['batch_stats']), axis_name='b')(x)
    return jnp.sum(y * g), (y, jax.tree.map(lambda t: t[0], upd['batch_stats']))

  def sequential(params):
    bn = batchnorm.BatchNorm(**kwargs)
    running, ys = stats, []
    for p in range(x.shape[1]):
      y, upd = jax.vmap(lambda v, running=running: bn.apply(
        {'params': params, 'batch_stats': running}, v, mutable=['batch_stats']),
                        axis_name='b')(x[:, p])
      running = jax.tree.map(lambda t: t[0], upd['batch_stats'])
      ys.append(y)
    y = jnp.stack(ys, axis=1)
    return jnp.sum(y * g), (y, running)

  value_and_grad = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))
  (_, (y1, s1)), g1 = value_and_grad(per_position)(params)
  (_, (y2, s2)), g2 = value_and_grad(sequential)(params)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  for tree1, tree2 in ((s1, s2), (g1, g2)):
    for k in tree1:
      np.testing.assert_allclose(tree1[k], tree2[k], rtol=1e-5, atol=1e-5)
  input_grad = lambda f: jax.jit(jax.grad(f))(x)
  dx1 = input_grad(lambda x: jnp.sum(jax.vmap(lambda v: batchnorm.BatchNorm(
    per_position=True, **kwargs).apply({'params': params, 'batch_stats': stats}, v,
                                       mutable=['batch_stats'])[0], axis_name='b')(x) * g))
  dx2 = input_grad(lambda x: sum(jnp.sum(jax.vmap(lambda v: batchnorm.BatchNorm(**kwargs).apply(
    {'params': params, 'batch_stats': stats}, v, mutable=['batch_stats'])[0],
                                                 axis_name='b')(x[:, p]) * g[:, p])
                                 for p in range(x.shape[1])))
  np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-5)


def test_per_position_config_reaches_the_embedding_only():
  from fsl_jax import config as config_lib
  from fsl_jax.models import backbones

  config = config_lib.base_config()
  config.batchnorm_stats = 'per_position'
  assert backbones.batch_norm(True, backbones.bn_axis(config)).per_position
  graph = backbones.batch_norm(True, backbones.bn_axis(config, embedding=False))
  assert not graph.per_position and graph.axis_name == ('episodes', 'devices')
