"""BatchNorm with a hand-written backward pass whose reductions are matrix products.

Why not `flax.linen.BatchNorm`: on XLA's CPU backend its per-channel reductions
(over every axis but the channels, in training and in the backward pass) ran
far slower than the convolutions they follow. EGNN's 84x84 Conv-4 on 150 images,
forward and backward, took 3.34 s with `nn.BatchNorm` and 1.05 s with no
normalisation at all. Here each reduction is a product with a vector of ones
(XLA's multi-threaded matrix path), the variance is computed from centred values
(two passes, no `E[x^2] - E[x]^2` cancellation), and the backward pass is the
closed form, one elementwise pass over the input: 1.50 s, and 1.33 s fused with
the max-pool (`experiments/microbench.py --cases=batchnorm`; README.md,
Benchmark). The values match `nn.BatchNorm` to float32 rounding (about 1e-5
relative; `tests/test_batchnorm.py`).

The module keeps `nn.BatchNorm`'s variable names (`params/scale`, `params/bias`,
`batch_stats/mean`, `batch_stats/var`), its momentum convention and its
behaviour at initialisation (running averages untouched), so checkpoints written
with either load into the other.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _channel_sum(x: jax.Array, per_position: bool = False) -> jax.Array:
  """Sum over every axis but the last (and the first, if `per_position`), in
  float32, as a product with ones: `[C]`, or `[P, C]` for `x` of shape `[P, ..., C]`."""
  if per_position:
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    ones = jnp.ones((flat.shape[1],), flat.dtype)
    return jnp.einsum('pmc,m->pc', flat, ones, preferred_element_type=jnp.float32)
  flat = x.reshape(-1, x.shape[-1])
  ones = jnp.ones((flat.shape[0],), flat.dtype)
  return jnp.dot(ones, flat, preferred_element_type=jnp.float32)


def _expand(stat: jax.Array, ndim: int) -> jax.Array:
  """A `[C]` statistic as is; a per-position `[P, C]` one shaped to broadcast
  against a `[P, ..., C]` array of rank `ndim`."""
  if stat.ndim == 1:
    return stat
  return stat.reshape(stat.shape[:1] + (1,) * (ndim - 2) + stat.shape[-1:])


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def batch_statistics(x: jax.Array, axis_name=None,
                     per_position: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-channel mean and biased variance over all axes but the last (and `axis_name`).

  With `per_position`, the leading axis of `x` is kept: position `p`'s statistics
  come from `x[p]` alone (and, over `axis_name`, from position `p` of every call).

  Returns:
    `(mean, var, count)`, float32, `[C]` or `[P, C]`; `count` is the number of
    values per channel (per position) summed over the named axes.
  """
  rows = x.shape[0] if per_position else 1
  count = _psum(jnp.asarray(x.size // (x.shape[-1] * rows), jnp.float32), axis_name)
  mean = _psum(_channel_sum(x, per_position), axis_name) / count
  centred = x.astype(jnp.float32) - _expand(mean, x.ndim)
  var = _psum(_channel_sum(centred * centred, per_position), axis_name) / count
  return mean, var, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize(x, scale, bias, axis_name, epsilon, per_position=False):
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` with the batch's own statistics.

  Args:
    x: `[..., C]` activations (float32 or bfloat16).
    scale, bias: `[C]` float32.
    axis_name: a vmap/pmap axis name (or tuple) to pool the statistics over, or None.
    epsilon: added to the variance.
    per_position: statistics per index of the leading axis (see `batch_statistics`).

  Returns:
    `(y, mean, var)`: `y` in `x.dtype`, and the float32 statistics it used.
  """
  return _normalize_fwd(x, scale, bias, axis_name, epsilon, per_position)[0]


def _normalize_fwd(x, scale, bias, axis_name, epsilon, per_position):
  mean, var, count = batch_statistics(x, axis_name, per_position)
  rstd = jax.lax.rsqrt(var + epsilon)
  a = scale * rstd
  y = x * _expand(a, x.ndim).astype(x.dtype) + _expand(bias - mean * a, x.ndim).astype(x.dtype)
  return (y.astype(x.dtype), mean, var), (x, scale, mean, rstd, count)


def _normalize_bwd(axis_name, epsilon, per_position, residuals, cotangents):
  del epsilon
  x, scale, mean, rstd, count = residuals
  g = cotangents[0]  # The statistics are outputs for the running averages only.
  dbias = _channel_sum(g, per_position)
  dscale = _channel_sum(g * (x - _expand(mean, x.ndim).astype(x.dtype)), per_position) * rstd
  dx = _input_gradient(g, x, scale, mean, rstd, count, dscale, dbias, axis_name)
  return dx, _positions_summed(dscale), _positions_summed(dbias)


def _positions_summed(cotangent: jax.Array) -> jax.Array:
  """A parameter's `[C]` cotangent from per-position sums `[P, C]` (or `[C]` as is)."""
  return cotangent.sum(0) if cotangent.ndim == 2 else cotangent


def _input_gradient(g, x, scale, mean, rstd, count, dscale, dbias, axis_name):
  """`a * (g - sum(g) / count - xhat * sum(g * xhat) / count)`, a = scale * rstd.

  `dscale` and `dbias` are this call's sums of `g * xhat` and `g` (per position,
  `[P, C]`, when the statistics are). The parameters' cotangents stay per call
  (the vmap and the pmap over the meta-batch add them up), but the input's
  gradient needs the sums over every call that shares the statistics, hence the
  psum here.
  """
  dscale, dbias = _psum((dscale, dbias), axis_name)
  a = scale * rstd
  # Written as g * a + x * c1 + c0: one elementwise pass.
  c1 = -a * rstd * dscale / count
  c0 = -a * dbias / count - c1 * mean
  n = x.ndim
  dx = (g * _expand(a, n).astype(x.dtype) + x * _expand(c1, n).astype(x.dtype)
        + _expand(c0, n).astype(x.dtype))
  return dx.astype(x.dtype)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _even(x: jax.Array) -> jax.Array:
  """`x` cropped to even sizes on the axes -3 and -2 (2x2 'VALID' pooling drops the rest)."""
  return x[..., : x.shape[-3] // 2 * 2, : x.shape[-2] // 2 * 2, :]


def _windows(x: jax.Array) -> jax.Array:
  """`[..., H, W, C]` (even H, W) -> `[..., H/2, 2, W/2, 2, C]`."""
  *batch, h, w, c = x.shape
  return x.reshape(*batch, h // 2, 2, w // 2, 2, c)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, 'VALID', over the axes -3 and -2, as a reshape and a max."""
  return _windows(_even(x)).max(axis=(-4, -2))


def _sign(a: jax.Array, dtype) -> jax.Array:
  # A window's maximum of `a * x + b` is `|a| * max(sign(a) * x) + b`: pooling can
  # come before the per-channel affine map, which then runs on a quarter of the values.
  return jnp.where(a < 0, -1.0, 1.0).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize_max_pool(x, scale, bias, axis_name, epsilon, per_position=False):
  """`max_pool_2x2(normalize(x, ...))` in fewer passes over `x`.

  The statistics are those of all of `x` (rows and columns that the 'VALID'
  pooling drops included), as with BatchNorm followed by pooling. Where a window
  has tied maxima, the gradient is shared equally among them, as the gradient of
  a reshape and a max is. In the backward pass the sums that BatchNorm needs are
  taken over the pooled gradient (the full-size gradient is zero off each
  window's maximum), and the input gradient is one elementwise pass.

  Returns:
    `(y, mean, var)`: `y` is `[..., H // 2, W // 2, C]` in `x.dtype`.
  """
  return _normalize_max_pool_fwd(x, scale, bias, axis_name, epsilon, per_position)[0]


def _normalize_max_pool_fwd(x, scale, bias, axis_name, epsilon, per_position):
  mean, var, count = batch_statistics(x, axis_name, per_position)
  rstd = jax.lax.rsqrt(var + epsilon)
  a = scale * rstd
  sign = _sign(scale, x.dtype)  # The sign of `a`: rstd > 0.
  pooled = max_pool_2x2(x * sign)
  n = x.ndim
  y = (pooled * _expand(jnp.abs(a), n).astype(x.dtype)
       + _expand(bias - mean * a, n).astype(x.dtype)).astype(x.dtype)
  return (y, mean, var), (x, pooled, sign, scale, mean, rstd, count)


def _normalize_max_pool_bwd(axis_name, epsilon, per_position, residuals, cotangents):
  del epsilon
  x, pooled, sign, scale, mean, rstd, count = residuals
  g = cotangents[0]  # [..., H // 2, W // 2, C]
  dbias = _channel_sum(g, per_position)
  # At a window's maximum x = sign * pooled: the centred sum needs the pooled values only.
  centred = sign * pooled - _expand(mean, x.ndim).astype(x.dtype)
  dscale = _channel_sum(g * centred, per_position) * rstd
  hit = (_windows(_even(x)) * sign == pooled[..., :, None, :, None, :]).astype(x.dtype)
  share = hit / hit.sum(axis=(-4, -2), keepdims=True)
  routed = (share * g[..., :, None, :, None, :]).reshape(_even(x).shape)
  pad = [(0, 0)] * (x.ndim - 3) + [(0, x.shape[-3] % 2), (0, x.shape[-2] % 2), (0, 0)]
  routed = jnp.pad(routed, pad)
  dx = _input_gradient(routed, x, scale, mean, rstd, count, dscale, dbias, axis_name)
  return dx, _positions_summed(dscale), _positions_summed(dbias)


normalize_max_pool.defvjp(_normalize_max_pool_fwd, _normalize_max_pool_bwd)


def reduce_window_max_pool_2x2(x: jax.Array) -> jax.Array:
  """The same pooling as `max_pool_2x2` as one `reduce_window` (faster forward on CPU)."""
  window = (1,) * (x.ndim - 3) + (2, 2, 1)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, 'VALID')


class BatchNorm(nn.Module):
  """Drop-in for the `nn.BatchNorm` features this library uses (channels last).

  Attributes:
    use_running_average: evaluation mode (normalise with the running averages).
    axis_name: axes to pool the training statistics over (see `backbones.batch_norm`).
    momentum: running average `r <- momentum * r + (1 - momentum) * batch`.
    epsilon: added to the variance.
    use_bias, use_scale: learn a shift and a scale.
    unbiased_running_var: update the running variance with the unbiased batch
      variance, `n / (n - 1)` times the biased one (PyTorch's rule), where `n`
      counts the values per channel over the call and the pooled axes.
    max_pool: follow the normalisation with a 2x2 max-pool (stride 2, 'VALID'),
      computed as `normalize_max_pool` in training and by pooling before the
      affine map in evaluation: the same values as BatchNorm then pooling, with
      fewer passes over the full-size input.
    per_position: in training, each index `p` of the leading (image) axis gets
      its own statistics, over `x[p]` and position `p` of every call on the
      named axes. That is what PyTorch code computes when it calls the network
      once per node position on the meta-batch (the official EGNN's
      embedding). The running averages then take the P updates such code makes,
      in position order: `r <- m^P r + sum_p (1 - m) m^(P - 1 - p) s_p`.
  """

  use_running_average: bool = False
  axis_name: Any = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_bias: bool = True
  use_scale: bool = True
  max_pool: bool = False
  unbiased_running_var: bool = False
  per_position: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = (self.param('scale', nn.initializers.ones, features, jnp.float32)
             if self.use_scale else jnp.ones(features, jnp.float32))
    bias = (self.param('bias', nn.initializers.zeros, features, jnp.float32)
            if self.use_bias else jnp.zeros(features, jnp.float32))
    if self.use_running_average:
      a = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      b = (bias - ra_mean.value * a).astype(x.dtype)
      if self.max_pool:
        sign = _sign(a, x.dtype)
        return reduce_window_max_pool_2x2(x * sign) * jnp.abs(a).astype(x.dtype) + b
      return x * a.astype(x.dtype) + b
    axis_name = None if self.is_initializing() else self.axis_name
    op = normalize_max_pool if self.max_pool else normalize
    y, mean, var = op(x, scale, bias, axis_name, self.epsilon, self.per_position)
    if not self.is_initializing():
      if self.unbiased_running_var:
        n = x.size // (x.shape[-1] * (x.shape[0] if self.per_position else 1))
        if axis_name is not None:
          n = n * jax.lax.psum(1, axis_name)
        var = var * (n / jnp.maximum(n - 1, 1))
      ra_mean.value = self._running_average(ra_mean.value, mean)
      ra_var.value = self._running_average(ra_var.value, var)
    return y

  def _running_average(self, running: jax.Array, batch: jax.Array) -> jax.Array:
    """One update with `[C]` statistics; P updates in order with `[P, C]` ones."""
    m = self.momentum
    if batch.ndim == 1:
      return m * running + (1 - m) * batch
    p = batch.shape[0]
    weights = (1 - m) * m ** jnp.arange(p - 1, -1, -1, dtype=jnp.float32)
    return m ** p * running + weights @ batch
