#!/usr/bin/env bash
# docs/results/leaderboard/: every installed method x 3 seeds on Fashion-MNIST, then the deployed
# trade-off of each method's best run, then the pages copied into docs/. It is exactly
#
#   kdzoo compare --methods all --seeds 3 --deploy --config configs/fashion_mnist/leaderboard.yaml --out $OUT
#
# with the seeds trained side by side first, one process per seed (one thread each: these small models
# gain little from a second thread, so on 2 cores the three processes finish sooner than one), at the
# lowest CPU priority. Stop it any time and run it again: finished runs are skipped, interrupted ones
# resume from their last checkpoint, the teacher is trained once (the other processes wait for it).
# The table so far, meanwhile: the final command below with --report-only instead of --deploy.
#
#   apt-get install -y dataset-fashion-mnist && bash scripts/leaderboard.sh     # several hours on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/leaderboard}
config=configs/fashion_mnist/leaderboard.yaml
mkdir -p "$out"
export KDZOO_CACHE=${KDZOO_CACHE:-$out/cache} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1

for seed in 0 1 2; do
    nice -n 19 kdzoo compare --methods all --seeds 1 --config "$config" --set "train.seed=$seed" --out "$out" \
        >> "$out/seed$seed.log" 2>&1 &
done
wait
OMP_NUM_THREADS=2 kdzoo compare --methods all --seeds 3 --deploy --config "$config" --out "$out" | tee "$out/report.log"
mkdir -p docs/results/leaderboard
cp "$out"/results.{md,csv,json,png} "$out"/accuracy_vs_cost.png "$out"/teacher.png docs/results/leaderboard/
