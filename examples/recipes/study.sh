#!/usr/bin/env bash
# The pruning-regime study, budgets 0-12, on one GPU node: study.sh HUB_ID OUT_DIR
# Calibration uses the online math / non-math sets (MathVista testmini, ScienceQA images);
# swap in prune_calib_math / prune_calib_nonmath for the offline ones.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/tasks.sh"
model=${1:?usage: study.sh HUB_ID OUT_DIR}
out=${2:?usage: study.sh HUB_ID OUT_DIR}
mkdir -p "$out"

lmms-prune rank --model_args pretrained=$model,device_map=auto \
  --calib_math mathvista --calib_nonmath scienceqa --calib_limit 256 --budget 6 --out "$out/rank"

lmms-prune sweep --model_args pretrained=$model,device_map=auto \
  --calib_math mathvista --calib_nonmath scienceqa --calib_limit 256 \
  --criteria math,nonmath,mixed,shortgpt,angular,last,random \
  --strategies default,spaced \
  --budgets 0,1,2,3,4,5,6,7,8,9,10,11,12 \
  --tasks "$MATH_TASKS,$GENERAL_TASKS" --out "$out/sweep.jsonl"

lmms-prune report "$out/sweep.jsonl" --math_tasks "$MATH_TASKS" --out "$out/report" --force
