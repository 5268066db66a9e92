"""Shared by the tests: configs and reading trained parameters back."""

import functools
import importlib.util
import pathlib

import jax

from fsl_jax import parallel
from fsl_jax.training import checkpoint, train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'configs'


def load_config(name: str, variant: str | None = None):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if variant is None else module.get_config(variant)


def learning_test(config, eval_episodes: int = 60):
  """A tiny learning test's `config`: no validation (one evaluation program fewer to
  compile, and no validation episodes), the last step tested on `eval_episodes`."""
  config.eval_every = 0
  config.checkpoint_every = config.num_train_steps
  config.eval_episodes = eval_episodes
  return config


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


def state_after_steps(config, steps: int):
  """The TrainState after `steps` steps of `train.train_step`, pmapped as training
  runs it, without the evaluations, checkpoints and files of `train_and_evaluate`
  (device-sampled episodes)."""
  config, model = train.build(config)
  devices = parallel.run_devices(config.num_devices)
  (source,) = train._make_sources(config, [config.train_split], False, devices)
  state = train.create_train_state(config, model, source.image_shape,
                                   jax.random.PRNGKey(config.seed))
  step = jax.pmap(functools.partial(train.train_step, model=model, source=source,
                                    spec=train.episode_spec(config),
                                    per_device=config.meta_batch_size // len(devices)),
                  axis_name=train.AXIS, donate_argnums=(0,), devices=devices)
  p_state = parallel.replicate(state, devices)
  for _ in range(steps):
    p_state, _ = step(p_state, source.step_inputs())
  return parallel.unreplicate(p_state)
