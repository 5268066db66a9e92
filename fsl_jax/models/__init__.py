"""Few-shot methods; each lives in one module and registers itself."""

from fsl_jax.models.backbones import BACKBONES, Conv4, get_backbone
from fsl_jax.models.base import METHODS, FewShotMethod, MethodOutput, get_method, register

__all__ = [
  'BACKBONES', 'Conv4', 'FewShotMethod', 'METHODS', 'MethodOutput', 'get_backbone',
  'get_method', 'register',
]
