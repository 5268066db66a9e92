"""The node-labelling GNN on miniImageNet (Garcia & Bruna 2018, Table 2).

Variant (after the colon): `5way1shot` or `5way5shot` (default), optionally
`-transductive`; or `tiny` (tests). The default is the paper's setting,
non-transductive: each query is classified in its own graph with the supports.

The reference implementation's settings (vgsatorras/few-shot-gnn): its
embedding (`egnn_conv4`, the same network: 64-96-128-256 channels, channel
dropout 0.4 and 0.5 in the last two blocks, a 128-d embedding), two hidden
graph layers of 48 new features and the output layer, adjacency MLPs of widths
192, 192, 96, 96, no dropout in the graph and no BatchNorm on the output
scores; Adam lr 1e-3 halved every 15k steps, coupled L2 1e-6, no augmentation;
80k steps for 1-shot and 90k for 5-shot. Its graphs hold one query each and
its batches 100 graphs (1-shot) or 40 (5-shot); here an episode has one query
per class in training, so a step of `meta_batch_size` episodes holds as many
graphs (20 x 5, 8 x 5). Tests use 15 queries per class, 1000 fixed episodes.
BatchNorm statistics are pooled over the meta-batch
(`batchnorm_stats='meta_batch'`; the reference embeds one node position of the
batch at a time). Pixels are normalised with the training split's statistics.

    python experiments/train.py --config=experiments/configs/gnn_mini_imagenet.py:5way5shot \
      --workdir=runs/gnn_mini_imagenet_5way5shot --config.data_dir=../shared/data

Paper: 50.33 (5-way 1-shot), 66.41 (5-way 5-shot). Measured here: not yet.
"""

import re

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '5way5shot'):
  config = config_lib.method_config('gnn')
  config.backbone = 'egnn_conv4'
  config.dataset = 'mini_imagenet'
  config.transductive = False
  config.num_layers = 3
  config.node_features = 48
  config.adjacency_features = 96
  config.adjacency_ratios = (2.0, 2.0, 1.0, 1.0)
  config.adjacency_dropout = 0.0
  config.output_batchnorm = False
  config.batchnorm_stats = 'meta_batch'
  config.way = config.test_way = 5
  config.query = 1
  config.test_query = 15
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.weight_decay = 1e-6
  config.lr_decay_every = 15_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 10
  config.checkpoint_every = 1_000
  if variant == 'tiny':  # A minute on a CPU; for tests.
    _tiny.tiny(config, query=1, test_query=2, meta_batch_size=4, steps=6, log_every=2,
               eval_every=3, val_episodes=8, eval_episodes=8, eval_batch_size=4)
    config.node_features, config.adjacency_features = 8, 16
    return config
  match = re.fullmatch(r'5way([15])shot(-transductive)?', variant or '5way5shot')
  if not match:
    raise ValueError(f'Unknown variant {variant!r}; use 5way5shot or 5way1shot, optionally '
                     "with -transductive, or 'tiny'.")
  config.shot = config.test_shot = int(match.group(1))
  config.transductive = match.group(2) is not None
  config.meta_batch_size = 20 if config.shot == 1 else 8
  config.num_train_steps = 80_000 if config.shot == 1 else 90_000
  return config
