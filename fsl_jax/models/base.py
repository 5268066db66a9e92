"""The interface every few-shot method implements, and the method registry.

A method is a Flax linen module whose `__call__` is the per-episode pure function

    (support_images, support_labels, query_images, unlabeled_images; way, train)
        -> MethodOutput(logits [way * query, way], aux {...})

and whose `loss(outputs, episode)` returns `(scalar loss, {metric: scalar})`.
Query labels reach only `loss`, never `__call__`, so a forward pass cannot leak
them. The training loop vmaps both over the episodes of a meta-batch and pmaps
over devices; a method never sees the batch axis.

To add a method, write one file in `fsl_jax/models/` that defines the module,
decorates it with `@register('name')`, and gives a `from_config(config)`
classmethod; it is imported automatically, and `config.method = 'name'` selects it.
Config fields a method adds are declared in its `CONFIG_DEFAULTS`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import optax

from fsl_jax.data.episodes import Episode


@flax.struct.dataclass
class MethodOutput:
  """What a method's forward pass returns for one episode.

  Attributes:
    logits: `[num_queries, way]` class scores of the queries.
    aux: method-specific outputs (e.g. EGNN's per-layer edges), for the loss
      and for analysis.
  """

  logits: jax.Array
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)


class FewShotMethod(nn.Module):
  """Base class of the methods; see the module docstring for the contract."""

  # Config fields this method adds to the base config, with their defaults.
  CONFIG_DEFAULTS: ClassVar[dict[str, Any]] = {}
  # Whether the method can use unlabelled supports (semi-supervised episodes).
  SUPPORTS_UNLABELED: ClassVar[bool] = False
  # XLA flags this method runs fastest with on CPU, over the project's defaults
  # (`fsl_jax/xla_flags.py`); a value of None removes a default (XLA's own).
  XLA_CPU_FLAGS: ClassVar[dict[str, str | None]] = {}

  @classmethod
  def from_config(cls, config) -> FewShotMethod:
    raise NotImplementedError

  def queries_interact(self) -> bool:
    """Whether, in evaluation, a query's scores can depend on the other queries of
    its episode (transductive inference: one graph over all queries, or statistics
    of the query batch). False promises that each query is classified from the
    supports alone; `tests/test_leaks.py` holds every method to its answer."""
    return False

  def loss(self, outputs: MethodOutput, episode: Episode) -> tuple[jax.Array, dict]:
    """Cross-entropy of the query logits; methods with another loss override it."""
    loss = optax.softmax_cross_entropy_with_integer_labels(
      outputs.logits, episode.query_labels
    ).mean()
    return loss, {}


METHODS: dict[str, type[FewShotMethod]] = {}


def register(name: str):
  """Class decorator adding a method to `METHODS` under `name`."""

  def add(cls):
    if name in METHODS and METHODS[name] is not cls:
      raise ValueError(f'Method {name!r} is registered twice.')
    METHODS[name] = cls
    cls.NAME = name
    return cls

  return add


def import_all_methods() -> None:
  """Imports every module of `fsl_jax.models`, so that their methods register."""
  import fsl_jax.models as package

  for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f'{package.__name__}.{info.name}')


def get_method(name: str) -> type[FewShotMethod]:
  import_all_methods()
  if name not in METHODS:
    close = difflib.get_close_matches(name, METHODS, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'Unknown method {name!r}; known methods: {sorted(METHODS)}.{hint}')
  return METHODS[name]
