"""Matching Networks with FCE, Conv-4 (64 filters, 1600-d), on miniImageNet.

The Ravi & Larochelle split and their evaluation of Matching Networks: 5-way
episodes at the test shot, Full Context Embeddings on (a bidirectional LSTM over
the supports and K = 5 read steps of an attention LSTM per query, each LSTM with
1600 units; `fsl_jax.models.matchingnet`), cosine attention of both embeddings.
15 queries per class in training and test; Adam lr 1e-3 halved every 2000 steps
for 20,000 steps (ProtoNet's schedule here; neither paper gives Matching
Networks' optimiser), model selection on 500 validation episodes every 1000
steps, the best checkpoint tested on 1000 fixed episodes. Ravi & Larochelle's
network may differ from this Conv-4 in its number of filters. Variants (after
the colon): `1shot`, `5shot` (default), `tiny` (tests).

    python -m experiments.train --config=experiments/configs/matchingnet_mini_imagenet.py:5shot \
      --workdir=runs/matchingnet_mini_imagenet_5shot --config.data_dir=../shared/data

Paper (Ravi & Larochelle 2017, Matching Networks FCE): 5-way 1-shot 43.56,
5-way 5-shot 55.31. Measured here: not yet.
"""

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '5shot'):
  config = config_lib.method_config('matchingnet')
  config.backbone = 'conv4'
  config.dataset = 'mini_imagenet'
  config.fce = True
  config.fce_steps = 5
  config.way = config.test_way = 5
  config.query = config.test_query = 15
  config.num_train_steps = 20_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 10
  if variant == '1shot':
    config.shot = config.test_shot = 1
  elif variant in ('', '5shot'):
    config.shot = config.test_shot = 5
  elif variant == 'tiny':  # Seconds on a CPU; for tests.
    _tiny.tiny(config, query=3, test_query=3, steps=30, log_every=10, eval_every=15,
               val_episodes=20, eval_episodes=40)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use '1shot', '5shot' or 'tiny'.")
  return config
