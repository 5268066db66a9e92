"""TPN (Liu et al. 2019, Table 2) on miniImageNet: 5-way episodes at the test shot with
15 queries per class, Conv-4 feature maps (5x5x64), k = 20, alpha 0.99; Adam lr
1e-3 halved every 10k steps, 100k steps (our choice of schedule), validated
every 2000 steps on 500 fixed episodes; tested on 1000 fixed episodes of 15
queries per class. Variants (after the colon): `1shot`, `5shot` (default),
`tiny` (tests).

    python experiments/train.py --config=experiments/configs/tpn_mini_imagenet.py:5shot \
      --workdir=runs/tpn_mini_imagenet_5shot --config.data_dir=../shared/data

Paper: 53.75 +- 0.86 (1-shot), 69.43 +- 0.67 (5-shot). Measured here: not yet.
"""

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '5shot'):
  config = config_lib.method_config('tpn')
  config.backbone = 'conv4_map'
  config.dataset = 'mini_imagenet'
  config.tpn_topk = 20
  config.tpn_alpha = 0.99
  config.way = config.test_way = 5
  config.query = config.test_query = 15
  config.meta_batch_size = 1
  config.learning_rate = 1e-3
  config.lr_decay_every = 10_000
  config.lr_decay_factor = 0.5
  config.num_train_steps = 100_000
  config.eval_every = 2_000
  config.checkpoint_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 10
  if variant == '1shot':
    config.shot = config.test_shot = 1
  elif variant in ('', '5shot'):
    config.shot = config.test_shot = 5
  elif variant == 'tiny':  # Seconds on a CPU; for tests.
    _tiny.tiny(config, query=2, test_query=2, meta_batch_size=2, steps=6, log_every=2,
               eval_every=3, val_episodes=8, eval_episodes=8, eval_batch_size=4)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
