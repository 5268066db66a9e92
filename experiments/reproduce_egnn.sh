#!/usr/bin/env bash
# EGNN on Omniglot, as measured for README.md (Results: EGNN): train 5-way 1-shot
# transductive EGNN for 2000 steps (validating every 500), then test the best
# validation checkpoint on 1000 fixed episodes per setting: 5-way 1-shot, 5-way 5-shot and 20-way 1-shot,
# transductive with 15 and with 1 query per class, and non-transductive.
#
#   bash experiments/reproduce_egnn.sh [extra --config.FIELD=VALUE flags]
#
# Data: $FSL_JAX_DATA_DIR (default: ../shared/data). About 35 minutes of training
# on a 2-core CPU, plus about 20 minutes of evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"
WORKDIR="${WORKDIR:-runs/egnn_omniglot_5way1shot}"
PY=.venv/bin/python
$PY -m experiments.train --config=experiments/configs/egnn_omniglot.py:5way1shot \
  --workdir="$WORKDIR" --config.num_train_steps=2000 --config.eval_every=500 "$@"
evaluate() { $PY -m experiments.evaluate --workdir="$WORKDIR" --episodes=1000 "$@" | tail -1; }
for shape in "--way=5 --shot=1" "--way=5 --shot=5" "--way=20 --shot=1"; do
  # Transductive with 15 queries per class: 320 nodes at 20-way, so small batches.
  evaluate $shape --query=15 --transductive --batch_size=5
  evaluate $shape --query=1 --transductive
  evaluate $shape --query=15 --notransductive
done
