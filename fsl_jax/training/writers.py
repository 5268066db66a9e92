"""Metric writers: absl log lines and TensorBoard event files, without TensorFlow.

A writer takes `write_scalars(step, {name: value})`; `flush` pushes what was
written to its destination and `close` releases the writer.

TensorBoard's own `EventFileWriter` opens its file through `tf.io.gfile`, which
imports TensorFlow whenever TensorFlow is installed (seconds, and its memory).
`TensorBoardWriter` writes the same records with plain file I/O instead, so
workdirs are local paths.
"""

from __future__ import annotations

import abc
import itertools
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import SupportsFloat

from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

# Values are anything `float()` takes: Python numbers, NumPy and JAX scalars.
Scalars = Mapping[str, SupportsFloat]


class MetricWriter(abc.ABC):
  """Writes scalar metrics, each under a name at a training step."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Scalars) -> None:
    """Writes `scalars` (name -> value) at `step`."""

  def flush(self) -> None:  # noqa: B027 (a writer may have nothing to flush)
    """Pushes everything written so far to the destination."""

  def close(self) -> None:
    """Flushes, then releases the writer's resources."""
    self.flush()


class LoggingWriter(MetricWriter):
  """absl INFO lines, `[step] name=value, name=value`."""

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    values = ', '.join(f'{name}={float(value):.6g}' for name, value in scalars.items())
    logging.info('[%d] %s', step, values)


_file_ids = itertools.count()  # Two writers of one process in one second get two files.


class TensorBoardWriter(MetricWriter):
  """Scalar summaries in a new `logdir/events.out.tfevents.*` file.

  Every writer starts its own file, so a resumed run adds one beside the old
  ones and TensorBoard reads them together. Each write reaches the file at once:
  a killed run loses nothing and a running TensorBoard sees it.

  Args:
    logdir: a local directory, created if missing.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_file_ids)}')
    self.path = os.path.join(logdir, name)
    self._records = RecordWriter(open(self.path, 'xb'))
    self._write(event_pb2.Event(file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    # `simple_value`: the scalar form that every TensorBoard reader takes.
    values = [summary_pb2.Summary.Value(tag=name, simple_value=float(value))
              for name, value in scalars.items()]
    self._write(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    if not self._records.closed:
      self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


class MultiWriter(MetricWriter):
  """Passes every call on to each of `writers`, in order."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = tuple(writers)

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def create_default_writer(workdir: str, *, just_logging: bool = False) -> MetricWriter:
  """Log lines and TensorBoard summaries in `workdir`; log lines only if `just_logging`.

  `just_logging` is for the processes other than the first of a multi-host run,
  which would otherwise write the same summaries again.
  """
  if just_logging:
    return LoggingWriter()
  return MultiWriter([LoggingWriter(), TensorBoardWriter(workdir)])
