"""A dense layer whose kernel gradient is computed as `(g^T x)^T`.

Why not `flax.linen.Dense`: inside EGNN's scanned graph layers, XLA's CPU backend
computed the kernel gradient `x^T g` of the edge MLP by first writing the
full-size output gradient `g` transposed, which took about as long as the
matrix products themselves. Contracting the other way round, `(g^T x)^T`, gives
the same values without that copy: the 3 graph layers' forward and backward on
100 non-transductive graphs took 1.6 s instead of 2.8 s (README.md, Benchmark;
`experiments/microbench.py --cases=graph_profile`).

The module keeps `nn.Dense`'s variable names (`kernel`, `bias`) and initialisers,
so checkpoints written with either load into the other.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`x @ kernel` for `x: [..., K]`, `kernel: [K, N]`."""
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, g):
  x, kernel = residuals
  flat_x = x.reshape(-1, x.shape[-1])
  flat_g = g.reshape(-1, g.shape[-1])
  kernel_grad = jax.lax.dot_general(flat_g, flat_x, (((0,), (0,)), ((), ()))).T
  return g @ kernel.T, kernel_grad.astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """`nn.Dense` over the last axis, computed in `dtype` (parameters stay float32)."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y
