"""fsl_jax's ProtoNet training against an independent PyTorch ProtoNet, step by step.

Both start from the same parameters (fsl_jax's initialisation of the config)
and train on the same episodes (the ones fsl_jax's training loop samples for
its first `--steps` steps, from the config's seed): fsl_jax with its own
pmapped train step, PyTorch with `experiments/reference/protonet_torch.py`, a
Conv-4 ProtoNet written from the paper (PyTorch's BatchNorm, Adam and
cross-entropy). It prints each step's loss and accuracy on both sides (before
that step's update) and how far apart they are, and the relative differences
of the conv kernels' gradients at the first step and of the kernels after the
last. Agreement to float rounding says that
what fsl_jax trains is the paper's ProtoNet, so a training curve seen in
fsl_jax is the protocol's, not a bug of this library.

Only what both sides implement is accepted: `protonet` with the `conv4`
backbone, per-episode BatchNorm statistics, meta-batch 1, Adam without weight
decay, no augmentation.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    python experiments/compare_protonet_torch.py --torch_python=/tmp/torchvenv/bin/python \
      --config=experiments/configs/protonet_mini_imagenet.py:1shot \
      --config.data_dir=../shared/data --steps=20 \
      --output=experiments/results/protonet_torch_first_steps.json
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags
from ml_collections import config_flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A ProtoNet config file.', lock_config=True)
flags.DEFINE_string('torch_python', None, 'Python of a virtual environment with torch.')
flags.DEFINE_integer('steps', 20, 'Training steps on each side.')
flags.DEFINE_integer('threads', 2, "PyTorch's threads.")
flags.DEFINE_float('last_scale', 1.0,
                   "Multiply the last BatchNorm's scale at initialisation (both sides) by this: "
                   'e.g. 0.05 makes the logits of order 1 and the loss well-conditioned.')
flags.DEFINE_string('output', None, 'Write both sides, step by step, as JSON here.')
flags.mark_flags_as_required(['config', 'torch_python'])


def check_supported(config, steps: int) -> None:
  """Raises a ConfigError unless both sides implement this config for `steps` steps."""
  from fsl_jax import config as config_lib

  if config.lr_decay_every and steps > config.lr_decay_every:
    raise config_lib.ConfigError(
      f'The PyTorch side keeps the learning rate constant; --steps={steps} would pass the '
      f"config's first decay at step {config.lr_decay_every}. Use fewer steps.")

  wanted = {'method': 'protonet', 'backbone': 'conv4', 'batchnorm_stats': 'episode',
            'meta_batch_size': 1, 'optimizer': 'adam', 'weight_decay': 0.0, 'augment': '',
            'compute_dtype': 'float32', 'unlabeled_shot': 0, 'remat': False}
  wrong = {k: config[k] for k, v in wanted.items() if config[k] != v}
  if wrong:
    raise config_lib.ConfigError(
      f'The PyTorch side implements only {wanted}; this config has {wrong}.')


def fsl_jax_run(config, steps: int, last_scale: float = 1.0):
  """The initial and final parameters, the first step's gradients, and the episodes
  of steps 1..`steps` with their metrics."""
  import jax

  from fsl_jax import parallel
  from fsl_jax.training import train

  config, model = train.build(config)
  devices = jax.local_devices()[:1]
  spec, source, state = common.training_start(config, model, devices)
  if last_scale != 1.0:
    params = jax.tree.map(lambda x: x, state.params)  # A copy to edit.
    last = params['backbone'][f'ConvBlock_{len(params["backbone"]) - 1}']['BatchNorm_0']
    last['scale'] = last['scale'] * last_scale
    state = state.replace(params=params)
  initial = jax.device_get(state.params['backbone'])
  train_key = state.train_key

  def sample(images, step):  # As `train.train_step` derives its episodes from the step.
    keys = train.device_episode_keys(jax.random.fold_in(train_key, step), 0, 1)
    return source.episodes(images, jax.vmap(jax.random.split)(keys)[:, 0])

  p_sample = jax.pmap(sample, axis_name=train.AXIS, devices=devices)
  p_step = jax.pmap(functools.partial(train.train_step, model=model, source=source, spec=spec,
                                      per_device=1), axis_name=train.AXIS, devices=devices)

  def first_loss(params, episode):  # The loss of `train.train_step`'s `episode_loss`.
    variables = {'params': params, 'batch_stats': state.batch_stats}
    outputs, _ = train.apply_method(model, variables, episode, spec.way, train=True,
                                    rng=jax.random.PRNGKey(0))
    return model.loss(outputs, train.hide_unlabeled_labels(episode))[0]

  p_state = parallel.replicate(state, devices)
  episodes, rows = [], []
  for step in range(steps):
    episode = p_sample(source.step_inputs(), np.full((1,), step, np.int32))
    episodes.append(jax.tree.map(lambda x: np.asarray(x)[0, 0], episode))
    p_state, metrics = p_step(p_state, source.step_inputs())
    rows.append({'step': step + 1, 'loss': float(metrics['loss'][0]),
                 'accuracy': float(metrics['accuracy'][0])})
  final = jax.device_get(parallel.unreplicate(p_state).params['backbone'])
  gradients = jax.device_get(jax.jit(jax.grad(first_loss))(state.params, episodes[0]))
  return config, initial, final, gradients['backbone'], episodes, rows


def flat_parameters(backbone: dict) -> dict[str, np.ndarray]:
  """fsl_jax's Conv-4 parameters under the names the PyTorch side reads."""
  out = {}
  for i in range(len(backbone)):
    block = backbone[f'ConvBlock_{i}']
    out[f'block{i}_kernel'] = np.asarray(block['Conv_0']['kernel'], np.float32)
    out[f'block{i}_scale'] = np.asarray(block['BatchNorm_0']['scale'], np.float32)
    out[f'block{i}_bias'] = np.asarray(block['BatchNorm_0']['bias'], np.float32)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  common.setup()
  config = FLAGS.config.copy_and_resolve_references()
  with common.user_errors():
    check_supported(config, FLAGS.steps)
    config, initial, final, gradients, episodes, jax_rows = fsl_jax_run(
      config, FLAGS.steps, FLAGS.last_scale)
  params = flat_parameters(initial)
  stacked = {name: np.stack([getattr(e, name) for e in episodes])
             for name in ('support_images', 'support_labels', 'query_images', 'query_labels')}
  with tempfile.TemporaryDirectory() as tmp:
    source, target = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.json')
    np.savez(source, **params, **stacked, steps=FLAGS.steps, way=config.way,
             blocks=len(initial), learning_rate=config.learning_rate, threads=FLAGS.threads)
    subprocess.run([FLAGS.torch_python, str(REPO / 'experiments' / 'reference' /
                                            'protonet_torch.py'), source, target], check=True)
    with open(target) as f:
      torch_out = json.load(f)
    relative = lambda mine, theirs: {
      name: float(np.linalg.norm(mine[name] - theirs[name]) / np.linalg.norm(mine[name]))
      for name in theirs}
    kernel_diff = relative(flat_parameters(final), np.load(target + '.params.npz'))
    gradients64 = np.load(target + '.gradients64.npz')
    gradient_diff = {
      'fsl_jax_vs_torch': relative(flat_parameters(gradients),
                                   np.load(target + '.gradients.npz')),
      'fsl_jax_vs_torch_float64': relative(flat_parameters(gradients), gradients64),
      'torch_vs_torch_float64': relative(dict(np.load(target + '.gradients.npz')), gradients64)}
  rows = []
  print(f'{"step":>5} {"fsl_jax loss":>14} {"torch loss":>14} {"rel. diff":>10} '
        f'{"fsl_jax acc":>12} {"torch acc":>10}')
  for mine, theirs in zip(jax_rows, torch_out['steps'], strict=True):
    rel = abs(mine['loss'] - theirs['loss']) / abs(theirs['loss'])
    rows.append({'step': mine['step'], 'fsl_jax': mine, 'torch': theirs, 'loss_rel_diff': rel})
    print(f'{mine["step"]:>5} {mine["loss"]:>14.6f} {theirs["loss"]:>14.6f} {rel:>10.2e} '
          f'{mine["accuracy"]:>12.4f} {theirs["accuracy"]:>10.4f}')
  print('Conv kernels\' gradients of step 1, |a - b| / |a|:')
  for pair, diffs in gradient_diff.items():
    print(f'  {pair}: ' + ', '.join(f'{k} {v:.2e}' for k, v in sorted(diffs.items())))
  print('Conv kernels after the last step, |fsl_jax - torch| / |fsl_jax|:',
        ', '.join(f'{k} {v:.2e}' for k, v in sorted(kernel_diff.items())))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump({'command': ' '.join(sys.argv), 'config': config.to_dict(),
                 'last_scale': FLAGS.last_scale,
                 'torch_version': torch_out['torch_version'], 'steps': rows,
                 'kernel_gradient_rel_diff_step_1': gradient_diff,
                 'kernel_rel_diff_after_last_step': kernel_diff}, f, indent=1)
    print(f'Wrote {FLAGS.output}.')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
