"""Test setup: 4 CPU devices, the real Omniglot from ../shared/data, a shared cache."""

import os
import pathlib
import tempfile

# Before JAX is imported anywhere: four host devices, so multi-device code runs on
# a CPU. Tests that need one device pass `num_devices=1`. The flag goes first: XLA
# stops parsing XLA_FLAGS at a token that does not start with '--', so a flag
# appended after such a token would be ignored silently (`test_xla_flags.py`
# asserts the device count).
os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=4 ' +
                           os.environ.get('XLA_FLAGS', '')).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get('FSL_JAX_DATA_DIR') or str(REPO.parent / 'shared' / 'data')
os.environ['FSL_JAX_DATA_DIR'] = DATA_DIR  # Configs leave data_dir empty.
# One decoded cache for the whole session (and its xdist workers).
os.environ.setdefault('FSL_JAX_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'fsl_jax_test_cache'))
# XLA's compiled programs too, shared by the workers and the binaries the tests
# start: many tests compile the same tiny training step (this cut test_training.py
# and test_binaries.py from 9m08s to 5m58s on 2 cores). JAX keys an entry by the
# program, its compile options and the devices, so a cached entry is never stale.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.environ['FSL_JAX_CACHE_DIR'], 'jax_compilation'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')


@pytest.fixture(scope='session')
def data_dir():
  if not os.path.isfile(os.path.join(DATA_DIR, 'omniglot', 'images_background.zip')):
    pytest.fail(f'Real Omniglot is expected in {DATA_DIR}/omniglot (set FSL_JAX_DATA_DIR).')
  return DATA_DIR


@pytest.fixture(scope='session')
def omniglot(data_dir):
  """The real splits, decoded once per session."""
  from fsl_jax.data import omniglot as omniglot_lib

  return {split: omniglot_lib.load(split, data_dir) for split in ('train', 'val', 'test')}
