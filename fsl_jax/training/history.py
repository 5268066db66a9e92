"""Scalar metrics as JSON lines (`workdir/metrics.jsonl`), for notebooks and scripts."""

from __future__ import annotations

import json
import os

from fsl_jax.training import writers


class JsonlWriter(writers.MetricWriter):
  """Appends `{"step": s, name: value, ...}` lines to a file, values as floats.

  Each write opens and closes the file, so there is nothing to flush. A resumed
  run appends to the same file.
  """

  def __init__(self, path: str):
    self._path = path
    # A run killed mid-write leaves a partial last line: start on a fresh one.
    if os.path.isfile(path) and os.path.getsize(path):
      with open(path, 'rb+') as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n':
          f.write(b'\n')

  def write_scalars(self, step: int, scalars: writers.Scalars) -> None:
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')


def read(workdir: str) -> list[dict]:
  """The rows of `workdir/metrics.jsonl`, for the last write of each (step, metric)."""
  rows: dict[int, dict] = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut short by a killed run.
        rows.setdefault(row['step'], {}).update(row)
  return [rows[s] for s in sorted(rows)]
