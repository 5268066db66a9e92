"""Placing pytrees for `jax.pmap`: one axis name, so shardings never drift.

pmap's outputs are sharded over a mesh axis named after the pmap's `axis_name`.
Inputs placed with another axis name (flax's `replicate` uses its own) are a
different sharding to jit, and the second step would silently recompile.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import jax_utils

AXIS = 'devices'


def replicate(tree, devices=None):
  """Copies every array to each device, with a leading `[devices]` axis."""
  return jax_utils.replicate(tree, devices, axis_name=AXIS)


def shard(tree, devices=None):
  """Places arrays whose leading axis is `[devices]`, one slice per device."""
  mesh = jax.sharding.Mesh(np.array(devices or jax.local_devices()), (AXIS,))
  return jax.device_put(tree, jax.NamedSharding(mesh, jax.P(AXIS)))


def unreplicate(tree):
  """The first replica of a pmapped pytree.

  The first addressable shard holds either that replica alone (`[1, ...]`) or all
  of them (fully replicated, `[n, ...]`); its row 0 is the replica in both cases.
  (`flax.jax_utils.unreplicate` keeps the leading axis when the pmap runs on a
  one-device subset of several local devices.)
  """
  return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)
