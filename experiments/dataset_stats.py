"""Loads a dataset's splits, timing the load, and prints their shapes and pixel statistics.

The first run decodes into the cache; a second run times the cached load. The
per-channel mean and standard deviation (pixels scaled to [0, 1]) of the
training split are the normalisation constants a new dataset's registry entry
needs.

    python -m experiments.dataset_stats --dataset=mini_imagenet --data_dir=../shared/data
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

if not __package__:  # Run as a script (`python experiments/NAME.py`): the repo on the path.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset', None, 'A registered dataset name.')
flags.DEFINE_string('data_dir', None, 'The data root.')
flags.DEFINE_string('cache_dir', None, 'The cache root (default: $FSL_JAX_CACHE_DIR or '
                    '~/.cache/fsl_jax).')
flags.DEFINE_list('splits', ['train', 'val', 'test'], 'Splits to load.')
flags.DEFINE_string('stats_split', 'train', 'The split whose pixel statistics are printed.')
flags.mark_flag_as_required('dataset')


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
  """Per-channel mean and std of uint8 images scaled to [0, 1], in float64."""
  flat = images.reshape(-1, images.shape[-1])
  total = np.zeros(flat.shape[1])
  squares = np.zeros(flat.shape[1])
  for start in range(0, len(flat), chunk * 1024):
    part = flat[start:start + chunk * 1024].astype(np.float64) / 255.0
    total += part.sum(0)
    squares += (part ** 2).sum(0)
  mean = total / len(flat)
  std = np.sqrt(squares / len(flat) - mean ** 2)
  return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  common.setup()
  from fsl_jax.data import registry

  report = {'dataset': FLAGS.dataset, 'splits': {}}
  with common.user_errors():
    for split in FLAGS.splits:
      start = time.perf_counter()
      dataset = registry.load_dataset(FLAGS.dataset, split, FLAGS.data_dir, FLAGS.cache_dir)
      seconds = time.perf_counter() - start
      report['splits'][split] = {'shape': list(dataset.images.shape),
                                 'load_s': round(seconds, 2)}
      if split == FLAGS.stats_split:
        report['mean'], report['std'] = channel_stats(dataset.images)
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
