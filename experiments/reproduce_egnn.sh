#!/usr/bin/env bash
# EGNN on Omniglot, as measured for README.md (Results: EGNN). Two models:
#   - 5-way 1-shot transductive, trained TRANS_STEPS steps;
#   - 5-way 1-shot non-transductive, trained NONTRANS_STEPS steps;
# both validating every 500 steps (the best validation checkpoint is tested).
# Then 1000 fixed test episodes per setting: 5-way 1-shot, 5-way 5-shot and
# 20-way 1-shot; the transductive model with 15 and with 1 query per class and
# non-transductively, the non-transductive model non-transductively (and at
# 5-way 1-shot transductively).
#
#   bash experiments/reproduce_egnn.sh
#   TRANS_STEPS=100000 NONTRANS_STEPS=100000 bash experiments/reproduce_egnn.sh  # the full schedule
#
# The learning-rate schedule does not depend on num_train_steps, so a run to N
# steps is the first N steps of the 100k-step reference schedule. Data:
# $FSL_JAX_DATA_DIR (default: ../shared/data). At the default steps, about 1.2
# hours of training in all on a 2-core CPU (0.56-0.59 s a step alone, README.md
# Benchmark, plus validation), plus evaluation: the 20-way 15-query ones took
# about 10 minutes each before the speed-up of README.md Benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
TRANS_STEPS="${TRANS_STEPS:-4500}"
NONTRANS_STEPS="${NONTRANS_STEPS:-3000}"
PY=.venv/bin/python
train() {  # variant workdir steps
  $PY -m experiments.train --config="experiments/configs/egnn_omniglot.py:$1" --workdir="$2" \
    --config.num_train_steps="$3" --config.eval_every=500
}
evaluate() { $PY -m experiments.evaluate --episodes=1000 "$@" | tail -1; }
SHAPES=("--way=5 --shot=1" "--way=5 --shot=5" "--way=20 --shot=1")

T=runs/egnn_omniglot_5way1shot
train 5way1shot "$T" "$TRANS_STEPS"
for shape in "${SHAPES[@]}"; do
  # Transductive with 15 queries per class: 320 nodes at 20-way, so small batches.
  evaluate --workdir="$T" $shape --query=15 --transductive --batch_size=5
  evaluate --workdir="$T" $shape --query=1 --transductive
  evaluate --workdir="$T" $shape --query=15 --notransductive
done

N=runs/egnn_omniglot_5way1shot_nontransductive
train 5way1shot-nontransductive "$N" "$NONTRANS_STEPS"
for shape in "${SHAPES[@]}"; do
  evaluate --workdir="$N" $shape --query=15 --notransductive
done
evaluate --workdir="$N" --way=5 --shot=1 --query=15 --transductive --batch_size=5
evaluate --workdir="$N" --way=5 --shot=1 --query=1 --transductive
