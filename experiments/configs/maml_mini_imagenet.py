"""MAML (Finn, Abbeel & Levine 2017, Table 2) on miniImageNet, the paper's protocol.

The paper's miniImageNet protocol (Sec. 5.2 and the official code, cbfinn/maml):
Conv-4 of 32 filters with 2x2 max-pools (84 -> 5x5x32, flattened) and a linear
head; 5 inner steps of size 0.01 in training, 10 at test; 15 queries per class
in training; meta-batch 4 (1-shot) and 2 (5-shot; the official README's command
uses 4); Adam meta lr 1e-3 (constant), 60,000 meta-updates, on the Ravi &
Larochelle split. Test here: 1000 fixed episodes with 15 queries per class (the
official code tests 600 with `shot` queries per class), validated every 2000
steps on 500 fixed episodes. The official code clips the meta-gradient to
[-10, 10]; the shared optimizer has no clipping, so it is not done here.

BatchNorm (see `fsl_jax/models/maml.py`): by default transductive, as the paper:
the queries are normalised by the statistics of the query batch, so a query's
prediction depends on the other queries of its episode. `-nontransductive`
normalises them by the supports' statistics instead (no query affects another).

Variants (after the colon): `5way1shot` (default) or `5way5shot`, optionally
followed by `-firstorder` (first-order MAML) and then `-nontransductive`, e.g.
`5way1shot-firstorder`; `tiny` (config tests). Second order through 5 steps
on 84x84 images is heavy: `--config.inner_remat=True` bounds its memory.

    python experiments/train.py --config=experiments/configs/maml_mini_imagenet.py:5way1shot \
      --workdir=runs/maml_mini_imagenet_5way1shot --config.data_dir=../shared/data

Paper: 48.70 +- 1.84 / 63.11 +- 0.92 (1-shot / 5-shot); first order 48.07 +-
1.75 / 63.15 +- 0.91. Measured here: not yet.
"""

import re

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '5way1shot'):
  config = config_lib.method_config('maml')
  config.dataset = 'mini_imagenet'
  config.filters = 32
  config.downsample = 'max_pool'
  config.head_init = 'xavier'
  config.inner_lr = 0.01
  config.inner_steps = 5
  config.test_inner_steps = 10
  config.way = config.test_way = 5
  config.query = 15
  config.test_query = 15
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.lr_decay_every = 0
  config.num_train_steps = 60_000
  config.eval_every = 2_000
  config.checkpoint_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 5
  match = re.fullmatch(r'(?:5way([15])shot|(tiny))(-firstorder)?(-nontransductive)?',
                       variant or '5way1shot')
  if not match:
    raise ValueError(f'Unknown variant {variant!r}; use 5way1shot or 5way5shot, optionally '
                     "followed by -firstorder and -nontransductive, or 'tiny'.")
  config.first_order = match.group(3) is not None
  config.transductive = match.group(4) is None
  if match.group(2):  # Seconds; for config tests.
    _tiny.tiny(config, query=2, test_query=2, meta_batch_size=2, steps=6, log_every=2,
               eval_every=3, val_episodes=8, eval_episodes=8, eval_batch_size=4)
    config.inner_steps, config.test_inner_steps = 1, 2
    return config
  config.shot = config.test_shot = int(match.group(1))
  config.meta_batch_size = 4 if config.shot == 1 else 2
  return config
