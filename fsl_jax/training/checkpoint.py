"""Orbax checkpoints: the latest N states for resuming, and the best by validation."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class WorkdirBusyError(RuntimeError):
  """Another process is training in the same workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds `workdir/.lock` for a run; a second run in the same workdir is refused.

  An `flock` lock: the operating system releases it when the holding process
  ends in any way, so a killed run never leaves the workdir locked.
  """
  path = os.path.join(workdir, '.lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
      raise WorkdirBusyError(
        f'{workdir} is in use by another run ({holder}); wait for it to end, or use another '
        '--workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()}, since {time.strftime("%Y-%m-%d %H:%M:%S")}'.encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a saved training state (a run worth protecting)."""
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


class CheckpointNotFoundError(FileNotFoundError):
  """The checkpoint asked for does not exist, or none of those kept is readable."""


def _pack(state, best: dict) -> dict:
  return {
    'state': state,
    'best_accuracy': np.asarray(best['accuracy'], np.float64),
    'best_step': np.asarray(best['step'], np.int64),
  }


def _abstract(state) -> dict:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, _pack(state, {'accuracy': 0., 'step': 0}))


def _multiprocess() -> bool:
  return jax.process_count() > 1


def _for_saving(state):
  """In a multi-process run every process holds the same state on its own devices:
  as NumPy arrays, Orbax writes it once (from the main process)."""
  return jax.device_get(state) if _multiprocess() else state


def _restore_target(state) -> dict:
  """What Orbax restores into: the arrays' shapes and placement, or NumPy arrays in
  a multi-process run (each process then places its copy) or when `state` holds
  NumPy arrays (`parallel.unreplicate`'s)."""
  if _multiprocess() or not all(isinstance(x, jax.Array) for x in jax.tree.leaves(state)):
    return _pack(jax.device_get(state), {'accuracy': 0., 'step': 0})
  return _abstract(state)


class Checkpoints:
  """`workdir/checkpoints/<step>` (the latest `keep`) and `workdir/best/<step>`.

  Saves are asynchronous; `wait()` blocks until they are on disk. A checkpoint
  whose save did not finish is never restored (Orbax commits by renaming).
  """

  def __init__(self, workdir: str, keep: int = 2):
    self._workdir = os.path.abspath(workdir)
    # Each manager names its own multi-process barriers: both save step N when step
    # N is the best so far and a checkpoint step, and two concurrent barriers of one
    # name (`_async_write_complete.N`) fail the second save after a timeout.
    def manager(folder, keep):
      return ocp.CheckpointManager(
        os.path.join(self._workdir, folder),
        options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=f'fsl_jax_{folder}')))

    self._latest = manager('checkpoints', keep)
    self._best = manager('best', 1)

  def save(self, step: int, state, best: dict) -> None:
    self._latest.save(step, args=ocp.args.StandardSave(_pack(_for_saving(state), best)))

  def save_best(self, state, best: dict) -> None:
    self._best.save(best['step'], args=ocp.args.StandardSave(_pack(_for_saving(state), best)),
                    force=True)

  def restore_latest(self, state, set_aside_unreadable: bool = False):
    """Returns (state, best) from the newest readable checkpoint, or `state` unchanged.

    A checkpoint that cannot be read (truncated, garbled) is skipped with a
    warning naming it, and the next older one is tried; only when checkpoints
    exist and none is readable is it an error. With `set_aside_unreadable` (a
    run about to train on), the unreadable ones are moved to
    `workdir/unreadable_checkpoints/` so that the steps can be saved again.
    """
    steps = sorted(self._latest.all_steps(), reverse=True)
    if not steps:
      return state, {'accuracy': -1.0, 'step': 0}
    bad = []
    for step in steps:
      try:
        restored = self._restore(self._latest, step, state)
      except Exception as e:  # noqa: BLE001 (Orbax and tensorstore raise many kinds)
        bad.append(step)
        logging.warning('Checkpoint %s is unreadable (%s: %s); trying an older one.',
                        self._step_dir(self._latest, step), type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else '')
        continue
      if bad:
        logging.warning('Resuming from step %d: the newer checkpoint(s) %s could not be read.',
                        step, bad)
        if set_aside_unreadable:
          self._set_aside(bad)
      return restored
    raise CheckpointNotFoundError(
      f'None of the checkpoints in {self._latest.directory} (steps {steps}) is readable. '
      'Delete the folder to train from scratch, or restore it from a copy.')

  def restore_step(self, state, step: int):
    """Returns (state, best) of the kept checkpoint of `step` (e.g. for analysis)."""
    if step not in self._latest.all_steps():
      raise CheckpointNotFoundError(f'No checkpoint of step {step} in {self._latest.directory} '
                                    f'(kept: {sorted(self._latest.all_steps())}).')
    return self._restore(self._latest, step, state)

  def restore_best(self, state, step: int | None = None):
    """Returns the best-validation state saved at `step` (default: the newest)."""
    self._best.wait_until_finished()
    step = self._best.latest_step() if step is None else step
    if step is None or step not in self._best.all_steps():
      raise CheckpointNotFoundError(f'No best-validation checkpoint at step {step} in '
                                    f'{self._best.directory}.')
    try:
      return self._restore(self._best, step, state)[0]
    except Exception as e:  # noqa: BLE001
      raise CheckpointNotFoundError(
        f'The best-validation checkpoint {self._step_dir(self._best, step)} is unreadable '
        f'({type(e).__name__}); evaluate --checkpoint=latest instead, or retrain.') from None

  def prune_best(self, best_step: int) -> None:
    """Deletes best-validation saves newer than `best_step`.

    A run can die after saving a new best but before the regular checkpoint that
    records it; the resumed run recomputes that validation, and the orphan must
    neither collide with the new save nor be tested in its place.
    """
    self._best.wait_until_finished()
    for step in self._best.all_steps():
      if step > best_step:
        self._best.delete(step)

  def _set_aside(self, steps) -> None:
    if jax.process_index() == 0:  # The folders are shared; one process moves them.
      self._move_aside(steps)
    if _multiprocess():
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('fsl_jax: unreadable checkpoints set aside')
    self._latest.reload()

  def _move_aside(self, steps) -> None:
    target = os.path.join(self._workdir, 'unreadable_checkpoints')
    os.makedirs(target, exist_ok=True)
    for step in steps:
      destination = os.path.join(target, str(step))
      suffix = 0
      while os.path.exists(destination):
        suffix += 1
        destination = os.path.join(target, f'{step}.{suffix}')
      os.replace(self._step_dir(self._latest, step), destination)
      logging.warning('Moved the unreadable checkpoint of step %d to %s.', step, destination)

  @staticmethod
  def _step_dir(manager, step) -> str:
    return os.path.join(str(manager.directory), str(step))

  @staticmethod
  def _restore(manager, step, state):
    restored = manager.restore(step, args=ocp.args.StandardRestore(_restore_target(state)))
    best = {'accuracy': float(restored['best_accuracy']), 'step': int(restored['best_step'])}
    return restored['state'], best

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()
