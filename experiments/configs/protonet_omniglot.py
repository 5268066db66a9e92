"""Prototypical Networks, Conv-4, on Omniglot (Snell et al. 2017, Table 1).

The paper's protocol: train with 60-way episodes of 5 queries per class at the
test shot, Adam lr 1e-3 halved every 2000 episodes, test on the Vinyals split.

    python experiments/train.py --config=experiments/configs/protonet_omniglot.py \
      --workdir=runs/protonet_omniglot_1shot --config.data_dir=../shared/data

Expected (paper): 5-way 1-shot 98.8, 20-way 1-shot 96.0 (train 1-shot);
5-way 5-shot 99.7, 20-way 5-shot 98.9 (train 5-shot, `--config.shot=5
--config.test_shot=5`). Measured numbers are in README.md with their commands.
"""

from fsl_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.method = 'protonet'
  config.backbone = 'conv4'
  config.dataset = 'omniglot'
  config.way = 60
  config.shot = 1
  config.query = 5
  config.meta_batch_size = 1
  config.test_way = 5
  config.test_shot = 1
  config.test_query = 15
  config.num_train_steps = 20_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  return config
