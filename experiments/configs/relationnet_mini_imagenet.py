"""Relation Networks on miniImageNet (Sung et al. 2018, Table 2), the paper's protocol.

5-way episodes at the test shot with 15 (1-shot) or 10 (5-shot) queries per
class, one per step; Adam lr 1e-3 halved every 100k episodes; the paper trains
500k episodes, the default here is 100k (a 20% schedule), validated every 2000
steps on 500 fixed episodes; the relation module's convs are unpadded on the
19x19 maps (`relation_padding='VALID'`), as the reference's miniImageNet model.
Test: 1000 fixed episodes with 15 queries per class. Variants (after the
colon): `1shot`, `5shot` (default), `tiny` (tests).

    python experiments/train.py --config=experiments/configs/relationnet_mini_imagenet.py:5shot \
      --workdir=runs/relationnet_mini_imagenet_5shot --config.data_dir=../shared/data

Paper: 50.44 +- 0.82 (1-shot), 65.32 +- 0.70 (5-shot). Measured here: not yet.
"""

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '5shot'):
  config = config_lib.method_config('relationnet')
  config.backbone = 'relation_conv4'
  config.dataset = 'mini_imagenet'
  config.relation_padding = 'VALID'
  config.way = config.test_way = 5
  config.meta_batch_size = 1
  config.test_query = 15
  config.learning_rate = 1e-3
  config.lr_decay_every = 100_000
  config.lr_decay_factor = 0.5
  config.num_train_steps = 100_000
  config.eval_every = 2_000
  config.checkpoint_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 10
  if variant == '1shot':
    config.shot = config.test_shot = 1
    config.query = 15
  elif variant in ('', '5shot'):
    config.shot = config.test_shot = 5
    config.query = 10
  elif variant == 'tiny':  # Seconds on a CPU; for tests.
    _tiny.tiny(config, query=2, test_query=2, meta_batch_size=2, steps=6, log_every=2,
               eval_every=3, val_episodes=8, eval_episodes=8, eval_batch_size=4)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
