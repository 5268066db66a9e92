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
Measured here (1000 fixed test episodes, 95% CI), a short schedule:
  5shot, 1000 steps (5% of the default): 5-way 5-shot 49.83 +- 0.53
  (`--config.num_train_steps=1000`; the exact commands and files: README.md,
  Results: ProtoNet, miniImageNet).
  1shot, 500 steps (2.5% of the default): 5-way 1-shot 27.51 +- 0.41
  (`--config.num_train_steps=500 --config.eval_every=500`). Its training
  loss is still near the uniform guess's at step 500; an independent PyTorch
  ProtoNet trains the same way step for step
  (`experiments/compare_protonet_torch.py`): a slow start of the 1-shot
  protocol, not a bug (the same README section).
"""

from experiments.configs import _protonet


def get_config(variant: str = '5shot'):
  return _protonet.get_config('mini_imagenet', variant)
