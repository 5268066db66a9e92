# ruff: noqa: E501  (the HLO fixture below keeps XLA's long lines)
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


# A module as XLA prints it with YNNPACK fusions on (FSL_JAX_XLA_DEFAULTS=0): the
# convolutions sit inside fusions, named by what they call. (HLO lines are long.)
_FUSED_HLO = """
%fused_computation (param_0: f32[10,28,28,64], param_1: f32[3,3,64,64]) -> f32[10,28,28,64] {
  %param_0 = f32[10,28,28,64]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,64,64]{3,2,1,0} parameter(1)
  ROOT %convolution.2 = f32[10,28,28,64]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(f)/transpose(jvp())/conv_general_dilated"}
}

%fused_computation.1 (param_0.1: f32[64,28,28,10], param_1.1: f32[28,28,10,64]) -> f32[64,3,3,64] {
  %param_0.1 = f32[64,28,28,10]{3,2,1,0} parameter(0)
  %param_1.1 = f32[28,28,10,64]{3,2,1,0} parameter(1)
  ROOT %convolution.3 = f32[64,3,3,64]{3,2,1,0} convolution(%param_0.1, %param_1.1), window={size=28x28 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_computation.3 (param_0.5: f32[3,3,64,64]) -> f32[3,3,64,64] {
  %param_0.5 = f32[3,3,64,64]{3,2,1,0} parameter(0)
  %transpose.6 = f32[3,3,64,64]{2,3,1,0} transpose(%param_0.5), dimensions={0,1,3,2}
  ROOT %copy.4 = f32[3,3,64,64]{3,2,1,0} copy(%transpose.6)
}

%fused_computation.5 (param_0.11: f32[10,28,28,64]) -> f32[10,28,28,64] {
  %param_0.11 = f32[10,28,28,64]{3,2,1,0} parameter(0)
  ROOT %tanh.0 = f32[10,28,28,64]{3,2,1,0} tanh(%param_0.11), metadata={op_name="jit(f)/jvp()/tanh"}
}

ENTRY %main.1 (w.1: f32[3,3,64,64], x.1: f32[10,28,28,64]) -> f32[3,3,64,64] {
  %w.1 = f32[3,3,64,64]{3,2,1,0} parameter(0), metadata={op_name="w"}
  %x.1 = f32[10,28,28,64]{3,2,1,0} parameter(1), metadata={op_name="x"}
  %transpose_copy_fusion = f32[3,3,64,64]{3,2,1,0} fusion(%w.1), kind=kLoop, calls=%fused_computation.3
  %tanh_fusion = f32[10,28,28,64]{3,2,1,0} fusion(%x.1), kind=kLoop, calls=%fused_computation.5, metadata={op_name="jit(f)/jvp()/tanh"}
  %ynn_fusion = f32[10,28,28,64]{3,2,1,0} fusion(%tanh_fusion, %transpose_copy_fusion), kind=kCustom, calls=%fused_computation, metadata={op_name="jit(f)/transpose(jvp())/conv_general_dilated"}
  ROOT %ynn_fusion.1 = f32[64,3,3,64]{3,2,1,0} fusion(%x.1, %ynn_fusion), kind=kCustom, calls=%fused_computation.1
}
"""


def test_op_kinds_name_a_fusion_by_what_it_computes():
  kinds = benchmark.hlo_op_kinds(_FUSED_HLO)
  assert kinds['ynn_fusion'] == 'convolution backward'
  assert kinds['ynn_fusion.1'] == 'convolution weight gradient'
  assert kinds['transpose_copy_fusion'] == 'fusion: layout'
  assert kinds['tanh_fusion'] == 'fusion: elementwise/reduce forward'
