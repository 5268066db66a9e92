"""Shared by the tests: configs and reading trained parameters back."""

import importlib.util
import pathlib

import jax

from fsl_jax.training import checkpoint, train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'


def load_config(name: str, variant: str | None = None):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if variant is None else module.get_config(variant)


def tiny_config(**overrides):
  config = load_config('protonet_omniglot', 'tiny')
  for key, value in overrides.items():
    config[key] = value
  return config


def trained_state(config, workdir):
  """The latest checkpointed TrainState in `workdir`."""
  config, model = train.build(config)
  template = train.create_train_state(config, model, (28, 28, 1), jax.random.PRNGKey(0))
  state, _ = checkpoint.Checkpoints(workdir).restore_latest(template)
  return state
