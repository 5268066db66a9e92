"""The flat experiment config: every field, its default, and validation.

Configs in `experiments/configs/` start from `base_config()` and override fields;
a method adds its own fields through `CONFIG_DEFAULTS`. `validate` rejects a
field that neither declares, so a typo on the command line is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import difflib

import ml_collections

from fsl_jax.data import augment as augment_lib
from fsl_jax.models import backbones
from fsl_jax.models import base as models_base


class ConfigError(ValueError):
  """A config that cannot be run; the message names the field and the fix."""


# Splits that are unions of others (every dataset's 'trainval').
_SPLIT_PARTS = {'trainval': ('train', 'val')}

def base_config() -> ml_collections.ConfigDict:
  """Fields shared by every method, with their defaults."""
  c = ml_collections.ConfigDict()
  c.method = 'protonet'
  c.dataset = 'omniglot'
  c.data_dir = ''  # Empty: $FSL_JAX_DATA_DIR.
  c.cache_dir = ''  # Empty: $FSL_JAX_CACHE_DIR or ~/.cache/fsl_jax.
  c.download = False  # Fetch missing archives from upstream.
  c.train_split = 'train'
  c.val_split = 'val'
  c.test_split = 'test'

  # Training episodes.
  c.way = 5
  c.shot = 1
  c.query = 15
  c.unlabeled_shot = 0
  c.meta_batch_size = 1  # Episodes per step, over all devices.
  # 'device': the split lives on the devices and episodes are sampled inside the
  # step; 'host': sampled with NumPy and prefetched (for splits too big for the
  # devices).
  c.episode_sampling = 'device'
  c.num_devices = 0  # Devices to train on (0: all local devices).
  # BatchNorm statistics in training: 'episode' (each episode its own),
  # 'meta_batch' (pooled over all episodes of the step, on all devices), or
  # 'per_position' (the embedding's per image position of the episode, pooled
  # over the meta-batch; 'meta_batch' after the embedding: how the official EGNN
  # trains, see `fsl_jax.models.backbones.bn_axis`).
  c.batchnorm_stats = 'episode'
  # Running variances from the unbiased batch variance (PyTorch's rule, which the
  # reference implementations train with) instead of the biased one (flax's).
  c.batchnorm_unbiased_running_var = False
  # The backbone's compute dtype: 'float32' or 'bfloat16' (parameters, BatchNorm
  # statistics, and everything after the embedding stay float32).
  c.compute_dtype = 'float32'
  # Recompute the backbone's activations block by block in the backward pass
  # instead of storing them (less memory, more compute); backbones with blocks only.
  c.remat = False
  # Embed an episode's images this many at a time (0: all at once), each chunk
  # recomputed in the backward pass: the embedding's memory of one chunk
  # (`fsl_jax.models.backbones.in_chunks`). Needs batchnorm_stats='per_position'.
  c.embed_chunk_size = 0
  # Training augmentation on the device (`fsl_jax.data.augment`): comma-separated
  # operations from resized_crop, pad_crop, flip, jitter; empty: none. Validation
  # and test episodes are never augmented.
  c.augment = ''
  c.augment_pad = 4  # pad_crop: zero padding on each side, in pixels.
  c.augment_crop_min = 0.08  # resized_crop: the crop's area fraction is drawn from
  c.augment_crop_max = 1.0  # [augment_crop_min, augment_crop_max].
  c.augment_jitter = 0.4  # jitter: brightness, contrast, saturation in [1 - j, 1 + j].

  # Validation and test episodes (validation uses the test shape).
  c.test_way = 5
  c.test_shot = 1
  c.test_query = 15
  c.test_unlabeled_shot = 0
  c.eval_episodes = 1000  # Fixed test episodes, drawn from eval_seed.
  c.val_episodes = 500  # Fixed validation episodes, drawn from eval_seed.
  c.eval_batch_size = 50  # Evaluation episodes per device per call.
  c.eval_seed = 0

  # Optimisation.
  c.num_train_steps = 20_000
  c.optimizer = 'adam'  # 'adam' or 'sgd' (with `momentum`).
  c.momentum = 0.9
  c.learning_rate = 1e-3
  c.lr_decay_every = 2_000  # Steps between learning-rate decays (0: constant).
  c.lr_decay_factor = 0.5
  c.weight_decay = 0.0  # Coupled L2 (added to the gradient before Adam).
  c.seed = 0

  # Bookkeeping.
  c.log_every = 100
  c.eval_every = 1_000  # Validation period in steps (0: no validation).
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 2
  # A logged training loss above divergence_factor times the first logged one
  # is a divergence (0: no check): a warning, or with stop_on_divergence the end
  # of the run with one line.
  c.divergence_factor = 1e3
  c.stop_on_divergence = False
  return c


def method_defaults(method: str) -> dict:
  return dict(models_base.get_method(method).CONFIG_DEFAULTS)


def with_method_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` plus the defaults of its method's fields that it does not set."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in method_defaults(config.method).items():
    if key not in config:
      config[key] = value
  return config


def method_config(method: str) -> ml_collections.ConfigDict:
  """`base_config()` for `method`, holding every field of the method at its default,
  so that each can be set from the command line (`--config.FIELD=VALUE` only sets
  fields the config has). Experiment configs start from it."""
  config = base_config()
  config.method = method
  try:
    return with_method_defaults(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A config saved by an earlier run, with fields added since then at their defaults."""
  config = base_config()
  config.method = saved.get('method', config.method)
  try:
    config = with_method_defaults(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  with config.unlocked():
    config.update(saved)
  return config


def validate(config: ml_collections.ConfigDict, num_devices: int,
             training: bool = True) -> ml_collections.ConfigDict:
  """Checks a config and returns it with the method's defaults filled in.

  Args:
    config: the experiment config.
    num_devices: the number of local devices.
    training: also check the fields that only training uses (the meta-batch).

  Returns:
    The completed config.

  Raises:
    ConfigError: on an unknown field, an unknown method or an impossible setting.
  """
  if 'method' not in config:
    raise ConfigError('The config has no `method` field.')
  try:
    config = with_method_defaults(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  known = set(base_config().keys()) | set(method_defaults(config.method))
  for key in config.keys():
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f' Did you mean {close[0]!r}?' if close else ''
      raise ConfigError(
        f'Unknown config field {key!r} for method {config.method!r}.{hint} '
        f'Known fields: {", ".join(sorted(known))}.'
      )
  if config.num_devices < 0 or config.num_devices > num_devices:
    raise ConfigError(
      f'num_devices={config.num_devices}, but {num_devices} local devices exist; use 0 '
      f'(all) or a number up to {num_devices}.'
    )
  num_devices = config.num_devices or num_devices
  if training and config.meta_batch_size % num_devices:
    raise ConfigError(
      f'meta_batch_size={config.meta_batch_size} does not divide over {num_devices} '
      f'devices; use a multiple of {num_devices}.'
    )
  method = models_base.get_method(config.method)
  if (config.unlabeled_shot or config.test_unlabeled_shot) and not method.SUPPORTS_UNLABELED:
    raise ConfigError(
      f'Method {config.method!r} does not use unlabelled supports; set unlabeled_shot '
      'and test_unlabeled_shot to 0.'
    )
  if config.episode_sampling not in ('device', 'host'):
    raise ConfigError(
      f"episode_sampling must be 'device' or 'host', got {config.episode_sampling!r}.")
  if config.batchnorm_stats not in backbones.BATCHNORM_STATS:
    raise ConfigError(f'batchnorm_stats must be one of {backbones.BATCHNORM_STATS}, got '
                      f'{config.batchnorm_stats!r}.')
  if config.batchnorm_stats == 'per_position' and config.meta_batch_size < 2:
    raise ConfigError(
      "batchnorm_stats='per_position' takes each image position's statistics over the "
      f'meta-batch, and meta_batch_size={config.meta_batch_size} gives one image per '
      "position; use meta_batch_size >= 2, or batchnorm_stats='episode'.")
  if config.compute_dtype not in backbones.COMPUTE_DTYPES:
    raise ConfigError("compute_dtype must be 'float32' or 'bfloat16', got "
                      f'{config.compute_dtype!r}.')
  try:
    augment_lib.from_config(config)
  except ValueError as e:
    raise ConfigError(f'augment={config.augment!r}: {e}') from None
  if config.optimizer not in ('adam', 'sgd'):
    raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {config.optimizer!r}.")
  positive = ['num_train_steps', 'log_every', 'checkpoint_every', 'eval_episodes',
              'eval_batch_size', 'meta_batch_size', 'keep_checkpoints']
  if config.eval_every:
    positive.append('val_episodes')
  for field in positive:
    if config[field] < 1:
      raise ConfigError(f'{field} must be at least 1, got {config[field]}.')
  # A 95% interval over episodes needs at least two of them.
  for field in ['eval_episodes'] + (['val_episodes'] if config.eval_every else []):
    if config[field] < 2:
      raise ConfigError(f'{field} must be at least 2 (a confidence interval over one episode '
                        f'does not exist), got {config[field]}.')
  if config.eval_every < 0:
    raise ConfigError(f'eval_every must be >= 0 (0: no validation), got {config.eval_every}.')
  parts = lambda split: set(_SPLIT_PARTS.get(split, (split,)))
  if parts(config.train_split) & parts(config.test_split):
    raise ConfigError(
      f'train_split={config.train_split!r} shares classes with test_split='
      f'{config.test_split!r}; the test classes must be unseen in training.'
    )
  if config.eval_every and parts(config.val_split) & (parts(config.train_split) |
                                                      parts(config.test_split)):
    raise ConfigError(
      f'val_split={config.val_split!r} is also the train or test split (or part of it); model '
      'selection must use classes that are neither trained on nor tested on. Training on '
      "'trainval' leaves no validation classes: set eval_every=0 and test the last checkpoint."
    )
  return config
