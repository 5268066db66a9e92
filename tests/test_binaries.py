"""The experiment binaries, run as a user runs them."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import CONFIGS

from fsl_jax.config import ConfigError

REPO = CONFIGS.parents[1]
TINY = [f'--config={CONFIGS / "protonet_omniglot.py"}:tiny', '--config.num_train_steps=10',
        '--config.eval_every=5', '--config.val_episodes=8', '--config.eval_episodes=16']


def run(binary, *args, check=True):
  result = subprocess.run([sys.executable, '-m', f'experiments.{binary}', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': str(REPO)})
  if check and result.returncode:
    raise AssertionError(f'{binary} failed:\n{result.stderr[-3000:]}')
  return result


@pytest.mark.slow
def test_train_then_evaluate_at_another_way(tmp_path):
  out = run('train', *TINY, f'--workdir={tmp_path}')
  assert 'protonet on omniglot, 5-way 1-shot 5-query:' in out.stdout
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['test_episodes'] == 16 and results['steps'] == 10
  out = run('evaluate', f'--workdir={tmp_path}', '--way=10', '--episodes=12')
  assert '10-way 1-shot' in out.stdout
  with open(tmp_path / 'eval_test_10way_1shot_5query_12episodes_best.json') as f:
    evaluated = json.load(f)
  assert evaluated['way'] == 10 and evaluated['test_episodes'] == 12
  assert evaluated['checkpoint_step'] > 0


def one_line_error(out, *expected):
  assert out.returncode == 2, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  line = next(x for x in out.stderr.splitlines() if x.startswith('error: '))
  for text in expected:
    assert text in line, line


def test_bad_config_flags_are_one_line_each(tmp_path):
  out = run('train', *TINY, '--config.wayy=3', f'--workdir={tmp_path}', check=False)
  one_line_error(out, "Unknown config field 'wayy'", "Did you mean 'way'?")
  out = run('train', '--config=experiments/configs/nothing.py', f'--workdir={tmp_path}',
            check=False)
  one_line_error(out, 'nothing.py')
  out = run('train', f'--config={CONFIGS / "protonet_omniglot.py"}:7shot',
            f'--workdir={tmp_path}', check=False)
  one_line_error(out, "Unknown variant '7shot'")
  assert not os.listdir(tmp_path)


def test_a_failed_run_leaves_nothing_and_the_corrected_rerun_trains(tmp_path):
  workdir = tmp_path / 'w'
  out = run('train', *TINY, '--config.test_way=2000', f'--workdir={workdir}', check=False)
  one_line_error(out, 'test_way=2000', 'lower test_way', 'test_* shape')
  assert not workdir.exists()
  # Even a config.json from an old failed run does not block: no checkpoint, no run.
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"method": "protonet", "way": 3}')
  run('train', *TINY, '--config.num_train_steps=2', '--config.eval_every=0',
      f'--workdir={workdir}')
  assert (workdir / 'results.json').exists()


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / 'file'
  path.write_text('')
  out = run('train', *TINY, f'--workdir={path}', check=False)
  one_line_error(out, 'is a file')
  out = run('train', *TINY, f'--workdir={path}/below', check=False)
  one_line_error(out, f'{path} is a file')


def test_missing_data_is_one_clear_line(tmp_path):
  out = run('train', *TINY, f'--config.data_dir={tmp_path}/none', f'--workdir={tmp_path}/w',
            check=False)
  assert out.returncode == 2
  assert 'error: Omniglot archives' in out.stderr and 'Traceback' not in out.stderr


def test_benchmark_prints_json():
  out = run('benchmark', *TINY, '--train_steps=2', '--eval_calls=1',
            '--synthetic_shape=28,28,1')
  result = json.loads(out.stdout[out.stdout.index('{'):])
  assert result['train_episodes_per_s'] > 0 and result['eval_episodes_per_s'] > 0
  assert result['devices'] == 4 and result['train_step_temp_bytes'] > 0
  out = run('benchmark', *TINY, '--compile_only', '--synthetic_shape=28,28,1')
  result = json.loads(out.stdout[out.stdout.index('{'):])
  assert result['train_step_temp_bytes'] > 0 and 'train_step_s' not in result
  # The project's CPU flags, and the ones a method asks for instead (fsl_jax/xla_flags.py):
  # protonet runs without YNNPACK fusions, maml with XLA's default ones; the user's
  # device-count flag (conftest.py) stays in force for both.
  ynn = '--xla_cpu_experimental_ynn_fusion_type'
  assert f'{ynn}=' in result['xla_flags'].split()
  out = run('benchmark', f'--config={CONFIGS / "maml_omniglot.py"}:tiny', '--compile_only',
            '--synthetic_shape=28,28,1')
  result = json.loads(out.stdout[out.stdout.index('{'):])
  assert ynn not in result['xla_flags'] and result['devices'] == 4
  assert '--xla_force_host_platform_device_count=4' in result['xla_flags'].split()


@pytest.mark.slow
def test_egnn_evaluates_in_the_other_mode(tmp_path):
  run('train', f'--config={CONFIGS / "egnn_omniglot.py"}:tiny', '--config.num_train_steps=4',
      '--config.eval_every=0', '--config.eval_episodes=8', f'--workdir={tmp_path}')
  out = run('evaluate', f'--workdir={tmp_path}', '--notransductive', '--query=2',
            '--episodes=8')
  assert 'egnn on omniglot, 5-way 1-shot 2-query non-transductive:' in out.stdout
  with open(tmp_path / 'eval_test_5way_1shot_2query_8episodes_best_transductive-False.json') as f:
    evaluated = json.load(f)
  assert evaluated['method_config']['transductive'] is False
  out = run('evaluate', f'--workdir={tmp_path}', '--episodes=0', check=False)
  assert out.returncode == 2 and 'eval_episodes must be at least 1' in out.stderr
  out = run('evaluate', f'--workdir={tmp_path}', '--episodes=1', check=False)
  one_line_error(out, 'eval_episodes must be at least 2')


@pytest.mark.parametrize('binary', ['train', 'evaluate', 'benchmark', 'dataset_stats'])
def test_binaries_run_as_scripts_from_anywhere(tmp_path, binary):
  # `python experiments/train.py`, the form the docstrings use, from another folder.
  result = subprocess.run([sys.executable, str(REPO / 'experiments' / f'{binary}.py'), '--help'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
  # absl's --help exits with status 1 after printing the flags.
  assert 'Traceback' not in result.stderr and 'Try --helpfull' in result.stdout, result.stderr


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_reached_and_the_rerun_resumes_exactly(tmp_path, signum):
  """A preempted run (SIGTERM) or Ctrl-C (SIGINT): one line, exit 130, a checkpoint at
  the step reached; rerunning the command ends where an uninterrupted run ends."""
  from helpers import tiny_config, trained_state

  from fsl_jax.training import train

  steps = 60  # Long enough that the signal lands in the loop, after step 10.
  flags = [f'--config={CONFIGS / "protonet_omniglot.py"}:tiny', f'--config.num_train_steps={steps}',
           '--config.eval_every=0', '--config.checkpoint_every=1000', '--config.log_every=5',
           '--config.eval_episodes=16', '--config.num_devices=1', f'--workdir={tmp_path / "a"}']
  process = subprocess.Popen([sys.executable, '-m', 'experiments.train', *flags], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, 'PYTHONPATH': str(REPO)})
  metrics = tmp_path / 'a' / 'metrics.jsonl'
  deadline = time.time() + 300
  while not (metrics.exists() and '"step": 10,' in metrics.read_text()):
    assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
    time.sleep(0.2)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 130, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  line = stderr.strip().splitlines()[-1]
  saved = int(line.split(' at step ')[1].split(';')[0])
  assert f'interrupted by {signal.Signals(signum).name} at step {saved}; saved a checkpoint at ' \
         f'step {saved}' in line and 'rerun the same command to resume' in line, line
  assert 10 <= saved < steps
  assert not (tmp_path / 'a' / 'results.json').exists()
  if signum == signal.SIGINT:
    return  # The same path as SIGTERM from here on.
  run('train', *flags)
  config = tiny_config(num_train_steps=steps, eval_every=0, checkpoint_every=1000, log_every=5,
                       eval_episodes=16, num_devices=1)
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  a, b = trained_state(config, str(tmp_path / 'a')), trained_state(config, str(tmp_path / 'b'))
  assert int(a.step) == int(b.step) == steps
  jax.tree.map(np.testing.assert_array_equal, (a.params, a.batch_stats, a.opt_state),
               (b.params, b.batch_stats, b.opt_state))


@pytest.mark.parametrize('error, status, words', [
  (RuntimeError('a bug'), 1, 'internal failure'),
  (ConfigError('way must be at least 1'), 2, 'error: way must be at least 1'),
])
def test_exit_status_tells_a_bug_from_bad_input(capsys, error, status, words):
  from experiments import common
  with pytest.raises(SystemExit) as exit_info:
    with common.user_errors():
      raise error
  assert exit_info.value.code == status
  stderr = capsys.readouterr().err
  assert words in stderr
  assert ('Traceback' in stderr) == (status == 1)  # Only a bug shows one.
