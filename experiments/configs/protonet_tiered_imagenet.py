"""Prototypical Networks, Conv-4 (1600-d), on tieredImageNet (Ren et al. 2018).

The protocol of Snell et al. 2017 as Ren et al. ran it on tieredImageNet: train
at the test shot with 20-way episodes of 15 queries per class (30-way for
1-shot), Adam lr 1e-3 halved every 2000 episodes; test on 5-way episodes with 15
queries per class. tieredImageNet does not fit in memory, so episodes are
sampled on the host from the memory-mapped cache and prefetched
(`episode_sampling='host'`). Variants: `1shot`, `5shot` (default), `tiny`.

    python -m experiments.train --config=experiments/configs/protonet_tiered_imagenet.py:5shot \
      --workdir=runs/protonet_tiered_imagenet_5shot --config.data_dir=DIR

Published (Ren et al. 2018, ProtoNet on tieredImageNet, as widely cited; check
the paper's table before comparing): 5-way 1-shot 46.52 +- 0.52, 5-way 5-shot
66.15 +- 0.22. Measured here: not measured (tieredImageNet is not on this
project's machines; its reader is tested on generated files).
"""

from fsl_jax import config as config_lib


def get_config(variant: str = '5shot'):
  config = config_lib.base_config()
  config.method = 'protonet'
  config.backbone = 'conv4'
  config.dataset = 'tiered_imagenet'
  config.episode_sampling = 'host'
  config.query = 15
  config.test_way = 5
  config.test_query = 15
  config.num_train_steps = 40_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 10
  if variant == '1shot':
    config.way, config.shot, config.test_shot = 30, 1, 1
  elif variant in ('', '5shot'):
    config.way, config.shot, config.test_shot = 20, 5, 5
  elif variant == 'tiny':
    config.way, config.shot, config.query = 3, 1, 2
    config.test_way, config.test_shot, config.test_query = 3, 1, 2
    config.num_train_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.checkpoint_every = 3
    config.val_episodes = 4
    config.eval_episodes = 8
    config.eval_batch_size = 4
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
