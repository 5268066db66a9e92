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

from experiments.configs import _protonet


def get_config(variant: str = '5shot'):
  return _protonet.get_config('tiered_imagenet', variant, num_train_steps=40_000,
                              episode_sampling='host')
