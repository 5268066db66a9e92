"""Metric writers: TensorBoard files read back by TensorBoard, and no TensorFlow."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.util import tensor_util

from fsl_jax.training import history, writers

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_scalars(logdir):
  """`{tag: [(step, value), ...]}` as TensorBoard reads `logdir`."""
  accumulator = event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()['scalars']}


def f32(x):
  return float(np.float32(x))


def events_files(logdir):
  return sorted(p for p in os.listdir(logdir) if p.startswith('events.out.tfevents.'))


def test_tensorboard_reads_back_every_tag_and_step(tmp_path):
  writer = writers.TensorBoardWriter(str(tmp_path))
  writer.write_scalars(1, {'train/loss': 2.5, 'train/accuracy': 0.2})
  writer.write_scalars(10, {'train/loss': 1 / 3, 'train/accuracy': np.float32(0.6)})
  writer.write_scalars(10, {'val/accuracy': np.float64(0.55)})
  writer.write_scalars(np.int64(2_000_000), {'train/loss': 0.125})
  writer.close()
  assert read_scalars(tmp_path) == {
    'train/loss': [(1, 2.5), (10, f32(1 / 3)), (2_000_000, 0.125)],
    'train/accuracy': [(1, f32(0.2)), (10, f32(0.6))],
    'val/accuracy': [(10, f32(0.55))],
  }
  assert len(events_files(tmp_path)) == 1


def test_tensorboards_scalars_plugin_sees_scalars(tmp_path):
  """The plugin reads summaries as tensors; `simple_value` must migrate to its data."""
  writer = writers.TensorBoardWriter(str(tmp_path))
  writer.write_scalars(3, {'val/loss': 0.75})
  writer.close()
  accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert accumulator.PluginTagToContent('scalars').keys() == {'val/loss'}
  [event] = accumulator.Tensors('val/loss')
  assert event.step == 3 and tensor_util.make_ndarray(event.tensor_proto) == 0.75


def test_each_write_reaches_the_file_before_close(tmp_path):
  writer = writers.TensorBoardWriter(str(tmp_path))
  writer.write_scalars(1, {'loss': 1.0})
  assert read_scalars(tmp_path) == {'loss': [(1, 1.0)]}  # A killed run keeps this.
  writer.close()
  writer.flush()  # Harmless after close.


def test_a_resumed_writer_adds_a_file_and_tensorboard_reads_both(tmp_path):
  first = writers.TensorBoardWriter(str(tmp_path / 'run'))  # Creates the directory.
  first.write_scalars(1, {'loss': 3.0})
  first.write_scalars(2, {'loss': 2.0, 'accuracy': 0.5})
  first.close()
  second = writers.TensorBoardWriter(str(tmp_path / 'run'))
  second.write_scalars(3, {'loss': 1.0})
  second.write_scalars(4, {'accuracy': 0.75})
  second.close()
  assert len(events_files(tmp_path / 'run')) == 2
  assert read_scalars(tmp_path / 'run') == {'loss': [(1, 3.0), (2, 2.0), (3, 1.0)],
                                            'accuracy': [(2, 0.5), (4, 0.75)]}


class Recorder(writers.MetricWriter):
  def __init__(self, calls, name):
    self.calls, self.name = calls, name

  def write_scalars(self, step, scalars):
    self.calls.append((self.name, 'write', step, dict(scalars)))

  def flush(self):
    self.calls.append((self.name, 'flush'))

  def close(self):
    self.calls.append((self.name, 'close'))


def test_multi_writer_passes_every_call_to_each_writer_in_order():
  calls = []
  writer = writers.MultiWriter([Recorder(calls, 'a'), Recorder(calls, 'b')])
  writer.write_scalars(5, {'x': 1.0})
  writer.flush()
  writer.close()
  assert calls == [('a', 'write', 5, {'x': 1.0}), ('b', 'write', 5, {'x': 1.0}),
                   ('a', 'flush'), ('b', 'flush'), ('a', 'close'), ('b', 'close')]


def test_logging_writer_writes_one_line_per_step(caplog):
  caplog.set_level(logging.INFO)
  writers.LoggingWriter().write_scalars(7, {'train/loss': np.float32(0.5), 'steps_per_sec': 12.0})
  assert '[7] train/loss=0.5, steps_per_sec=12' in caplog.messages


def test_default_writer_logs_and_writes_tensorboard_and_jsonl(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  writer = writers.MultiWriter([
    writers.create_default_writer(str(tmp_path), just_logging=False),
    history.JsonlWriter(str(tmp_path / 'metrics.jsonl')),
  ])
  writer.write_scalars(4, {'val/accuracy': np.float32(0.25)})
  writer.flush()
  assert '[4] val/accuracy=0.25' in caplog.messages
  assert read_scalars(tmp_path) == {'val/accuracy': [(4, 0.25)]}
  assert history.read(str(tmp_path)) == [{'step': 4, 'val/accuracy': 0.25}]


def test_just_logging_writes_no_file(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  writer = writers.create_default_writer(str(tmp_path / 'workdir'), just_logging=True)
  writer.write_scalars(1, {'loss': 2.0})
  writer.close()
  assert '[1] loss=2' in caplog.messages
  assert not (tmp_path / 'workdir').exists()


def test_jsonl_writer_keeps_floats_and_starts_a_fresh_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  history.JsonlWriter(str(path)).write_scalars(np.int64(1), {'loss': np.float32(0.5), 'n': 3})
  with open(path, 'a') as f:
    f.write('{"step": 2, "lo')  # A killed run.
  history.JsonlWriter(str(path)).write_scalars(3, {'loss': 0.25})
  rows = [json.loads(line) for line in path.read_text().splitlines()[::2]]
  assert rows == [{'step': 1, 'loss': 0.5, 'n': 3.0}, {'step': 3, 'loss': 0.25}]
  assert all(isinstance(v, float) for row in rows for k, v in row.items() if k != 'step')
  assert history.read(str(tmp_path)) == rows


def test_writing_metrics_imports_neither_tensorflow_nor_clu(tmp_path):
  """In a fresh interpreter, where nothing else imported them first."""
  code = f"""
import sys
from fsl_jax.training import history, writers
writer = writers.MultiWriter([writers.create_default_writer({str(tmp_path)!r}),
                              history.JsonlWriter({str(tmp_path / 'metrics.jsonl')!r})])
writer.write_scalars(1, {{'loss': 1.0}})
writer.close()
print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu')))
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip() == '[]', result.stdout
  assert len(events_files(tmp_path)) == 1
