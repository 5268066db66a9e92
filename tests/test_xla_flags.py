"""The project's XLA flags: added before the user's, never overriding them."""

import os
import subprocess
import sys
import warnings

import jax

from fsl_jax import xla_flags

YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_defaults_go_first_and_the_users_flags_are_kept():
  flags, dropped = xla_flags.merged('--xla_force_host_platform_device_count=4')
  assert flags == f'{YNN}= --xla_force_host_platform_device_count=4'
  assert dropped == []


def test_a_flag_the_user_set_wins():
  flags, _ = xla_flags.merged(f'{YNN}=conv')
  assert flags == f'{YNN}=conv'


def test_tokens_xla_would_ignore_are_dropped_and_named():
  user = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 --xla_dump_to=/x'
  flags, dropped = xla_flags.merged(user)
  assert flags == f'{YNN}= --xla_cpu_multi_thread_eigen=false'
  assert dropped == ['intra_op_parallelism_threads=1', '--xla_dump_to=/x']
  environ = {'XLA_FLAGS': user}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    xla_flags.apply(environ)
  assert any('intra_op_parallelism_threads=1' in str(w.message) for w in caught)
  assert environ['XLA_FLAGS'] == flags


def test_the_switch_turns_the_defaults_off():
  environ = {'XLA_FLAGS': '--a=1', xla_flags.ENV_SWITCH: '0'}
  assert xla_flags.apply(environ) == '--a=1'
  assert environ['XLA_FLAGS'] == '--a=1'


def test_applying_twice_changes_nothing():
  environ = {}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # The test process's backend is already running.
    first = xla_flags.apply(environ)
    assert xla_flags.apply(environ) == first == f'{YNN}='


def test_this_test_process_runs_with_the_defaults_and_four_devices():
  # conftest.py puts the device-count flag first; `import fsl_jax` added the defaults.
  assert os.environ['XLA_FLAGS'].split()[0] == f'{YNN}='
  assert '--xla_force_host_platform_device_count=4' in os.environ['XLA_FLAGS'].split()
  assert jax.device_count() == 4


def test_importing_fsl_jax_sets_the_flags_for_a_fresh_process():
  code = ('import os, fsl_jax, jax; jax.devices(); print(os.environ["XLA_FLAGS"])')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  assert out.stdout.split() == [f'{YNN}=']


def test_a_backend_started_before_the_import_is_warned_about():
  code = ('import warnings, jax; jax.devices(); warnings.simplefilter("error");\n'
          'import fsl_jax')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode != 0 and 'cannot take effect' in out.stderr


def test_a_method_replaces_the_defaults_fsl_jax_added_and_no_more():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # The test process's backend is already running.
    xla_flags.apply(environ)
    assert environ['XLA_FLAGS'] == f'{YNN}= --xla_force_host_platform_device_count=4'
    # MAML asks for XLA's own default: fsl_jax's token goes, the user's stays.
    assert xla_flags.apply(environ, method='maml') == '--xla_force_host_platform_device_count=4'
    assert environ[xla_flags.ADDED] == ''
    # Another method (as a child process inheriting the environment would) gets
    # the defaults back; an unknown method gets the defaults.
    assert xla_flags.apply(dict(environ), method='protonet').split()[0] == f'{YNN}='
    assert xla_flags.apply(dict(environ), method='no_such_method').split()[0] == f'{YNN}='


def test_a_users_flag_wins_over_a_methods():
  for user in (f'{YNN}=reduce', f'{YNN}='):  # Even one equal to the project's default.
    environ = {'XLA_FLAGS': user}
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      xla_flags.apply(environ)
      assert xla_flags.apply(environ, method='maml') == user
  # A user who rewrites XLA_FLAGS after fsl_jax added its flag keeps their value.
  environ = {}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    xla_flags.apply(environ)
    environ['XLA_FLAGS'] = f'{YNN}=dot'
    assert xla_flags.apply(environ, method='maml') == f'{YNN}=dot'



def test_flags_appended_after_fsl_jax_s_keep_them_its_own():
  environ = {}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    xla_flags.apply(environ)
    environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=2'  # The user appends.
    child = dict(environ)  # What a child process inherits.
    assert xla_flags.apply(child, method='maml') == '--xla_force_host_platform_device_count=2'
    # The switch in a child takes out what the parent added, and keeps the user's flag.
    child = dict(environ, **{xla_flags.ENV_SWITCH: '0'})
    assert xla_flags.apply(child) == '--xla_force_host_platform_device_count=2'
    assert xla_flags.ADDED not in child
