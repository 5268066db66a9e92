"""What every binary does first, and how user errors are shown."""

import contextlib
import logging as std_logging
import os
import sys

import jax
from absl import logging

import fsl_jax  # noqa: F401  (sets the XLA flags before any backend starts)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO lines of Orbax (several per checkpoint); warnings still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def setup() -> None:
  """Hides accelerators from TensorFlow (used only for summaries) and logs the devices."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX %s, %d local devices: %s; XLA_FLAGS=%r', jax.__version__,
               jax.local_device_count(), jax.local_devices(), os.environ.get('XLA_FLAGS', ''))


@contextlib.contextmanager
def user_errors():
  """Turns configuration and data errors into one clear line and exit status 2."""
  from fsl_jax.config import ConfigError
  from fsl_jax.data.errors import DataError
  from fsl_jax.training.checkpoint import CheckpointNotFoundError
  from fsl_jax.training.train import NonFiniteLossError

  try:
    yield
  except (ConfigError, DataError, NonFiniteLossError, CheckpointNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def format_results(results: dict) -> str:
  mode = results.get('method_config', {}).get('transductive')
  mode = '' if mode is None else (' transductive' if mode else ' non-transductive')
  return (f"{results['method']} on {results['dataset']}, {results['way']}-way "
          f"{results['shot']}-shot {results['query']}-query{mode}: "
          f"{100 * results['test_accuracy']:.2f} +- "
          f"{100 * results['test_ci95']:.2f}% over {results['test_episodes']} test episodes")
