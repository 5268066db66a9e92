"""Prototypical Networks, Conv-4 (32x32 -> 2x2x64, 256-d), on FC100 (Oreshkin et al. 2018).

Snell et al.'s protocol carried over to 32x32 CIFAR-100 classes: train at the
test shot with 20-way (5-shot) or 30-way (1-shot) episodes of 15 queries per
class, Adam lr 1e-3 halved every 2000 episodes, no augmentation (set
`--config.augment=pad_crop,flip` for the usual CIFAR one); test on 5-way
episodes with 15 queries per class. Variants: `1shot`, `5shot` (default), `tiny`.

    python -m experiments.train --config=experiments/configs/protonet_fc100.py:5shot \
      --workdir=runs/protonet_fc100_5shot --config.data_dir=DIR

Published (Oreshkin et al. 2018, their ProtoNet run, as widely cited; check the
paper's table before comparing): 5-way 1-shot 35.3 +- 0.6, 5-way 5-shot 48.6 +- 0.6.
Measured here: not measured (CIFAR-100 is not on this project's machines; its
readers are tested on generated files).
"""

from experiments.configs import _protonet


def get_config(variant: str = '5shot'):
  return _protonet.get_config('fc100', variant)
