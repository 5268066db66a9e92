"""Prototypical Networks, Conv-4 (32x32 -> 2x2x64, 256-d), on CIFAR-FS (Bertinetto 2019).

Snell et al.'s protocol carried over to 32x32 CIFAR-100 classes: train at the
test shot with 20-way (5-shot) or 30-way (1-shot) episodes of 15 queries per
class, Adam lr 1e-3 halved every 2000 episodes, no augmentation (set
`--config.augment=pad_crop,flip` for the usual CIFAR one); test on 5-way
episodes with 15 queries per class. Variants: `1shot`, `5shot` (default), `tiny`.

    python -m experiments.train --config=experiments/configs/protonet_cifar_fs.py:5shot \
      --workdir=runs/protonet_cifar_fs_5shot --config.data_dir=DIR

Published (Bertinetto et al. 2019, their ProtoNet run, as widely cited; check the
paper's table before comparing): 5-way 1-shot 55.5 +- 0.7, 5-way 5-shot 72.0 +- 0.6.
Measured here: not measured (CIFAR-100 is not on this project's machines; its
readers are tested on generated files).
"""

from fsl_jax import config as config_lib


def get_config(variant: str = '5shot'):
  config = config_lib.base_config()
  config.method = 'protonet'
  config.backbone = 'conv4'
  config.dataset = 'cifar_fs'
  config.query = 15
  config.test_way = 5
  config.test_query = 15
  config.num_train_steps = 20_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  if variant == '1shot':
    config.way, config.shot, config.test_shot = 30, 1, 1
  elif variant in ('', '5shot'):
    config.way, config.shot, config.test_shot = 20, 5, 5
  elif variant == 'tiny':
    config.way, config.shot, config.query = 5, 1, 3
    config.test_shot, config.test_query = 1, 3
    config.num_train_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.checkpoint_every = 3
    config.val_episodes = 8
    config.eval_episodes = 8
    config.eval_batch_size = 4
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
