"""Throughput of the train and eval steps of a config, after compilation."""

from __future__ import annotations

import collections
import functools
import glob
import gzip
import json
import os
import re
import resource
import tempfile
import time

import jax
import ml_collections
import numpy as np

from fsl_jax import config as config_lib
from fsl_jax import parallel
from fsl_jax.data import episodes as episodes_lib
from fsl_jax.data import registry as data_registry
from fsl_jax.data.dataset import ClassMajorDataset
from fsl_jax.training import train


def synthetic_dataset(image_shape, num_classes: int, examples_per_class: int = 20,
                      seed: int = 0) -> ClassMajorDataset:
  """Random uint8 images: speed depends on shapes only."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_classes, examples_per_class, *image_shape), np.uint8)
  return ClassMajorDataset(images, tuple(f'synthetic{i}' for i in range(num_classes)))


def _time(fn, repeats: int) -> float:
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


# Config fields that unroll a method's scans (XLA's cost analysis counts a loop body once).
UNROLL_FIELDS = ('scan_unroll',)


def train_step_flops(config, compiled, source, spec, per_device: int, state,
                     devices) -> float | None:
  """XLA's FLOP count of one device's train step, with every scan unrolled.

  XLA counts the body of a loop once, whatever its trip count, so a scanned
  model would be undercounted; a method with a scan-unroll field, or a backbone
  that embeds in chunks (`embed_chunk_size`, a scan), is compiled once more
  with its scans unrolled and its images embedded at once (the same function)
  for the count, and any other method's `compiled` step is counted as it is.
  The count is the model's: the chunks' recomputation in the backward pass
  (remat) is not in it.
  """
  chunked = bool(config.get('embed_chunk_size', 0))
  if chunked or any(field in config for field in UNROLL_FIELDS):
    config = ml_collections.ConfigDict(config.to_dict())
    for field in UNROLL_FIELDS:
      if field in config:
        config[field] = 1_000_000  # Clamped to the scan's length by the method.
    if chunked:
      config.embed_chunk_size = 0
    _, model = train.build(config)
    step = jax.pmap(functools.partial(train.train_step, model=model, source=source, spec=spec,
                                      per_device=per_device),
                    axis_name=train.AXIS, devices=devices)
    compiled = step.lower(parallel.replicate(state, devices), source.step_inputs()).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return (cost or {}).get('flops')


_HLO_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*.*?\s([a-z][a-z0-9-]*)\(')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONV_SHAPES = re.compile(r'=\s*\w+\[([\d,]*)\].*window=\{size=([\dx]+).*dim_labels=\w+_\w+->(\w+)')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$')
_CALLS = re.compile(r'calls=%?([^\s,}]+)')
_LAYOUT_OPS = frozenset({'parameter', 'copy', 'transpose', 'bitcast', 'reshape', 'broadcast',
                         'constant', 'slice', 'concatenate', 'pad', 'tuple',
                         'get-tuple-element', 'dynamic-slice', 'dynamic-update-slice', 'reverse'})


def _direction(line: str) -> str:
  op_name = _OP_NAME.search(line)
  return '' if op_name is None else (' backward' if 'transpose(' in op_name.group(1)
                                      else ' forward')


def _conv_kind(line: str) -> str:
  conv = _CONV_SHAPES.search(line)
  if conv:
    shape = [int(d) for d in conv.group(1).split(',') if d]
    window = [int(d) for d in conv.group(2).split('x')]
    spatial = [shape[i] for i, c in enumerate(conv.group(3)) if c.isdigit()]
    if len(spatial) == len(window) and np.prod(window) > np.prod(spatial):
      return 'convolution weight gradient'
  return 'convolution' + _direction(line)


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
  """Maps each instruction of a compiled module to a kind for the step profile.

  A convolution is a `convolution weight gradient` when its window is larger
  than its output's spatial extent (a kernel gradient; XLA leaves those
  without metadata), else `convolution backward` where JAX's metadata places
  it in a transposed (VJP) computation and `convolution forward` where it
  places it elsewhere. A fusion is named by what it computes: the
  convolution or `dot` it holds, else `fusion: layout` (copies, transposes,
  slices, pads only) or `fusion: elementwise/reduce`; other instructions by
  their opcode, with the same ` forward` / ` backward` suffix (none without
  metadata).
  """
  lines = hlo_text.splitlines()
  bodies, current = {}, None  # Computation name -> its instruction lines.
  for line in lines:
    header = _COMPUTATION.match(line)
    if header and '=' not in line.split('(')[0]:
      current = bodies.setdefault(header.group(1), [])
    elif line.strip() == '}':
      current = None
    elif current is not None:
      current.append(line)

  def fusion_kind(line: str) -> str:
    calls = _CALLS.search(line)
    inner = bodies.get(calls.group(1), []) if calls else []
    for inner_line in inner:
      match = _HLO_LINE.match(inner_line)
      if match and match.group(2) == 'convolution':
        return _conv_kind(inner_line)
    opcodes = {m.group(2) for m in map(_HLO_LINE.match, inner) if m}
    if 'dot' in opcodes:
      return 'dot' + _direction(line)
    if opcodes and opcodes <= _LAYOUT_OPS:
      return 'fusion: layout' + _direction(line)
    return 'fusion: elementwise/reduce' + _direction(line)

  kinds = {}
  for line in lines:
    match = _HLO_LINE.match(line)
    if not match:
      continue
    name, opcode = match.groups()
    if opcode == 'convolution':
      kinds[name] = _conv_kind(line)
    elif opcode == 'fusion':
      kinds[name] = fusion_kind(line)
    else:
      kinds[name] = opcode + _direction(line)
  return kinds


def step_profile(compiled, run, top: int = 12) -> dict:
  """Where one call of `run` (a call of the `compiled` program) spends its time.

  Traces one call with `jax.profiler` and sums the durations of the trace's
  XLA operations, by instruction kind (`hlo_op_kinds`) and by instruction.
  Durations are summed over threads, so the total can exceed the wall time
  when operations run in parallel. It can also fall short of it: on XLA's CPU
  backend an operation that runs on the intra-op thread pool (convolutions,
  through Eigen) may be traced for less than it runs. Measured on EGNN's
  miniImageNet step at meta-batch 4 (`experiments/README.md`, Benchmark): the
  traced operations sum to 2.0 s of a 4.2 s call, and its convolutions to
  0.17 s. So read the shares as those of the traced time, and `call_wall_ms`
  against `total_ms` for how much is missing.

  Returns:
    `{'total_ms', 'call_wall_ms', 'by_kind': [[kind, ms, share], ...], 'top_ops': [[name, kind, ms,
    share], ...], 'other_events_ms': [[name, ms], ...]}`, largest first.
  """
  kinds = hlo_op_kinds(compiled.as_text())
  jax.block_until_ready(run())  # Nothing left to compile or allocate inside the trace.
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    jax.block_until_ready(run())
    wall_ms = (time.perf_counter() - start) * 1e3
    jax.profiler.stop_trace()
    paths = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)
    with gzip.open(paths[0]) as f:
      events = json.load(f)['traceEvents']
  by_op, other = collections.Counter(), collections.Counter()
  for event in events:
    if event.get('ph') != 'X':
      continue
    (by_op if event.get('name') in kinds else other)[event.get('name')] += (
      event.get('dur', 0) / 1e3)
  by_kind = collections.Counter()
  for name, ms in by_op.items():
    by_kind[kinds[name]] += ms
  total = sum(by_op.values()) or 1.0
  # Milliseconds to the microsecond: a small program's whole trace can be under 0.05 ms.
  return {
    'total_ms': round(total, 3),
    # Operations traced for less than they run (see above): a total well under the
    # call's wall time says so.
    'call_wall_ms': round(wall_ms, 3),
    'by_kind': [[kind, round(ms, 3), round(ms / total, 3)] for kind, ms in by_kind.most_common()],
    'top_ops': [[name, kinds[name], round(ms, 3), round(ms / total, 3)]
                for name, ms in by_op.most_common(top)],
    # Trace events that are not an instruction of the module (runtime, thunks,
    # host work), which may enclose instructions: not in the shares above.
    'other_events_ms': [[name, round(ms, 3)] for name, ms in other.most_common(top)],
  }


def benchmark(config, *, train_steps: int = 20, eval_calls: int = 5,
              synthetic_shape: tuple[int, ...] | None = None,
              compile_only: bool = False, profile: bool = False) -> dict:
  """Measures compile time, train and eval episodes per second, and peak memory.

  Args:
    config: an experiment config.
    train_steps: timed train steps (after one untimed compiling step).
    eval_calls: timed evaluation calls of `eval_batch_size` episodes per device.
    synthetic_shape: `(H, W, C)` to benchmark on random images instead of the
      config's dataset.
    compile_only: only compile the train step and report XLA's memory for it
      (`train_step_temp_bytes`: its temporaries per device), without running
      anything; for a shape that may not fit.
    profile: also trace one train step and report where its time goes
      (`step_profile`, under `train_step_profile`).

  Returns:
    A JSON-able dict of measurements.
  """
  config, model = train.build(config)
  if config.episode_sampling != 'device':
    raise config_lib.ConfigError(
      'benchmark measures on-device episode sampling; set episode_sampling=device.')
  devices = jax.local_devices()[: config.num_devices or None]
  per_device = config.meta_batch_size // len(devices)
  info = data_registry.get(config.dataset)
  if synthetic_shape:
    classes = max(config.way, config.test_way) * 4
    train_data = eval_data = synthetic_dataset(tuple(synthetic_shape), classes)
  else:
    train_data = data_registry.load_dataset(config.dataset, config.train_split,
                                            config.data_dir or None, config.cache_dir or None)
    eval_data = data_registry.load_dataset(config.dataset, config.test_split,
                                           config.data_dir or None, config.cache_dir or None)
  spec, test_spec = train.episode_spec(config), train.episode_spec(config, test=True)
  source = episodes_lib.DeviceEpisodes(train_data, spec, info.mean, info.std, 'train', devices)
  eval_source = episodes_lib.DeviceEpisodes(eval_data, test_spec, info.mean, info.std, 'test',
                                            devices)
  state = train.create_train_state(config, model, train_data.image_shape,
                                   jax.random.PRNGKey(config.seed))
  step = jax.pmap(functools.partial(train.train_step, model=model, source=source, spec=spec,
                                    per_device=per_device),
                  axis_name=train.AXIS, donate_argnums=(0,), devices=devices)
  holder = {'state': parallel.replicate(state, devices)}
  start = time.perf_counter()
  compiled = step.lower(holder['state'], source.step_inputs()).compile()
  compile_time = time.perf_counter() - start
  memory = compiled.memory_analysis()
  shapes = {
    'method': config.method, 'dataset': 'synthetic' if synthetic_shape else config.dataset,
    'image_shape': list(train_data.image_shape),
    'train_episode': f'{spec.way}-way {spec.shot}-shot {spec.query}-query '
                     f'+{spec.unlabeled_shot} unlabeled',
    'eval_episode': f'{test_spec.way}-way {test_spec.shot}-shot {test_spec.query}-query',
    'meta_batch_size': config.meta_batch_size,
    'devices': len(devices), 'platform': devices[0].platform,
    'device_kind': devices[0].device_kind, 'jax_version': jax.__version__,
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'train_step_temp_bytes': memory.temp_size_in_bytes if memory else None,
    'train_step_flops': train_step_flops(config, compiled, source, spec, per_device, state,
                                         devices),
  }
  if compile_only:
    return shapes

  def run_step():
    holder['state'], metrics = compiled(holder['state'], source.step_inputs())
    return metrics

  jax.block_until_ready(run_step())  # Untimed: first-run allocations.
  step_time = _time(run_step, train_steps)
  profile_result = {'train_step_profile': step_profile(compiled, run_step)} if profile else {}

  per_call = config.eval_batch_size * len(devices)
  evaluator = train.Evaluator(model, eval_source, num_episodes=per_call * eval_calls,
                              seed=config.eval_seed, per_device=config.eval_batch_size)
  variables = {'params': holder['state'].params, 'batch_stats': holder['state'].batch_stats}
  start = time.perf_counter()
  evaluator(variables)
  first_eval = time.perf_counter() - start
  eval_time = _time(lambda: evaluator(variables), 1)

  stats = devices[0].memory_stats() or {}
  return {
    **shapes,
    'train_compile_s': round(compile_time, 3),
    'train_step_s': round(step_time, 5),
    'train_episodes_per_s': round(config.meta_batch_size / step_time, 2),
    'eval_compile_s': round(first_eval - eval_time, 3),
    'eval_episodes_per_s': round(per_call * eval_calls / eval_time, 2),
    'peak_device_bytes': stats.get('peak_bytes_in_use'),
    'peak_host_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    **profile_result,
  }
