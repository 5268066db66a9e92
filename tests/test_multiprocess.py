"""Two processes of 2 CPU devices each train and test as one process of 4 devices does."""

import json
import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from helpers import CONFIGS, tiny_config, trained_state

from fsl_jax import parallel
from fsl_jax.training import history, train

REPO = CONFIGS.parents[1]
# SGD: Adam's first steps are lr * sign(gradient), which rounding can flip (the
# two layouts sum the devices' gradients in different orders).
FIELDS = dict(meta_batch_size=4, optimizer='sgd', learning_rate=0.05, eval_every=2,
              val_episodes=8, eval_episodes=12, eval_batch_size=2, checkpoint_every=2,
              log_every=1)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, steps: int, sampling: str) -> None:
  """`experiments/train.py` as 2 processes with 2 devices each, on one coordinator."""
  flags = [f'--config={CONFIGS / "protonet_omniglot.py"}:tiny', f'--workdir={workdir}',
           f'--config.num_train_steps={steps}', f'--config.episode_sampling={sampling}',
           f'--coordinator_address=127.0.0.1:{_free_port()}', '--num_processes=2',
           *(f'--config.{k}={v}' for k, v in FIELDS.items())]
  # The device-count flag alone: the test session's own XLA_FLAGS ask for 4.
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': str(REPO)}
  processes = [subprocess.Popen([sys.executable, '-m', 'experiments.train', *flags,
                                 f'--process_id={i}'], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in processes]
  finally:
    for p in processes:  # A hung collective must not outlive the test.
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (p, (_, stderr)) in enumerate(zip(processes, outputs, strict=True)):
    assert p.returncode == 0, f'process {i}:\n{stderr[-3000:]}'
  assert 'process 1 of 2, 2 local devices' in outputs[1][1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_their_devices(tmp_path, sampling='host'):
  """Trained for 2 steps, then resumed to 4 (the checkpoint is written and read by
  2 processes); parameters, validation and test equal 4 straight steps on 4 local
  devices, and only process 0 wrote the run's files. Host sampling: each process
  samples the episodes of its own devices only (2.5 minutes a case on this CPU;
  device sampling passed the same test when it was written)."""
  assert jax.local_device_count() == 4
  single = tiny_config(num_devices=4, num_train_steps=4, episode_sampling=sampling, **FIELDS)
  want = train.train_and_evaluate(single, str(tmp_path / 'single'))

  workdir = tmp_path / 'multi'
  _train_two_processes(workdir, steps=2, sampling=sampling)
  _train_two_processes(workdir, steps=4, sampling=sampling)
  with open(workdir / 'results.json') as f:
    got = json.load(f)
  assert got['devices'] == 4 and got['processes'] == 2 and got['steps'] == 4
  assert got['test_episodes'] == want['test_episodes'] == 12
  np.testing.assert_allclose(got['test_accuracy'], want['test_accuracy'], atol=1e-6)
  assert got['best'] == pytest.approx(want['best'])
  a, b = trained_state(single, str(tmp_path / 'single')), trained_state(single, str(workdir))
  assert int(a.step) == int(b.step) == 4
  chex.assert_trees_all_close((a.params, a.batch_stats), (b.params, b.batch_stats),
                              rtol=1e-5, atol=1e-6)
  # One writer: every step's metrics once, in order, over the two invocations.
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4]
  assert [r['step'] for r in history.read(str(workdir)) if 'val/accuracy' in r] == [2, 4]


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
