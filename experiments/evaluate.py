"""Re-evaluates a trained checkpoint, optionally at another way, shot or query.

    python experiments/evaluate.py --workdir=runs/protonet_omniglot_1shot \
      --way=20 --shot=1 --episodes=1000
    python experiments/evaluate.py --workdir=runs/egnn_omniglot_5way1shot \
      --notransductive --query=15
"""

import json
import os
import sys

from absl import app, flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A training workdir.')
flags.DEFINE_integer('way', None, 'Test way (default: as trained).')
flags.DEFINE_integer('shot', None, 'Test shot (default: as trained).')
flags.DEFINE_integer('query', None, 'Queries per class (default: as trained).')
flags.DEFINE_integer('episodes', None, 'Number of fixed test episodes.')
flags.DEFINE_string('split', None, 'Split to evaluate on (default: the test split).')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.')
flags.DEFINE_string('data_dir', None, 'Data root, if it moved since training.')
flags.DEFINE_integer('batch_size', None, 'Episodes per device per call (memory).')
flags.DEFINE_bool('transductive', None, 'EGNN: test in (non-)transductive mode.')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  common.setup(common.workdir_method(FLAGS.workdir))
  from fsl_jax.training import train

  names = {'way': 'test_way', 'shot': 'test_shot', 'query': 'test_query',
           'episodes': 'eval_episodes', 'split': 'test_split', 'data_dir': 'data_dir',
           'batch_size': 'eval_batch_size', 'transductive': 'transductive'}
  overrides = {field: FLAGS[flag].value for flag, field in names.items()
               if FLAGS[flag].value is not None}
  with common.user_errors():
    results = train.evaluate_checkpoint(FLAGS.workdir, checkpoint=FLAGS.checkpoint, **overrides)
  print(json.dumps(results, indent=1))
  print(common.format_results(results))


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
