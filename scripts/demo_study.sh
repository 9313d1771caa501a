#!/usr/bin/env bash
# The study of docs/study.md, on the packaged demo model (CPU, offline):
# per-layer scores, plans and their bootstrap stability, a sweep of criteria x strategies x
# budgets 0-8 on prune_demo (one-shot, iterative and output-aware criteria), then the
# leaderboard with paired-bootstrap intervals, the accuracy-vs-budget plot and the regimes.
#   scripts/demo_study.sh [OUT_DIR]      (default out/study; resumes an interrupted sweep)
#   STAGES="sweep report" scripts/demo_study.sh   runs only some of: rank sweep report
set -euo pipefail
out=${1:-out/study}
stages=${STAGES:-rank sweep report}
args=batch_size=16
mkdir -p "$out"

if [[ $stages == *rank* ]]; then
  # 200 resamples of the 64 calibration documents per domain: how often each layer goes.
  lmms-prune rank --model_args "$args" --budget 4 --bootstrap 200 --out "$out/rank"
fi

if [[ $stages == *sweep* ]]; then
  # Each one-shot criterion with its default strategy, and the score-free uniform spacing.
  lmms-prune sweep --model_args "$args" --criteria math,nonmath,mixed,shortgpt,angular,last,random \
    --strategies default,uniform --budgets 0,2,4,6,8 --out "$out/sweep.jsonl"
  # The domain-aware and ShortGPT scores with spacing (no two removed layers adjacent: with
  # 12 layers, at most 6 can be removed that way).
  lmms-prune sweep --model_args "$args" --criteria math,nonmath,mixed,shortgpt \
    --strategies spaced --budgets 2,4,6 --out "$out/sweep.jsonl"
  # Iterative similarity: one greedy run per criterion (to budget 8) serves every budget.
  lmms-prune sweep --model_args "$args" --criteria iter_math,iter_nonmath,iter_mixed \
    --budgets 2,4,6,8 --out "$out/sweep.jsonl"
  # Output-aware: 1 + budget x candidates (8) passes per domain, so 32 calibration documents
  # per domain instead of 64.
  lmms-prune sweep --model_args "$args" --calib_limit 32 --criteria func_math,func_nonmath,func_mixed \
    --budgets 2,4,6,8 --out "$out/sweep.jsonl"
fi

if [[ $stages == *report* ]]; then
  lmms-prune report "$out/sweep.jsonl" --out "$out/report" --force
fi
