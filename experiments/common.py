"""What every binary does first, and how user errors are shown."""

import contextlib
import logging as std_logging
import os
import sys
import traceback

import jax
from absl import flags, logging

import fsl_jax  # noqa: F401  (sets the XLA flags before any backend starts)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO lines of Orbax (several per checkpoint); warnings still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


flags.DEFINE_string('coordinator_address', None,
                    'Multi-process runs: host:port of process 0 (default: '
                    '$JAX_COORDINATOR_ADDRESS; Cloud TPU slices are detected).')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: the number of processes '
                     '(default: $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0 to '
                     'num_processes - 1 (default: $JAX_PROCESS_ID).')


def setup(method: str | None = None) -> None:
  """Puts `method`'s XLA flags in force, joins a multi-process run if there is
  one, and logs the devices."""
  from fsl_jax import xla_flags

  xla_flags.apply(method=method)  # Before any backend starts (see fsl_jax/xla_flags.py).
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from fsl_jax import parallel

  try:
    parallel.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                        flags.FLAGS.process_id)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  logging.info('JAX %s, process %d of %d, %d local devices: %s; XLA_FLAGS=%r', jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.local_devices(), os.environ.get('XLA_FLAGS', ''))


def workdir_method(workdir: str) -> str | None:
  """The method a training workdir was trained with (None if it has no readable
  config.json: evaluating it reports that clearly later)."""
  import json

  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      method = json.load(f).get('method')
  except (OSError, ValueError, AttributeError):
    return None
  return method if isinstance(method, str) else None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one clear line (exit status 2) for a bad flag.

  `--config.FIELD=...` overrides go through ml_collections, which raises on an
  unknown field, a config file that does not exist or a bad variant with a
  Python traceback; here each becomes one line, naming the nearest known field
  for an unknown one.
  """
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      flags.FLAGS.config.keys()  # A config file that failed to load raises only when read.
    return remaining
  except flags.Error as e:
    message = str(e)
    if 'Traceback (most recent call last)' in message:  # A config file's own exception.
      last = [line for line in message.splitlines() if line.strip()][-1].strip()
      config_arg = next((a for a in argv[1:] if a.startswith('--config=')), '--config')
      message = f'{config_arg}: {last}'
  except Exception as e:  # noqa: BLE001 (ml_collections raises many kinds)
    message = _config_flag_message(argv, e)
  print(f'error: {message}\nPass --help for the flags.', file=sys.stderr)
  sys.exit(2)


def _config_flag_message(argv: list[str], error: Exception) -> str:
  import difflib

  from fsl_jax import config as config_lib
  from fsl_jax.models import base as models_base

  known = set(config_lib.base_config().keys())
  for method in models_base.METHODS:
    known |= set(config_lib.method_defaults(method))
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=', 1)[0].split('.', 1)[0]
      if field not in known:
        close = difflib.get_close_matches(field, sorted(known), n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        return f'Unknown config field {field!r} in {arg}.{hint}'
  config_arg = next((a for a in argv[1:] if a.startswith('--config=')), '--config')
  text = str(error)
  if 'No such file' in text or 'Failed loading config file' in text:
    path = config_arg.split('=', 1)[-1].split(':', 1)[0]
    return f'{config_arg}: cannot load the config file {path}; check the path.'
  cause = error
  while cause.__cause__ is not None or cause.__context__ is not None:
    cause = cause.__cause__ or cause.__context__
  return f'{config_arg}: {type(cause).__name__}: {cause}'


@contextlib.contextmanager
def user_errors():
  """Turns configuration and data errors into one clear line and exit status 2, an
  interruption into one line and exit status 130, and anything else (a bug) into its
  traceback, a line saying so, and exit status 1."""
  from fsl_jax.config import ConfigError
  from fsl_jax.data.errors import DataError
  from fsl_jax.training.checkpoint import CheckpointNotFoundError, WorkdirBusyError
  from fsl_jax.training.train import Interrupted, NonFiniteLossError

  try:
    yield
  except (ConfigError, DataError, NonFiniteLossError, CheckpointNotFoundError,
          WorkdirBusyError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(130)
  except KeyboardInterrupt:  # Outside the training loop: nothing in flight to save.
    print('interrupted; the checkpoints saved so far are kept: rerun the same command to '
          'resume or to evaluate again.', file=sys.stderr)
    sys.exit(130)
  except Exception:  # noqa: BLE001 (an internal failure: the traceback is for a bug report)
    traceback.print_exc()
    print('error: internal failure (the traceback above), not a problem with the input: '
          'please report it with the command that ran. Checkpoints saved so far are kept; '
          'rerunning the same command resumes from the latest.', file=sys.stderr)
    sys.exit(1)


def format_results(results: dict) -> str:
  mode = results.get('method_config', {}).get('transductive')
  mode = '' if mode is None else (' transductive' if mode else ' non-transductive')
  return (f"{results['method']} on {results['dataset']}, {results['way']}-way "
          f"{results['shot']}-shot {results['query']}-query{mode}: "
          f"{100 * results['test_accuracy']:.2f} +- "
          f"{100 * results['test_ci95']:.2f}% over {results['test_episodes']} test episodes")


def training_start(config, model, devices):
  """The training episode source and initial train state of `config`, as a
  training run starts them on `devices` (episodes sampled on the devices, no
  augmentation): `(spec, source, state)`. For the comparison drivers."""
  from fsl_jax.data import episodes as episodes_lib
  from fsl_jax.data import registry
  from fsl_jax.training import train

  info = registry.get(config.dataset)
  dataset = registry.load_dataset(config.dataset, config.train_split, config.data_dir or None,
                                  config.cache_dir or None, config.download)
  spec = train.episode_spec(config)
  source = episodes_lib.DeviceEpisodes(dataset, spec, info.mean, info.std, config.train_split,
                                       devices)
  state = train.create_train_state(config, model, source.image_shape,
                                   jax.random.PRNGKey(config.seed))
  return spec, source, state
