"""Two processes of 2 CPU devices each train and test as one process of 4 devices does."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from helpers import CONFIGS, tiny_config

from fsl_jax import parallel
from fsl_jax.training import checkpoint, history, train

REPO = CONFIGS.parents[1]
# SGD: Adam's first steps are lr * sign(gradient), which rounding can flip (the
# two layouts sum the devices' gradients in different orders).
# 20 steps of 16 episodes: slow enough for a signal to land mid-run. Every 4th step
# is kept, to compare the layouts after 4 steps: later, rounding (the layouts sum
# the devices' gradients in other orders) grows, from 1e-7 in the loss at step 5 to
# 1e-4 at step 20, and can flip a near-tied test prediction.
FIELDS = dict(meta_batch_size=16, optimizer='sgd', learning_rate=0.05, num_train_steps=20,
              eval_every=10, val_episodes=8, eval_episodes=12, eval_batch_size=2,
              checkpoint_every=4, keep_checkpoints=10, log_every=1, episode_sampling='host')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two_processes(workdir) -> list[subprocess.Popen]:
  """`experiments/train.py` as 2 processes with 2 devices each, on one coordinator."""
  flags = [f'--config={CONFIGS / "protonet_omniglot.py"}:tiny', f'--workdir={workdir}',
           f'--coordinator_address=127.0.0.1:{_free_port()}', '--num_processes=2',
           *(f'--config.{k}={v}' for k, v in FIELDS.items())]
  # The device-count flag alone: the test session's own XLA_FLAGS ask for 4.
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': str(REPO)}
  return [subprocess.Popen([sys.executable, '-m', 'experiments.train', *flags,
                            f'--process_id={i}'], cwd=REPO, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]


def _finish(processes, expect: int = 0) -> list[str]:
  """Waits for both (bounded), kills what is left; checks the exit statuses."""
  try:
    outputs = [p.communicate(timeout=300)[1] for p in processes]
  finally:
    for p in processes:  # A hung collective must not outlive the test.
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert [p.returncode for p in processes] == [expect] * 2, [e[-2000:] for e in outputs]
  return outputs


def _state(config, workdir, step=None):
  config, model = train.build(config)
  template = train.create_train_state(config, model, (28, 28, 1), jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpoints(str(workdir), keep=10)
  return (ckpt.restore_step(template, step) if step else ckpt.restore_latest(template))[0]


def _losses(workdir) -> dict:
  return {r['step']: r['train/loss'] for r in history.read(str(workdir)) if 'train/loss' in r}


def _assert_close_up_to_rounding(x, y):
  """Equal up to the rounding of another summation order, which grows over steps:
  after 4 steps most entries agree to 1e-8, but one BatchNorm offset (about 9e-3,
  then 5e-3) differed by 1.2e-6 in one run and by 1.1e-5 in another (a near-tie in a
  max-pool, flipped by rounding, routes a gradient elsewhere). A wrong episode
  assignment moves every entry, so the mean difference stays tight."""
  chex.assert_trees_all_equal_structs(x, y)
  diffs = np.concatenate([np.abs(np.asarray(u) - np.asarray(v)).ravel()
                          for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)])
  assert diffs.max() < 1e-4 and diffs.mean() < 1e-7, (diffs.max(), diffs.mean())


@pytest.mark.slow
def test_two_processes_train_and_resume_as_one_process_with_their_devices(tmp_path):
  """Host sampling: each process samples its own devices' episodes only (device
  sampling passed the same test when it was written).

  1. After 4 steps the parameters equal those of one process of 4 devices.
  2. SIGTERM reaches process 1 alone during training: both stop at the same step,
     save it and exit 130; the rerun resumes exactly (bit for bit the run that
     was not interrupted), and only process 0 wrote the run's files.
  3. The two processes' test accuracy equals one process's evaluation of the
     same checkpoint on the same fixed episodes.
  """
  assert jax.local_device_count() == 4
  config = tiny_config(num_devices=4, **{**FIELDS, 'num_train_steps': 4})
  train.train_and_evaluate(config, str(tmp_path / 'single'))

  straight = tmp_path / 'straight'
  err = _finish(_start_two_processes(straight))
  assert 'process 1 of 2, 2 local devices' in err[1]
  a, b = _state(config, tmp_path / 'single'), _state(config, straight, step=4)
  _assert_close_up_to_rounding((a.params, a.batch_stats), (b.params, b.batch_stats))

  resumed = tmp_path / 'resumed'
  processes = _start_two_processes(resumed)
  metrics, deadline = resumed / 'metrics.jsonl', time.time() + 300
  while not (metrics.exists() and '"step": 2,' in metrics.read_text()):
    if any(p.poll() is not None for p in processes) or time.time() > deadline:
      _finish(processes, expect=-1)  # Fails, with both processes' output.
    time.sleep(0.2)
  processes[1].send_signal(signal.SIGTERM)
  err = _finish(processes, expect=130)
  saved = {int(e.strip().splitlines()[-1].split(' at step ')[1].split(';')[0]) for e in err}
  assert len(saved) == 1 and 2 <= min(saved) < FIELDS['num_train_steps'], saved
  assert "interrupted by another process's signal" in err[0] and 'by SIGTERM' in err[1]
  assert not (resumed / 'results.json').exists()
  _finish(_start_two_processes(resumed))
  x, y = _state(config, straight), _state(config, resumed)
  assert int(x.step) == int(y.step) == 20
  jax.tree.map(np.testing.assert_array_equal, (x.params, x.batch_stats), (y.params, y.batch_stats))
  assert _losses(resumed) == _losses(straight) and sorted(_losses(resumed)) == list(range(1, 21))
  # One writer: each step's line once, over the two invocations.
  logged = [json.loads(line)['step'] for line in open(metrics) if 'train/loss' in line]
  assert sorted(logged) == list(range(1, 21))

  with open(resumed / 'results.json') as f:
    got = json.load(f)
  with open(straight / 'results.json') as f:
    assert json.load(f)['test_accuracy'] == got['test_accuracy']
  assert got['devices'] == 4 and got['processes'] == 2 and got['test_episodes'] == 12
  here = train.evaluate_checkpoint(str(resumed), checkpoint='best')
  assert here['checkpoint_step'] == got['best']['step']
  np.testing.assert_allclose(here['test_accuracy'], got['test_accuracy'], atol=1e-7)


# Both processes save `latest` and `best` at the same steps (a new best at a
# checkpoint step); process 0, the writer, reaches the end-of-write barriers 2 s late.
_SAVE_BOTH = """
import sys, time
import numpy as np
from orbax.checkpoint._src.multihost import multihost
from fsl_jax import parallel
from fsl_jax.training import checkpoint
address, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parallel.initialize(address, 2, pid)
if pid == 0:
  make = multihost.get_barrier_sync_fn
  def late(**kwargs):
    fn = make(**kwargs)
    def wait(*, key, timeout_ms):
      if 'async_write_complete' in key:
        time.sleep(2)
      return fn(key=key, timeout_ms=timeout_ms)
    return wait
  multihost.get_barrier_sync_fn = late
ckpt = checkpoint.Checkpoints(workdir, keep=10)
for step in (1, 2):
  state = {'w': np.full(10, step, np.float32)}
  ckpt.save(step, state, {'accuracy': 0.1 * step, 'step': step})
  ckpt.save_best(state, {'accuracy': 0.1 * step, 'step': step})
ckpt.wait()
"""


def test_latest_and_best_saves_of_one_step_do_not_share_barriers(tmp_path):
  """A run whose best validation falls on a checkpoint step saves both at once;
  with one barrier name for both (Orbax's default), process 1 waited twice at
  `_async_write_complete.<step>` and the run hung (CI, stop 23)."""
  address = f'127.0.0.1:{_free_port()}'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
         'PYTHONPATH': str(REPO)}
  processes = [subprocess.Popen([sys.executable, '-c', _SAVE_BOTH, address, str(i),
                                 str(tmp_path)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=60)[1] for p in processes]
  except subprocess.TimeoutExpired:
    outputs = ['timed out after 60 s'] * 2
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert [p.returncode for p in processes] == [0, 0], [e[-1500:] for e in outputs]
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=10)
  template = {'w': np.zeros(10, np.float32)}
  state, best = ckpt.restore_latest(template)
  np.testing.assert_array_equal(state['w'], 2.0)
  assert best == {'accuracy': 0.2, 'step': 2}
  np.testing.assert_array_equal(ckpt.restore_best(template)['w'], 2.0)


def test_a_multiprocess_launch_needs_all_three_settings(monkeypatch):
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID,
               'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize() is False  # Nothing set: one process, nothing started.
  assert parallel.initialize('127.0.0.1:1', 1, 0) is False  # One process is no launch.
  with pytest.raises(ValueError, match='needs all three.*--process_id'):
    parallel.initialize('127.0.0.1:1234', 2)
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, '2')
  monkeypatch.setenv(parallel.ENV_PROCESS_ID, '2')
  with pytest.raises(ValueError, match=r'process_id=2 must lie in \[0, num_processes=2\)'):
    parallel.initialize('127.0.0.1:1234')


def test_one_process_places_on_its_own_devices():
  devices = jax.devices()
  assert parallel.run_devices(0) == devices and parallel.run_devices(2) == devices[:2]
  np.testing.assert_array_equal(parallel.local_rows(devices[1:3]), [0, 1])
  assert parallel.any_process(True) and not parallel.any_process(False)
