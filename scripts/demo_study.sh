#!/usr/bin/env bash
# The README's first look at the science, on the packaged demo model (CPU, offline):
# per-layer scores and plans, a sweep of criteria x strategies x budgets 0-8 on prune_demo,
# then the leaderboard, the accuracy-vs-budget plot and the regime analysis.
#   scripts/demo_study.sh [OUT_DIR]      (default out/study; resumes an interrupted sweep)
set -euo pipefail
out=${1:-out/study}
args=batch_size=16
mkdir -p "$out"

lmms-prune rank --model_args "$args" --budget 4 --out "$out/rank"

# Each criterion with its default strategy, and the score-free uniform spacing.
lmms-prune sweep --model_args "$args" --criteria math,nonmath,mixed,shortgpt,angular,last,random \
  --strategies default,uniform --budgets 0,2,4,6,8 --out "$out/sweep.jsonl"
# The domain-aware and ShortGPT scores with spacing (no two removed layers adjacent: with
# 12 layers, at most 6 can be removed that way).
lmms-prune sweep --model_args "$args" --criteria math,nonmath,mixed,shortgpt \
  --strategies spaced --budgets 2,4,6 --out "$out/sweep.jsonl"

lmms-prune report "$out/sweep.jsonl" --out "$out/report" --force
