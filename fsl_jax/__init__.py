"""fsl_jax: few-shot learning in JAX and Flax."""

from fsl_jax import xla_flags as _xla_flags

# Before any JAX backend starts: the project's XLA flags (see fsl_jax/xla_flags.py).
_xla_flags.apply()

__version__ = '0.1.0'
