"""Orbax checkpoints: the latest N states for resuming, and the best by validation."""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointNotFoundError(FileNotFoundError):
  """The checkpoint asked for does not exist."""


def _pack(state, best: dict) -> dict:
  return {
    'state': state,
    'best_accuracy': np.asarray(best['accuracy'], np.float64),
    'best_step': np.asarray(best['step'], np.int64),
  }


def _abstract(state) -> dict:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, _pack(state, {'accuracy': 0., 'step': 0}))


class Checkpoints:
  """`workdir/checkpoints/<step>` (the latest `keep`) and `workdir/best/<step>`.

  Saves are asynchronous; `wait()` blocks until they are on disk. A checkpoint
  whose save did not finish is never restored (Orbax commits by renaming).
  """

  def __init__(self, workdir: str, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._latest = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                         options=options)
    self._best = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'best'),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  def save(self, step: int, state, best: dict) -> None:
    self._latest.save(step, args=ocp.args.StandardSave(_pack(state, best)))

  def save_best(self, state, best: dict) -> None:
    self._best.save(best['step'], args=ocp.args.StandardSave(_pack(state, best)), force=True)

  def restore_latest(self, state):
    """Returns (state, best) from the latest checkpoint, or `state` unchanged."""
    step = self._latest.latest_step()
    if step is None:
      return state, {'accuracy': -1.0, 'step': 0}
    return self._restore(self._latest, step, state)

  def restore_best(self, state, step: int | None = None):
    """Returns the best-validation state saved at `step` (default: the newest)."""
    self._best.wait_until_finished()
    step = self._best.latest_step() if step is None else step
    if step is None or step not in self._best.all_steps():
      raise CheckpointNotFoundError(f'No best-validation checkpoint at step {step} in '
                                    f'{self._best.directory}.')
    return self._restore(self._best, step, state)[0]

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

  @staticmethod
  def _restore(manager, step, state):
    restored = manager.restore(step, args=ocp.args.StandardRestore(_abstract(state)))
    best = {'accuracy': float(restored['best_accuracy']), 'step': int(restored['best_step'])}
    return restored['state'], best

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()
