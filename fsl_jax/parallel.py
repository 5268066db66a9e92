"""Devices and processes: placing pytrees for `jax.pmap`, and multi-process runs.

One axis name, so shardings never drift: pmap's outputs are sharded over a mesh
axis named after the pmap's `axis_name`. Inputs placed with another axis name
(flax's `replicate` uses its own) are a different sharding to jit, and the
second step would silently recompile.

Several processes (a TPU pod slice, several GPU hosts, or local CPU processes
in tests) run one pmap over the devices of all of them, after `initialize`.
Each process feeds only its own devices (`local`), and a device's place in the
global device list (`jax.lax.axis_index`) fixes which episodes it computes, so
a run's numbers do not depend on how its devices are spread over processes.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

AXIS = 'devices'

# The usual environment variables of a multi-process launch (as read by
# `initialize` when no arguments are given).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
  'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins a multi-process run (`jax.distributed.initialize`) when there is one.

  Takes the coordinator's `host:port`, the number of processes and this
  process's id from the arguments, else from `$JAX_COORDINATOR_ADDRESS`,
  `$JAX_NUM_PROCESSES` and `$JAX_PROCESS_ID`. With none given, a Cloud TPU
  slice of several hosts is detected (`$TPU_WORKER_HOSTNAMES` lists them) and
  JAX finds the rest; anything else is a single process and nothing happens.
  On CPUs the processes' collectives go over gloo. Must run before JAX starts
  its backends (before the first `jax.devices()`).

  Returns:
    Whether this is a multi-process run.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  given = (coordinator_address, num_processes, process_id)
  tpu_hosts = [h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]
  if all(x is None for x in given):
    if len(tpu_hosts) <= 1:
      return False
    jax.distributed.initialize()  # Cloud TPU: JAX reads the slice's own metadata.
    return True
  if any(x is None for x in given):
    raise ValueError(
      'A multi-process run needs all three of the coordinator address, the number of '
      f'processes and the process id (got {given}); set --coordinator_address, '
      f'--num_processes and --process_id, or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} and '
      f'${ENV_PROCESS_ID}.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'process_id={process_id} must lie in [0, num_processes={num_processes}).')
  if num_processes == 1:
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU backends only.
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info('Process %d of %d (coordinator %s): %d of %d devices here.', jax.process_index(),
               jax.process_count(), coordinator_address, jax.local_device_count(),
               jax.device_count())
  return True


def is_main_process() -> bool:
  """Whether this process writes the run's files (results, metrics, summaries)."""
  return jax.process_index() == 0


def run_devices(num_devices: int = 0) -> list:
  """The devices a run computes on: the first `num_devices` local ones (0: all) in
  a single process; every device of every process in a multi-process run."""
  if jax.process_count() > 1:
    if num_devices not in (0, jax.device_count()):
      raise ValueError(f'num_devices={num_devices}: a multi-process run uses all '
                       f'{jax.device_count()} devices of its processes; set num_devices=0.')
    return jax.devices()
  return jax.local_devices()[: num_devices or None]


def local(devices=None) -> list:
  """The devices of `devices` (default: all local ones) that belong to this process."""
  if devices is None:
    return jax.local_devices()
  return [d for d in devices if d.process_index == jax.process_index()]


def local_rows(devices) -> np.ndarray:
  """The positions in `devices` (the pmap's device list) of this process's devices:
  the rows of a `[len(devices), ...]` batch this process feeds."""
  return np.array([i for i, d in enumerate(devices) if d.process_index == jax.process_index()])


def any_process(flag: bool) -> bool:
  """Whether `flag` holds in any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _sharding(devices):
  return jax.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)), jax.P(AXIS))


def replicate(tree, devices=None):
  """Copies every array to each of this process's devices in `devices`, with a
  leading `[local devices]` axis.

  Through the host and one transfer per device, with no XLA program: stacking on
  the device (`jax.device_put_replicated`, flax's `replicate`) compiles a program
  for each leaf shape, about 0.2 s each on a CPU, 15 s for EGNN's state.
  """
  devices = local(devices)
  sharding = _sharding(devices)

  def one(x):
    row = np.asarray(x)[None]
    return jax.make_array_from_single_device_arrays(
      (len(devices), *row.shape[1:]), sharding, [jax.device_put(row, d) for d in devices])

  return jax.tree.map(one, tree)


def shard(tree, devices=None):
  """Places arrays whose leading axis is `[local devices]` (this process's devices of
  `devices`, in order), one slice per device."""
  return jax.device_put(tree, _sharding(local(devices)))


def unreplicate(tree):
  """The first replica of a pmapped pytree, as NumPy arrays on the host.

  The first addressable shard holds either that replica alone (`[1, ...]`) or all
  of them (fully replicated, `[n, ...]`); its row 0 is the replica in both cases.
  (`flax.jax_utils.unreplicate` keeps the leading axis when the pmap runs on a
  one-device subset of several local devices.) Slicing on the host, because a
  slice on the device is a compiled program per leaf shape.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
