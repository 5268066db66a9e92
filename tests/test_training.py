"""The training loop: devices, resume, determinism, failures, and real learning."""

import functools
import json
import os
import re
import shutil

import chex
import jax
import numpy as np
import pytest
from helpers import tiny_config, trained_state

from fsl_jax import config as config_lib
from fsl_jax.models import backbones
from fsl_jax.training import checkpoint as checkpoint_lib
from fsl_jax.training import train

SHORT = dict(num_train_steps=4, eval_every=0, eval_episodes=8, checkpoint_every=2, log_every=1)


def test_four_devices_equal_one_device(tmp_path):
  """Same total meta-batch on 4 devices (1 episode each) and on 1 device (4).

  SGD, because Adam's first steps are lr * sign(gradient): a gradient entry that
  is zero up to rounding (summation order differs across devices) flips sign.
  Augmented, so that the augmentation is checked to depend on the episode alone.
  """
  assert jax.local_device_count() == 4
  results = {}
  for n in (1, 4):
    config = tiny_config(num_devices=n, meta_batch_size=4, optimizer='sgd', learning_rate=0.05,
                         augment='pad_crop,flip', **SHORT)
    results[n] = train.train_and_evaluate(config, str(tmp_path / str(n)))
    results[n]['state'] = trained_state(config, str(tmp_path / str(n)))
  assert results[4]['devices'] == 4 and results[1]['devices'] == 1
  a, b = results[1]['state'], results[4]['state']
  chex.assert_trees_all_close((a.params, a.batch_stats), (b.params, b.batch_stats),
                              rtol=1e-3, atol=1e-4)
  init = train.create_train_state(*train.build(config), (28, 28, 1), jax.random.PRNGKey(0)).params
  moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.params, init)
  assert min(jax.tree.leaves(moved)) > 1e-4  # Training moved every parameter.
  np.testing.assert_allclose(results[1]['test_accuracy'], results[4]['test_accuracy'], atol=0.02)


@pytest.mark.parametrize('sampling, augment', [('device', ''), ('host', 'pad_crop,flip,jitter')])
def test_resume_equals_uninterrupted_run(tmp_path, sampling, augment):
  """Also the determinism test: two runs of one config agree bit for bit."""
  config = tiny_config(num_devices=2, episode_sampling=sampling, augment=augment, **SHORT)
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  interrupted = tiny_config(num_devices=2, episode_sampling=sampling, augment=augment,
                            **{**SHORT, 'num_train_steps': 2})
  train.train_and_evaluate(interrupted, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['steps'] == 4
  a = trained_state(config, str(tmp_path / 'straight'))
  b = trained_state(config, str(tmp_path / 'resumed'))
  assert int(a.step) == int(b.step) == 4
  jax.tree.map(np.testing.assert_array_equal, (a.params, a.batch_stats, a.opt_state),
               (b.params, b.batch_stats, b.opt_state))


def test_non_finite_training_stops_with_the_step(tmp_path):
  # An infinite step size: the loss of step 1 is finite, the update of step 1 is not.
  config = tiny_config(num_devices=1, learning_rate=float('inf'), **SHORT)
  with pytest.raises(train.NonFiniteLossError, match='parameters became non-finite at step 1;'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'results.json')
  assert not os.listdir(tmp_path / 'checkpoints')  # Never saves a diverged state.


def test_resume_after_dying_between_a_best_save_and_a_checkpoint(tmp_path):
  config = tiny_config(num_devices=1, **{**SHORT, 'eval_every': 1, 'val_episodes': 4})
  first = train.train_and_evaluate(config, str(tmp_path))
  shutil.rmtree(tmp_path / 'checkpoints' / '4')  # As if the run died before this save.
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert resumed['best'] == first['best'] and resumed['test_accuracy'] == first['test_accuracy']


def test_resuming_with_another_protocol_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(num_devices=1, **SHORT), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match=r'other settings \(shot\)'):
    train.train_and_evaluate(tiny_config(num_devices=1, shot=2, **SHORT), str(tmp_path))


def test_steps_compile_once(tmp_path, monkeypatch):
  traces = {'train': 0, 'eval': 0}

  def counting(name, fn):
    def wrapped(*args, **kwargs):
      traces[name] += 1
      return fn(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(train, 'train_step', counting('train', train.train_step))
  monkeypatch.setattr(train, 'eval_step', counting('eval', train.eval_step))
  config = tiny_config(num_devices=2, **{**SHORT, 'num_train_steps': 6, 'eval_every': 2,
                                         'val_episodes': 30, 'eval_batch_size': 4})
  train.train_and_evaluate(config, str(tmp_path))
  # One trace of the train step for 6 steps; one eval trace each for the
  # validation (3 runs of 4 calls) and test evaluators.
  assert traces == {'train': 1, 'eval': 2}


def test_results_json_fields(tmp_path):
  train.train_and_evaluate(tiny_config(num_devices=2, **SHORT), str(tmp_path))
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  for field in ('method', 'dataset', 'way', 'shot', 'query', 'test_accuracy', 'test_ci95',
                'test_episodes', 'steps', 'seed', 'wall_time_s', 'jax_version', 'devices',
                'compute_dtype'):
    assert field in results, field
  assert results['test_episodes'] == 8 and results['devices'] == 2
  assert 0 <= results['test_accuracy'] <= 1 and 0 < results['test_ci95'] < 1


@pytest.mark.parametrize('overrides, message', [
  ({'learning_rat': 0.1}, "Unknown config field 'learning_rat'.*Did you mean 'learning_rate'"),
  ({'method': 'protonets'}, "Unknown method 'protonets'.*Did you mean 'protonet'"),
  ({'meta_batch_size': 3, 'num_devices': 2}, 'meta_batch_size=3 does not divide over 2'),
  ({'num_devices': 9}, 'num_devices=9, but 4 local devices exist'),
  ({'unlabeled_shot': 1}, "'protonet' does not use unlabelled supports"),
  ({'backbone': 'conv5'}, "Unknown backbone 'conv5'"),
  ({'val_episodes': 0}, 'val_episodes must be at least 1'),
  ({'meta_batch_size': 0}, 'meta_batch_size must be at least 1'),
  ({'val_split': 'test'}, "val_split='test' is also the train or test split"),
  ({'train_split': 'trainval'}, "val_split='val' is also the train or test split .or part"),
  ({'train_split': 'test'}, "train_split='test' shares classes with test_split='test'"),
  ({'compute_dtype': 'float16'}, "compute_dtype must be 'float32' or 'bfloat16'"),
])
def test_bad_configs_are_clear_errors(overrides, message):
  config = tiny_config()
  with config.unlocked():
    config.update(overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    train.build(config)


def test_impossible_test_episode_is_a_clear_error(tmp_path):
  from fsl_jax.data import errors

  with pytest.raises(errors.EpisodeError,
                     match=r'A 2000-way episode \(test_way=2000\) needs 2000 distinct classes'):
    train.train_and_evaluate(tiny_config(test_way=2000, **SHORT), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()  # Nothing written before the check.


@pytest.mark.slow
def test_tiny_training_on_real_omniglot_beats_chance(tmp_path):
  config = tiny_config(num_devices=4, meta_batch_size=4, num_train_steps=150, eval_every=50,
                       eval_episodes=200)
  results = train.train_and_evaluate(config, str(tmp_path))
  # Chance is 20% for 5-way; an untrained Conv-4 gets roughly 50-70% from the
  # random features alone, and 150 steps reach about 90%.
  assert results['test_accuracy'] > 0.8, results
  assert results['test_accuracy'] - results['test_ci95'] > 0.6
  state = trained_state(config, str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_history_skips_a_line_cut_short(tmp_path):
  from fsl_jax.training import history

  history.JsonlWriter(str(tmp_path / 'metrics.jsonl')).write_scalars(1, {'train/loss': 2.0})
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 2, "train/lo')  # A killed run.
  history.JsonlWriter(str(tmp_path / 'metrics.jsonl')).write_scalars(3, {'train/loss': 1.0})
  assert history.read(str(tmp_path)) == [{'step': 1, 'train/loss': 2.0},
                                         {'step': 3, 'train/loss': 1.0}]


def test_a_config_saved_before_a_field_existed_still_loads():
  config = config_lib.from_saved({'method': 'protonet', 'way': 7})
  assert config.way == 7 and config.episode_sampling == 'device' and config.backbone == 'conv4'


def test_meta_batch_batchnorm_pools_the_episodes_of_the_vmap():
  """bn_axis='episodes' under the train step's vmap = one batch of all episodes' images."""
  rng = np.random.default_rng(0)
  images = rng.random((3, 4, 28, 28, 1), np.float32)  # 3 episodes of 4 images.
  pooled = backbones.Conv4(bn_axis=backbones.EPISODES)
  single = backbones.Conv4()
  variables = jax.jit(functools.partial(single.init, train=False))(jax.random.PRNGKey(0),
                                                                   images[0])
  run = lambda model, x: model.apply(variables, x, train=True, mutable=['batch_stats'])
  # Jitted: op by op, this test compiled 202 programs.
  vmapped, vmapped_stats = jax.jit(jax.vmap(lambda x: run(pooled, x),
                                            axis_name=backbones.EPISODES))(images)
  together, together_stats = jax.jit(lambda x: run(single, x))(images.reshape(12, 28, 28, 1))
  np.testing.assert_allclose(vmapped.reshape(12, -1), together, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], vmapped_stats), together_stats,
                              rtol=1e-4, atol=1e-6)
  # Per-episode statistics (the default) differ.
  alone, _ = jax.jit(jax.vmap(lambda x: run(single, x)))(images)
  assert not np.allclose(alone.reshape(12, -1), together, atol=1e-3)


def _garble(folder):
  """Overwrites the middle of every file under `folder` (a checkpoint step)."""
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, 'r+b') as f:
        f.seek(size // 3)
        f.write(b'\x00garbled\xff' * max(1, size // 30))


def test_a_corrupt_latest_checkpoint_falls_back_to_an_older_one(tmp_path, caplog):
  config = tiny_config(num_devices=2, **{**SHORT, 'num_train_steps': 6})
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  train.train_and_evaluate(tiny_config(num_devices=2, **SHORT), str(tmp_path / 'resumed'))
  _garble(tmp_path / 'resumed' / 'checkpoints' / '4')
  with caplog.at_level('WARNING'):
    resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert 'checkpoints/4 is unreadable' in caplog.text
  assert (tmp_path / 'resumed' / 'unreadable_checkpoints' / '4').is_dir()  # Kept, aside.
  assert resumed['steps'] == 6
  a = trained_state(config, str(tmp_path / 'straight'))
  b = trained_state(config, str(tmp_path / 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)  # Steps 3-4 redone exactly.
  # With every checkpoint unreadable: one clear error.
  for step in os.listdir(tmp_path / 'resumed' / 'checkpoints'):
    if step.isdigit():
      _garble(tmp_path / 'resumed' / 'checkpoints' / step)
  with pytest.raises(checkpoint_lib.CheckpointNotFoundError, match='None of the checkpoints'):
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
  config = tiny_config(num_devices=1, **{**SHORT, 'num_train_steps': 2})
  os.makedirs(tmp_path / 'w')
  with checkpoint_lib.workdir_lock(str(tmp_path / 'w')):  # As a running process holds it.
    with pytest.raises(checkpoint_lib.WorkdirBusyError, match=r'in use by another run \(pid'):
      train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w' / 'config.json').exists()  # The busy run's files are untouched.
  train.train_and_evaluate(config, str(tmp_path / 'w'))  # Released: the run goes ahead.


def test_evaluation_reports_progress_with_an_eta(tmp_path, caplog, monkeypatch):
  monkeypatch.setattr(train.Evaluator, 'report_every_s', 0.0)
  config = tiny_config(num_devices=1, eval_batch_size=5, **{**SHORT, 'num_train_steps': 1,
                                                             'eval_episodes': 20})
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, str(tmp_path))
  assert re.search(r'Evaluated 10/20 test episodes, [\d.]+ episodes/s, ETA \dm\d\ds', caplog.text)


def test_training_progress_excludes_validation_and_counts_it_in_the_eta():
  """A fake clock: 1 s per step, a 30 s validation every 10 steps, 40 steps."""
  now = [100.0]
  progress = train.Progress(num_train_steps=40, start_step=0, eval_every=10,
                            clock=lambda: now[0])
  progress.every_secs = 5.0
  lines = {}
  for step in range(1, 41):
    now[0] += 20.0 if step == 1 else 1.0  # The first step compiles.
    line = progress(step)
    if line:
      lines[step] = line
    if step % 10 == 0 and step < 40:
      with progress.paused('validate'):
        now[0] += 30.0
  # Speaks at once after the first step, then every 5 s of wall time.
  assert lines[1] == 'Step 1/40: the first step took 0m20s (compilation included).'
  assert lines[6] == 'Step 6/40: 1.00 steps/s, ETA 0m34s.'
  # After a validation the rate is still 1 step/s (the 30 s are not training),
  # and the ETA adds the 3 validations to come (at steps 20, 30, 40) at 30 s each.
  assert lines[11] == 'Step 11/40: 1.00 steps/s, ETA 1m59s (validations included, 30 s each).'


def test_training_progress_times_the_device_not_the_dispatch(monkeypatch):
  """The host dispatches a step in 0.1 s and the device runs it in 1 s: a line
  waits for the step it reports, so the rate is the device's 1 step/s, not the
  10 steps/s of the dispatch."""
  now, done = [0.0], [0.0]  # The host's clock, and when the device finishes.

  def block_until_ready(step):
    now[0] = max(now[0], done[0])
    return step

  monkeypatch.setattr(train.jax, 'block_until_ready', block_until_ready)
  progress = train.Progress(num_train_steps=300, start_step=0, eval_every=0,
                            clock=lambda: now[0])
  progress.every_secs = 5.0
  lines = []
  for step in range(1, 201):
    now[0] += 0.1
    done[0] = max(done[0], now[0] - 0.1) + 1.0
    line = progress(step, block_on=step)
    if line and step > 1:
      lines.append(line)
  assert lines and all(' 1.00 steps/s' in line for line in lines), lines


def test_training_speaks_after_its_first_step(tmp_path, caplog):
  config = tiny_config(num_devices=1, **{**SHORT, 'num_train_steps': 2})
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, str(tmp_path))
  assert re.search(r'Step 1/2: the first step took \dm\d\ds \(compilation included\)\.',
                   caplog.text)


def test_an_exploding_but_finite_loss_is_a_divergence(tmp_path, caplog):
  # Adam with a huge step: the loss grows by orders of magnitude and stays finite.
  config = tiny_config(num_devices=1, learning_rate=1e6, **SHORT)
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(config, str(tmp_path / 'warn'))
  assert 'training has diverged' in caplog.text
  config.stop_on_divergence = True
  with pytest.raises(train.DivergedError, match=r'steps 2-2 is .* divergence_factor=1000'):
    train.train_and_evaluate(config, str(tmp_path / 'stop'))
  config = tiny_config(num_devices=1, stop_on_divergence=True, **SHORT)
  train.train_and_evaluate(config, str(tmp_path / 'fine'))  # A normal run is not flagged.


def test_a_workdir_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
  # Root ignores permissions on this machine, so `os.access` says no instead.
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: (
    False if str(path) == str(tmp_path) else real_access(path, mode)))
  config = tiny_config(num_devices=1, **{**SHORT, 'num_train_steps': 1})
  with pytest.raises(config_lib.ConfigError, match=r'is not writable; choose a --workdir'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
