#!/usr/bin/env bash
# The paper's study (arXiv 2603.20275) on a Qwen3-VL Instruct model, one GPU:
#   study_qwen3_vl.sh HUB_ID OUT_DIR      (LIMIT=500 documents per task; LIMIT= for all)
# Budgets are fractions of depth (10-50%); every criterion with every strategy it takes;
# math and general benchmarks; then the leaderboard with paired-bootstrap intervals, the
# regimes and plan stability. The sweep resumes where it stopped. The lmms-eval wrapper is
# qwen3_vl (picked from the checkpoint's model_type).
#
# Size: 151 sweep cells (121 one-shot, 30 greedy, 1 unpruned); with LIMIT=500, 6,252
# documents per cell (2,752 math, 3,500 general; every document: 24,389).
# GPU-hour estimate (not measured; assumptions): one H100-class GPU, the HF wrapper at batch
# 8, 2B unpruned at ~1.2 s per math document (step-by-step answers) and ~0.25 s per general
# one, time proportional to the layers kept (mean 70% over the cells), 4B 1.5x the 2B.
#   sweep:        2B ~0.8 h per cell x 151 = ~120 h;  4B ~180 h
#   calibration:  func_* ~1 + budget x 8 passes per domain of 256 documents: 2B ~2 h, 4B ~3 h
#   total:        2B ~125 GPU hours, 4B ~185 (LIMIT= every document: about 3.6x)
# Check the math tasks' metrics first: MathVista / MathVerse / MATH-Vision in lmms-eval may
# score with an LLM judge configured in the task, which needs its own API access.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/tasks_qwen3_vl.sh"
model=${1:?usage: study_qwen3_vl.sh HUB_ID OUT_DIR}
out=${2:?usage: study_qwen3_vl.sh HUB_ID OUT_DIR}
limit=${LIMIT-500}
mkdir -p "$out"
margs="pretrained=$model,device_map=auto,batch_size=8"
calib=(--calib_math mathvista --calib_nonmath scienceqa --calib_limit 256)
tasks="$QWEN3_MATH_TASKS,$QWEN3_GENERAL_TASKS"
lim=(); [[ -n $limit ]] && lim=(--limit "$limit")

# Layer scores, every plan at 20% of depth, and how stable each one-shot plan is over 200
# resamples of the calibration documents.
lmms-prune rank --model_args "$margs" "${calib[@]}" --budget 0.2 --criteria all --bootstrap 200 \
  --out "$out/rank"

# One-shot criteria: own strategy (topk; contiguous for angular), spaced, contiguous, and
# the score-free uniform spacing (one cell per budget).
lmms-prune sweep --model_args "$margs" "${calib[@]}" --criteria "$QWEN3_ONESHOT" \
  --strategies default,spaced,contiguous,uniform --budgets "$QWEN3_BUDGETS" \
  --tasks "$tasks" "${lim[@]}" --out "$out/sweep.jsonl"
# Greedy criteria take their own order (topk): one greedy run per criterion serves every budget.
lmms-prune sweep --model_args "$margs" "${calib[@]}" --criteria "$QWEN3_GREEDY" \
  --budgets "$QWEN3_BUDGETS" --tasks "$tasks" "${lim[@]}" --out "$out/sweep.jsonl"

lmms-prune report "$out/sweep.jsonl" --math_tasks "$QWEN3_MATH_TASKS" --out "$out/report" --force
