"""The experiment binaries, run as a user runs them."""

import json
import os
import subprocess
import sys

import pytest
from helpers import CONFIGS

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
