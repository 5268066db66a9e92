"""A convolution whose weight gradient XLA's CPU backend runs fast inside loops.

`lax.conv_general_dilated`'s weight gradient is itself a convolution, with the
batch as its reduction axis (`dim_labels=f01b_i01o->01bf` in HLO). At the top
level of a program, XLA's CPU backend rewrites it into the one form its Eigen
kernels run (`b01f_01io->b01f`, with explicit transposes). Inside a `while`
loop (`lax.scan`, `lax.map`, `nn.scan`) it does not, and the convolution falls
back to a naive loop nest: on the project's 2-core CPU (AMD EPYC, jaxlib 0.10.2),
the weight gradient of a 3x3, 64-channel convolution on 6 chunks of 20 28x28
maps took 6.9 s inside `lax.map` against 0.139 s unrolled, and 0.100 s inside
`lax.map` with this function (`python experiments/microbench.py
--cases=conv_in_loop`, output in `experiments/results/microbench_cpu.txt`).

`conv_general_dilated` here computes the same forward pass, and a backward pass
that writes both gradients in that canonical form itself, so they are fast
anywhere: the embedding in chunks (`backbones.in_chunks`) scans the backbone.
Its values and gradients equal lax's to float rounding, and every convolution
of its compiled backward pass inside a loop is `b01f_01io->b01f`
(`tests/test_conv.py`). Only 2-D NHWC/HWIO
convolutions with unit strides and dilations and one feature group take this
path; anything else goes to `lax.conv_general_dilated` unchanged. Reverse mode
only (a `jax.custom_vjp`): no `jax.jvp` through it.

`Conv` is `nn.Conv` with this function: the same parameters, names and
initialisers, so checkpoints do not change.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_LAYOUT = ('NHWC', 'HWIO', 'NHWC')


def _explicit_pads(padding, spatial, window):
  """`padding` ('SAME', 'VALID' or pairs) as a tuple of (low, high) pairs."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(spatial, window, (1,) * len(window), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, pads, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_LAYOUT,
                                  precision=precision)


def _conv_fwd(x, kernel, pads, precision):
  return _conv(x, kernel, pads, precision), (x, kernel)


def _conv_bwd(pads, precision, residuals, g):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  # The input gradient: the output gradient convolved with the flipped kernel, its
  # in and out channels swapped by an explicit transpose into HWIO (JAX's transpose
  # rule leaves the kernel as `01oi`, which XLA likewise only rewrites outside loops).
  flipped = jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2))
  (top, bottom), (left, right) = pads
  dx = lax.conv_general_dilated(
    g, flipped, (1, 1), ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
    dimension_numbers=_LAYOUT, precision=precision).astype(x.dtype)
  # The weight gradient [kh, kw, C, F]: the images with channels as the batch,
  # [C, H, W, B], convolved with the output gradient as a [Ho, Wo, B, F] kernel.
  # Summed in float32 whatever the compute dtype (XLA's CPU backend computes a
  # bfloat16 convolution in float32 anyway).
  x_t = jnp.transpose(x, (3, 1, 2, 0)).astype(jnp.float32)
  g_kernel = jnp.transpose(g, (1, 2, 0, 3)).astype(jnp.float32)
  dk = lax.conv_general_dilated(x_t, g_kernel, (1, 1), pads, dimension_numbers=_LAYOUT,
                                precision=precision)  # [C, kh, kw, F]
  return dx, jnp.transpose(dk, (1, 2, 0, 3)).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_nhwc_hwio(dimension_numbers, lhs, rhs) -> bool:
  if dimension_numbers is None:
    return False
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)
  try:
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  except (TypeError, ValueError):
    return False
  return given == expected


def _ones(v) -> bool:
  return v is None or all(int(s) == 1 for s in (v if not isinstance(v, int) else (v,)))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with the fast weight gradient where it applies."""
  if (lhs.ndim == 4 and _ones(window_strides) and _ones(lhs_dilation) and _ones(rhs_dilation)
      and feature_group_count == 1 and batch_group_count == 1
      and preferred_element_type is None and _is_nhwc_hwio(dimension_numbers, lhs, rhs)):
    pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2])
    return _conv(lhs, rhs, pads, precision)
  return lax.conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
    batch_group_count=batch_group_count, precision=precision,
    preferred_element_type=preferred_element_type)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
