"""Siamese networks (Koch et al. 2015) on Omniglot, the Vinyals protocol (28x28, 1028
training characters with rotations, 20-way and 5-way tests).

Verification pairs come from 20-way training episodes with 5 queries per class
(every query-support pair; the loss balances same and different pairs), at the
test shot. Conv-4 encoder (64-d), the weighted L1 distance on it; Adam lr 1e-3
halved every 2000 steps, 6000 steps, validation every 1000 steps on 500 fixed
5-way episodes. Variants (after the colon): `1shot` (default), `5shot`, `tiny`
(tests). The 20-way rows re-evaluate the checkpoint with `experiments/evaluate.py
--way=20`.

    python experiments/train.py --config=experiments/configs/siamese_omniglot.py:1shot \
      --workdir=runs/siamese_omniglot_1shot --config.data_dir=../shared/data

Reported (Vinyals et al. 2016, Table 1, Siamese net without fine-tuning):
97.3 / 98.4 / 88.2 / 97.0 (5w1s / 5w5s / 20w1s / 20w5s). Measured here (1000
fixed test episodes of 15 queries per class; one model, the other columns by
`experiments/evaluate.py --way=W --shot=K`): `1shot`, the 6000 steps above:
95.09 +- 0.33 / 98.42 +- 0.15 / 84.92 +- 0.27 / 94.04 +- 0.15, validation 88.1,
91.0, 93.5, 94.6, 95.1, 95.4 at steps 1000-6000 (still rising);
`1shot --config.num_train_steps=3000`: 93.48 +- 0.40 at 5-way 1-shot, 80.80 +-
0.31 at 20-way 1-shot.
"""

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '1shot'):
  config = config_lib.method_config('siamese')
  config.backbone = 'conv4'
  config.dataset = 'omniglot'
  config.way = 20
  config.query = 5
  config.meta_batch_size = 1
  config.test_way = 5
  config.test_query = 15
  config.num_train_steps = 6_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  if variant in ('', '1shot'):
    config.shot = config.test_shot = 1
  elif variant == '5shot':
    config.shot = config.test_shot = 5
  elif variant == 'tiny':  # Seconds on a CPU; for tests.
    _tiny.tiny(config, query=5, test_query=5, meta_batch_size=4, steps=100, log_every=20,
                eval_every=50, val_episodes=40, eval_episodes=100, eval_batch_size=10)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
