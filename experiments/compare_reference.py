"""fsl_jax's EGNN against the official PyTorch EGNN, side by side, on this machine.

Runs `../shared/bench/egnn_reference_bench.py` (the reference's own
`ModelTrainer.train()`/`eval()` on random tensors) and `experiments.benchmark`
at the same shapes, alternating (reference, fsl_jax, reference, fsl_jax, ...)
for `--rounds` rounds, each in a fresh process, and prints per round and mode:
train and eval episodes/s of both, their ratio, the peak RSS of each process,
and fsl_jax's achieved GFLOP/s (XLA's FLOP count of the step over its time) and
share of `--peak_gflops`. The reference runs both modes in one process, so its
peak RSS is the larger of the two; fsl_jax runs each mode in its own. Absolute
times drift between runs on a shared machine; the ratios of neighbouring runs
are what to read.

Shapes: 84x84x3 images, EGNN's Conv-4 (`egnn_conv4`), 5-way 5-shot with one
query per class (30 nodes), graph dropout 0.1, meta-batch `--meta_batch_size`:
the reference's miniImageNet setting. fsl_jax runs its miniImageNet config as
shipped (`experiments/configs/egnn_mini_imagenet.py`, which trains as the
reference does: per-position BatchNorm statistics, the images embedded in
chunks), with one test query per class and no environment variables; pass
`--fsl_args` to add config overrides (e.g.
`--fsl_args=--config.compute_dtype=bfloat16`).

PyTorch is not a dependency of fsl_jax: the reference runs in a virtual
environment of its own, and this script is never part of the tests.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    python experiments/compare_reference.py --torch_python=/tmp/torchvenv/bin/python \
      --output=experiments/results/compare_reference_cpu.json
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.measure import run_measured  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
flags.DEFINE_string('torch_python', None, 'Python of a virtual environment with torch.')
flags.DEFINE_string('reference_bench', str(REPO.parent / 'shared' / 'bench' /
                                           'egnn_reference_bench.py'),
                    'The reference benchmark script.')
flags.DEFINE_integer('rounds', 2, 'Alternating rounds (reference, then fsl_jax).')
flags.DEFINE_integer('meta_batch_size', 40, 'Training episodes per step.')
flags.DEFINE_integer('steps', 3, 'Timed train steps per mode and process.')
flags.DEFINE_integer('eval_steps', 5, 'Timed reference eval iterations (10 episodes each).')
flags.DEFINE_integer('eval_calls', 4, 'Timed fsl_jax eval calls (eval_batch_size episodes each).')
flags.DEFINE_integer('threads', 2, "The reference's torch threads.")
flags.DEFINE_float('peak_gflops', 384.0,
                   "The CPU's fp32 peak, for the share column. Default: nominal for 2 cores "
                   'with two AVX-512 FMA units each (16 fp32 lanes, 2 FLOP per FMA) at an '
                   'assumed 3.0 GHz; set it for your CPU.')
flags.DEFINE_list('modes', ['transductive', 'non_transductive'], 'Modes to compare.')
flags.DEFINE_multi_string('fsl_args', [], 'Extra arguments for experiments.benchmark.')
flags.DEFINE_string('output', None, 'Write all rounds as JSON here.')
flags.mark_flag_as_required('torch_python')


def reference(modes) -> dict:
  command = [FLAGS.torch_python, FLAGS.reference_bench, '--meta_batch_size',
             str(FLAGS.meta_batch_size), '--steps', str(FLAGS.steps), '--warmup', '1',
             '--eval_steps', str(FLAGS.eval_steps), '--threads', str(FLAGS.threads),
             '--skip_eval_autograd']
  if 'non_transductive' not in modes:
    command.append('--skip_non_transductive')
  stdout, rss = run_measured(command)
  out = json.loads(stdout[stdout.index('{'):])
  result = {'peak_rss_gib': rss, 'torch_version': out['torch_version']}
  for mode in modes:
    result[mode] = {
      'train_episodes_per_s': out[f'train_{mode}_episodes_per_s'],
      # The reference bench names its transductive eval figure without the mode.
      'eval_episodes_per_s': out.get('eval_episodes_per_s' if mode == 'transductive'
                                     else f'eval_{mode}_episodes_per_s'),
    }
  return result


def fsl_jax(mode: str) -> dict:
  variant = '5way5shot' if mode == 'transductive' else '5way5shot-nontransductive'
  command = [sys.executable, '-m', 'experiments.benchmark',
             f'--config=experiments/configs/egnn_mini_imagenet.py:{variant}',
             '--config.test_query=1', f'--config.meta_batch_size={FLAGS.meta_batch_size}',
             '--synthetic_shape=84,84,3',
             f'--train_steps={FLAGS.steps}', f'--eval_calls={FLAGS.eval_calls}', *FLAGS.fsl_args]
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # The defaults, as shipped.
  stdout, rss = run_measured(command, env=env)
  out = json.loads(stdout[stdout.index('{'):])
  gflops = out['train_step_flops'] / out['train_step_s'] / 1e9
  return {'train_episodes_per_s': out['train_episodes_per_s'],
          'eval_episodes_per_s': out['eval_episodes_per_s'], 'peak_rss_gib': rss,
          'gflops_per_s': round(gflops, 1), 'peak_share': round(gflops / FLAGS.peak_gflops, 3),
          'train_step_s': out['train_step_s'], 'xla_flags': out['xla_flags'],
          'jax_version': out['jax_version']}


def main(argv):
  del argv
  rounds = []
  header = (f'{"round":>5} {"mode":<16} {"ref train":>9} {"ours":>7} {"ratio":>6} '
            f'{"ref eval":>8} {"ours":>7} {"ratio":>6} {"ref RSS":>8} {"our RSS":>8} '
            f'{"GFLOP/s":>8} {"of peak":>7}')
  print(header, flush=True)
  for r in range(FLAGS.rounds):
    ref = reference(FLAGS.modes)
    ours = {mode: fsl_jax(mode) for mode in FLAGS.modes}
    row = {'round': r + 1, 'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'reference': ref,
           'fsl_jax': ours}
    for mode in FLAGS.modes:
      a, b = ref[mode], ours[mode]
      train_ratio = b['train_episodes_per_s'] / a['train_episodes_per_s']
      eval_ratio = (b['eval_episodes_per_s'] / a['eval_episodes_per_s']
                    if a['eval_episodes_per_s'] else float('nan'))
      row[f'{mode}_train_ratio'], row[f'{mode}_eval_ratio'] = train_ratio, eval_ratio
      print(f'{r + 1:>5} {mode:<16} {a["train_episodes_per_s"]:>9.2f} '
            f'{b["train_episodes_per_s"]:>7.2f} {train_ratio:>5.2f}x '
            f'{a["eval_episodes_per_s"] or float("nan"):>8.2f} {b["eval_episodes_per_s"]:>7.2f} '
            f'{eval_ratio:>5.2f}x {ref["peak_rss_gib"]:>7.1f}G {b["peak_rss_gib"]:>7.1f}G '
            f'{b["gflops_per_s"]:>8.1f} {100 * b["peak_share"]:>6.1f}%', flush=True)
    rounds.append(row)
  if FLAGS.output:
    payload = {'command': ' '.join(['python', 'experiments/compare_reference.py', *sys.argv[1:]]),
               'meta_batch_size': FLAGS.meta_batch_size, 'peak_gflops': FLAGS.peak_gflops,
               'rounds': rounds}
    pathlib.Path(FLAGS.output).write_text(json.dumps(payload, indent=1) + '\n')


if __name__ == '__main__':
  app.run(main)
