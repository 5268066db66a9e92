"""Episodic training and evaluation: jit + vmap over episodes + pmap over devices.

The vocabulary of the Flax examples: `create_train_state`, `train_step`,
`eval_step`, `evaluate`, `train_and_evaluate`.

Randomness is a function of the seed and the step alone: episode `j` of step `s`
uses `fold_in(fold_in(train_key, s), j)`, and device `d` runs episodes
`d * b .. (d + 1) * b - 1` of the meta-batch. The same config and seed therefore
give the same episodes on 1 or 8 devices, and a resumed run continues exactly
where the interrupted one stopped (there is no RNG state beyond the step number).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from fsl_jax import config as config_lib
from fsl_jax import parallel
from fsl_jax.data import augment as augment_lib
from fsl_jax.data import episodes as episodes_lib
from fsl_jax.data import registry as data_registry
from fsl_jax.data.dataset import FlatDataset
from fsl_jax.evaluation import metrics as metrics_lib
from fsl_jax.models import backbones
from fsl_jax.models import base as models_base
from fsl_jax.training import checkpoint as checkpoint_lib
from fsl_jax.training import history, writers

AXIS = parallel.AXIS


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


class DivergedError(NonFiniteLossError):
  """The training loss grew by `divergence_factor` over its first logged value."""


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped training, after a checkpoint of the step reached."""

  def __init__(self, signal_name: str, step: int, workdir: str):
    super().__init__(f'interrupted by {signal_name} at step {step}; saved a checkpoint at step '
                     f'{step} in {workdir}: rerun the same command to resume.')
    self.step = step


@contextlib.contextmanager
def _signals_as_requests():
  """SIGINT and SIGTERM (a preempted VM's notice) become a request to stop, which
  the training loop honours after the step in flight: it saves that step and
  raises `Interrupted`. A second signal ends the process at once, without saving.

  Yields:
    A list that receives the number of each signal caught.
  """
  received = []
  if threading.current_thread() is not threading.main_thread():  # Handlers need it.
    yield received
    return

  def handler(signum, frame):
    del frame
    received.append(signum)
    signal.signal(signum, signal.SIG_DFL)

  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics and the training key."""

  batch_stats: Any
  train_key: jax.Array


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (or SGD with momentum), a step-decay schedule, and coupled L2.

  The L2 term is added to the gradient before Adam (as in PyTorch's
  `Adam(weight_decay=...)`), which is not AdamW's decoupled decay.
  """
  if config.lr_decay_every:
    schedule = optax.exponential_decay(
      config.learning_rate, config.lr_decay_every, config.lr_decay_factor, staircase=True
    )
  else:
    schedule = optax.constant_schedule(config.learning_rate)
  parts = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
  if config.optimizer == 'adam':
    parts.append(optax.scale_by_adam())
  elif config.momentum:
    parts.append(optax.trace(decay=config.momentum))
  return optax.chain(*parts, optax.scale_by_learning_rate(schedule))


def episode_spec(config: ml_collections.ConfigDict, test: bool = False):
  """The training (or, with `test`, the validation and test) episode shape."""
  p = 'test_' if test else ''
  return episodes_lib.EpisodeSpec(
    config[p + 'way'], config[p + 'shot'], config[p + 'query'], config[p + 'unlabeled_shot']
  )


def hide_unlabeled_labels(episode: episodes_lib.Episode) -> episodes_lib.Episode:
  """The episode a method's loss sees: unlabelled supports' labels replaced by -1."""
  return episode.replace(unlabeled_labels=jnp.full_like(episode.unlabeled_labels, -1))


def apply_method(model, variables, episode, way: int, *, train: bool, rng=None):
  """Runs a method's forward pass on one episode; query labels are not passed."""
  kwargs = {'rngs': {'dropout': rng}, 'mutable': ['batch_stats']} if train else {}
  return model.apply(
    variables, episode.support_images, episode.support_labels, episode.query_images,
    episode.unlabeled_images, way=way, train=train, **kwargs,
  )


def dummy_episode(spec, image_shape) -> episodes_lib.Episode:
  """An all-zero float32 episode of the given shape, for initialisation."""
  arrays = []
  for n in (spec.shot, spec.query, spec.unlabeled_shot):
    arrays += [np.zeros((spec.way * n, *image_shape), np.float32),
               np.zeros((spec.way * n,), np.int32)]
  return episodes_lib.Episode(*arrays)


def create_train_state(config, model, image_shape, key: jax.Array) -> TrainState:
  """Initialises the parameters on a dummy episode of the training shape."""
  init_key, train_key = jax.random.split(key)
  spec = episode_spec(config)
  episode = dummy_episode(spec, image_shape)
  init = lambda k: model.init({'params': k, 'dropout': k}, episode.support_images,
                              episode.support_labels, episode.query_images,
                              episode.unlabeled_images, way=spec.way, train=False)
  tx = make_optimizer(config)

  def create(key):  # One program with the optimizer's zeros (eagerly, a program per shape).
    variables = init(key)
    return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                             batch_stats=variables.get('batch_stats', {}), train_key=train_key)

  return jax.jit(create)(init_key)


def device_episode_keys(key: jax.Array, first, per_device: int) -> jax.Array:
  """Inside pmap: keys of episodes `first + d * per_device + i` for this device d."""
  start = first + jax.lax.axis_index(AXIS) * per_device
  return episodes_lib.episode_keys(key, start + jnp.arange(per_device))


def host_episode_keys(key: jax.Array, first: int, devices: int, per_device: int) -> np.ndarray:
  """On the host: the keys `device_episode_keys` gives, as `[devices, per_device, ...]`."""
  keys = episodes_lib.episode_keys(key, first + jnp.arange(devices * per_device))
  return np.asarray(keys).reshape(devices, per_device, -1)


def train_step(state: TrainState, inputs, *, model, source, spec, per_device: int):
  """One update on a meta-batch of episodes; runs under pmap with axis `AXIS`.

  Args:
    state: this device's replica of the train state (donated).
    inputs: `source.step_inputs()`: the split itself, or pre-sampled episodes.
    model: the method module.
    source: the `EpisodeSource` that turns (inputs, keys) into episodes.
    spec: the static training episode shape.
    per_device: episodes per device.

  Returns:
    The new state and metrics averaged over the whole meta-batch.
  """
  keys = device_episode_keys(jax.random.fold_in(state.train_key, state.step), 0, per_device)
  keys = jax.vmap(jax.random.split)(keys)  # [per_device, 2]: sampling, dropout.
  episodes = source.episodes(inputs, keys[:, 0])

  def episode_loss(params, episode, rng):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    outputs, updates = apply_method(model, variables, episode, spec.way, train=True, rng=rng)
    loss, extra = model.loss(outputs, hide_unlabeled_labels(episode))
    accuracy = jnp.mean(jnp.argmax(outputs.logits, -1) == episode.query_labels)
    return loss, ({'loss': loss, 'accuracy': accuracy, **extra}, updates['batch_stats'])

  def loss_fn(params):
    losses, aux = jax.vmap(episode_loss, in_axes=(None, 0, 0),
                           axis_name=backbones.EPISODES)(params, episodes, keys[:, 1])
    return losses.mean(), aux

  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  # Running statistics: the mean over episodes of each episode's EMA update, which
  # is the EMA of the mean statistics (the update is linear).
  mean0 = lambda tree: jax.tree.map(lambda x: x.mean(0), tree)
  grads, batch_stats, metrics = jax.lax.pmean((grads, mean0(batch_stats), mean0(metrics)), AXIS)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # The loss of step s is computed before update s; this flag covers the update.
  metrics['params_finite'] = jnp.isfinite(optax.global_norm(state.params)).astype(jnp.float32)
  return state, metrics


def eval_step(variables, inputs, first, *, model, source, spec, key, per_device: int):
  """Per-episode accuracy and loss of episodes `first + d * per_device + i`; under pmap.

  Every device returns those of all devices, `[devices, per_device]` each, so that
  each process holds the whole call's results in a multi-process run.
  """
  episodes = source.episodes(inputs, device_episode_keys(key, first, per_device))

  def one(episode):
    outputs = apply_method(model, variables, episode, spec.way, train=False)
    loss, _ = model.loss(outputs, hide_unlabeled_labels(episode))
    return jnp.mean(jnp.argmax(outputs.logits, -1) == episode.query_labels), loss

  return jax.lax.all_gather(jax.vmap(one)(episodes), AXIS)


class Evaluator:
  """Evaluates on a fixed set of episodes: episode `i` has key `fold_in(PRNGKey(seed), i)`.

  The set does not depend on the number of devices or the batch size: the last
  call is padded with extra episodes whose results are dropped.
  """

  report_every_s = 30.0  # Seconds between progress lines.

  def __init__(self, model, source, *, num_episodes: int, seed: int, per_device: int):
    self.source, self.num_episodes = source, num_episodes
    devices = source.devices or jax.local_devices()  # Of every process.
    self.devices = len(devices)
    self.per_device = max(1, min(per_device, -(-num_episodes // self.devices)))
    self.key = jax.random.PRNGKey(seed)
    step = functools.partial(eval_step, model=model, source=source, spec=source.spec,
                             key=self.key, per_device=self.per_device)
    self._step = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=devices)

  def __call__(self, variables) -> tuple[metrics_lib.AccuracySummary, float]:
    """Returns the accuracy summary and the mean loss; `variables` are replicated."""
    per_call = self.devices * self.per_device
    outputs = []
    start = last_report = time.time()
    for first in range(0, self.num_episodes, per_call):
      keys = None
      if self.source.needs_host_keys:
        keys = host_episode_keys(self.key, first, self.devices, self.per_device)
      outputs.append(self._step(variables, self.source.step_inputs(keys), first))
      if time.time() - last_report > self.report_every_s:  # A progress line, with an ETA.
        jax.block_until_ready(outputs[-1])
        done = min(first + per_call, self.num_episodes)
        now = last_report = time.time()
        rate = done / (now - start)
        logging.info('Evaluated %d/%d %s episodes, %.1f episodes/s, ETA %s.', done,
                     self.num_episodes, self.source.split or '', rate,
                     _duration((self.num_episodes - done) / rate))
    # Row 0 of the first shard: the first local device's copy of all devices' results.
    accuracy, loss = (np.concatenate([np.asarray(o[i].addressable_shards[0].data)[0].reshape(-1)
                                      for o in outputs])
                      [: self.num_episodes] for i in range(2))
    return metrics_lib.summarize(accuracy), float(loss.mean())


class Progress:
  """Training progress lines whose rate and ETA count training steps only.

  The first line comes right after the first step of a process (its time is the
  compilation), then one every `every_secs`. The rate is measured over the
  training steps of the last window, with the time spent in validation and
  checkpointing (`paused`) taken out, so a validation never reads as a slow
  step. The ETA adds the validations still to come, each at the measured cost
  of the last one.

  Attributes:
    every_secs: seconds between progress lines.
  """

  every_secs = 60.0

  def __init__(self, *, num_train_steps: int, start_step: int, eval_every: int,
               writer=None, clock=time.time):
    self.num_train_steps, self.eval_every = num_train_steps, eval_every
    self.writer, self.clock = writer, clock
    self.start_step = start_step
    self.window_step, self.window_time, self.window_paused = start_step, clock(), 0.0
    self.last_validation_s = None

  @contextlib.contextmanager
  def paused(self, what: str = ''):
    """Time inside is not training time; `what='validate'` records a validation's cost."""
    start = self.clock()
    try:
      yield
    finally:
      elapsed = self.clock() - start
      self.window_paused += elapsed
      if what == 'validate':
        self.last_validation_s = elapsed

  def eta_s(self, step: int, steps_per_s: float) -> float:
    """Seconds left: the remaining steps at `steps_per_s`, and the remaining validations."""
    eta = (self.num_train_steps - step) / steps_per_s
    if self.eval_every and self.last_validation_s is not None:
      remaining = (self.num_train_steps // self.eval_every - step // self.eval_every
                   + (self.num_train_steps % self.eval_every != 0))
      eta += remaining * self.last_validation_s
    return eta

  def __call__(self, step: int, block_on=None) -> str | None:
    """Called after step `step` was dispatched; returns the line it logged, if any.

    `block_on`: the step's outputs, waited for before a line is logged, once a
    minute. Otherwise only the dispatch would be timed: the host runs ahead of the
    device until the next metrics fetch, and the rate alternated between 1.2 and
    0.3 steps/s for an EGNN run that made 0.7.
    """
    first = step == self.start_step + 1
    now = self.clock()
    if not first and now - self.window_time < self.every_secs:
      return None
    if block_on is not None:
      jax.block_until_ready(block_on)
      now = self.clock()
    train_s = max(now - self.window_time - self.window_paused, 1e-9)
    rate = (step - self.window_step) / train_s
    if first:
      line = (f'Step {step}/{self.num_train_steps}: the first step took {_duration(train_s)} '
              '(compilation included).')
    else:
      line = (f'Step {step}/{self.num_train_steps}: {rate:.2f} steps/s, '
              f'ETA {_duration(self.eta_s(step, rate))}')
      if self.last_validation_s is not None:
        line += f' (validations included, {self.last_validation_s:.0f} s each)'
      line += '.'
      if self.writer is not None:
        self.writer.write_scalars(step, {'steps_per_sec': rate})
    logging.info(line)
    self.window_step, self.window_time, self.window_paused = step, now, 0.0
    return line


def _make_sources(config, splits, test: bool, devices):
  info = data_registry.get(config.dataset)
  spec = episode_spec(config, test=test)
  augment = None if test else augment_lib.from_config(config)  # Training episodes only.
  prefix = 'test_' if test else ''
  sources = []
  for split in splits:
    dataset = data_registry.load_dataset(config.dataset, split, config.data_dir or None,
                                         config.cache_dir or None, config.download)
    if config.episode_sampling == 'device':
      if isinstance(dataset, FlatDataset):
        raise config_lib.ConfigError(
          f'The {config.dataset} {split} split is read from a memory-mapped cache, not held '
          "on the devices; set --config.episode_sampling=host.")
      sources.append(episodes_lib.DeviceEpisodes(dataset, spec, info.mean, info.std, split,
                                                 devices, augment=augment, field_prefix=prefix))
    else:
      sources.append(episodes_lib.HostEpisodes(
        dataset.load_class, dataset.num_classes, dataset.examples_per_class, spec, info.mean,
        info.std, split, devices=devices, augment=augment, field_prefix=prefix))
  return sources


def _run_devices(config) -> list:
  try:
    return parallel.run_devices(config.num_devices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None


def build(config: ml_collections.ConfigDict, training: bool = True):
  """Validates `config` and returns it completed, with the method module."""
  config = config_lib.validate(config, jax.device_count(), training=training)
  try:
    return config, models_base.get_method(config.method).from_config(config)
  except ValueError as e:  # E.g. an unknown backbone.
    raise config_lib.ConfigError(str(e)) from None


def _check_finite(pending: list, first_step: int) -> list[dict]:
  """Fetches the pending per-step metrics; raises on the first non-finite loss."""
  rows = [jax.tree.map(lambda x: float(np.asarray(x)[0]), m) for m in jax.device_get(pending)]
  for i, row in enumerate(rows):
    finite_params = row.pop('params_finite') == 1.0
    if not np.isfinite(row['loss']) or not finite_params:
      what = (f'The training loss is {row["loss"]}' if not np.isfinite(row['loss'])
              else 'The parameters became non-finite')
      raise NonFiniteLossError(
        f'{what} at step {first_step + i + 1}; stopping. Lower learning_rate or check '
        'the data; the last checkpoint holds a state from before the divergence.'
      )
  return rows


def _check_divergence(config, loss: float, early: float, first: int, last: int) -> None:
  """Warns (or with `stop_on_divergence`, stops) when the loss has exploded.

  With Adam a far too large learning rate makes the loss grow by orders of
  magnitude and stay finite, so the non-finite check never fires.
  """
  factor = config.divergence_factor
  if not factor or loss <= factor * max(abs(early), 1e-8):
    return
  message = (f'The training loss over steps {first}-{last} is {loss:.3g}, more than '
             f'divergence_factor={factor:g} times its first logged value ({early:.3g}): training '
             'has diverged. Lower learning_rate.')
  if config.stop_on_divergence:
    raise DivergedError(message + ' The last checkpoint holds an earlier state.')
  logging.warning('%s (Set stop_on_divergence=True to stop instead.)', message)


# Fields that may change when a run is resumed: they do not change what is trained.
# The last four trade memory for recomputation in the same function (each has a
# test that values and gradients are unchanged), so only the rounding may differ.
RESUMABLE_CHANGES = frozenset({
  'num_train_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
  'eval_episodes', 'eval_batch_size', 'data_dir', 'cache_dir', 'download', 'num_devices',
  'divergence_factor', 'stop_on_divergence',
  'remat', 'embed_chunk_size', 'graph_remat', 'scan_unroll',
})


def _check_workdir(workdir: str) -> None:
  """One clear error for a workdir that cannot hold a run."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):  # The nearest existing folder it would go in.
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = '' if existing == os.path.abspath(workdir) else f': {existing}'
    raise config_lib.ConfigError(f'--workdir {workdir}{where} is a file, not a folder; choose '
                                 'another path.')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise config_lib.ConfigError(f'--workdir {workdir}: {existing} is not writable; choose a '
                                 '--workdir you can write to.')


def _check_resumable(config, workdir: str) -> None:
  """Refuses to continue a workdir trained with another protocol.

  A workdir without a checkpoint holds nothing to protect (e.g. a run that
  stopped at a bad setting before training): its `config.json` is replaced.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path) or not checkpoint_lib.has_checkpoint(workdir):
    return
  with open(path) as f:
    previous = config_lib.from_saved(json.load(f))
  changed = sorted(k for k in set(previous) | set(config.keys())
                   if k not in RESUMABLE_CHANGES and previous.get(k) != config.get(k))
  if changed:
    raise config_lib.ConfigError(
      f'{workdir} holds a run with other settings ({", ".join(changed)}); resuming it '
      'would mix two protocols. Use a new --workdir, or experiments/evaluate.py to test '
      'the trained model at another shape.'
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, validates, tests; resumes from `workdir`; writes `workdir/results.json`.

  Args:
    config: an experiment config (see `fsl_jax.config.base_config`).
    workdir: where checkpoints, TensorBoard summaries and results go.

  Returns:
    The results dict that is also written to `workdir/results.json`.
  """
  start_time = time.time()
  config, model = build(config)
  _check_workdir(workdir)
  _check_resumable(config, workdir)

  # Everything that can be checked (data present and decodable, episode shapes
  # against split sizes) is checked before anything is written to `workdir`.
  devices = _run_devices(config)
  (train_source,) = _make_sources(config, [config.train_split], False, devices)
  (test_source,) = _make_sources(config, [config.test_split], True, devices)
  if config.eval_every:
    (val_source,) = _make_sources(config, [config.val_split], True, devices)
    validate = Evaluator(model, val_source, num_episodes=config.val_episodes,
                         seed=config.eval_seed, per_device=config.eval_batch_size)
  else:
    validate = None
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise config_lib.ConfigError(f'Cannot write to the workdir {workdir} ({e.strerror}); '
                                 'choose a --workdir you can write to.') from None
  # One lock and one writer per run: the main process (the workdir is shared by
  # all processes of a multi-process run, e.g. a bucket or a network folder).
  main = parallel.is_main_process()
  with checkpoint_lib.workdir_lock(workdir) if main else contextlib.nullcontext():
    if main:
      write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    return _train(config, model, workdir, devices, train_source, test_source, validate,
                  start_time)


def save_imported(config: ml_collections.ConfigDict, variables: dict, workdir: str,
                  image_shape: tuple[int, ...]) -> None:
  """Writes a workdir holding `variables` (e.g. weights converted from another
  library) as its only checkpoint, step 1, for `evaluate_checkpoint` and
  `load_trained`; training from it starts a fresh optimizer.

  Args:
    config: the config whose model the variables belong to.
    variables: `{'params', 'batch_stats'}` with the model's tree and shapes.
    workdir: a new folder, or one without a checkpoint.
    image_shape: the input shape `(H, W, C)` the model is built for.

  Raises:
    ConfigError: the workdir holds a checkpoint already, or cannot be written;
      ValueError: the variables do not have the model's tree or shapes.
  """
  config, model = build(config)
  _check_workdir(workdir)
  if checkpoint_lib.has_checkpoint(workdir):
    raise config_lib.ConfigError(f'{workdir} holds a checkpoint already; choose a new --workdir.')
  state = create_train_state(config, model, image_shape, jax.random.PRNGKey(config.seed))
  want = {'params': state.params, 'batch_stats': state.batch_stats}
  shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)
  if shapes(want) != shapes(dict(variables)):
    raise ValueError('The variables do not fit the model of this config: they have the tree '
                     f'{shapes(dict(variables))}, the model {shapes(want)}.')
  state = state.replace(step=1,
                        params=jax.tree.map(jnp.asarray, variables['params']),
                        batch_stats=jax.tree.map(jnp.asarray, variables['batch_stats']))
  os.makedirs(workdir, exist_ok=True)
  with checkpoint_lib.workdir_lock(workdir):
    write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    ckpt = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
    ckpt.save(1, state, {'accuracy': -1.0, 'step': 0})
    ckpt.wait()


def _train(config, model, workdir, devices, train_source, test_source, validate, start_time):
  """The training loop of `train_and_evaluate`, with `workdir` locked."""
  per_device = config.meta_batch_size // len(devices)
  train_spec = episode_spec(config)

  state = create_train_state(config, model, train_source.image_shape,
                             jax.random.PRNGKey(config.seed))
  ckpt = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
  # Resume order: the latest checkpoint in workdir if there is one, else a fresh
  # state; the best validation score travels with it.
  state, best = ckpt.restore_latest(state, set_aside_unreadable=True)
  ckpt.prune_best(best['step'])
  start_step = int(state.step)
  if start_step:
    logging.info('Resumed from step %d in %s.', start_step, workdir)

  step_fn = functools.partial(train_step, model=model, source=train_source, spec=train_spec,
                              per_device=per_device)
  p_train_step = jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)
  p_state = parallel.replicate(state, devices)
  train_key = state.train_key
  del state

  def train_inputs(step):
    """What the step needs; host sources sample ahead (keys as on the device)."""
    if not train_source.needs_host_keys:
      return train_source.step_inputs()
    for ahead in range(step, min(step + train_source.prefetch, config.num_train_steps + 1)):
      if ahead not in queued:
        queued.add(ahead)
        step_key = jax.random.fold_in(train_key, ahead - 1)  # state.step before the update.
        train_source.enqueue(host_episode_keys(step_key, 0, len(devices), per_device))
    return train_source.step_inputs()

  queued = set()

  main = parallel.is_main_process()
  writer = writers.MultiWriter([
    writers.create_default_writer(workdir, just_logging=not main),
    *([history.JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))] if main else []),
  ])
  report = Progress(num_train_steps=config.num_train_steps, start_step=start_step,
                    eval_every=config.eval_every, writer=writer)
  pending, pending_from = [], start_step

  early_loss = None  # The mean loss of the first logged window of this process.

  def flush(step):
    """Checks and writes the metrics of the steps since the last flush."""
    nonlocal pending, pending_from, early_loss
    if pending:
      rows = _check_finite(pending, pending_from)
      means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
      writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
      if early_loss is None:
        early_loss = means['loss']
      else:
        _check_divergence(config, means['loss'], early_loss, pending_from + 1, step)
    pending, pending_from = [], step

  train_start = time.time()
  # A signal reaches one process of a multi-process run, or several at other steps:
  # they agree at the logging steps (one collective there), single processes at once.
  multiprocess = jax.process_count() > 1
  with _signals_as_requests() as requested:
    for step in range(start_step + 1, config.num_train_steps + 1):
      stop = [] if multiprocess else requested
      p_state, step_metrics = p_train_step(p_state, train_inputs(step))
      pending.append(step_metrics)
      report(step, block_on=step_metrics)
      last = step == config.num_train_steps
      if step % config.log_every == 0 or last:
        flush(step)
      if config.eval_every and (step % config.eval_every == 0 or last):
        flush(step)
        with report.paused('validate'):
          summary, loss = validate(_eval_variables(p_state))
        writer.write_scalars(step, {'val/accuracy': summary.accuracy, 'val/loss': loss})
        logging.info('Step %d: validation %s', step, summary)
        if summary.accuracy > best['accuracy']:
          best = {'accuracy': summary.accuracy, 'step': step}
          with report.paused():
            ckpt.save_best(parallel.unreplicate(p_state), best)
      if multiprocess and (step % config.log_every == 0 or last):
        stop = [0] if parallel.any_process(bool(requested)) else []  # All stop together.
      if step % config.checkpoint_every == 0 or last or stop:
        flush(step)  # Never checkpoint a state that diverged.
        with report.paused():
          ckpt.save(step, parallel.unreplicate(p_state), best)
      if stop:
        ckpt.wait()
        writer.close()
        name = signal.Signals(requested[0]).name if requested else 'another process\'s signal'
        raise Interrupted(name, step, workdir)
  train_time = time.time() - train_start
  ckpt.wait()

  final = parallel.unreplicate(p_state)
  if best['step'] > 0:
    final = ckpt.restore_best(final, best['step'])
    logging.info('Testing the best validation checkpoint (step %d).', best['step'])
  test = Evaluator(model, test_source, num_episodes=config.eval_episodes, seed=config.eval_seed,
                   per_device=config.eval_batch_size)
  summary, test_loss = test(_eval_variables(parallel.replicate(final, devices)))
  logging.info('Test: %s', summary)
  writer.write_scalars(config.num_train_steps, {'test/accuracy': summary.accuracy})
  writer.close()
  results = results_dict(config, summary, devices=len(devices), best=best, test_loss=test_loss,
                         wall_time_s=time.time() - start_time, train_time_s=train_time,
                         processes=jax.process_count())
  if main:
    write_json(os.path.join(workdir, 'results.json'), results)
  return results


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
    f'{seconds // 60}m{seconds % 60:02d}s'


def _eval_variables(p_state) -> dict:
  return {'params': p_state.params, 'batch_stats': p_state.batch_stats}


def results_dict(config, summary: metrics_lib.AccuracySummary, **extra) -> dict:
  """The fields of `results.json`."""
  return {
    'method': config.method, 'dataset': config.dataset,
    'way': config.test_way, 'shot': config.test_shot, 'query': config.test_query,
    'train_way': config.way, 'train_shot': config.shot, 'train_query': config.query,
    'test_accuracy': summary.accuracy, 'test_ci95': summary.ci95,
    'test_episodes': summary.episodes, 'steps': config.num_train_steps, 'seed': config.seed,
    'eval_seed': config.eval_seed,
    'method_config': {k: config[k] for k in config_lib.method_defaults(config.method)},
    'compute_dtype': config.compute_dtype,
    'jax_version': jax.__version__,
    'platform': jax.devices()[0].platform, **extra,
  }


def write_json(path: str, payload: dict) -> None:
  """Writes `payload` atomically: a reader never sees a half-written file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1, default=float)
  os.replace(tmp, path)


def _load_config(workdir: str, overrides: dict) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f'{workdir} has no config.json; is it a training workdir?')
  with open(path) as f:
    config = config_lib.from_saved(json.load(f))
  config.num_devices = 0  # Evaluation runs on whatever devices are here now.
  for key, value in overrides.items():
    if key not in config:
      raise config_lib.ConfigError(f'Unknown config field {key!r}.')
    config[key] = value
  return config


def _restore(config, model, workdir: str, checkpoint: str, image_shape) -> TrainState:
  """The 'best' (falling back to 'latest' without validation) or 'latest' state."""
  if checkpoint not in ('best', 'latest'):
    raise config_lib.ConfigError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}.")
  state = create_train_state(config, model, image_shape, jax.random.PRNGKey(config.seed))
  ckpt = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
  state, best = ckpt.restore_latest(state)
  if int(state.step) == 0:
    raise checkpoint_lib.CheckpointNotFoundError(f'No checkpoint in {workdir}.')
  if checkpoint == 'best' and best['step'] > 0:
    state = ckpt.restore_best(state, best['step'])
  return state


def load_trained(workdir: str, *, checkpoint: str = 'best', **overrides):
  """A trained model for analysis (e.g. in a notebook).

  Args:
    workdir: a training workdir.
    checkpoint: 'best' or 'latest', as in `evaluate_checkpoint`.
    **overrides: config fields to change (e.g. EGNN's `transductive`).

  Returns:
    `(config, model, variables)`: `model.apply(variables, ..., train=False)`
    runs the trained method.
  """
  config, model = build(_load_config(workdir, overrides), training=False)
  dataset = data_registry.load_dataset(config.dataset, config.test_split, config.data_dir or None,
                                       config.cache_dir or None, config.download)
  state = _restore(config, model, workdir, checkpoint, dataset.image_shape)
  return config, model, {'params': state.params, 'batch_stats': state.batch_stats}


_NAMED_FIELDS = frozenset({'test_split', 'test_way', 'test_shot', 'test_query', 'eval_episodes',
                           'data_dir', 'cache_dir', 'eval_batch_size'})


def evaluate_checkpoint(workdir: str, *, checkpoint: str = 'best', **overrides) -> dict:
  """Re-evaluates the checkpoint in `workdir`, optionally at another episode shape.

  Args:
    workdir: a training workdir (holding `config.json` and checkpoints).
    checkpoint: 'best' (best validation; falls back to 'latest' when there was
      no validation) or 'latest'.
    **overrides: config fields to change, e.g. `test_way=20, eval_episodes=1000`,
      or a method's own (`transductive=False`).

  Returns:
    The results dict, also written to
    `workdir/eval_<split>_<way>way_<shot>shot_<query>query_<episodes>episodes_<checkpoint>.json`
    (plus `_<field>-<value>` for each override of another field).
  """
  config, model = build(_load_config(workdir, overrides), training=False)
  devices = _run_devices(config)
  (source,) = _make_sources(config, [config.test_split], True, devices)
  state = _restore(config, model, workdir, checkpoint, source.image_shape)
  evaluator = Evaluator(model, source, num_episodes=config.eval_episodes, seed=config.eval_seed,
                        per_device=config.eval_batch_size)
  start = time.time()
  summary, loss = evaluator(_eval_variables(parallel.replicate(state, devices)))
  results = results_dict(config, summary, devices=len(devices), checkpoint=checkpoint,
                         checkpoint_step=int(state.step), split=config.test_split,
                         test_loss=loss, eval_time_s=time.time() - start)
  # Overrides beyond the episode shape (e.g. EGNN's `transductive`) name the file too.
  extra = ''.join(f'_{k}-{v}' for k, v in sorted(overrides.items()) if k not in _NAMED_FIELDS)
  name = (f'eval_{config.test_split}_{config.test_way}way_{config.test_shot}shot_'
          f'{config.test_query}query_{config.eval_episodes}episodes_{checkpoint}{extra}.json')
  if parallel.is_main_process():
    write_json(os.path.join(workdir, name), results)
  return results
