"""Trains and evaluates a few-shot method.

    python experiments/train.py --config=experiments/configs/protonet_omniglot.py \
      --workdir=runs/protonet --config.data_dir=../shared/data
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and results.json.')
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  common.setup(FLAGS.config.method)
  from fsl_jax.training import train

  with common.user_errors():
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info('Results: %s', results)
  print(common.format_results(results))


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
