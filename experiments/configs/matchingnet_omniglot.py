"""Matching Networks, Conv-4, on Omniglot (Vinyals et al. 2016, Table 1), without FCE.

Trained at the test shape, as the paper does: N-way k-shot episodes for an
N-way k-shot test, with 15 queries per class at 5-way and 5 at 20-way (the
paper does not give the number; these keep an episode under 200 images). The
paper gives no optimiser or schedule either; this uses ProtoNet's here (Adam,
lr 1e-3 halved every 2000 steps) for 10,000 steps, validating every 1000 steps
at the test shape and testing the best checkpoint on 1000 fixed episodes of 15
queries per class. Variants (after the colon): `5way1shot` (default),
`5way5shot`, `20way1shot`, `20way5shot`, `tiny` (tests, seconds).

Attention: softmax over dot products with the L2-normalised supports, the query
left unnormalised (`matchingnet_normalize_query=False`), as several reference
implementations do: the query's norm acts as a learned inverse temperature. Eq.
2's cosine of both sides (`--config.matchingnet_normalize_query=True`) bounds the
logits to [-1, 1] (to [0, 1] after Conv-4's ReLU), and trained far worse here.

    python experiments/train.py --config=experiments/configs/matchingnet_omniglot.py:5way1shot \
      --workdir=runs/matchingnet_omniglot_5way1shot --config.data_dir=../shared/data

Paper (no FCE): 5-way 1-shot 98.1, 5-way 5-shot 98.9, 20-way 1-shot 93.8,
20-way 5-shot 98.5. Measured here (1000 fixed test episodes of 15 queries per
class; one model trained at 5-way 1-shot, the other columns from
`experiments/evaluate.py --way=W --shot=K --query=15 --episodes=1000`):
  5way1shot, the 10k steps above: 97.69 +- 0.22 / 99.38 +- 0.08 / 92.50 +- 0.20 /
  97.70 +- 0.08 (5w1s / 5w5s / 20w1s / 20w5s); validation 98.04 at step 10k.
  5way1shot --config.num_train_steps=5000 --config.matchingnet_normalize_query=True
  (cosine): 85.33 +- 0.60 at 5-way 1-shot. Validation (500 fixed episodes) at
  steps 1000 / 3000 / 5000, same seed: 94.88 / 96.93 / 97.52 support-normalised,
  78.78 / 84.28 / 86.48 cosine.
"""

import re

from experiments.configs import _tiny
from fsl_jax import config as config_lib


def get_config(variant: str = '5way1shot'):
  config = config_lib.method_config('matchingnet')
  config.backbone = 'conv4'
  config.dataset = 'omniglot'
  config.fce = False
  config.meta_batch_size = 1
  config.test_query = 15
  config.num_train_steps = 10_000
  config.learning_rate = 1e-3
  config.lr_decay_every = 2_000
  config.lr_decay_factor = 0.5
  config.eval_every = 1_000
  config.val_episodes = 500
  config.eval_episodes = 1_000
  config.eval_batch_size = 25
  if variant == 'tiny':  # Seconds on a CPU; for tests.
    # Cosine logits in [-1, 1] make the loss's gradients small: a larger step
    # moves the tiny run (an untrained Conv-4 already gets 55.8%, see the test) in 60 steps.
    config.learning_rate = 3e-3
    return _tiny.tiny(config, query=5, test_query=5, meta_batch_size=4, steps=60, log_every=20,
                      eval_every=30, val_episodes=20, eval_episodes=100, eval_batch_size=10)
  config.matchingnet_normalize_query = False  # See the docstring.
  match = re.fullmatch(r'(5|20)way([15])shot', variant or '5way1shot')
  if not match:
    raise ValueError(f'Unknown variant {variant!r}; use 5way1shot, 5way5shot, 20way1shot, '
                     "20way5shot or 'tiny'.")
  config.way = config.test_way = int(match.group(1))
  config.shot = config.test_shot = int(match.group(2))
  config.query = 15 if config.way == 5 else 5
  return config
