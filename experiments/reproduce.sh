#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv (once), train Prototypical
# Networks (Conv-4, 1-shot) on Omniglot, test 5-way 1-shot on 1000 fixed episodes,
# then re-evaluate the same checkpoint 20-way 1-shot.
#
#   bash experiments/reproduce.sh [extra --config.FIELD=VALUE flags]
#
# Data: $FSL_JAX_DATA_DIR (default: ../shared/data), holding
# omniglot/images_background.zip and omniglot/images_evaluation.zip.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
WORKDIR="${WORKDIR:-runs/protonet_omniglot_1shot}"
.venv/bin/python -m experiments.train \
  --config=experiments/configs/protonet_omniglot.py:1shot --workdir="$WORKDIR" "$@"
.venv/bin/python -m experiments.evaluate --workdir="$WORKDIR" --way=20 --episodes=1000
