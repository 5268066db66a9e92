"""Prototypical Networks, Conv-4 (64 filters, 1600-d embedding), on miniImageNet.

The protocol of Snell et al. 2017 (Table 2) on the Ravi & Larochelle split:
train at the test shot with 30-way (1-shot) or 20-way (5-shot) episodes of 15
queries per class, Adam lr 1e-3 halved every 2000 episodes, no augmentation,
model selection on the validation split; test on 5-way episodes with 15 queries
per class. The paper stops by validation loss; here the default schedule is
20,000 episodes with the best validation checkpoint tested. Variants (after the
colon): `1shot`, `5shot` (default), `tiny` (for tests).

    python -m experiments.train --config=experiments/configs/protonet_mini_imagenet.py:5shot \
      --workdir=runs/protonet_mini_imagenet_5shot --config.data_dir=../shared/data

Paper: 5-way 1-shot 49.42 +- 0.78, 5-way 5-shot 68.20 +- 0.66.
Measured here (1000 fixed test episodes, 95% CI): see README.md, Results, for
the runs made so far, their (short) schedules and commands.
"""

from fsl_jax import config as config_lib


def get_config(variant: str = '5shot'):
  config = config_lib.base_config()
  config.method = 'protonet'
  config.backbone = 'conv4'
  config.dataset = 'mini_imagenet'
  config.query = 15
  config.meta_batch_size = 1
  config.test_way = 5
  config.test_query = 15
  config.num_train_steps = 20_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 25
  if variant == '1shot':
    config.way, config.shot, config.test_shot = 30, 1, 1
  elif variant in ('', '5shot'):
    config.way, config.shot, config.test_shot = 20, 5, 5
  elif variant == 'tiny':  # A minute on a CPU; for tests.
    config.way, config.shot, config.query = 5, 1, 3
    config.test_shot, config.test_query = 1, 3
    config.num_train_steps = 30
    config.log_every = 10
    config.eval_every = 15
    config.checkpoint_every = 15
    config.val_episodes = 20
    config.eval_episodes = 40
    config.eval_batch_size = 10
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
