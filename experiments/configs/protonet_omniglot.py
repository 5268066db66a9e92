"""Prototypical Networks, Conv-4, on Omniglot (Snell et al. 2017, Table 1).

The paper's protocol: train with 60-way episodes of 5 queries per class at the
test shot, Adam lr 1e-3 halved every 2000 episodes, test on the Vinyals split.
Variants (after the colon): `1shot` (default), `5shot`, `tiny` (for tests), and
`1shot-trainval` / `5shot-trainval`: the paper's training set, all 1200
train+validation characters, with no validation (the last checkpoint is tested).

    python experiments/train.py --config=experiments/configs/protonet_omniglot.py:1shot \
      --workdir=runs/protonet_omniglot_1shot --config.data_dir=../shared/data
    python experiments/evaluate.py --workdir=runs/protonet_omniglot_1shot --way=20

Paper: 5-way 1-shot 98.8, 20-way 1-shot 96.0 (1shot); 5-way 5-shot 99.7,
20-way 5-shot 98.9 (5shot). Measured here (1000 test episodes, 95% CI):
  1shot, 6000 steps: 5-way 98.50 +- 0.18, 20-way 95.15 +- 0.16
  5shot, --config.num_train_steps=2000: 5-way 99.49 +- 0.07, 20-way 98.31 +- 0.07
  1shot --config.compute_dtype=bfloat16, 6000 steps: 5-way 98.64 +- 0.16
  1shot-trainval, 6000 steps: 5-way 98.62 +- 0.17, 20-way 95.35 +- 0.16,
    5-way 5-shot 99.64 +- 0.06, 20-way 5-shot 98.81 +- 0.06
The 20-way rows re-evaluate the same checkpoint with `experiments/evaluate.py
--way=20 --episodes=1000`. Training times and exact commands: README.md, Results.
"""

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '1shot'):
  config = config_lib.method_config('protonet')
  config.backbone = 'conv4'
  config.dataset = 'omniglot'
  config.way = 60
  config.query = 5
  config.meta_batch_size = 1
  config.test_way = 5
  config.test_query = 15
  # 6000 steps: about 80 minutes on a 2-core CPU (one core), a few on a GPU.
  config.num_train_steps = 6_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  variant, trainval = (variant[:-len('-trainval')], True) if variant.endswith('-trainval') else (
    variant, False)
  if trainval:
    if variant not in ('1shot', '5shot'):
      raise ValueError(f"Unknown variant {variant + '-trainval'!r}; use '1shot-trainval' or "
                       "'5shot-trainval'.")
    config.train_split = 'trainval'
    config.eval_every = 0  # No classes are left to validate on.
  if variant in ('', '1shot'):
    config.shot = config.test_shot = 1
  elif variant == '5shot':
    config.shot = config.test_shot = 5
  elif variant == 'tiny':  # Seconds on a CPU; for tests and the quickstart.
    _tiny.tiny(config, query=5, test_query=5, meta_batch_size=4, steps=100, log_every=20,
                eval_every=50, val_episodes=40, eval_episodes=100, eval_batch_size=10)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot', 'tiny', "
                     "'1shot-trainval' or '5shot-trainval'.")
  return config
