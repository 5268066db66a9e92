"""fsl_jax's MAML against an independent PyTorch MAML: the same numbers, and the speed.

The PyTorch side is `experiments/reference/maml_torch.py`, MAML written from the
paper in two idiomatic ways: a Python loop over the episodes with
`torch.autograd.grad(create_graph=True)` (`loop`, as learn2learn and `higher`
do it), and `torch.func.vmap` over episodes of a nested `torch.func.grad`
(`vmap`). Two parts:

1. `--check` (default on): the meta-loss and the meta-gradients of every
   parameter on one meta-batch of real training episodes (the first step's of
   the config's seed), second and first order, and the test-time logits of one
   episode (`test_inner_steps` inner steps), from the same initial parameters.
   PyTorch runs them in float32 and float64, so the float32 differences can be
   read against what rounding alone gives.
2. `--rounds` (default 3) of timing, alternating in fresh processes (PyTorch
   loop, PyTorch vmap, fsl_jax; second order, then first order): training
   episodes/s (meta-gradient and Adam update of a meta-batch) and evaluation
   episodes/s (`test_inner_steps` steps, `test_query` queries per class, 25
   episodes a call). fsl_jax runs `experiments.benchmark` on the real data;
   PyTorch times random images of the same shapes. Absolute times drift
   between runs on a shared machine; read the ratios of one round.

PyTorch is not a dependency of fsl_jax: the reference runs in a virtual
environment of its own, and this script is never part of the tests.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    python experiments/compare_maml_torch.py --torch_python=/tmp/torchvenv/bin/python \
      --config=experiments/configs/maml_omniglot.py:5way1shot --config.data_dir=../shared/data \
      --output=experiments/results/compare_maml_torch_cpu.json
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common, measure  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TORCH_MAML = REPO / 'experiments' / 'reference' / 'maml_torch.py'

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A MAML config file.', lock_config=True)
flags.DEFINE_string('torch_python', None, 'Python of a virtual environment with torch.')
flags.DEFINE_bool('check', True, 'Compare the numbers on one meta-batch.')
flags.DEFINE_integer('check_episodes', 8, 'Episodes of the meta-batch that --check compares.')
flags.DEFINE_integer('rounds', 3, 'Timing rounds (0: none).')
flags.DEFINE_list('impls', ['loop', 'vmap'], 'PyTorch implementations to time.')
flags.DEFINE_integer('steps', 5, 'Timed train steps per process.')
flags.DEFINE_integer('eval_calls', 2, 'Timed evaluation calls (25 episodes each).')
flags.DEFINE_integer('threads', 2, "PyTorch's threads.")
flags.DEFINE_string('fsl_xla_flags', None,
                    "XLA_FLAGS for fsl_jax's benchmark processes. Default: as shipped, the "
                    "method's own and the project's flags; XLA_FLAGS of this process's "
                    "environment is not passed on to them.")
flags.DEFINE_string('output', None, 'Write the comparison as JSON here.')
flags.mark_flags_as_required(['config', 'torch_python'])


def check_supported(config) -> None:
  from fsl_jax import config as config_lib

  wanted = {'method': 'maml', 'dataset': 'omniglot', 'downsample': 'stride', 'adapt': 'all',
            'transductive': True, 'inner_remat': False, 'unlabeled_shot': 0, 'augment': ''}
  wrong = {k: config[k] for k, v in wanted.items() if config[k] != v}
  if wrong:
    raise config_lib.ConfigError(
      f'The PyTorch side implements only {wanted}; this config has {wrong}.')


def fsl_jax_numbers(config, episodes: int):
  """Initial parameters, the first step's first `episodes` episodes, and fsl_jax's
  meta-losses, meta-gradients (second and first order) and test logits on them."""
  import jax
  import jax.numpy as jnp

  from fsl_jax.training import train

  config.meta_batch_size = episodes
  config, model = train.build(config)
  fo_config = config.copy_and_resolve_references()
  fo_config.first_order = True
  _, fo_model = train.build(fo_config)
  devices = jax.local_devices()[:1]
  spec, source, state = common.training_start(config, model, devices)

  def sample(images):  # The episodes of `train.train_step`'s step 0.
    keys = train.device_episode_keys(jax.random.fold_in(state.train_key, 0), 0, episodes)
    return source.episodes(images, jax.vmap(jax.random.split)(keys)[:, 0])

  batch = jax.pmap(sample, axis_name=train.AXIS, devices=devices)(source.step_inputs())
  batch = jax.tree.map(lambda x: np.asarray(x)[0], batch)

  def meta_loss(params, m):
    def one(episode):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      outputs = train.apply_method(m, variables, episode, spec.way, train=True,
                                   rng=jax.random.PRNGKey(0))[0]
      return m.loss(outputs, train.hide_unlabeled_labels(episode))[0]
    return jnp.mean(jax.vmap(one)(batch))

  out = {}
  for name, m in (('second', model), ('first', fo_model)):
    loss, grads = jax.jit(jax.value_and_grad(lambda p, m=m: meta_loss(p, m)))(state.params)
    out[f'loss_{name}'] = float(loss)
    out[f'grads_{name}'] = jax.device_get(grads)
  first = jax.tree.map(lambda x: x[0], batch)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  out['test_logits'] = np.asarray(
    train.apply_method(model, variables, first, spec.way, train=False).logits)
  return config, jax.device_get(state.params), batch, out


def run_check(config) -> dict:
  config, params, batch, mine = fsl_jax_numbers(config, FLAGS.check_episodes)
  names = sorted(params)
  with tempfile.TemporaryDirectory() as tmp:
    source, target = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
    np.savez(source, param_names=np.array(names),
             **{f'param_{k}': np.asarray(params[k]) for k in names},
             support_images=batch.support_images, support_labels=batch.support_labels,
             query_images=batch.query_images, query_labels=batch.query_labels,
             way=config.way, inner_lr=config.inner_lr, inner_steps=config.inner_steps,
             test_inner_steps=config.test_inner_steps, threads=FLAGS.threads)
    subprocess.run([FLAGS.torch_python, str(TORCH_MAML), 'check', source, target], check=True)
    theirs = dict(np.load(target))
  rel = lambda a, b: float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))
  result = {'episodes': FLAGS.check_episodes, 'torch_version': str(theirs['torch_version'])}
  print(f'One meta-batch of {FLAGS.check_episodes} real training episodes, relative '
        'differences |a - b| / |b| (b: PyTorch float64):')
  print(f'{"quantity":<34} {"fsl_jax":>10} {"torch loop":>11} {"torch vmap":>11}')
  for order in ('second', 'first'):
    ref = lambda k, order=order: theirs[f'grad_{order}_loop64_{k}']
    rows = {'loss': {'fsl_jax': rel(mine[f'loss_{order}'], theirs[f'loss_{order}_loop64'])}}
    for impl in ('loop', 'vmap'):
      rows['loss'][f'torch_{impl}'] = rel(theirs[f'loss_{order}_{impl}'],
                                          theirs[f'loss_{order}_loop64'])
    for k in names:
      rows[f'grad {k}'] = {'fsl_jax': rel(mine[f'grads_{order}'][k], ref(k))}
      for impl in ('loop', 'vmap'):
        rows[f'grad {k}'][f'torch_{impl}'] = rel(theirs[f'grad_{order}_{impl}_{k}'], ref(k))
    for q, r in rows.items():
      cells = ' '.join(f'{r.get(c, float("nan")):>10.2e} ' for c in
                       ('fsl_jax', 'torch_loop', 'torch_vmap'))
      print(f'{order + " order " + q:<34} {cells}')
    result[order] = rows
  # How far first order is from second: a difference the check must be able to see.
  flat = lambda tree: np.concatenate([np.ravel(tree[k]) for k in names])
  result['first_vs_second_order'] = rel(
    flat(mine['grads_first']), flat({k: theirs[f'grad_second_loop64_{k}'] for k in names}))
  result['test_logits'] = {'fsl_jax': rel(mine['test_logits'], theirs['test_logits64']),
                           'torch_loop': rel(theirs['test_logits'], theirs['test_logits64'])}
  # PyTorch's two test-time implementations (the ones timed) predict the same classes.
  result['torch_loop_vmap_predictions_agree'] = float(theirs['test_predictions_agree'])
  print(f'{"test logits (" + str(config.test_inner_steps) + " inner steps)":<34} '
        f'{result["test_logits"]["fsl_jax"]:>10.2e}  {result["test_logits"]["torch_loop"]:>10.2e}')
  print('PyTorch loop and vmap test-time predictions agree on '
        f'{100 * result["torch_loop_vmap_predictions_agree"]:.1f}% of the queries')
  print('fsl_jax\'s first-order meta-gradient against the second-order one: '
        f'{result["first_vs_second_order"]:.3f}')
  print(f'meta-loss: fsl_jax {mine["loss_second"]:.6f}, PyTorch {theirs["loss_second_loop"]:.6f}'
        f' (second order); {mine["loss_first"]:.6f}, {theirs["loss_first_loop"]:.6f} (first)')
  return result


def torch_bench(config, impl: str, first_order: bool) -> dict:
  command = [FLAGS.torch_python, str(TORCH_MAML), 'bench', f'--impl={impl}',
             '--image_shape', '28', '28', '1', f'--filters={config.filters}',
             f'--way={config.way}', f'--shot={config.shot}', f'--query={config.query}',
             f'--test_query={config.test_query}', f'--meta_batch_size={config.meta_batch_size}',
             f'--inner_steps={config.inner_steps}', f'--test_inner_steps={config.test_inner_steps}',
             f'--inner_lr={config.inner_lr}', f'--steps={FLAGS.steps}',
             f'--eval_calls={FLAGS.eval_calls}', '--eval_episodes=25', f'--threads={FLAGS.threads}']
  if first_order:
    command.append('--first_order')
  stdout, rss = measure.run_measured(command)
  out = json.loads(stdout[stdout.index('{'):])
  return {'train_episodes_per_s': out['train_episodes_per_s'],
          'eval_episodes_per_s': out['eval_episodes_per_s'], 'peak_rss_gib': rss,
          'torch_version': out['torch_version']}


def fsl_jax_bench(first_order: bool) -> dict:
  command = [sys.executable, '-m', 'experiments.benchmark', *CONFIG_ARGS,
             f'--config.first_order={first_order}', '--config.eval_batch_size=25',
             f'--train_steps={FLAGS.steps}', f'--eval_calls={FLAGS.eval_calls}']
  # The flags as shipped: the child decides them afresh (fsl_jax/xla_flags.py).
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'FSL_JAX_XLA_ADDED')}
  if FLAGS.fsl_xla_flags is not None:
    env['XLA_FLAGS'] = FLAGS.fsl_xla_flags
  stdout, rss = measure.run_measured(command, env=env)
  out = json.loads(stdout[stdout.index('{'):])
  return {'train_episodes_per_s': out['train_episodes_per_s'],
          'eval_episodes_per_s': out['eval_episodes_per_s'], 'peak_rss_gib': rss,
          'jax_version': out['jax_version'], 'xla_flags': out['xla_flags']}


CONFIG_ARGS: list[str] = []


def main(argv):
  del argv
  common.setup(FLAGS.config.method)
  # The --config flags, passed on to experiments.benchmark as they were given.
  args = iter(sys.argv[1:])
  for arg in args:
    if arg.startswith('--config'):
      CONFIG_ARGS.append(arg if '=' in arg else f'{arg}={next(args, "")}')
  config = FLAGS.config.copy_and_resolve_references()
  payload = {'command': ' '.join(['python', 'experiments/compare_maml_torch.py', *sys.argv[1:]]),
             'config': {k: config[k] for k in (
               'way', 'shot', 'query', 'test_query', 'meta_batch_size', 'filters',
               'inner_lr', 'inner_steps', 'test_inner_steps')}}
  with common.user_errors():
    check_supported(config)
    if FLAGS.check:
      payload['check'] = run_check(config.copy_and_resolve_references())
  rounds = []
  if FLAGS.rounds:
    print(f'{"round":>5} {"order":<7} {"side":<11} {"train ep/s":>10} {"eval ep/s":>10} '
          f'{"RSS":>6}   (meta-batch {config.meta_batch_size}, {config.way}-way '
          f'{config.shot}-shot)', flush=True)
  for r in range(FLAGS.rounds):
    row = {'round': r + 1, 'time': time.strftime('%Y-%m-%d %H:%M:%S')}
    for order, first_order in (('second', False), ('first', True)):
      sides = {f'torch_{impl}': torch_bench(config, impl, first_order) for impl in FLAGS.impls}
      sides['fsl_jax'] = fsl_jax_bench(first_order)
      for impl in FLAGS.impls:
        t = sides[f'torch_{impl}']
        for what in ('train', 'eval'):
          sides[f'fsl_jax_over_torch_{impl}_{what}'] = (
            sides['fsl_jax'][f'{what}_episodes_per_s'] / t[f'{what}_episodes_per_s'])
      for side in (*(f'torch_{i}' for i in FLAGS.impls), 'fsl_jax'):
        s = sides[side]
        print(f'{r + 1:>5} {order:<7} {side:<11} {s["train_episodes_per_s"]:>10.2f} '
              f'{s["eval_episodes_per_s"]:>10.2f} {s["peak_rss_gib"]:>5.1f}G', flush=True)
      print('      fsl_jax / ' + ', '.join(
        f'torch {i}: train {sides[f"fsl_jax_over_torch_{i}_train"]:.2f}x, eval '
        f'{sides[f"fsl_jax_over_torch_{i}_eval"]:.2f}x' for i in FLAGS.impls), flush=True)
      row[order] = sides
    rounds.append(row)
  payload['rounds'] = rounds
  if FLAGS.output:
    pathlib.Path(FLAGS.output).write_text(json.dumps(payload, indent=1) + '\n')
    print(f'Wrote {FLAGS.output}.')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
