#!/usr/bin/env bash
# The study on Qwen3-VL-2B-Instruct (28 decoder layers: budgets 3, 6, 8, 11, 14).
# Estimate on one H100-class GPU, LIMIT=500: about 125 GPU hours (assumptions in
# study_qwen3_vl.sh); LIMIT= (every document) about 3.6x that.
exec "$(dirname "$0")/study_qwen3_vl.sh" Qwen/Qwen3-VL-2B-Instruct "${OUT:-out/study_qwen3_vl_2b}"
