"""Train and eval throughput of a config, after compilation; prints JSON.

    python experiments/benchmark.py --config=experiments/configs/protonet_omniglot.py \
      --config.data_dir=../shared/data
    # Shapes only (random pixels), e.g. miniImageNet-sized images:
    python experiments/benchmark.py --config=... --synthetic_shape=84,84,3
    # Where a train step's time goes (a profiler trace of one step):
    python experiments/benchmark.py --config=... --profile
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_list('synthetic_shape', None, 'H,W,C of random images instead of the dataset.')
flags.DEFINE_integer('train_steps', 20, 'Timed train steps.')
flags.DEFINE_integer('eval_calls', 5, 'Timed evaluation calls.')
flags.DEFINE_bool('compile_only', False,
                  "Only compile the train step and report XLA's memory for it.")
flags.DEFINE_bool('profile', False,
                  'Also trace one train step and report where its time goes, by XLA '
                  'operation kind (opcode, forward or backward) and by operation.')
flags.mark_flag_as_required('config')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  common.setup(FLAGS.config.method)
  from fsl_jax.training import benchmark

  shape = tuple(int(x) for x in FLAGS.synthetic_shape) if FLAGS.synthetic_shape else None
  with common.user_errors():
    result = benchmark.benchmark(FLAGS.config, train_steps=FLAGS.train_steps,
                                 eval_calls=FLAGS.eval_calls, synthetic_shape=shape,
                                 compile_only=FLAGS.compile_only, profile=FLAGS.profile)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
