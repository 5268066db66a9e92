"""The ProtoNet protocol of Snell et al. 2017 for the image datasets, shared by their configs.

Train at the test shot with 30-way (1-shot) or 20-way (5-shot) episodes of 15
queries per class; Adam, lr 1e-3 halved every 2000 episodes; Conv-4; validate on
500 fixed 5-way episodes every 1000 steps and test the best checkpoint on 1000
fixed 5-way episodes with 15 queries per class. Variants: `1shot`, `5shot`,
`tiny` (seconds; for tests).
"""

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(dataset: str, variant: str, num_train_steps: int = 20_000, **fields):
  config = config_lib.method_config('protonet')
  config.backbone = 'conv4'
  config.dataset = dataset
  config.query = 15
  config.test_way = 5
  config.test_query = 15
  config.num_train_steps = num_train_steps
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 10
  for key, value in fields.items():
    config[key] = value
  if variant == '1shot':
    config.way, config.shot, config.test_shot = 30, 1, 1
  elif variant in ('', '5shot'):
    config.way, config.shot, config.test_shot = 20, 5, 5
  elif variant == 'tiny':
    _tiny.tiny(config, query=3, test_query=3, steps=30, log_every=10, eval_every=15,
               val_episodes=20, eval_episodes=40)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
